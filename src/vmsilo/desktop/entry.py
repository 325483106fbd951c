"""A guest's desktop entry made safe for the host menu (Desktop Entry Specification 1.5,
https://specifications.freedesktop.org/desktop-entry-spec/latest/).

The guest wrote the entry, so it is hostile. Reading (``parse``): strict UTF-8, lines split at
``\\n`` only (as GLib's key file does; a ``\\r`` before it is ignored), lines and values
length-capped, only the ``[Desktop Entry]`` group read (``[Desktop Action …]`` groups, which
could run host-side commands, are dropped whole), and only whitelisted keys kept: Name,
GenericName, Comment and Keywords with their translations, Icon, Categories, MimeType,
Terminal. Values are *decoded*: the string escapes ``\\s \\n \\t \\r \\\\`` undone, lists split at
unescaped ``;`` (``\\;`` is a ``;`` inside an element). Texts shown on the host go through
``vmsilo.protocol.text.clean_display_text`` (one visible line). A key whose name does not
follow the spec's grammar (``Key`` or ``Key[lang_COUNTRY.ENCODING@MODIFIER]``, with real-world
language tags such as ``es_419``, ``sr@latin`` or ``x-test``) or whose value is unusable is
dropped and named in ``HostEntry.dropped``; the entry is refused (``EntryRejected``) only when
it cannot be offered at all (not UTF-8, not an application, no Name or Exec, a bad Exec).

``Exec`` is parsed per the spec's quoting rules and rewritten to run the program in its VM
through ``vm-run``: file field codes are dropped (host paths mean nothing in the VM), ``%u``
and ``%U`` stay field codes (``FieldCode``) the host launcher fills with URLs, ``%%`` is a
literal ``%`` (so ``%%u`` is the literal argument ``%u``), the deprecated codes are removed
and an unknown one rejects the entry.

Writing (``render``): every value is *encoded* again for the file — string escapes, ``;``
escaped inside list elements, each Exec argument quoted and its ``%`` doubled — and each
written line is checked to be one ``key=value`` line before it is joined; a value that has
no encoding (a control character other than tab, newline, carriage return) is refused. So
``parse(render(e))`` gives back exactly ``e``'s values (the tests check this with hypothesis
and ``desktop-file-validate``). Pure: text in, text out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vmsilo.protocol.text import clean_display_text

MAX_LINE = 4096
MAX_VALUE = 1024
MAX_ARGS = 64
GROUP = "Desktop Entry"
LOCALIZED_STRINGS = ("Name", "GenericName", "Comment")
LOCALIZED_LISTS = ("Keywords",)
PLAIN_LISTS = ("Categories", "MimeType")
# Locale grammar: lang_COUNTRY.ENCODING@MODIFIER (spec, "Localized values for keys"), each
# part but lang optional; lang may carry BCP 47 style subtags ("x-test", "zh-Hant") and
# COUNTRY may be a UN M.49 region ("es_419") or a script ("zh_Hans"), as real files have.
LOCALE = (r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*(?:_[A-Za-z0-9]{1,8})?"
          r"(?:\.[A-Za-z0-9_-]{1,32})?(?:@[A-Za-z0-9_-]{1,32})?")
_KEY = re.compile(rf"([A-Za-z0-9-]+)(?:\[({LOCALE})\])?")
_ICON = re.compile(r"[A-Za-z0-9_.+-]{1,128}|/[A-Za-z0-9_./+-]{1,255}")
_MIME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")
_X_CATEGORY = re.compile(r"X-[A-Za-z0-9_-]{1,128}")
# The registered categories of the Desktop Menu Specification (Appendix A and B), less the
# reserved ones that need OnlyShowIn (Screensaver, TrayIcon, Applet, Shell).
CATEGORIES = frozenset((
    "AudioVideo", "Audio", "Video", "Development", "Education", "Game", "Graphics", "Network",
    "Office", "Science", "Settings", "System", "Utility", "Building", "Debugger", "IDE",
    "GUIDesigner", "Profiling", "RevisionControl", "Translation", "Calendar", "ContactManagement",
    "Database", "Dictionary", "Chart", "Email", "Finance", "FlowChart", "PDA",
    "ProjectManagement", "Presentation", "Spreadsheet", "WordProcessor", "2DGraphics",
    "VectorGraphics", "RasterGraphics", "3DGraphics", "Scanning", "OCR", "Photography",
    "Publishing", "Viewer", "TextTools", "DesktopSettings", "HardwareSettings", "Printing",
    "PackageManager", "Dialup", "InstantMessaging", "Chat", "IRCClient", "Feed", "FileTransfer",
    "HamRadio", "News", "P2P", "RemoteAccess", "Telephony", "TelephonyTools", "VideoConference",
    "WebBrowser", "WebDevelopment", "Midi", "Mixer", "Sequencer", "Tuner", "TV",
    "AudioVideoEditing", "Player", "Recorder", "DiscBurning", "ActionGame", "AdventureGame",
    "ArcadeGame", "BoardGame", "BlocksGame", "CardGame", "KidsGame", "LogicGame", "RolePlaying",
    "Shooter", "Simulation", "SportsGame", "StrategyGame", "Art", "Construction", "Music",
    "Languages", "ArtificialIntelligence", "Astronomy", "Biology", "Chemistry", "ComputerScience",
    "DataVisualization", "Economy", "Electricity", "Geography", "Geology", "Geoscience",
    "History", "Humanities", "ImageProcessing", "Literature", "Maps", "Math", "NumericalAnalysis",
    "MedicalSoftware", "Physics", "Robotics", "Spirituality", "Sports", "ParallelComputing",
    "Amusement", "Archiving", "Compression", "Electronics", "Emulator", "Engineering",
    "FileTools", "FileManager", "TerminalEmulator", "Filesystem", "Monitor", "Security",
    "Accessibility", "Calculator", "Clock", "TextEditor", "Documentation", "Adult", "Core", "KDE",
    "GNOME", "XFCE", "GTK", "Qt", "Motif", "Java", "ConsoleOnly",
))  # fmt: skip
_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")
_DROP_CODES = {"%f", "%F", "%i", "%c", "%k", "%d", "%D", "%n", "%N", "%v", "%m"}
_URL_CODES = {"%u", "%U"}
_UNESCAPE = {"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
_ESCAPE = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
# What some reader takes for a line break (Python's str.splitlines, Unicode): LF and CR are
# escaped; the others have no escape in the format, so a value holding one is refused.
_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


class EntryRejected(ValueError):  # noqa: N818 - reads as what happened to the entry
    """The entry cannot be offered on the host; the message says why (it is logged)."""


class FieldCode(str):
    """An Exec argument that is a field code for the host launcher (``%u`` or ``%U``), as
    opposed to the same two characters as a literal argument (written ``%%u``)."""

    __slots__ = ()


@dataclass(frozen=True)
class HostEntry:
    file_id: str  # the guest's file name, e.g. "org.gnome.Calculator.desktop"
    keys: dict[str, str]  # whitelisted string keys ("Name[de]", "Icon", "Terminal"), decoded
    argv: list[str]  # the guest command; FieldCode items are %u/%U for the host launcher
    lists: dict[str, list[str]] = field(default_factory=dict)  # Keywords[…], Categories, …
    dropped: list[str] = field(default_factory=list)  # "<key or line>: <why>", for the report

    @property
    def icon(self) -> str | None:
        return self.keys.get("Icon") or None


# --- values: decoding (guest file) and encoding (host file) --------------------------------

def unescape(value: str) -> str:
    """A string value's escapes undone (``\\s \\n \\t \\r \\\\``; any other ``\\x`` is ``x``,
    a lone trailing backslash stays)."""
    out, i = [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            out.append(_UNESCAPE.get(value[i + 1], value[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


_unescape = unescape  # the name older callers use


def split_list(value: str) -> list[str]:
    """A list value's elements: split at ``;`` not escaped, each unescaped (``\\;`` is ``;``);
    empty elements (as after the customary trailing ``;``) are left out."""
    elements, current, i = [], [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            current.append(_UNESCAPE.get(value[i + 1], value[i + 1]))
            i += 2
        elif ch == ";":
            elements.append("".join(current))
            current = []
            i += 1
        else:
            current.append(ch)
            i += 1
    elements.append("".join(current))
    return [e for e in elements if e]


def encode_string(value: str) -> str:
    """``value`` as a one-line string value: ``\\`` ``\\n`` ``\\t`` ``\\r`` escaped, and a
    space at either end written ``\\s`` (readers strip the whitespace around a value).
    Raises ``EntryRejected`` for a character that has no encoding (another C0 control, DEL,
    NEL, U+2028, U+2029: some readers break lines there) or a lone surrogate."""
    for ch in value:
        if ((ord(ch) < 0x20 and ch not in _ESCAPE) or ch in "\x7f\x85\u2028\u2029"
                or "\ud800" <= ch <= "\udfff"):
            raise EntryRejected(f"the value {value[:40]!r} has the character {ch!r}, which a "
                                f"desktop entry cannot hold")
    out = "".join(_ESCAPE.get(ch, ch) for ch in value)
    if out.startswith(" "):
        out = "\\s" + out[1:]
    if out.endswith(" "):  # after the escaping a trailing space is never part of one
        out = out[:-1] + "\\s"
    return out


def encode_list(elements: list[str]) -> str:
    """Elements as a list value: each encoded as a string with ``;`` escaped, each followed
    by ``;``. Empty elements are refused (they would not come back)."""
    if any(not e for e in elements):
        raise EntryRejected("a list value has an empty element")
    return "".join(encode_string(e).replace(";", "\\;") + ";" for e in elements)


def _line(key: str, encoded: str) -> str:
    """One ``key=value`` line, checked: a valid key, and a value that stays one line for every
    reader (no line break of any kind, nothing a reader strips off its ends)."""
    if not _KEY.fullmatch(key):
        raise EntryRejected(f"{key!r} is not a key")
    if any(ch in _BREAKS for ch in encoded):
        raise EntryRejected(f"{key}'s value is not one line")
    if encoded != encoded.strip(" \t"):
        raise EntryRejected(f"{key}'s value has whitespace at an end")
    return f"{key}={encoded}\n"


# --- Exec ---------------------------------------------------------------------------------

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
    """Drop file and deprecated codes, keep the first URL code as ``FieldCode`` for the
    host's launcher (the spec allows one code of %f %F %u %U; later ones are dropped), turn
    ``%%`` into a literal ``%``; an unknown code, a code inside a longer argument or a lone
    ``%`` at the end rejects the entry."""
    out: list[str] = []
    url_code = False
    for arg in args:
        if arg in _DROP_CODES:
            continue
        if arg in _URL_CODES:
            if not url_code:  # the spec allows one; a launcher may refuse more
                out.append(FieldCode(arg))
            url_code = True
            continue
        text, i = [], 0
        while i < len(arg):
            if arg[i] != "%":
                text.append(arg[i])
                i += 1
                continue
            code = arg[i:i + 2]
            if code == "%%":
                text.append("%")
            elif len(code) < 2:
                raise EntryRejected("Exec ends with a lone %")
            else:
                raise EntryRejected(f"Exec has the field code {code!r} inside an argument")
            i += 2
        out.append("".join(text))
    if not out:
        raise EntryRejected("Exec has no command")
    return out


def quote_arg(arg: str) -> str:
    """One argument for a host Exec line (before the string-level escape): a ``FieldCode`` as
    is, anything else with ``%`` doubled and quoted when the spec requires."""
    if isinstance(arg, FieldCode):
        return str(arg)
    escaped = arg.replace("%", "%%")
    if not escaped or any(ch in _RESERVED or ch == "=" for ch in escaped):
        inner = re.sub(r'(["`$\\])', r"\\\1", escaped)
        return f'"{inner}"'
    return escaped


def exec_value(args: list[str]) -> str:
    """The Exec value as written to the file: arguments quoted, then string-escaped."""
    return encode_string(" ".join(quote_arg(a) for a in args))


# --- reading a guest entry -----------------------------------------------------------------

def _main_group(text: str, max_line: int = MAX_LINE) -> list[tuple[int, str]]:
    """The ``[Desktop Entry]`` group's key lines as (line number, text); ``EntryRejected``
    for a line longer than ``max_line``."""
    group: str | None = None
    lines: list[tuple[int, str]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if len(line) > max_line:
            raise EntryRejected(f"line {number} is longer than {max_line} characters")
        stripped = line.strip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            group = stripped[1:-1] if stripped.endswith("]") else None
            continue
        if group == GROUP:
            lines.append((number, line))
    return lines


def main_group_value(text: str, key: str) -> str | None:
    """The decoded value of ``key`` in the ``[Desktop Entry]`` group of ``text`` (the first
    one), or None. Keys of ``[Desktop Action …]`` and other groups are never seen."""
    try:
        lines = _main_group(text)
    except EntryRejected:
        return None
    for _, line in lines:
        name, sep, value = line.partition("=")
        if sep and name.strip(" \t") == key:
            return unescape(value.strip(" \t"))
    return None


def parse(file_id: str, data: bytes, *, max_value: int = MAX_VALUE,
          max_line: int = MAX_LINE) -> HostEntry:
    """The entry as the host will offer it; ``EntryRejected`` (with the reason) when it can't
    be offered at all. Keys and values it could not use are named in ``dropped``.

    ``max_value`` and ``max_line`` (characters of a value and a line as written) bound what a
    guest may send; a file ``render`` wrote may exceed them (the ``[vm]`` prefix, the
    ``vm-run`` words, quoting), so reading one back takes larger limits."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise EntryRejected("not UTF-8") from None
    lines = _main_group(text, max_line)
    dropped: list[str] = []
    keys: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    entry_type = exec_raw = None
    hidden = False
    for number, line in lines:
        key, sep, raw = line.partition("=")
        key, raw = key.strip(" \t"), raw.strip(" \t")
        match = _KEY.fullmatch(key)
        if not sep or match is None:
            shown = key[:60] if sep else f"line {number}"
            dropped.append(f"{shown!r}: not a key=value line with a valid key (and locale)")
            continue
        base = match.group(1)
        if len(raw) > max_value:
            dropped.append(f"{key}: longer than {max_value} characters")
            continue
        if any(ord(ch) < 0x20 and ch != "\t" for ch in raw):
            dropped.append(f"{key}: contains control characters")
            continue
        if key == "Type":
            entry_type = unescape(raw)
        elif key == "Exec":
            exec_raw = raw
        elif key in ("NoDisplay", "Hidden") and raw == "true":
            hidden = True
        elif base in LOCALIZED_STRINGS and key not in keys:
            keys[key] = clean_display_text(unescape(raw), max_len=max_value)
        elif base in LOCALIZED_LISTS and key not in lists:
            words = [clean_display_text(w, max_len=max_value).strip() for w in split_list(raw)]
            lists[key] = [w for w in words if w]
        elif key == "Categories" and key not in lists:
            lists[key] = _keep(key, split_list(raw), _category_ok, dropped)
        elif key == "MimeType" and key not in lists:
            lists[key] = _keep(key, split_list(raw), _MIME.fullmatch, dropped)
        elif key == "Icon" and key not in keys:
            icon = unescape(raw)
            if _ICON.fullmatch(icon):
                keys[key] = icon
            else:  # a name that could walk out of the icon directory: no icon
                dropped.append(f"Icon: {icon[:60]!r} is not an icon name or absolute path")
        elif key == "Terminal" and key not in keys:
            if raw in ("true", "false"):
                keys[key] = raw
            else:
                dropped.append(f"Terminal: {raw[:20]!r} is not true or false")
    if entry_type != "Application":
        raise EntryRejected(f"Type is {entry_type!r}, not Application")
    if hidden:
        raise EntryRejected("NoDisplay or Hidden is set")
    if not keys.get("Name", "").strip():
        raise EntryRejected("no Name")
    if exec_raw is None:
        raise EntryRejected("no Exec")
    argv = resolve_field_codes(split_exec(unescape(exec_raw)))
    return HostEntry(file_id, keys, argv, lists, dropped)


