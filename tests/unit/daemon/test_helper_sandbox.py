"""The pure parts of starting a sandboxed helper: which socket a D-Bus address names, the
bubblewrap options that show a descriptor inside, where they go in the command line, and which
directories a helper's interpreter needs."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

import vmsilo
from vmsilo.daemon.dbusproxy import bus_socket_path
from vmsilo.daemon.helpers import (
    DesktopSocketError,
    bind_fd_args,
    open_desktop_socket,
    sandbox_for,
    with_bwrap_args,
)
from vmsilo.host.interpreter import runtime_binds, runtime_env


@pytest.mark.parametrize(("address", "path"), [
    ("unix:path=/run/user/1000/bus", "/run/user/1000/bus"),
    ("unix:path=/run/user/1000/bus,guid=0123456789abcdef", "/run/user/1000/bus"),
    ("unix:abstract=/tmp/dbus-x;unix:path=/run/bus", "/run/bus"),
    ("tcp:host=localhost,port=1;unix:path=/a%20b/bus", "/a b/bus"),
    ("unix:guid=1,path=/p%2fq", "/p/q"),
])
def test_the_bus_socket_of_an_address(address: str, path: str) -> None:
    assert bus_socket_path(address) == Path(path)


@pytest.mark.parametrize("address", ["unix:abstract=/tmp/dbus-x", "tcp:host=h,port=1", "",
                                     "unix:path=", "unix:tmpdir=/tmp"])
def test_an_address_without_a_socket_path_is_refused_with_the_fix(address: str) -> None:
    with pytest.raises(DesktopSocketError, match="VMSILO_HOST_SESSION_BUS=unix:path="):
        bus_socket_path(address)


def test_a_descriptor_is_shown_read_only_below_enterable_parents() -> None:
    assert bind_fd_args(7, Path("/run/desktop/bus")) == [
        "--perms", "0755", "--dir", "/run", "--perms", "0755", "--dir", "/run/desktop",
        "--ro-bind-fd", "7", "/run/desktop/bus"]


def test_extra_options_go_before_bubblewraps_command() -> None:
    argv = sandbox_for((1000, 1000)).argv(["python3", "-m", "x", "--", "y"])
    extended = with_bwrap_args(argv, ["--ro-bind-fd", "7", "/run/desktop/bus"])
    end = extended.index("--")
    assert extended[end - 3:end] == ["--ro-bind-fd", "7", "/run/desktop/bus"]
    assert extended[end:] == argv[argv.index("--"):]
    assert "--reuid=1000" in extended and "--unshare-net" in extended


def test_the_interpreter_and_the_package_are_bound_and_nothing_nested_or_system(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    extra = tmp_path / "lib"
    extra.mkdir()
    monkeypatch.setenv("PYTHONPATH", f"{extra}:{extra / 'inside'}:/usr/lib/python3/dist-packages")
    monkeypatch.delenv("VMSILO_HELPER_PYTHON", raising=False)
    binds = runtime_binds()
    package = Path(vmsilo.__file__).resolve().parent.parent
    assert any(b == package or b in package.parents for b in binds)
    base = Path(sys.base_prefix).resolve()  # the interpreter's own installation
    assert base.is_relative_to("/usr") or any(b == base or b in base.parents for b in binds)
    assert Path(os.path.realpath(extra)) in binds
    assert not [b for b in binds if b.is_relative_to("/usr")]
    assert not [b for b in binds for c in binds if c in b.parents]
    assert runtime_env()["PYTHONPATH"].startswith(str(extra))


def test_only_a_socket_of_the_desktop_user_is_handed_over(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "wayland-0"))
    (tmp_path / "link").symlink_to(tmp_path / "wayland-0")
    (tmp_path / "file").write_text("")
    me = (os.getuid(), os.getgid())
    os.close(open_desktop_socket(tmp_path / "wayland-0", me))
    with pytest.raises(DesktopSocketError, match="not a socket"):
        open_desktop_socket(tmp_path / "link", me)
    with pytest.raises(DesktopSocketError, match="not a socket"):
        open_desktop_socket(tmp_path / "file", me)
    with pytest.raises(DesktopSocketError, match=f"desktop user \\(uid {os.getuid() + 1}\\)"):
        open_desktop_socket(tmp_path / "wayland-0", (os.getuid() + 1, 0))
    with pytest.raises(DesktopSocketError, match="cannot open"):
        open_desktop_socket(tmp_path / "missing", me)
    listener.close()
