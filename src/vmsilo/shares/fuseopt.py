"""libfuse option groups (``-o source=/a,cache=auto``), as QEMU's C virtiofsd parses them.

The C virtiofsd carries libfuse's option parser (QEMU tools/virtiofsd/fuse_opt.c,
``process_real_option_group``): an ``-o`` argument is split at commas into options, and a
backslash takes the next character literally (``\\,`` is a comma, ``\\\\`` a backslash;
``\\ooo`` with three octal digits, the first 0-3, is that byte). A share path with a comma in
it (``/srv/a,b``), written as it is, ends ``source=`` early and the rest is read as another
option. ``value`` escapes every backslash and comma, so the parser gives back exactly the text
(checked against the real C virtiofsd: ``source=/tmp/no\\,pe`` reports ``/tmp/no,pe``).

``split`` is the decoder, for the tests' round trip. The Rust virtiofsd takes
``--shared-dir=<path>`` as one argument and needs none of this.
"""

from __future__ import annotations


def value(text: str) -> str:
    """``text`` as one value inside an option group; ``ValueError`` for NUL."""
    if "\0" in text:
        raise ValueError(f"{text!r} contains NUL, which no command-line argument can carry")
    return text.replace("\\", "\\\\").replace(",", "\\,")


def split(group: str) -> list[str]:
    """The options of an ``-o`` group, unescaped as libfuse does."""
    options: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(group):
        char = group[index]
        if char == "," :
            options.append("".join(current))
            current = []
        elif char == "\\" and index + 1 < len(group):
            index += 1
            octal = group[index : index + 3]
            if (len(octal) == 3 and octal[0] in "0123"
                    and all(c in "01234567" for c in octal[1:])):  # fmt: skip
                current.append(chr(int(octal, 8)))
                index += 2
            else:
                current.append(group[index])
        else:
            current.append(char)
        index += 1
    options.append("".join(current))
    return options
