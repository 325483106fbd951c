"""Random and mutated input into every decoder: only ProtocolError may come out, decoding
always terminates (hypothesis' deadline), and size caps hold for whatever is accepted."""

from __future__ import annotations

import contextlib
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmsilo.protocol import exec as exec_wire
from vmsilo.protocol import mux as wire
from vmsilo.protocol.errors import ProtocolError
from vmsilo.protocol.exec import Direction, decode_frames, encode_message
from vmsilo.protocol.mux import FrameType, MuxDecoder, Role

FUZZ = settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])

VALID_MUX = b"".join(
    [
        wire.encode_hello(Role.GUEST, reply=True),
        wire.encode_open(2, 5001, wire.MIN_WINDOW),
        wire.encode_accept(1, wire.DEFAULT_WINDOW),
        wire.encode_frame(FrameType.DATA, 1, b"0123456789" * 20),
        wire.encode_credit(1, 1000),
        wire.encode_reason(FrameType.REFUSE, 3, "nothing listens"),
        wire.encode_frame(FrameType.EOF, 1),
        wire.encode_reason(FrameType.RESET, 1, "closed"),
    ]
)
VALID_EXEC_TO_HOST = b"".join(
    encode_message(m)
    for m in (
        exec_wire.AgentHello(1, "0.1.0", 1.5),
        exec_wire.Stdout(b"hello"),
        exec_wire.Stderr(b"err"),
        exec_wire.IdleReport(1, None, 2.0),
        exec_wire.ExitStatus(code=0),
    )
)
VALID_EXEC_TO_GUEST = b"".join(
    encode_message(m)
    for m in (
        exec_wire.ExecRequest(argv=["sh", "-c", "x"], env={"K": "v"}, cwd="/", tty=True),
        exec_wire.Stdin(b"abc"),
        exec_wire.SignalRequest(15),
        exec_wire.Resize(1, 2),
        exec_wire.StdinEof(),
    )
)


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
        elif op == "splice":
            data[pos : pos + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\0\0\0\0", b"\x7f"]))
    return bytes(data)


def run_mux_decoder(data: bytes, chunk: int) -> None:
    decoder = MuxDecoder()
    hunting = True
    for i in range(0, len(data), chunk):
        decoder.feed(data[i : i + chunk])
        while True:
            if hunting:
                if decoder.hunt_hello() is None:
                    break
                hunting = False
                continue
            frame = decoder.next_frame()
            if frame is None:
                break
            assert len(frame.payload) <= wire.MAX_PAYLOAD
            try:
                wire.check_payload_size(frame)
                parse = {
                    FrameType.HELLO: wire.parse_hello,
                    FrameType.OPEN: wire.parse_open,
                    FrameType.ACCEPT: wire.parse_accept,
                    FrameType.CREDIT: wire.parse_credit,
                    FrameType.REFUSE: wire.parse_reason,
                    FrameType.RESET: wire.parse_reason,
                }.get(frame.type)
                if parse is not None:
                    parse(frame.payload)
            except ProtocolError:
                continue
        assert decoder.buffered <= wire.HEADER_SIZE + wire.MAX_PAYLOAD + chunk


def check_mux(data: bytes, chunk: int) -> None:
    with contextlib.suppress(ProtocolError):
        run_mux_decoder(data, chunk)


def check_exec(data: bytes, direction: Direction) -> None:
    try:
        messages, _ = decode_frames(data, direction)
    except ProtocolError:
        return
    for message in messages:
        if hasattr(message, "data"):
            assert 0 < len(message.data) <= exec_wire.MAX_CHUNK


@FUZZ
@given(st.binary(max_size=2048), st.integers(1, 64))
def test_mux_random_bytes(data: bytes, chunk: int) -> None:
    check_mux(data, chunk)


@FUZZ
@given(mutated(VALID_MUX), st.integers(1, 300))
def test_mux_mutated_frames(data: bytes, chunk: int) -> None:
    check_mux(data, chunk)


@FUZZ
@given(st.binary(max_size=2048), st.sampled_from(list(Direction)))
def test_exec_random_bytes(data: bytes, direction: Direction) -> None:
    check_exec(data, direction)


@FUZZ
@given(mutated(VALID_EXEC_TO_HOST))
def test_exec_mutated_to_host(data: bytes) -> None:
    check_exec(data, Direction.TO_HOST)


@FUZZ
@given(mutated(VALID_EXEC_TO_GUEST))
def test_exec_mutated_to_guest(data: bytes) -> None:
    check_exec(data, Direction.TO_GUEST)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


@FUZZ
@given(
    st.sampled_from([s for s in exec_wire.MESSAGES if s.payload is exec_wire.Payload.JSON]),
    st.dictionaries(
        st.sampled_from(
            [
                "argv",
                "env",
                "cwd",
                "user",
                "tty",
                "rows",
                "cols",
                "code",
                "signal",
                "running",
                "last_ended",
                "boot_time",
                "message",
                "protocol",
                "agent_version",
                "extra",
            ]
        ),
        json_values,
        max_size=8,
    ),
)
def test_json_messages_with_random_field_values(
    spec: exec_wire.MessageSpec, obj: dict[str, object]
) -> None:
    payload = json.dumps(obj).encode()
    frame = exec_wire.HEADER.pack(len(payload), spec.code) + payload
    check_exec(frame, spec.direction)
