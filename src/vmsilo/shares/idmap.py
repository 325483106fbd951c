"""The uid and gid maps of a share's virtiofsd user namespace, composed from vmsilo's per-VM
id block and the share's upstream options. Pure.

Three id spaces meet here: the guest's ids, virtiofsd's ids (inside its user namespace: the
ids it creates files with) and the host's ids. The namespace map (``user_namespaces(7)``,
``/proc/<pid>/uid_map``) takes virtiofsd's ids to host ids; the kernel applies it to every
file virtiofsd creates, chowns or stats, so no file a guest makes can belong to an id the map
does not name, and an id it does not name cannot be used at all.

- The base map is ``vmsilo.host.ids.guest_id_map``: guest ``user`` (1000) is the desktop
  user, every other id 0..65534 is the VM's own unprivileged id, nothing else is mapped.
- ``uidMap``/``gidMap`` (upstream: ``:namespace_id:host_id:count:``, "done by user
  namespace") add their range on top: it wins over the base map, whose lines are cut where
  either side overlaps it. Its host ids must be unprivileged (not below 1000 unless it is the
  desktop user, not another VM's block or any VM's VMM id).
- ``translateUid``/``translateGid`` (upstream: virtiofsd's ``--translate-uid``) translate
  guest ids into virtiofsd's ids, which the namespace map then takes to the host. The Rust
  virtiofsd does that itself (the option is passed on); for QEMU's C virtiofsd, which has no
  translation, the kinds a user namespace can express are folded into the map: ``map``
  (both directions, 1:1) and ``forbid-guest`` (those guest ids are not mapped, so they
  cannot be used). ``guest``/``host`` (one direction only) and ``squash-*`` (many to one)
  cannot be: ``unsupported_translation`` names them so the VM is refused.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from vmsilo.host.ids import (
    BLOCK_SIZE,
    VMM_OFFSET,
    IdMapLine,
    block_start,
    guest_id_map,
)

Flavour = Literal["rust", "qemu"]

# ids are u32; (u32)-1 means "no id" to every syscall and may not be mapped.
ID_LIMIT = 2**32 - 1
# The kernel takes at most this many lines per map (since Linux 4.15).
MAX_LINES = 340
# Below this, host ids belong to the system: root, and groups such as disk, kmem or shadow
# whose members reach the host's devices or secrets (Debian's SYS_UID_MAX is 999).
FIRST_UNPRIVILEGED = 1000
# VM ids are 3..4095 (config's LAST_VM_ID): every block lies below the block of VM 4096.
ALL_BLOCKS_END = block_start(4096)
# The translation kinds a user namespace can express (see the module docstring).
NAMESPACE_TRANSLATIONS = ("map", "forbid-guest")


class IdMapError(ValueError):
    """An option's value cannot be honoured; ``option`` is its upstream name."""

    def __init__(self, option: str, value: str, reason: str) -> None:
        self.option = option
        self.value = value
        self.reason = reason
        super().__init__(f"{option} = {value!r}: {reason}")


@dataclass(frozen=True)
class Translation:
    """One ``--translate-uid`` value: ``kind:source:target:count``, or for ``forbid-guest``
    ``kind:source:count`` (target is then None)."""

    kind: str
    source: int
    target: int | None
    count: int


def parse_id_map(option: str, value: str) -> IdMapLine:
    """``:namespace_id:host_id:count:`` (any one-character delimiter, as virtiofsd's parser
    allows) as a map line."""
    if len(value) < 2 or value[0] != value[-1]:
        raise IdMapError(option, value, "write ':namespace_id:host_id:count:'")
    parts = value[1:-1].split(value[0])
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        raise IdMapError(option, value, "write ':namespace_id:host_id:count:'")
    inside, outside, count = (int(part) for part in parts)
    line = IdMapLine(inside, outside, count)
    _check_range(option, value, line.inside, count, "namespace")
    _check_range(option, value, line.outside, count, "host")
    return line


