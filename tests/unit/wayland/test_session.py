"""The filter's session against messages built from the installed protocol XML: what a VM is
offered, what it may bind, how its windows are marked, and what closes its connection."""

import os
from collections import deque
from pathlib import Path

import pytest

from vmsilo.testing.wayland import event, request
from vmsilo.wayland import policy
from vmsilo.wayland.protocols import load_tables
from vmsilo.wayland.session import Output, Session, ViolationError
from vmsilo.wayland.wire import HEADER, Fd, NewId, decode_args, split_header

pytestmark = pytest.mark.skipif(
    not Path("/usr/share/wayland/wayland.xml").exists()
    or not Path("/usr/share/wayland-protocols").is_dir(),
    reason="the Wayland protocol XML is not installed (scripts/bootstrap.sh installs it)")

TABLES = load_tables()
VM = "work"
COMPOSITOR, SHM, WM_BASE, SCREENSHOOTER, DECORATION = 1, 2, 3, 4, 5


def texts(out: Output, object_id: int, interface: str, name: str) -> list[str]:
    """The string argument of every ``interface.name`` request on ``object_id`` let through."""
    table = TABLES[interface].requests
    opcode = next(i for i, m in enumerate(table) if m.name == name)
    found = []
    for data, _ in out.messages:
        target, op, _ = split_header(data)
        if target == object_id and op == opcode:
            found.append(decode_args(table[opcode], memoryview(data)[8:], deque())[0])
    return found


@pytest.fixture
def session() -> Session:
    s = Session(VM, TABLES)
    s.from_client(request(TABLES, 1, "wl_display", "get_registry", NewId(2)), [])
    globals_ = b"".join([
        event(TABLES, 2, "wl_registry", "global", COMPOSITOR, "wl_compositor", 4),
        event(TABLES, 2, "wl_registry", "global", SHM, "wl_shm", 1),
        event(TABLES, 2, "wl_registry", "global", WM_BASE, "xdg_wm_base", 99),
        event(TABLES, 2, "wl_registry", "global", SCREENSHOOTER, "weston_screenshooter", 1),
        event(TABLES, 2, "wl_registry", "global", DECORATION, "zxdg_decoration_manager_v1", 1),
    ])
    out = s.from_server(globals_, [])
    s.offered = out  # type: ignore[attr-defined]
    return s


def offered(out: Output) -> dict[str, int]:
    table = TABLES["wl_registry"].events
    result = {}
    for data, _ in out.messages:
        _, opcode, _ = split_header(data)
        _number, interface, version = decode_args(table[opcode], memoryview(data)[8:],
                                                  deque())
        result[interface] = version
    return result


def test_only_allowlisted_globals_are_offered_at_capped_versions(session: Session) -> None:
    seen = offered(session.offered)  # type: ignore[attr-defined]
    assert seen == {"wl_compositor": 4, "wl_shm": 1, "zxdg_decoration_manager_v1": 1,
                    "xdg_wm_base": min(99, TABLES["xdg_wm_base"].version,
                                       policy.ALLOWED_GLOBALS["xdg_wm_base"])}
    assert "weston_screenshooter" in session.hidden


def test_binding_a_hidden_global_is_a_violation(session: Session) -> None:
    with pytest.raises(ViolationError, match="not offered"):
        session.from_client(request(TABLES, 2, "wl_registry", "bind", SCREENSHOOTER,
                                    NewId(3, "weston_screenshooter", 1)), [])


@pytest.mark.parametrize(("name", "new", "match"), [
    (SHM, NewId(3, "zwlr_screencopy_manager_v1", 1), "it is wl_shm"),
    (COMPOSITOR, NewId(3, "wl_compositor", 5), "offered up to 4"),
    (COMPOSITOR, NewId(3, "wl_compositor", 0), "offered up to 4"),
])
def test_binding_under_another_interface_or_version_is_a_violation(
    session: Session, name: int, new: NewId, match: str,
) -> None:
    with pytest.raises(ViolationError, match=match):
        session.from_client(request(TABLES, 2, "wl_registry", "bind", name, new), [])
    with pytest.raises(ViolationError, match="already closed"):
        session.from_client(request(TABLES, 1, "wl_display", "sync", NewId(9)), [])


