"""Atheris target for two encoders of issue 15: ``clean_display_text`` (every guest string shown
on the host) and the exec protocol's ``ExecRequest`` (a command's bytes to the guest agent).

    pip install atheris
    python fuzz/fuzz_exec_text.py fuzz/corpus/exec_text

The first input byte picks the check; the rest is the input. Findings:
- text (rest decoded as UTF-8 with ``surrogateescape``, so lone surrogates occur too): the
  cleaned text is not one line, keeps a Cc/Cf/Cs/Zl/Zp character, is longer than asked, or
  changes when cleaned again;
- request (rest split at NUL into argv items, with env entries and cwd taken from them): an
  encoded request does not decode to itself, or its JSON is not one canonical base64 string
  per byte string;
- payload (rest as a guest-bound exec stream): anything but ``ProtocolError``, or a decoded
  ExecRequest that does not survive encode/decode unchanged.
Without atheris installed, it runs the given corpus once.
"""

from __future__ import annotations

import base64
import json
import unicodedata

from driver import run  # fuzz/driver.py: the script's directory is on sys.path

from vmsilo.protocol import exec as ex
from vmsilo.protocol.errors import ProtocolError
from vmsilo.protocol.text import clean_display_text

_REMOVED = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def _text(data: bytes) -> None:
    untrusted = data.decode("utf-8", errors="surrogateescape")
    max_len = data[0] if data else 0
    cleaned = clean_display_text(untrusted, max_len=max_len)
    assert len(cleaned) <= max_len
    assert len(cleaned.splitlines()) <= 1, cleaned
    assert not {unicodedata.category(ch) for ch in cleaned} & _REMOVED, cleaned
    assert clean_display_text(cleaned, max_len=max_len) == cleaned
    cleaned.encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _request(data: bytes) -> None:
    parts = data.split(b"\0")
    argv = parts[: max(1, len(parts) // 2)]
    env = {p.replace(b"=", b"_") or b"E": p for p in parts[len(argv):]}
    cwd = b"/" + parts[-1] if len(parts) % 2 else None
    request = ex.ExecRequest(argv=argv, env=env, cwd=cwd, tty=len(parts) % 3 == 0)
    try:
        frame = ex.encode_message(request)
    except ProtocolError:
        return  # refused by the encoder: over a size limit
    decoded, rest = ex.decode_frames(frame, ex.Direction.TO_GUEST)
    assert decoded == [request] and rest == b""
    obj = json.loads(frame[ex.HEADER_SIZE:])
    assert obj["argv"] == [_b64(a) for a in request.argv]
    assert obj["env"] == {_b64(k): _b64(v) for k, v in request.env.items()}
    assert obj["cwd"] == (None if cwd is None else _b64(cwd))


def _payload(data: bytes) -> None:
    try:
        messages, _ = ex.decode_frames(data, ex.Direction.TO_GUEST)
    except ProtocolError:
        return
    for message in messages:
        again, _ = ex.decode_frames(ex.encode_message(message), ex.Direction.TO_GUEST)
        assert again == [message]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    selector, body = data[0] % 3, data[1:]
    if selector == 0:
        _text(body)
    elif selector == 1:
        _request(body)
    else:
        _payload(body)


def main() -> None:
    run(test_one_input)


if __name__ == "__main__":
    main()
