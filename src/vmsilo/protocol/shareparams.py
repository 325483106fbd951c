"""The guest's shared folders as kernel command-line words; both ends share this module (the
host encodes, ``vmsilo.agent.shares`` decodes at boot).

- ``vmsilo.share=<tag>,<mount point>,<ro|rw>``  mount the virtiofs share ``tag`` there

The guest's ``user`` keeps uid and gid 1000: virtiofsd's user namespace makes them the desktop
user's on the host (``shares/idmap.py``).

Stdlib only: it runs in the guest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vmsilo.protocol.errors import ProtocolError

_TAG = re.compile(r"^[A-Za-z0-9_.-]{1,36}\Z")
_MOUNT_POINT = re.compile(r"^/[A-Za-z0-9_./@+-]*\Z")


class ShareParamError(ProtocolError, ValueError):
    """A ``vmsilo.share`` word that does not parse."""


@dataclass(frozen=True)
class GuestShare:
    tag: str
    mount_point: str
    readonly: bool


@dataclass
class GuestShares:
    shares: list[GuestShare] = field(default_factory=list)

    def encode(self) -> list[str]:
        return [
            f"vmsilo.share={s.tag},{s.mount_point},{'ro' if s.readonly else 'rw'}"
            for s in self.shares
        ]


def decode(cmdline: str) -> GuestShares:
    result = GuestShares()
    for word in cmdline.split():
        key, sep, value = word.partition("=")
        if not sep:
            continue
        if key == "vmsilo.share":
            parts = value.split(",")
            if len(parts) != 3:
                raise ShareParamError(f"{word}: expected <tag>,<mount point>,<ro|rw>")
            tag, mount_point, mode = parts
            if not _TAG.match(tag):
                raise ShareParamError(f"{word}: {tag!r} is not a virtiofs tag")
            if not _MOUNT_POINT.match(mount_point) or ".." in mount_point.split("/"):
                raise ShareParamError(f"{word}: {mount_point!r} is not an absolute path")
            if mode not in ("ro", "rw"):
                raise ShareParamError(f"{word}: mode must be ro or rw, not {mode!r}")
            result.shares.append(GuestShare(tag, mount_point, mode == "ro"))
    return result