def _window(session: Session) -> Output:
    steps = [
        request(TABLES, 2, "wl_registry", "bind", COMPOSITOR, NewId(3, "wl_compositor", 4)),
        request(TABLES, 2, "wl_registry", "bind", WM_BASE, NewId(4, "xdg_wm_base", 1)),
        request(TABLES, 3, "wl_compositor", "create_surface", NewId(5)),
        request(TABLES, 4, "xdg_wm_base", "get_xdg_surface", NewId(6), 5),
        request(TABLES, 6, "xdg_surface", "get_toplevel", NewId(7)),
        request(TABLES, 7, "xdg_toplevel", "set_title", "Online banking"),
        request(TABLES, 7, "xdg_toplevel", "set_app_id", "org.example.Bank"),
    ]
    return session.from_client(b"".join(steps), [])


def test_every_toplevel_is_marked_with_the_vm(session: Session) -> None:
    out = _window(session)
    assert texts(out, 7, "xdg_toplevel", "set_title") == ["[work]", "[work] Online banking"]
    assert texts(out, 7, "xdg_toplevel", "set_app_id") == ["vmsilo-work",
                                                           "vmsilo-work-org.example.Bank"]
    assert session.toplevels == 1


def test_client_side_decoration_requests_become_server_side(session: Session) -> None:
    _window(session)
    out = session.from_client(b"".join([
        request(TABLES, 2, "wl_registry", "bind", DECORATION,
                NewId(8, "zxdg_decoration_manager_v1", 1)),
        request(TABLES, 8, "zxdg_decoration_manager_v1", "get_toplevel_decoration", NewId(9), 7),
        request(TABLES, 9, "zxdg_toplevel_decoration_v1", "set_mode", 1),
        request(TABLES, 9, "zxdg_toplevel_decoration_v1", "unset_mode"),
    ]), [])
    modes = [HEADER.unpack_from(d)[0] for d, _ in out.messages]
    assert modes == [2, 8, 9, 9]
    set_mode = [d for d, _ in out.messages if HEADER.unpack_from(d)[0] == 9]
    assert all(d[8:12] == (2).to_bytes(4, "little") and split_header(d)[1] == 1
               for d in set_mode)


@pytest.mark.parametrize(("data", "match"), [
    (HEADER.pack(42, 8 << 16), "does not exist"),
    (HEADER.pack(1, 8 << 16 | 7), "opcode 7"),
    (HEADER.pack(1, 6 << 16), "message size"),
    (HEADER.pack(1, 10 << 16), "message size"),
    (HEADER.pack(1, 8 << 16 | 1), "ends inside"),
    (HEADER.pack(1, 12 << 16 | 1) + (0).to_bytes(4, "little"), "new id"),
    (HEADER.pack(1, 16 << 16 | 1) + (3).to_bytes(4, "little") * 2, "left after"),
])
def test_malformed_client_messages_are_violations(session: Session, data: bytes,
                                                  match: str) -> None:
    with pytest.raises(ViolationError, match=match):
        session.from_client(data, [])


def test_strings_must_be_one_nul_terminated_string(session: Session) -> None:
    _window(session)
    bad = HEADER.pack(7, 16 << 16 | 2) + (4).to_bytes(4, "little") + b"abcd"
    with pytest.raises(ViolationError, match="NUL"):
        session.from_client(bad, [])


def test_reusing_a_live_id_is_a_violation_and_delete_id_frees_it(session: Session) -> None:
    bind = request(TABLES, 2, "wl_registry", "bind", COMPOSITOR, NewId(3, "wl_compositor", 4))
    session.from_client(bind, [])
    with pytest.raises(ViolationError, match="already exists"):
        session.from_client(request(TABLES, 3, "wl_compositor", "create_surface", NewId(3)), [])


def test_delete_id_lets_an_id_be_used_again(session: Session) -> None:
    session.from_client(request(TABLES, 1, "wl_display", "sync", NewId(3)), [])
    session.from_server(event(TABLES, 1, "wl_display", "delete_id", 3), [])
    session.from_client(request(TABLES, 1, "wl_display", "sync", NewId(3)), [])


def test_descriptors_travel_with_their_message_and_wait_for_it(session: Session) -> None:
    session.from_client(request(TABLES, 2, "wl_registry", "bind", SHM,
                                NewId(3, "wl_shm", 1)), [])
    read_end, write_end = os.pipe()
    os.close(write_end)
    create_pool = request(TABLES, 3, "wl_shm", "create_pool", NewId(4), Fd(read_end), 4096)
    # the message comes before its descriptor: nothing goes out yet
    assert session.from_client(create_pool, []).messages == []
    out = session.from_client(b"", [read_end])
    assert len(out.messages) == 1 and out.messages[0][1] == [read_end]
    out.close_fds()


def test_unclaimed_descriptors_are_capped(session: Session) -> None:
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(129)]
    with pytest.raises(ViolationError, match="file descriptors"):
        session.from_client(b"", fds)
    session.close()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