def parse_translation(option: str, value: str) -> Translation:
    parts = value.split(":")
    kind, numbers = parts[0], parts[1:]
    if not all(n.isdigit() for n in numbers):
        raise IdMapError(option, value, "ids and counts are decimal numbers")
    if kind == "forbid-guest":
        if len(numbers) != 2:
            raise IdMapError(option, value, "write 'forbid-guest:<guest base>:<count>'")
        source, count = (int(n) for n in numbers)
        _check_range(option, value, source, count, "guest")
        return Translation(kind, source, None, count)
    if kind not in ("guest", "host", "map", "squash-guest", "squash-host") or len(numbers) != 3:
        raise IdMapError(option, value, "write '<type>:<source base>:<target base>:<count>'")
    source, target, count = (int(n) for n in numbers)
    _check_range(option, value, source, count, "source")
    _check_range(option, value, target, 1 if kind.startswith("squash") else count, "target")
    return Translation(kind, source, target, count)


def unsupported_translation(value: str | None, flavour: Flavour) -> bool:
    """Whether ``flavour`` cannot honour this translation (see the module docstring)."""
    if value is None or flavour == "rust":
        return False
    return value.split(":")[0] not in NAMESPACE_TRANSLATIONS


def _check_range(option: str, value: str, start: int, count: int, side: str) -> None:
    if count == 0:
        raise IdMapError(option, value, "a count of 0 maps nothing; give at least 1")
    if start + count > ID_LIMIT:
        raise IdMapError(
            option, value,
            f"the {side} range {start}..{start + count - 1} passes the largest id "
            f"{ID_LIMIT - 1}; lower the base or the count")  # fmt: skip


def check_host_range(
    option: str, value: str, vm_id: int, desktop_id: int, line: IdMapLine
) -> None:
    """Refuse host ids a guest must never be able to create files as."""
    first, last = line.outside, line.outside + line.count - 1
    privileged = [i for i in range(first, min(last, FIRST_UNPRIVILEGED - 1) + 1)
                  if i != desktop_id]  # fmt: skip
    if privileged:
        who = "root" if privileged[0] == 0 else "a system id (below 1000)"
        raise IdMapError(
            option, value,
            f"host id {privileged[0]} is {who}: a guest could make files (setuid or setgid "
            f"ones too) owned by it; map to the desktop user ({desktop_id}) or to ids of "
            f"{FIRST_UNPRIVILEGED} or above")  # fmt: skip
    own_first, own_end = block_start(vm_id), block_start(vm_id) + VMM_OFFSET
    if last < block_start(0) or first >= ALL_BLOCKS_END:
        return
    if own_first <= first and last < own_end:
        return
    clash = max(first, block_start(0))
    if own_first <= clash < own_end:
        clash = own_end  # the first id past this VM's guest ids
    owner = (clash - block_start(0)) // BLOCK_SIZE
    raise IdMapError(
        option, value,
        f"host id {clash} is in vmsilo's reserved id range (the block of VM id {owner}, whose "
        f"last id is that VM's VMM); map to ids outside {block_start(0)}..{ALL_BLOCKS_END - 1}, "
        f"or inside this VM's own guest ids {own_first}..{own_end - 1}")  # fmt: skip


# -- interval work on map lines --------------------------------------------------------------


def _cut_inside(line: IdMapLine, start: int, end: int) -> list[IdMapLine]:
    """``line`` without the namespace ids [start, end)."""
    return _cut(line, start, end, by_outside=False)


def _cut_outside(line: IdMapLine, start: int, end: int) -> list[IdMapLine]:
    """``line`` without the host ids [start, end)."""
    return _cut(line, start, end, by_outside=True)


def _cut(line: IdMapLine, start: int, end: int, *, by_outside: bool) -> list[IdMapLine]:
    base = line.outside if by_outside else line.inside
    lo, hi = max(base, start), min(base + line.count, end)
    if lo >= hi:
        return [line]
    pieces = []
    if lo > base:
        pieces.append(IdMapLine(line.inside, line.outside, lo - base))
    if hi < base + line.count:
        skip = hi - base
        pieces.append(IdMapLine(line.inside + skip, line.outside + skip, line.count - skip))
    return pieces


def overlay(lower: Iterable[IdMapLine], upper: Sequence[IdMapLine]) -> list[IdMapLine]:
    """``upper``'s lines, and what is left of ``lower``'s once every namespace id and every
    host id ``upper`` uses is taken out of them (a map is one-to-one both ways)."""
    kept = list(lower)
    for line in upper:
        kept = [p for k in kept for p in _cut_inside(k, line.inside, line.inside + line.count)]
        kept = [p for k in kept
                for p in _cut_outside(k, line.outside, line.outside + line.count)]  # fmt: skip
    return [*upper, *kept]


