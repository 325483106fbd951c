"""The guest's shared folders and its user's identity as kernel command-line words; both ends
share this module (the host encodes, ``vmsilo.agent.shares`` decodes at boot).

- ``vmsilo.share=<tag>,<mount point>,<ro|rw>``  mount the virtiofs share ``tag`` there
- ``vmsilo.uid=<uid>:<gid>``  the guest's ``user`` takes the host user's ids, so that files it
  writes to a share belong to that user on the host (virtiofsd passes ids through)

Stdlib only: it runs in the guest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TAG = re.compile(r"^[A-Za-z0-9_.-]{1,36}$")
_MOUNT_POINT = re.compile(r"^/[A-Za-z0-9_./@+-]*$")
ID_MAX = 2**32 - 2


class ShareParamError(ValueError):
    """A ``vmsilo.share``/``vmsilo.uid`` word that does not parse."""


@dataclass(frozen=True)
class GuestShare:
    tag: str
    mount_point: str
    readonly: bool


@dataclass
class GuestShares:
    shares: list[GuestShare] = field(default_factory=list)
    uid: int | None = None
    gid: int | None = None

    def encode(self) -> list[str]:
        words = [
            f"vmsilo.share={s.tag},{s.mount_point},{'ro' if s.readonly else 'rw'}"
            for s in self.shares
        ]
        if self.uid is not None and self.gid is not None:
            words.append(f"vmsilo.uid={self.uid}:{self.gid}")
        return words


def _id(value: str, word: str) -> int:
    if not value.isdigit() or int(value) > ID_MAX:
        raise ShareParamError(f"{word}: {value!r} is not a user or group id")
    return int(value)


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
        elif key == "vmsilo.uid":
            uid, colon, gid = value.partition(":")
            if not colon:
                raise ShareParamError(f"{word}: expected <uid>:<gid>")
            result.uid, result.gid = _id(uid, word), _id(gid, word)
    return result
