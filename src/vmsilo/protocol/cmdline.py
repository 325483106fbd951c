"""Words of a Linux kernel command line: what one word may hold, and joining and splitting them
as the kernel does.

The kernel splits its command line in ``next_arg()`` (lib/cmdline.c; Documentation/admin-guide/
kernel-parameters.rst): words are separated by white space (its ``isspace``: space, ``\\t``,
``\\n``, ``\\v``, ``\\f``, ``\\r`` and byte 0xA0, so also the second byte of UTF-8's "à"),
except inside double quotes, which toggle at every ``"``; there is no escape character. So a
value with a space or a newline in it (``fe80::1%eth0 systemd.unit=rescue.target``) becomes two
words, the second one chosen by whoever wrote the value.

A *word* here is non-empty printable ASCII with balanced double quotes and spaces only inside
them (``dyndbg="file a.c +p"``); ``split(join(words)) == words`` for any list of such words,
which is the property the tests check. Stdlib only: the guest may use it too.
"""

from __future__ import annotations

from collections.abc import Iterable

# The kernel's isspace() (lib/ctype.c marks 0xA0 as space); we refuse non-ASCII anyway.
_KERNEL_SPACE = frozenset(" \t\n\v\f\r\xa0")


def word_problem(word: str) -> str | None:
    """Why ``word`` is not one kernel command-line word, or None if it is."""
    if not word:
        return "it is empty"
    for char in word:
        if not " " <= char <= "~":
            return f"it contains {char!r}, which is not printable ASCII"
    if word.count('"') % 2:
        return "its double quotes are unbalanced (the kernel would join it with what follows)"
    in_quote = False
    for char in word:
        if char == '"':
            in_quote = not in_quote
        elif char == " " and not in_quote:
            return "it contains white space outside double quotes (the kernel splits it there)"
    return None


def check_word(word: str) -> None:
    """Raise ``ValueError`` unless ``word`` is one kernel command-line word."""
    problem = word_problem(word)
    if problem is not None:
        raise ValueError(f"{word!r} is not one kernel command-line word: {problem}")


def join(words: Iterable[str]) -> str:
    """The command line of ``words``; ``ValueError`` if any is not exactly one word."""
    listed = list(words)
    for word in listed:
        check_word(word)
    return " ".join(listed)


def split(cmdline: str) -> list[str]:
    """The words the kernel sees in ``cmdline`` (quotes kept, as ``/proc/cmdline`` shows
    them); the inverse of ``join``."""
    words: list[str] = []
    current: list[str] = []
    in_quote = False
    for char in cmdline:
        if char in _KERNEL_SPACE and not in_quote:
            if current:
                words.append("".join(current))
                current = []
            continue
        if char == '"':
            in_quote = not in_quote
        current.append(char)
    if current:
        words.append("".join(current))
    return words
