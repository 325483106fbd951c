"""QEMU option strings (``-drive file=…,id=…``, ``-device virtio-blk-device,serial=…``): encoding a
value so that it stays one value.

QEMU's option parser (``QemuOpts``, util/qemu-option.c ``get_opt_value``; docs/system/
invocation "-drive": "to use a comma in a value, double it") ends a value at a comma unless the
comma is doubled. A value with a comma in it, written as it is, ends early and the rest is read
as further ``key=value`` options of the caller's choosing; ``value`` doubles every comma. NUL
cannot be carried in an argument at all and is refused.

``parse`` is the decoder (the same rule, for the tests' round trip): ``parse(f"a={value(x)}")
== [("a", x)]``.
"""

from __future__ import annotations


def value(text: str) -> str:
    """``text`` as one QEMU option value (commas doubled); ``ValueError`` for NUL."""
    if "\0" in text:
        raise ValueError(f"{text!r} contains NUL, which no command-line argument can carry")
    return text.replace(",", ",,")


def parse(options: str) -> list[tuple[str, str]]:
    """``key=value`` pairs of an option string, as QEMU splits it (``,,`` is a literal
    comma); a part without ``=`` is ``(part, "")``."""
    pairs: list[tuple[str, str]] = []
    parts: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(options):
        char = options[index]
        if char == ",":
            if options[index + 1 : index + 2] == ",":
                current.append(",")
                index += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    for part in parts:
        key, _, val = part.partition("=")
        pairs.append((key, val))
    return pairs