def _category_ok(value: str) -> bool:
    return value in CATEGORIES or _X_CATEGORY.fullmatch(value) is not None


def _keep(key: str, elements: list[str], ok: object, dropped: list[str]) -> list[str]:
    kept = []
    for element in elements:
        if callable(ok) and ok(element):
            kept.append(element)
        else:
            dropped.append(f"{key}: {element[:60]!r} is not a valid element")
    return kept


# --- writing the host entry ----------------------------------------------------------------

def render(entry: HostEntry, vm: str, icon: str | None, category: str) -> str:
    """The host's .desktop file for ``entry`` of ``vm``: every value encoded, every line
    checked (``EntryRejected`` if a value cannot be written)."""
    out = ["[Desktop Entry]\n", _line("Type", "Application")]
    for key, value in entry.keys.items():
        base = key.split("[", 1)[0]
        if base == "Icon":
            continue
        if base == "Name":
            value = f"[{vm}] {value}"
        out.append(_line(key, encode_string(value)))
    for key, elements in entry.lists.items():
        if key == "Categories":
            elements = [e for e in elements if e != category] + [category]
            if {"Audio", "Video"} & set(elements) and "AudioVideo" not in elements:
                elements.insert(0, "AudioVideo")  # the Menu spec: they need their main one
        if elements:
            out.append(_line(key, encode_list(elements)))
    if "Categories" not in entry.lists:
        out.append(_line("Categories", encode_list([category])))
    if icon is not None:
        out.append(_line("Icon", encode_string(icon)))
    out.append(_line("Exec", exec_value(["vm-run", vm, "--", *entry.argv])))
    out.append(_line("X-vmsilo-VM", encode_string(vm)))
    return "".join(out)
