"""Regenerate the seed corpus from valid frames: ``python fuzz/make_corpus.py``."""

from __future__ import annotations

from pathlib import Path

from vmsilo.protocol import exec as ex
from vmsilo.protocol import mux as wire

HERE = Path(__file__).parent / "corpus"

MUX = {
    "handshake_open_data": [
        wire.encode_hello(wire.Role.GUEST, reply=False),
        wire.encode_open(2, 5001, wire.MIN_WINDOW),
        wire.encode_accept(1, wire.DEFAULT_WINDOW),
        wire.encode_frame(wire.FrameType.DATA, 1, b"hello"),
        wire.encode_credit(1, 65536),
        wire.encode_frame(wire.FrameType.EOF, 1),
    ],
    "refuse_reset": [
        wire.encode_hello(wire.Role.HOST, reply=True),
        wire.encode_reason(wire.FrameType.REFUSE, 3, "nothing listens on port 9"),
        wire.encode_reason(wire.FrameType.RESET, 5, "closed"),
    ],
}
TO_HOST = {
    "session": [
        ex.AgentHello(1, "0.1.0", 1700000000.0),
        ex.Stdout(b"Linux guest 6.1.0\n"),
        ex.Stderr(b"warning\n"),
        ex.ExitStatus(code=3),
    ],
    "status": [ex.AgentHello(1, "0.1.0", 1.0), ex.IdleReport(2, 1700000100.5, 1700000000.0)],
    "error": [ex.AgentHello(1, "0.1.0", 1.0), ex.ErrorReply("no user 'x' in the guest")],
}
TO_GUEST = {
    "exec": [
        ex.ExecRequest(argv=["uname", "-a"], env={"LANG": "C"}, cwd="/", user="user"),
        ex.Stdin(b"input\n"),
        ex.SignalRequest(15),
        ex.StdinEof(),
    ],
    "tty": [ex.ExecRequest(argv=["bash"], env={}, tty=True, rows=24, cols=80), ex.Resize(50, 132)],
}


def main() -> None:
    for selector, folder, table in (
        (0, "mux", MUX),
        (1, "exec_to_host", TO_HOST),
        (2, "exec_to_guest", TO_GUEST),
    ):
        (HERE / folder).mkdir(parents=True, exist_ok=True)
        for name, items in table.items():
            data = b"".join(i if isinstance(i, bytes) else ex.encode_message(i) for i in items)
            (HERE / folder / name).write_bytes(bytes([selector]) + data)


if __name__ == "__main__":
    main()
