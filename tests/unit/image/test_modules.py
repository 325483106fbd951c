"""modules.dep resolution: dependency order, de-duplication, builtin modules, cycles."""

from __future__ import annotations

import pytest

from vmsilo.image.modules import ModuleError, ModuleIndex, module_name

V = "kernel/drivers/virtio"
DEP = f"""\
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/fs/erofs/erofs.ko.xz: kernel/lib/lz4/lz4_decompress.ko.xz
kernel/lib/lz4/lz4_decompress.ko.xz:
kernel/drivers/block/virtio_blk.ko: {V}/virtio_ring.ko {V}/virtio.ko
{V}/virtio_ring.ko: {V}/virtio.ko
{V}/virtio.ko:
{V}/virtio_pci.ko: {V}/virtio_pci_modern_dev.ko {V}/virtio_ring.ko {V}/virtio.ko
{V}/virtio_pci_modern_dev.ko:
kernel/crypto/crc32c-generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
"""
SOFTDEP = """\
softdep ext4 pre: crypto-crc32c
softdep jbd2 pre: crypto-crc32c post: nothing
"""
ALIAS = """\
alias crypto-crc32c crc32c_intel
alias crypto-crc32c crc32c_generic
alias crypto-crc32c crc32c_missing
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
"""


def index(builtin: str = "") -> ModuleIndex:
    return ModuleIndex.parse(DEP, builtin)


def test_module_name_strips_path_and_suffix_and_normalises_dashes() -> None:
    assert module_name("kernel/fs/erofs/erofs.ko.xz") == "erofs"
    assert module_name("kernel/crypto/crc32c-generic.ko") == "crc32c_generic"
    assert module_name("virtio-blk") == "virtio_blk"


def test_dependencies_come_before_their_users() -> None:
    order = index().load_order(["ext4"])
    assert order[-1] == "kernel/fs/ext4/ext4.ko"
    assert set(order[:-1]) == {
        "kernel/lib/crc16.ko",
        "kernel/fs/mbcache.ko",
        "kernel/fs/jbd2/jbd2.ko",
    }


def test_transitive_dependencies_are_ordered_and_loaded_once() -> None:
    order = index().load_order(["virtio_blk", "virtio_pci"])
    assert order == [
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/block/virtio_blk.ko",
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
        "kernel/drivers/virtio/virtio_pci.ko",
    ]


def test_names_with_dashes_resolve() -> None:
    assert index().load_order(["crc32c-generic"]) == ["kernel/crypto/crc32c-generic.ko"]


def test_builtin_modules_and_their_subtrees_are_skipped() -> None:
    idx = index("kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\n")
    assert idx.load_order(["virtio_blk"]) == ["kernel/drivers/block/virtio_blk.ko"]
    assert idx.is_builtin("virtio")
    only_builtin = ModuleIndex.parse(DEP, "kernel/fs/overlayfs/overlay.ko\n")
    assert only_builtin.load_order(["overlay"]) == []
    assert only_builtin.has("overlay")


def test_missing_module_is_named() -> None:
    with pytest.raises(ModuleError, match="nosuch"):
        index().load_order(["nosuch"])


def test_missing_dependency_names_who_needs_it() -> None:
    broken = ModuleIndex.parse("kernel/a.ko: kernel/b.ko\n")
    with pytest.raises(ModuleError, match=r"b \(needed by a\)"):
        broken.load_order(["a"])


def test_cycles_are_reported() -> None:
    cyclic = ModuleIndex.parse(
        "kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/c.ko\nkernel/c.ko: kernel/a.ko\n"
    )
    with pytest.raises(ModuleError, match="cycle: a -> b -> c -> a"):
        cyclic.load_order(["a"])


def test_malformed_line_is_reported() -> None:
    with pytest.raises(ModuleError, match="line 2"):
        ModuleIndex.parse("kernel/a.ko:\nnonsense\n")


def test_soft_dependencies_come_first_resolved_through_aliases_and_optional() -> None:
    idx = ModuleIndex.parse(DEP, "", SOFTDEP, ALIAS)
    order = idx.load_order(["ext4"])
    assert order == [
        "?kernel/arch/x86/crypto/crc32c-intel.ko",
        "?kernel/crypto/crc32c-generic.ko",
        "kernel/lib/crc16.ko",
        "kernel/fs/mbcache.ko",
        "kernel/fs/jbd2/jbd2.ko",
        "kernel/fs/ext4/ext4.ko",
    ]


def test_a_module_asked_for_directly_is_not_optional() -> None:
    idx = ModuleIndex.parse(DEP, "", SOFTDEP, ALIAS)
    assert idx.load_order(["crc32c_generic"]) == ["kernel/crypto/crc32c-generic.ko"]


def test_wildcard_aliases_are_ignored() -> None:
    idx = ModuleIndex.parse(DEP, "", "", ALIAS)
    assert idx.candidates("crypto-crc32c") == ("crc32c_intel", "crc32c_generic")
    assert "pci:v00001AF4d*sv*sd*bc*sc*i*" not in idx.aliases
