"""Atheris target for the desktop entry decoder and encoders (issue 15, items 1-3).

    pip install atheris
    python fuzz/fuzz_desktop.py fuzz/corpus/desktop

The first input byte picks the check; the rest is the untrusted input:

0. a guest ``.desktop`` file: ``parse``, and when accepted ``render`` for the host; the
   written file must be one group of ``key=value`` lines, each key once, exactly one
   ``Exec``, and parse back to the same command and values;
1. one string value: ``unescape(encode_string(s)) == s``, encoded on one line;
2. one list value (elements split at NUL): ``split_list(encode_list(l)) == l``;
3. a (VM, file id) pair split at the first NUL: the host file name decodes back to the pair.

``EntryRejected`` (and ``ValueError`` for names that cannot be made) is the expected refusal;
any other exception or a failed check is a finding. Without atheris installed, ``python
fuzz/fuzz_desktop.py FILE...`` runs the inputs once (corpus check). Seeds:
``python fuzz/make_desktop_corpus.py``.
"""

from __future__ import annotations

from driver import run  # fuzz/driver.py: the script's directory is on sys.path

from vmsilo.desktop.entry import (
    EntryRejected,
    encode_list,
    encode_string,
    parse,
    render,
    split_list,
    unescape,
)
from vmsilo.desktop.names import decode_stem, entry_stem

BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def _entry(data: bytes) -> None:
    try:
        entry = parse("fuzz.desktop", data)
        text = render(entry, "work", "/home/u/.local/share/vmsilo/icons/i.svg", "X-vmsilo-work")
    except EntryRejected:
        return
    lines = text.split("\n")
    _check(lines[0] == "[Desktop Entry]" and lines[-1] == "", "not one group")
    keys = [line.partition("=")[0] for line in lines[1:-1]]
    _check(all("=" in line for line in lines[1:-1]), "a line without =")
    _check(len(keys) == len(set(keys)), f"a key twice: {keys}")
    _check(keys.count("Exec") == 1, "not exactly one Exec")
    _check(len(text.splitlines()) == len(lines) - 1, "a line break inside a value")
    back = parse("fuzz.desktop", text.encode(), max_value=1 << 20, max_line=1 << 20)
    _check(back.argv == ["vm-run", "work", "--", *entry.argv], "Exec changed")
    _check(back.keys == {k: f"[work] {v}" if k.startswith("Name") else v
                         for k, v in entry.keys.items() if k != "Icon"}
           | {"Icon": "/home/u/.local/share/vmsilo/icons/i.svg"}, "values changed")


def _string(body: bytes) -> None:
    value = body.decode("utf-8", errors="replace")
    try:
        encoded = encode_string(value)
    except EntryRejected:
        return
    _check(unescape(encoded) == value, "string round trip")
    _check(not any(ch in BREAKS for ch in encoded), "string on two lines")


def _list(body: bytes) -> None:
    elements = [e for e in body.decode("utf-8", errors="replace").split("\0") if e]
    try:
        encoded = encode_list(elements)
    except EntryRejected:
        return
    _check(split_list(encoded) == elements, "list round trip")


def _name(body: bytes) -> None:
    vm, _, file_id = body.decode("utf-8", errors="replace").partition("\0")
    try:
        stem = entry_stem(vm, file_id)
    except ValueError:
        return
    _check(decode_stem(stem) == (vm, file_id), "name round trip")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    selector, body = data[0] % 4, data[1:]
    (_entry, _string, _list, _name)[selector](body)


def main() -> None:
    run(test_one_input)


if __name__ == "__main__":
    main()
