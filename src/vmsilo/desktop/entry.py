"""A guest's desktop entry made safe for the host menu (Desktop Entry Specification 1.5).

The guest wrote the entry, so it is hostile: it is decoded strictly (UTF-8, line and value
lengths capped), only the ``[Desktop Entry]`` group is read (``[Desktop Action …]`` groups,
which could run host-side commands or leak host data, are dropped), and only whitelisted keys
survive: Name, GenericName, Comment and Keywords with their translations, Icon, Categories,
MimeType, Terminal. ``Exec`` is parsed per the spec's quoting rules and rewritten to run the
program in its VM through ``vm-run``, each argument quoted again for the host; file field codes
are dropped (host paths mean nothing in the VM), URL codes pass URLs as plain arguments, the
deprecated ones are removed and an unknown one rejects the entry. Pure: text in, text out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_LINE = 4096
MAX_VALUE = 1024
MAX_ARGS = 64
GROUP = "Desktop Entry"
LOCALIZED = ("Name", "GenericName", "Comment", "Keywords")
PLAIN = ("Icon", "Categories", "MimeType", "Terminal")
_KEY = re.compile(
    r"^([A-Za-z0-9-]+)(\[([A-Za-z]{2,3}(_[A-Za-z]{2})?(\.[A-Za-z0-9-]+)?(@[A-Za-z]+)?)\])?$"
)
_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")
_DROP_CODES = {"%f", "%F", "%i", "%c", "%k", "%d", "%D", "%n", "%N", "%v", "%m"}
_URL_CODES = {"%u", "%U"}


class EntryRejected(ValueError):  # noqa: N818 - reads as what happened to the entry
    """The entry cannot be offered on the host; the message says why (it is logged)."""


@dataclass(frozen=True)
class HostEntry:
    file_id: str  # the guest's file name, e.g. "org.gnome.Calculator.desktop"
    keys: dict[str, str]  # whitelisted keys, values as in the file (escapes kept)
    argv: list[str]  # the guest command, field codes resolved to placeholders

    @property
    def icon(self) -> str | None:
        return self.keys.get("Icon") or None


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            out.append({"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}.get(nxt, nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def split_exec(value: str) -> list[str]:
    """The Exec value (after the string-level unescape) as arguments, per the spec's quoting."""
    args: list[str] = []
    current: list[str] = []
    in_arg = False
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == '"':
            in_arg = True
            i += 1
            while True:
                if i >= len(value):
                    raise EntryRejected("Exec has an unterminated quote")
                ch = value[i]
                if ch == "\\" and i + 1 < len(value) and value[i + 1] in '"`$\\':
                    current.append(value[i + 1])
                    i += 2
                elif ch == '"':
                    i += 1
                    break
                else:
                    current.append(ch)
                    i += 1
        elif ch == " ":
            if in_arg:
                args.append("".join(current))
                current, in_arg = [], False
            i += 1
        elif ch in _RESERVED:
            raise EntryRejected(f"Exec has the reserved character {ch!r} outside quotes")
        else:
            current.append(ch)
            in_arg = True
            i += 1
    if in_arg:
        args.append("".join(current))
    if not args:
        raise EntryRejected("Exec is empty")
    if len(args) > MAX_ARGS:
        raise EntryRejected(f"Exec has more than {MAX_ARGS} arguments")
    return args


def resolve_field_codes(args: list[str]) -> list[str]:
    """Drop file and deprecated codes, keep URL codes (as %u/%U for the host's launcher), turn
    %% into %; an unknown code, or a code inside a longer argument, rejects the entry."""
    out = []
    for arg in args:
        if arg in _DROP_CODES:
            continue
        if arg in _URL_CODES:
            out.append(arg)
            continue
        pieces = re.split(r"(%.)", arg)
        text = []
        for piece in pieces:
            if len(piece) == 2 and piece[0] == "%":
                if piece == "%%":
                    text.append("%")
                else:
                    raise EntryRejected(f"Exec has the field code {piece} inside an argument")
            else:
                text.append(piece)
        if arg.endswith("%") and not arg.endswith("%%"):
            raise EntryRejected("Exec ends with a lone %")
        out.append("".join(text))
    if not out:
        raise EntryRejected("Exec has no command")
    return out


def quote_arg(arg: str) -> str:
    """One argument for a host Exec line: quoted when the spec requires, % doubled."""
    if arg in _URL_CODES:
        return arg
    escaped = arg.replace("%", "%%")
    if not escaped or any(ch in _RESERVED or ch == "=" for ch in escaped):
        inner = re.sub(r'(["`$\\])', r"\\\1", escaped)
        return f'"{inner}"'
    return escaped


def exec_value(args: list[str]) -> str:
    """The Exec value as written to the file (string-level escape of backslashes)."""
    return " ".join(quote_arg(a) for a in args).replace("\\", "\\\\")


def parse(file_id: str, data: bytes) -> HostEntry:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise EntryRejected("not UTF-8") from None
    group: str | None = None
    keys: dict[str, str] = {}
    entry_type = exec_raw = None
    hidden = False
    for number, line in enumerate(text.splitlines(), start=1):
        if len(line) > MAX_LINE:
            raise EntryRejected(f"line {number} is longer than {MAX_LINE} characters")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            group = stripped[1:-1]
            continue
        if group != GROUP:
            continue  # [Desktop Action …] and any other group: dropped
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _KEY.match(key):
            raise EntryRejected(f"line {number} is not a key=value line")
        if len(value) > MAX_VALUE:
            raise EntryRejected(f"{key} is longer than {MAX_VALUE} characters")
        if any(ord(ch) < 0x20 and ch != "\t" for ch in value):
            raise EntryRejected(f"{key} contains control characters")
        base = key.split("[", 1)[0]
        if base == "Type":
            entry_type = value
        elif base == "Exec" and key == "Exec":
            exec_raw = value
        elif base in ("NoDisplay", "Hidden") and value == "true":
            hidden = True
        elif base in LOCALIZED or (base in PLAIN and key == base):
            keys.setdefault(key, value)
    if entry_type != "Application":
        raise EntryRejected(f"Type is {entry_type!r}, not Application")
    if hidden:
        raise EntryRejected("NoDisplay or Hidden is set")
    if "Name" not in keys:
        raise EntryRejected("no Name")
    if exec_raw is None:
        raise EntryRejected("no Exec")
    if "Icon" in keys and not re.match(
        r"^[A-Za-z0-9_.+-]{1,128}$|^/[A-Za-z0-9_./+-]{1,255}$", keys["Icon"]
    ):
        keys.pop("Icon")  # a name that could walk out of the icon directory: no icon
    argv = resolve_field_codes(split_exec(_unescape(exec_raw)))
    return HostEntry(file_id, keys, argv)


def render(entry: HostEntry, vm: str, icon: str | None, category: str) -> str:
    """The host's .desktop file for ``entry`` of ``vm``."""
    lines = ["[Desktop Entry]", "Type=Application"]
    for key, value in entry.keys.items():
        base = key.split("[", 1)[0]
        if base == "Icon":
            continue
        if base == "Name":
            value = f"[{vm}] {value}"
        if base == "Categories":
            value = value.rstrip(";") + f";{category};" if value else f"{category};"
        lines.append(f"{key}={value}")
    if "Categories" not in entry.keys:
        lines.append(f"Categories={category};")
    if icon is not None:
        lines.append(f"Icon={icon}")
    lines.append("Exec=" + exec_value(["vm-run", vm, "--", *entry.argv]))
    lines.append(f"X-vmsilo-VM={vm}")
    return "\n".join(lines) + "\n"
