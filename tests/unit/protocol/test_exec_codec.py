"""Exec frames: round trips, and every declared field rejecting bad values."""

from __future__ import annotations

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


GOOD_EXEC: dict[str, Any] = {"argv": ["ls"], "env": {}}

BAD_EXEC = {
    "argv missing": {"env": {}},
    "argv empty": {"argv": [], "env": {}},
    "argv not a list": {"argv": "ls", "env": {}},
    "argv item not str": {"argv": ["ls", 3], "env": {}},
    "argv NUL": {"argv": ["l\x00s"], "env": {}},
    "argv too many": {"argv": ["x"] * 4097, "env": {}},
    "env not object": {"argv": ["ls"], "env": []},
    "env key with =": {"argv": ["ls"], "env": {"A=B": "x"}},
    "env key empty": {"argv": ["ls"], "env": {"": "x"}},
    "env value not str": {"argv": ["ls"], "env": {"A": 1}},
    "cwd relative": {**GOOD_EXEC, "cwd": "tmp"},
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
