"""Exec frames: round trips, and every declared field rejecting bad values."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from vmsilo.protocol.errors import ProtocolError
from vmsilo.protocol.exec import (
    HEADER,
    MAX_CHUNK,
    AgentHello,
    Direction,
    ErrorReply,
    ExecRequest,
    ExitStatus,
    IdleReport,
    PoweroffAck,
    PoweroffRequest,
    Resize,
    SignalRequest,
    StatusRequest,
    Stderr,
    Stdin,
    StdinEof,
    Stdout,
    decode_frames,
    encode_message,
)

TO_HOST = [
    AgentHello(1, "0.1.0", 1700000000.5),
    Stdout(b"out"),
    Stderr(b"\x00\xff" * 10),
    ExitStatus(code=3),
    ExitStatus(signal=15),
    IdleReport(2, None, 1700000000.0),
    IdleReport(0, 1700000100.25, 1700000000.0),
    ErrorReply("no user 'x' in the guest"),
    PoweroffAck(),
]
TO_GUEST = [
    ExecRequest(argv=["sh", "-c", "echo ü"], env={"A": "1"}, cwd="/tmp", user="user", tty=True),
    ExecRequest(argv=["true"], env={}),
    Stdin(b"x" * MAX_CHUNK),
    StdinEof(),
    SignalRequest(2),
    Resize(50, 132),
    StatusRequest(),
    PoweroffRequest(),
]


@pytest.mark.parametrize("message", TO_HOST, ids=repr)
def test_round_trip_to_host(message: object) -> None:
    decoded, rest = decode_frames(encode_message(message), Direction.TO_HOST)
    assert decoded == [message] and rest == b""


@pytest.mark.parametrize("message", TO_GUEST, ids=repr)
def test_round_trip_to_guest(message: object) -> None:
    decoded, rest = decode_frames(encode_message(message), Direction.TO_GUEST)
    assert decoded == [message] and rest == b""


def test_partial_frame_is_kept() -> None:
    data = encode_message(Stdout(b"abcdef"))
    decoded, rest = decode_frames(data[:-2], Direction.TO_HOST)
    assert decoded == [] and rest == data[:-2]


def test_wrong_direction_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="direction"):
        decode_frames(encode_message(ExecRequest(argv=["x"], env={})), Direction.TO_HOST)
    with pytest.raises(ProtocolError, match="direction"):
        decode_frames(encode_message(Stdout(b"x")), Direction.TO_GUEST)


def test_unknown_type_and_oversize_are_rejected_from_the_header_alone() -> None:
    with pytest.raises(ProtocolError, match="unknown exec frame type"):
        decode_frames(HEADER.pack(0, 0x7F), Direction.TO_HOST)
    with pytest.raises(ProtocolError, match="over the cap"):
        decode_frames(HEADER.pack(MAX_CHUNK + 1, 0x02), Direction.TO_HOST)
    with pytest.raises(ProtocolError, match="over the cap"):
        decode_frames(HEADER.pack(2**32 - 1, 0x10), Direction.TO_GUEST)
    with pytest.raises(ProtocolError, match="empty"):
        decode_frames(HEADER.pack(0, 0x02), Direction.TO_HOST)


def frame(code: int, obj: Any) -> bytes:
    payload = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return HEADER.pack(len(payload), code) + payload


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


LS = b64(b"ls")
GOOD_EXEC: dict[str, Any] = {"argv": [LS], "env": {}}

BAD_EXEC = {
    "argv missing": {"env": {}},
    "argv empty": {"argv": [], "env": {}},
    "argv not a list": {"argv": LS, "env": {}},
    "argv item not str": {"argv": [LS, 3], "env": {}},
    "argv as plain text": {"argv": ["ls -l"], "env": {}},
    "argv base64 unpadded": {"argv": ["bHM"], "env": {}},
    "argv base64 not canonical": {"argv": ["bHN="], "env": {}},
    "argv base64 url alphabet": {"argv": [b64(b"\xfb\xff")[:-1].replace("+", "-") + "="],
                                 "env": {}},
    "argv base64 with newline": {"argv": [LS[:2] + "\n" + LS[2:]], "env": {}},
    "argv NUL": {"argv": [b64(b"l\x00s")], "env": {}},
    "argv item too long": {"argv": [b64(b"x" * (128 * 1024 + 1))], "env": {}},
    "argv too many": {"argv": [LS] * 4097, "env": {}},
    "arguments over 1 MiB": {"argv": [b64(b"x" * 100_000)] * 11, "env": {}},
    "env not object": {"argv": [LS], "env": []},
    "env key with =": {"argv": [LS], "env": {b64(b"A=B"): b64(b"x")}},
    "env key empty": {"argv": [LS], "env": {"": b64(b"x")}},
    "env key not base64": {"argv": [LS], "env": {"A": b64(b"x")}},
    "env value not str": {"argv": [LS], "env": {b64(b"AB"): 1}},
    "env value NUL": {"argv": [LS], "env": {b64(b"AB"): b64(b"\x00")}},
    "cwd relative": {**GOOD_EXEC, "cwd": b64(b"tmp")},
    "cwd plain text": {**GOOD_EXEC, "cwd": "/tmp"},
    "user bad chars": {**GOOD_EXEC, "user": "Root;rm"},
    "user too long": {**GOOD_EXEC, "user": "a" * 33},
    "tty not bool": {**GOOD_EXEC, "tty": 1},
    "rows negative": {**GOOD_EXEC, "rows": -1},
    "cols too big": {**GOOD_EXEC, "cols": 70000},
    "rows bool": {**GOOD_EXEC, "rows": True},
    "rows float": {**GOOD_EXEC, "rows": 2.5},
    "unknown field": {**GOOD_EXEC, "shell": True},
}


@pytest.mark.parametrize("obj", BAD_EXEC.values(), ids=list(BAD_EXEC))
def test_exec_request_field_validation(obj: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        decode_frames(frame(0x10, obj), Direction.TO_GUEST)


BAD_TO_HOST = {
    "exit both": (0x04, {"code": 0, "signal": 9}),
    "exit neither": (0x04, {}),
    "exit code 256": (0x04, {"code": 256}),
    "exit signal 0": (0x04, {"signal": 0}),
    "exit signal 65": (0x04, {"signal": 65}),
    "exit code str": (0x04, {"code": "0"}),
    "idle negative": (0x05, {"running": -1, "last_ended": None, "boot_time": 1.0}),
    "idle missing boot": (0x05, {"running": 0, "last_ended": None}),
    "idle time str": (0x05, {"running": 0, "last_ended": "now", "boot_time": 1.0}),
    "idle time huge": (0x05, {"running": 0, "last_ended": 1e300, "boot_time": 1.0}),
    "hello version str": (0x01, {"protocol": "1", "agent_version": "x", "boot_time": 1}),
    "hello version long": (0x01, {"protocol": 1, "agent_version": "x" * 65, "boot_time": 1}),
    "error not str": (0x06, {"message": ["x"]}),
    "not an object": (0x04, [0]),
    "NaN": (0x05, b'{"running": 0, "last_ended": NaN, "boot_time": 1}'),
    "duplicate keys": (0x04, b'{"code": 0, "code": 1}'),
    "not utf-8": (0x06, b'{"message": "\xff"}'),
    "deep nesting": (0x06, b"[" * 3000 + b"]" * 3000),
    "huge int": (0x04, b'{"code": ' + b"9" * 5000 + b"}"),
    "truncated json": (0x04, b'{"code": '),
    "payload on empty type": (0x07, b"x"),
}


@pytest.mark.parametrize("case", BAD_TO_HOST.values(), ids=list(BAD_TO_HOST))
def test_guest_reply_validation(case: tuple[int, Any]) -> None:
    code, obj = case
    with pytest.raises(ProtocolError):
        decode_frames(frame(code, obj), Direction.TO_HOST)


def test_signal_and_resize_validation() -> None:
    for obj in ({"signal": 0}, {"signal": 65}, {"signal": "INT"}, {}):
        with pytest.raises(ProtocolError):
            decode_frames(frame(0x13, obj), Direction.TO_GUEST)
    for obj in ({"rows": 1}, {"rows": 1, "cols": -5}, {"rows": None, "cols": 1}):
        with pytest.raises(ProtocolError):
            decode_frames(frame(0x14, obj), Direction.TO_GUEST)


def test_encoder_refuses_what_the_decoder_would_refuse() -> None:
    with pytest.raises(ProtocolError):
        encode_message(ExitStatus(code=1, signal=2))
    with pytest.raises(ProtocolError):
        encode_message(ExecRequest(argv=[], env={}))
    with pytest.raises(ValueError):
        encode_message(Stdout(b"x" * (MAX_CHUNK + 1)))


def test_shell_status_maps_signals() -> None:
    assert ExitStatus(code=0).shell_status() == 0
    assert ExitStatus(signal=9).shell_status() == 137


# --- arguments, environment and working directory are bytes ---------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from vmsilo.protocol.exec import (  # noqa: E402
    MAX_ARG_LEN,
    MAX_ARGS,
    MAX_ARGUMENTS,
    MAX_CWD,
    MAX_ENV,
    MAX_ENV_NAME,
    MAX_EXEC_REQUEST,
)

no_nul = st.binary(max_size=40).map(lambda b: b.replace(b"\0", b""))
env_name = st.binary(min_size=1, max_size=20).map(
    lambda b: b.replace(b"\0", b"a").replace(b"=", b"b"))
requests = st.builds(
    ExecRequest,
    argv=st.lists(no_nul, min_size=1, max_size=6),
    env=st.dictionaries(env_name, no_nul, max_size=5),
    cwd=st.none() | no_nul.map(lambda b: b"/" + b),
    user=st.none() | st.sampled_from(["user", "root", "_x-1"]),
    tty=st.booleans(),
    rows=st.integers(0, 65535),
    cols=st.integers(0, 65535),
)


def test_non_utf8_bytes_arrive_exactly() -> None:
    """The issue's case: ``vm-run work -- cat $'caf\\xe9.txt'``."""
    request = ExecRequest(argv=[b"cat", b"caf\xe9.txt"], env={b"V\xff": b"\xfe\n"},
                          cwd=b"/home/user/d\xe9")
    payload = encode_message(request)[HEADER.size:]
    assert json.loads(payload)["argv"] == ["Y2F0", "Y2Fm6S50eHQ="]
    decoded, _ = decode_frames(encode_message(request), Direction.TO_GUEST)
    assert decoded == [request]
    assert decoded[0].argv[1] == b"caf\xe9.txt" and decoded[0].cwd == b"/home/user/d\xe9"