def _lookup(lines: Sequence[IdMapLine], start: int, count: int) -> list[tuple[int, int, int]]:
    """The mapped parts of namespace ids [start, start + count): (offset, host id, count)."""
    parts = []
    for line in lines:
        lo = max(line.inside, start)
        hi = min(line.inside + line.count, start + count)
        if lo < hi:
            parts.append((lo - start, line.outside + (lo - line.inside), hi - lo))
    return sorted(parts)


def normalise(lines: Iterable[IdMapLine]) -> tuple[IdMapLine, ...]:
    """Sorted by namespace id, neighbours that continue each other merged, and checked for
    what the kernel refuses (overlaps on either side, too many lines)."""
    ordered = sorted((line for line in lines if line.count), key=lambda x: x.inside)
    merged: list[IdMapLine] = []
    for line in ordered:
        if merged:
            last = merged[-1]
            if (last.inside + last.count == line.inside
                    and last.outside + last.count == line.outside):  # fmt: skip
                merged[-1] = IdMapLine(last.inside, last.outside, last.count + line.count)
                continue
        merged.append(line)
    for side in ("inside", "outside"):
        spans = sorted((getattr(x, side), getattr(x, side) + x.count) for x in merged)
        for (_, end), (start, _) in itertools.pairwise(spans):
            if start < end:
                raise AssertionError(f"id map lines overlap on the {side}: {merged}")
    if len(merged) > MAX_LINES:
        raise AssertionError(f"id map has {len(merged)} lines, the kernel takes {MAX_LINES}")
    return tuple(merged)


# -- the composition ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IdOptions:
    """A share's options for one kind of id, with their upstream names for messages."""

    id_map: str | None = None
    translation: str | None = None
    map_option: str = "uidMap"
    translation_option: str = "translateUid"


def namespace_map(
    vm_id: int, desktop_id: int, options: IdOptions, flavour: Flavour
) -> tuple[IdMapLine, ...]:
    """virtiofsd's namespace map for one kind of id (uids or gids) of one share of VM
    ``vm_id`` whose desktop user (or group) is ``desktop_id``. Raises ``IdMapError`` naming
    the option that cannot be honoured."""
    lines: list[IdMapLine] = list(guest_id_map(vm_id, desktop_id))
    if options.id_map is not None:
        line = parse_id_map(options.map_option, options.id_map)
        check_host_range(options.map_option, options.id_map, vm_id, desktop_id, line)
        lines = overlay(lines, [line])
    if options.translation is not None:
        translation = parse_translation(options.translation_option, options.translation)
        if flavour == "qemu":
            lines = _fold(lines, translation, options)
            # virtiofsd runs as id 0 of its namespace: a map without it cannot start it.
            if not any(line.inside == 0 for line in lines):
                raise IdMapError(
                    options.translation_option, options.translation or "",
                    "with QEMU's C virtiofsd the guest's root id cannot be forbidden (virtiofsd "
                    "runs as that id of its user namespace); forbid ids from 1 on, or install "
                    "the Rust virtiofsd")
    return normalise(lines)


def _fold(lines: list[IdMapLine], t: Translation, options: IdOptions) -> list[IdMapLine]:
    """The C virtiofsd's emulation of a translation in the namespace map."""
    if t.kind == "forbid-guest":
        return [p for line in lines for p in _cut_inside(line, t.source, t.source + t.count)]
    if t.kind != "map":
        raise IdMapError(
            options.translation_option, options.translation or "",
            f"QEMU's C virtiofsd has no id translation, and a user namespace cannot express "
            f"'{t.kind}' (only {' and '.join(NAMESPACE_TRANSLATIONS)}); install the Rust "
            "virtiofsd, or use a 'map' translation")  # fmt: skip
    assert t.target is not None
    # Guest id source+i takes the host id that virtiofsd's id target+i has; the guest ids
    # the translation covers lose their own lines, and so does whatever guest id had those
    # host ids before (the translation wins, as virtiofsd's own translation would).
    translated = [IdMapLine(t.source + offset, host, count)
                  for offset, host, count in _lookup(lines, t.target, t.count)]  # fmt: skip
    kept = [p for line in lines for p in _cut_inside(line, t.source, t.source + t.count)]
    return overlay(kept, translated)


def render(lines: Iterable[IdMapLine]) -> str:
    """The text written to ``/proc/<pid>/uid_map`` (in one ``write``)."""
    return "".join(f"{line.render()}\n" for line in lines)
