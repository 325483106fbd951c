"""The stream broker's records: a request decodes to its port and nothing else decodes at all;
replies round-trip, and an OK reply must carry exactly one descriptor."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsilo.protocol import broker as wire
from vmsilo.protocol.errors import ProtocolError


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_requests_round_trip(port: int) -> None:
    assert wire.decode_request(wire.encode_request(port), [], 0) == port


@given(st.binary(max_size=64))
def test_anything_but_a_request_is_a_violation(untrusted: bytes) -> None:
    if len(untrusted) == wire.REQUEST.size and untrusted.startswith(wire.MAGIC):
        return
    with pytest.raises(wire.BrokerViolationError):
        wire.decode_request(untrusted, [], 0)


def test_a_request_with_a_descriptor_or_truncated_is_a_violation() -> None:
    request = wire.encode_request(5001)
    with pytest.raises(wire.BrokerViolationError, match="descriptor"):
        wire.decode_request(request, [7], 0)
    for flag in (socket.MSG_TRUNC, socket.MSG_CTRUNC):
        with pytest.raises(wire.BrokerViolationError, match="longer"):
            wire.decode_request(request, [], flag)


@given(st.sampled_from(list(wire.Reply)), st.text(max_size=100))
def test_replies_round_trip(code: wire.Reply, text: str) -> None:
    fds = [3] if code is wire.Reply.OK else []
    assert wire.decode_reply(wire.encode_reply(code, text), fds) == (code, text)


def test_replies_are_checked() -> None:
    with pytest.raises(ProtocolError):
        wire.decode_reply(b"", [])
    with pytest.raises(ProtocolError, match="unknown reply code"):
        wire.decode_reply(b"\x09", [])
    with pytest.raises(ProtocolError, match="descriptor"):
        wire.decode_reply(wire.encode_reply(wire.Reply.OK), [])
    with pytest.raises(ProtocolError, match="descriptor"):
        wire.decode_reply(wire.encode_reply(wire.Reply.RETRY, "later"), [4])
    assert len(wire.encode_reply(wire.Reply.RETRY, "x" * 10000)) == 1 + wire.MAX_TEXT
