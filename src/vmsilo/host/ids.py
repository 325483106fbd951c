"""The host uids and gids vmsilo gives each VM: one block of 65,536 ids per VM, derived from
the VM's id (a pure function, like every derived identity).

Block of VM ``id``: ``ID_BASE + id * BLOCK_SIZE`` (VM ids are 3-4095, so every block lies
inside systemd's container range, 0x80000-0x6FFFFFFF, see systemd's "Users, Groups, UIDs and
GIDs on systemd Systems"). Inside it:

- offset ``g`` (0 ≤ g < 65535) is what guest id ``g`` becomes on the host when virtiofsd
  writes a shared folder — except the guest's ``user`` (1000), which becomes the desktop user;
- the last id (offset 65535) is the VM's VMM: QEMU runs as that uid and gid, which owns
  nothing on the host but the VM's overlay disk.

No host account may use an id of a block in use (vmsilod refuses to start such a VM).
"""

from __future__ import annotations

import grp
import pwd
from dataclasses import dataclass

ID_BASE = 0x50000000
BLOCK_SIZE = 0x10000
GUEST_USER = 1000  # the guest's `user` account (uid and gid)
VMM_OFFSET = BLOCK_SIZE - 1


def block_start(vm_id: int) -> int:
    return ID_BASE + vm_id * BLOCK_SIZE


def vmm_id(vm_id: int) -> int:
    """The uid (and gid) the VM's VMM runs as."""
    return block_start(vm_id) + VMM_OFFSET


@dataclass(frozen=True)
class IdMapLine:
    """One line of ``/proc/<pid>/uid_map`` (``user_namespaces(7)``): ids ``inside`` ..
    ``inside + count - 1`` of the namespace are ``outside`` .. of the parent."""

    inside: int
    outside: int
    count: int

    def render(self) -> str:
        return f"{self.inside} {self.outside} {self.count}"


def guest_id_map(vm_id: int, desktop_id: int) -> tuple[IdMapLine, ...]:
    """The id map of VM ``vm_id``'s virtiofsd: guest ``user`` (1000) is the desktop user,
    every other guest id 0..65534 is the VM's own unprivileged id; guest id 65535 (the
    VMM's offset) and above are not mapped, so the kernel refuses them."""
    start = block_start(vm_id)
    after = GUEST_USER + 1
    return (
        IdMapLine(0, start, GUEST_USER),
        IdMapLine(GUEST_USER, desktop_id, 1),
        IdMapLine(after, start + after, VMM_OFFSET - after),
    )


def in_any_block(host_id: int, vm_ids: list[int]) -> int | None:
    """The VM id whose block holds ``host_id``, if any."""
    for vm_id in vm_ids:
        if block_start(vm_id) <= host_id < block_start(vm_id) + BLOCK_SIZE:
            return vm_id
    return None


def accounts_in_blocks(vm_ids: list[int]) -> list[tuple[str, str, int, int]]:
    """(``user``/``group``, name, id, VM id) of every host account inside a VM's block."""
    found = []
    for user in pwd.getpwall():
        vm_id = in_any_block(user.pw_uid, vm_ids)
        if vm_id is not None:
            found.append(("user", user.pw_name, user.pw_uid, vm_id))
    for group in grp.getgrall():
        vm_id = in_any_block(group.gr_gid, vm_ids)
        if vm_id is not None:
            found.append(("group", group.gr_name, group.gr_gid, vm_id))
    return found
