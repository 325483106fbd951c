"""virtiofsd command lines for both flavours, the options that cannot be honoured in its user
namespace, and the launcher that puts it there."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmsilo.config.model import SharedDirectory, Virtiofs
from vmsilo.host.ids import guest_id_map
from vmsilo.shares import userns
from vmsilo.shares.plan import Share
from vmsilo.shares.runner import CAPABILITIES, IdMaps, launch_command, nofile_limit
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
    # uidMap/gidMap are lines of vmsilo's namespace map; virtiofsd runs as root inside it.
    assert not any(a.startswith(("--uid-map", "--gid-map")) for a in argv)
    # File handles need CAP_DAC_READ_SEARCH in the host's namespace, which it lacks there.
    lacking = unsupported(share, Virtiofs(seccomp_policy="log"), "rust")
    assert [(option, value) for option, value, _ in lacking] == [
        ("inodeFileHandles", '"mandatory"')]
    assert "CAP_DAC_READ_SEARCH" in lacking[0][2]
    share = share.model_copy(update={"inode_file_handles": "prefer"})
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
        ({"translate_uid": "squash-guest:0:1000:4294967295", "posix_acl": False},
         "translateUid"),
        ({"translate_gid": "guest:0:1000:1", "posix_acl": False}, "translateGid"),
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
    assert [name for name, _, _ in unsupported(share, Virtiofs(), "qemu")] == [option]


def test_the_c_virtiofsd_honours_id_maps_and_namespace_translations() -> None:
    share = SharedDirectory(path="/srv/docs", uid_map=":0:100000:10:", gid_map=":0:100000:10:",
                            translate_uid="map:0:1000:1", posix_acl=False)  # fmt: skip
    assert unsupported(share, Virtiofs(), "qemu") == []


def test_the_c_virtiofsd_has_one_seccomp_policy() -> None:
    share = SharedDirectory(path="/srv/docs")
    lacking = unsupported(share, Virtiofs(seccomp_policy="none"), "qemu")
    assert [(option, value) for option, value, _ in lacking] == [
        ("virtiofs.seccompPolicy", '"none"')]
    assert "install the Rust virtiofsd" in lacking[0][2]


MAPS = IdMaps(uids=guest_id_map(3, 65534), gids=guest_id_map(3, 65534))


@pytest.mark.parametrize("found", [QEMU, RUST])
def test_the_launcher_gets_the_maps_limits_the_share_and_readonly_for_both_flavours(
    found: Virtiofsd,
) -> None:
    share = Share(
        "docs",
        Path("/srv/docs"),
        "/mnt/docs",
        SharedDirectory(path="/srv/docs", readonly=True),
        "vms.a.sharedDirectories.docs",
    )
    program = command(found, share.options, Virtiofs(), source=userns.SOURCE, fd=3)
    argv = launch_command(share, MAPS, program, python="/usr/bin/python3", source_fd=4)
    b = 0x50000000 + 3 * 0x10000
    assert argv[:3] == ["/usr/bin/python3", "-m", "vmsilo.shares.userns"]
    separator = argv.index("--")
    assert argv[separator + 1 :] == program
    options = argv[3:separator]
    assert options == [
        f"--nofile={nofile_limit()}",
        "--capabilities=" + ",".join(CAPABILITIES),
        f"--uid-map=0:{b}:1000", "--uid-map=1000:65534:1", f"--uid-map=1001:{b + 1001}:64534",
        f"--gid-map=0:{b}:1000", "--gid-map=1000:65534:1", f"--gid-map=1001:{b + 1001}:64534",
        "--source-fd=4", "--readonly",
    ]  # fmt: skip
    # virtiofsd is given the launcher's fixed mount point, never the share's host path.
    assert not any("/srv/docs" in a for a in argv)
    writable = Share("d", Path("/srv/d"), "/mnt/d", SharedDirectory(path="/srv/d"), "x")
    argv = launch_command(writable, MAPS, program, source_fd=4)
    assert argv[argv.index("--") - 1] == "--source-fd=4"


def test_the_launcher_parses_its_own_argv_back() -> None:
    argv = userns.command("py", MAPS.uids, MAPS.gids, nofile=4096, capabilities=CAPABILITIES,
                          source_fd=5, readonly=True, program=["/bin/true", "--x"])  # fmt: skip
    args = userns.parse(argv[3:])
    assert args.program == ["/bin/true", "--x"]
    assert [userns._map_line(v) for v in args.uid_map] == list(MAPS.uids)
    assert (args.nofile, args.source_fd, args.readonly) == (4096, 5, True)
    assert args.capabilities.split(",") == list(CAPABILITIES)


def test_the_launcher_refuses_unknown_capabilities() -> None:
    with pytest.raises(ValueError, match="unknown capabilities: net_admin"):
        userns.command("py", MAPS.uids, MAPS.gids, nofile=1, capabilities=["net_admin"],
                       source_fd=None, readonly=False, program=["x"])  # fmt: skip
    with pytest.raises(ValueError, match="readonly needs a source descriptor"):
        userns.command("py", MAPS.uids, MAPS.gids, nofile=1, capabilities=CAPABILITIES,
                       source_fd=None, readonly=True, program=["x"])  # fmt: skip