def test_str_is_taken_as_os_fsencode_gives_it() -> None:
    # sys.argv holds an undecodable byte as a lone surrogate; it goes back to that byte.
    request = ExecRequest(argv=["cat", "caf\udce9.txt", "ü"], env={"A": "1"}, cwd="/tmp")
    assert request.argv == [b"cat", b"caf\xe9.txt", "ü".encode()]
    assert request.env == {b"A": b"1"} and request.cwd == b"/tmp"
    with pytest.raises(ValueError, match=r"argv\[0\]"):
        ExecRequest(argv=["\ud800"], env={})
    with pytest.raises(TypeError, match="argv"):
        ExecRequest(argv=[3], env={})  # type: ignore[list-item]


@given(requests)
def test_exec_request_round_trip(request: ExecRequest) -> None:
    frame_bytes = encode_message(request)
    decoded, rest = decode_frames(frame_bytes, Direction.TO_GUEST)
    assert decoded == [request] and rest == b""
    # The encoded form is exactly: one canonical base64 string per argument, one per env name
    # and value, cwd likewise, and the plain fields as they are.
    obj = json.loads(frame_bytes[HEADER.size:])
    assert set(obj) == {"argv", "env", "cwd", "user", "tty", "rows", "cols"}
    assert obj["argv"] == [b64(a) for a in request.argv]
    assert obj["env"] == {b64(k): b64(v) for k, v in request.env.items()}
    assert obj["cwd"] == (None if request.cwd is None else b64(request.cwd))
    assert (obj["user"], obj["tty"], obj["rows"], obj["cols"]) == (
        request.user, request.tty, request.rows, request.cols)


