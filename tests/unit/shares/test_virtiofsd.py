"""virtiofsd command lines for both flavours, the options the C one cannot honour, and the
confinement vmsilod wraps around it."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmsilo.config.model import SharedDirectory, Virtiofs
from vmsilo.shares.plan import Share
from vmsilo.shares.runner import CAPABILITIES, wrapper
from vmsilo.shares.virtiofsd import Virtiofsd, command, unsupported

RUST = Virtiofsd("/usr/libexec/virtiofsd", "rust", "1.10.1")
QEMU = Virtiofsd("/usr/lib/qemu/virtiofsd", "qemu", "7.2.22")


def test_rust_gets_every_option_as_a_flag() -> None:
    share = SharedDirectory(
        path="/srv/docs",
        readonly=True,
        cache="metadata",
        inode_file_handles="mandatory",
        allow_mmap=True,
        enable_readdirplus=False,
        writeback=True,
        allow_direct_io=True,
        log_level="trace",
        killpriv_v2=False,
        uid_map=":0:1000:1:",
        gid_map=":0:1000:1:",
        posix_acl=False,
        translate_uid="map:1000:0:1",
        translate_gid="map:1000:0:1",
        preserve_noatime=True,
        thread_pool_size=4,
    )
    argv = command(
        RUST, share, Virtiofs(seccomp_policy="log", disable_sandbox=True), source="/srv/docs", fd=7
    )
    assert argv[0] == RUST.path
    for flag in (
        "--fd=7",
        "--shared-dir=/srv/docs",
        "--readonly",
        "--cache=metadata",
        "--inode-file-handles=mandatory",
        "--allow-mmap",
        "--no-readdirplus",
        "--writeback",
        "--allow-direct-io",
        "--log-level=trace",
        "--uid-map=:0:1000:1:",
        "--gid-map=:0:1000:1:",
        "--translate-uid=map:1000:0:1",
        "--translate-gid=map:1000:0:1",
        "--preserve-noatime",
        "--thread-pool-size=4",
        "--sandbox=none",
        "--seccomp=log",
        "--xattr",
        "--rlimit-nofile=0",
    ):
        assert flag in argv, flag
    assert "--killpriv-v2" not in argv and "--posix-acl" not in argv
    assert unsupported(share, Virtiofs(seccomp_policy="log"), "rust") == []


def test_qemu_gets_its_o_options() -> None:
    share = SharedDirectory(
        path="/srv/docs", cache="never", enable_readdirplus=False, log_level="warn", writeback=True
    )
    argv = command(QEMU, share, Virtiofs(), source="/srv/docs", fd=9)
    assert argv[:2] == [QEMU.path, "--fd=9"]
    options = argv[argv.index("-o") + 1].split(",")
    assert options == [
        "source=/srv/docs",
        "cache=none",
        "log_level=warn",
        "sandbox=namespace",
        "xattr",
        "posix_acl",
        "no_readdirplus",
        "writeback",
        "no_allow_direct_io",
        "killpriv_v2",
    ]
    assert unsupported(share, Virtiofs(), "qemu") == []


@pytest.mark.parametrize(
    ("settings", "option"),
    [
        ({"uid_map": ":0:1000:1:"}, "uidMap"),
        ({"gid_map": ":0:1000:1:"}, "gidMap"),
        ({"translate_uid": "map:1000:0:1", "posix_acl": False}, "translateUid"),
        ({"translate_gid": "map:1000:0:1", "posix_acl": False}, "translateGid"),
        ({"inode_file_handles": "mandatory"}, "inodeFileHandles"),
        ({"cache": "metadata"}, "cache"),
        ({"allow_mmap": True}, "allowMmap"),
        ({"preserve_noatime": True}, "preserveNoatime"),
    ],
)
def test_the_c_virtiofsd_names_what_it_cannot_honour(
    settings: dict[str, object], option: str
) -> None:
    share = SharedDirectory(path="/srv/docs", **settings)  # type: ignore[arg-type]
    assert [name for name, _ in unsupported(share, Virtiofs(), "qemu")] == [option]


def test_the_c_virtiofsd_has_one_seccomp_policy() -> None:
    share = SharedDirectory(path="/srv/docs")
    lacking = unsupported(share, Virtiofs(seccomp_policy="none"), "qemu")
    assert lacking == [("virtiofs.seccompPolicy", '"none"')]


def test_the_wrapper_confines_and_makes_readonly_shares_readonly_for_the_c_flavour() -> None:
    share = Share(
        "docs",
        Path("/srv/docs"),
        "/mnt/docs",
        SharedDirectory(path="/srv/docs", readonly=True),
        "vms.a.sharedDirectories.docs",
    )
    argv = wrapper(share, QEMU, ["virtiofsd", "--fd=3"])
    assert argv[:6] == ["unshare", "--ipc", "--uts", "--mount", "--propagation", "private"]
    bounding = next(a for a in argv if a.startswith("--bounding-set="))
    assert bounding == "--bounding-set=-all," + ",".join(f"+{c}" for c in CAPABILITIES)
    assert argv[argv.index("sh") :][:4][0] == "sh" and "/srv/docs" in argv
    assert argv[-2:] == ["virtiofsd", "--fd=3"]
    # The Rust flavour enforces --readonly itself: no bind mount.
    assert "sh" not in wrapper(share, RUST, ["virtiofsd"])
