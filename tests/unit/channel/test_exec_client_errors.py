"""A guest's ErrorReply reaches the user's terminal as one visible line."""

from __future__ import annotations

import pytest

from vmsilo.channel.exec_client import ExecError, ExecSession
from vmsilo.protocol.exec import AgentHello, ErrorReply, encode_message


class ScriptedStream:
    """Replays what the guest sent; records nothing."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def readexactly(self, n: int) -> bytes:
        chunk, self._data = self._data[:n], self._data[n:]
        return chunk

    async def write(self, data: bytes) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_error_reply_is_cleaned_to_one_line() -> None:
    untrusted = "no user 'x'\n\x1b[2J\u2028[host] all fine\u202e\u200b"
    stream = ScriptedStream(encode_message(ErrorReply(untrusted)))
    session = ExecSession(stream, AgentHello(2, "0", 1.0), "work")  # type: ignore[arg-type]
    with pytest.raises(ExecError) as caught:
        await session.next_event()
    assert str(caught.value) == "vm work: no user 'x'  [2J [host] all fine"