def test_the_largest_request_fits_the_frame_cap() -> None:
    # As many strings as allowed, filling MAX_ARGUMENTS, each of a length base64 pads most.
    per_arg = (MAX_ARGUMENTS - MAX_ENV * (MAX_ENV_NAME + 2)) // MAX_ARGS - 1
    per_arg -= (per_arg % 3) - 1 if per_arg % 3 else -1
    names = [b"%0*d" % (MAX_ENV_NAME, i) for i in range(MAX_ENV)]
    request = ExecRequest(argv=[b"\xff" * per_arg] * MAX_ARGS, env=dict.fromkeys(names, b""),
                          cwd=b"/" * MAX_CWD, user="a" * 32, tty=True, rows=65535, cols=65535)
    assert request.argument_size() <= MAX_ARGUMENTS
    assert len(encode_message(request)) - HEADER.size <= MAX_EXEC_REQUEST


def test_over_a_mebibyte_of_arguments_is_refused_by_the_encoder_with_the_size() -> None:
    request = ExecRequest(argv=[b"x" * 100_000] * 11, env={})
    with pytest.raises(ProtocolError, match=f"1100011 bytes.*at most {MAX_ARGUMENTS}"):
        encode_message(request)
    at_limit = ExecRequest(argv=[b"x" * (MAX_ARG_LEN - 1)] * 8, env={})
    assert at_limit.argument_size() == MAX_ARGUMENTS
    encode_message(at_limit)
