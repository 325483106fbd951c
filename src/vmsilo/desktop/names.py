"""Names of the files vmsilo writes for guest applications: injective, so that no two (VM,
desktop file id) pairs share a file and no application silently replaces another.

A host entry of VM ``vm`` for the guest's ``<stem>.desktop`` is ``vmsilo-<V>-<S>.desktop``:
``V`` is the VM name with every byte outside ``[A-Za-z0-9.]`` (``-`` and ``_`` among them)
written as ``_XX`` (two upper-case hex digits of the UTF-8 byte), and ``S`` is the stem
encoded the same way except that ``-`` is kept. ``V`` has no ``-``, so the first ``-`` after
the prefix ends it; ``_`` only starts an escape, so each part decodes back to one string
(``decode_stem`` does it; the tests check ``decode(encode(x)) == x``). VM ``a`` with
``b-c.desktop`` is ``vmsilo-a-b-c.desktop``, VM ``a-b`` with ``c.desktop`` is
``vmsilo-a_2Db-c.desktop``. Names made of ``[a-z0-9.]`` and ``-`` read as before.

The result is at most ``NAME_MAX`` bytes (255 on Linux) including room for a ``.tmp`` sibling;
a longer one is refused with ``ValueError`` naming the file.
"""

from __future__ import annotations

import re

PREFIX = "vmsilo-"
SUFFIX = ".desktop"
NAME_MAX = 255
_TMP = len(".tmp")
_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.")
_ESCAPE = re.compile(r"_([0-9A-F]{2})")


def encode_part(text: str, *, keep_dash: bool) -> str:
    """``text`` as ``[A-Za-z0-9._]`` (and ``-`` when ``keep_dash``), ``_XX`` per other byte.
    Raises ``UnicodeEncodeError`` for a lone surrogate (no UTF-8 form)."""
    out = []
    for byte in text.encode("utf-8"):
        if byte in _PLAIN or (keep_dash and byte == 0x2D):
            out.append(chr(byte))
        else:
            out.append(f"_{byte:02X}")
    return "".join(out)


def decode_part(encoded: str) -> str:
    """The inverse of ``encode_part``; ``ValueError`` for text it cannot have made."""
    data = bytearray()
    i = 0
    while i < len(encoded):
        if encoded[i] == "_":
            match = _ESCAPE.match(encoded, i)
            if match is None:
                raise ValueError(f"bad escape at {i} in {encoded!r}")
            data.append(int(match.group(1), 16))
            i += 3
        else:
            data.append(ord(encoded[i]))
            i += 1
    return data.decode("utf-8")


def vm_part(vm: str) -> str:
    """The VM name as it appears in every vmsilo file name and menu category."""
    return encode_part(vm, keep_dash=False)


def entry_stem(vm: str, file_id: str) -> str:
    """``vmsilo-<V>-<S>`` for the guest's ``<S>.desktop`` of ``vm`` (see the module text).
    Raises ``ValueError`` when ``file_id`` does not end in ``.desktop`` or the name would not
    fit in a file name."""
    if not file_id.endswith(SUFFIX):
        raise ValueError(f"the file name {file_id!r} does not end in {SUFFIX}")
    stem = f"{PREFIX}{vm_part(vm)}-{encode_part(file_id[:-len(SUFFIX)], keep_dash=True)}"
    if len(stem.encode()) + len(SUFFIX) + _TMP > NAME_MAX:
        raise ValueError(f"the file name {file_id!r} is too long for a host file name")
    return stem


def entry_name(vm: str, file_id: str) -> str:
    """The host file name of the entry: ``entry_stem(...) + ".desktop"``."""
    return entry_stem(vm, file_id) + SUFFIX


def decode_stem(stem: str) -> tuple[str, str]:
    """(vm, file id) back from ``entry_stem``'s result; ``ValueError`` if it is not one."""
    if not stem.startswith(PREFIX):
        raise ValueError(f"{stem!r} does not start with {PREFIX}")
    vm, sep, rest = stem[len(PREFIX):].partition("-")
    if not sep:
        raise ValueError(f"{stem!r} has no VM part")
    return decode_part(vm), decode_part(rest) + SUFFIX
