"""Every value a guest's desktop entry carries is decoded, then encoded again for the host's
file (Desktop Entry Specification: string escapes, ``;`` in lists, Exec quoting and ``%%``):
each instance of issue 15 (items 1, 2 and 5) with the value it must have, and hypothesis
properties — any guest value comes back from the written file exactly (our parser and
``desktop-file-validate``), one key per line, never a second ``Exec``."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmsilo.desktop.entry import (
    CATEGORIES,
    LOCALE,
    EntryRejected,
    FieldCode,
    HostEntry,
    encode_list,
    encode_string,
    exec_value,
    main_group_value,
    parse,
    render,
    resolve_field_codes,
    split_exec,
    split_list,
    unescape,
)
from vmsilo.protocol.text import clean_display_text

HEAD = "[Desktop Entry]\nType=Application\nName=A\n"
BIG = 1 << 20  # limits for reading back what render wrote (it may exceed a guest's)
CATEGORY = "X-vmsilo-work"
VALIDATE = shutil.which("desktop-file-validate")


def _entry(body: str) -> HostEntry:
    return parse("a.desktop", (HEAD + body).encode())


def _written(entry: HostEntry, vm: str = "work", icon: str | None = None) -> str:
    return render(entry, vm, icon, CATEGORY)


def _reread(text: str) -> HostEntry:
    return parse("a.desktop", text.encode(), max_value=BIG, max_line=BIG)


def _structure(text: str) -> list[str]:
    """The keys of a written file, checking it is one group of key=value lines."""
    lines = text.split("\n")
    assert lines[0] == "[Desktop Entry]" and lines[-1] == ""
    keys = [line.partition("=")[0] for line in lines[1:-1]]
    assert all("=" in line for line in lines[1:-1]), text
    assert len(keys) == len(set(keys)), text  # one line per key
    assert keys.count("Exec") == 1
    assert len(text.splitlines()) == len(lines) - 1  # no other line break anywhere
    return keys


# --- the instances of the issue --------------------------------------------------------------

def test_an_escaped_newline_in_exec_never_makes_a_second_exec_line() -> None:
    entry = _entry('Exec=a "\\nExec=touch /tmp/x\\nX="\n')
    assert entry.argv == ["a", "\nExec=touch /tmp/x\nX="]
    text = _written(entry)
    _structure(text)
    assert text.count("Exec=") == 2  # the real key, and the text inside the argument
    assert [line for line in text.splitlines() if line.startswith("Exec=")] == [
        'Exec=vm-run work -- a "\\nExec=touch /tmp/x\\nX="']
    assert _reread(text).argv == ["vm-run", "work", "--", "a", "\nExec=touch /tmp/x\nX="]


@pytest.mark.parametrize("escape", ["\\n", "\\r", "\\t", "\\\\"])
def test_escapes_in_shown_text_stay_one_line(escape: str) -> None:
    entry = _entry(f"Comment=ok{escape}Exec=touch /tmp/x\nExec=app\n")
    text = _written(entry)
    assert _structure(text).count("Exec") == 1
    assert _reread(text).keys["Comment"] == entry.keys["Comment"]
    assert "\n" not in entry.keys["Comment"] and "\r" not in entry.keys["Comment"]


def test_a_literal_percent_u_is_not_a_field_code() -> None:
    literal = _entry("Exec=prog %%u\n")
    assert literal.argv == ["prog", "%u"] and not isinstance(literal.argv[1], FieldCode)
    assert "Exec=vm-run work -- prog %%u" in _written(literal).splitlines()
    code = _entry("Exec=prog %u\n")
    assert isinstance(code.argv[1], FieldCode)
    assert "Exec=vm-run work -- prog %u" in _written(code).splitlines()
    reread = _reread(_written(literal)).argv
    assert reread[-1] == "%u" and not isinstance(reread[-1], FieldCode)


def test_one_url_code_at_most() -> None:
    assert _entry("Exec=app %u %U %f %u\n").argv == ["app", "%u"]


@pytest.mark.parametrize(("exec_line", "reason"), [
    ("a%%%", "lone %"), ("a%", "lone %"), ("a%%%u", "inside an argument"),
    ("--x=%f", "inside an argument")])
def test_bad_percent_use_rejects(exec_line: str, reason: str) -> None:
    with pytest.raises(EntryRejected, match=reason):
        _entry(f"Exec={exec_line}\n")


@pytest.mark.parametrize("locale", ["es_419", "x-test", "sr@latin", "ca@valencia", "zh_Hans",
                                    "de_DE.UTF-8@euro", "pt_BR", "ast", "zh-Hant", "be@tarask"])
def test_translations_with_the_specs_locale_grammar_are_kept(locale: str) -> None:
    entry = _entry(f"Name[{locale}]=Nombre\nKeywords[{locale}]=uno;dos;\nExec=app\n")
    assert entry.keys[f"Name[{locale}]"] == "Nombre" and entry.dropped == []
    assert entry.lists[f"Keywords[{locale}]"] == ["uno", "dos"]
    text = _written(entry)
    assert f"Name[{locale}]=[work] Nombre" in text.splitlines()
    assert _reread(text).keys[f"Name[{locale}]"] == "[work] Nombre"


@pytest.mark.parametrize("line", ["Name[de DE]=x", "Name[]=x", "Name[es_419]]=x", "Na me=x",
                                  "Name[de]x=y", "just words", "Name[d=e]=x", "Ünïcode=x"])
def test_only_invalid_keys_are_dropped_and_named(line: str) -> None:
    entry = _entry(f"{line}\nExec=app\n")
    assert entry.keys["Name"] == "A" and entry.argv == ["app"]
    assert len(entry.dropped) == 1 and "not a key=value line" in entry.dropped[0]
    assert line.partition("=")[0] not in _written(entry)


def test_values_that_cannot_be_used_are_dropped_and_named() -> None:
    entry = _entry("Terminal=maybe\nIcon=../../x\nCategories=Utility;Foo;X-Mine;\n"
                   "MimeType=text/plain;bad;\nComment=" + "c" * 2000 + "\nExec=app\n")
    assert entry.lists == {"Categories": ["Utility", "X-Mine"], "MimeType": ["text/plain"]}
    assert "Terminal" not in entry.keys and entry.icon is None and "Comment" not in entry.keys
    assert len(entry.dropped) == 5, entry.dropped
    assert "Categories=Utility;X-Mine;X-vmsilo-work;" in _written(entry).splitlines()


def test_shown_text_is_cleaned_to_one_visible_line() -> None:
    entry = _entry("Name[de]=Bank\\n[banking]\u2028x\u202e\nExec=app\n")
    assert entry.keys["Name[de]"] == "Bank [banking] x"


def test_lists_keep_escaped_semicolons_and_spaces() -> None:
    entry = _entry("Keywords=a\\;b;\\sc;\nComment=\\s lead and trail \\s\nExec=app\n")
    assert entry.lists["Keywords"] == ["a;b", "c"]  # words are stripped, \\s or not
    assert entry.keys["Comment"] == "  lead and trail  "
    text = _written(entry)
    assert "Keywords=a\\;b;c;" in text.splitlines()
    assert "Comment=\\s lead and trail \\s" in text.splitlines()
    assert _reread(text).keys["Comment"] == entry.keys["Comment"]


def test_lines_split_at_newline_only_as_glib_does() -> None:
    entry = parse("a.desktop", b"[Desktop Entry]\r\nType=Application\r\n"
                  b"Name=A\xc2\x85Exec=evil\r\nExec=app\r\n")
    assert entry.argv == ["app"] and entry.keys["Name"] == "A Exec=evil"


def test_the_main_groups_icon_only() -> None:
    text = "[Desktop Entry]\nName=A\n[Desktop Action new]\nIcon=evil\n"
    assert main_group_value(text, "Icon") is None
    text = "[Desktop Action new]\nIcon=evil\n[Desktop Entry]\nIcon=good\\sname\n"
    assert main_group_value(text, "Icon") == "good name"


@pytest.mark.parametrize("value", ["a\x00b", "\ud800", "a\x85", "\u2028", "x\u2029y", "\x7f",
                                   "\x0b", "\x1e"])
def test_unencodable_values_are_refused_not_written(value: str) -> None:
    with pytest.raises(EntryRejected, match="cannot hold"):
        encode_string(value)


def test_an_exec_argument_with_a_line_break_for_some_reader_rejects_the_entry() -> None:
    entry = _entry("Exec=app \"a\u2028b\"\n")
    with pytest.raises(EntryRejected, match="cannot hold"):
        _written(entry)


# --- properties ------------------------------------------------------------------------------

# What a decoded guest string may hold: anything but the C0 controls a file cannot carry raw
# or escaped (only tab, newline and carriage return have escapes), DEL and lone surrogates.
# NEL, U+2028 and U+2029 have no escape and break lines for some readers: refused too.
_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters=[
    chr(c) for c in range(0x20) if chr(c) not in "\t\n\r"] + ["\x7f", "\x85", "\u2028",
                                                               "\u2029"])
_TEXT = st.text(_CHARS, max_size=40)
_SHOWN = _TEXT.map(lambda t: clean_display_text(t, max_len=1024))
_WORD = _SHOWN.map(str.strip).filter(bool)
_LOCALES = st.from_regex(LOCALE, fullmatch=True)
_CODE = st.sampled_from([FieldCode("%u"), FieldCode("%U")])


@st.composite
def _argvs(draw: st.DrawFn, size: int = 6) -> list[str]:
    """A command: texts and at most one URL field code (all the spec allows), not first."""
    args: list[str] = draw(st.lists(_TEXT, min_size=1, max_size=size))
    if draw(st.booleans()):
        args.insert(draw(st.integers(1, len(args))), draw(_CODE))
    return args


_VM = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


@given(_TEXT)
def test_string_values_round_trip_as_one_line(value: str) -> None:
    encoded = encode_string(value)
    assert unescape(encoded) == value
    assert "\n" not in encoded and "\r" not in encoded and "\t" not in encoded
    assert encoded == encoded.strip(" \t")


@given(st.lists(_TEXT.filter(bool), max_size=6))
def test_list_values_round_trip(elements: list[str]) -> None:
    encoded = encode_list(elements)
    assert split_list(encoded) == elements
    assert "\n" not in encoded and "\r" not in encoded
    assert _separators(encoded) == len(elements)  # one unescaped ";" after each element


def _separators(encoded: str) -> int:
    count, i = 0, 0
    while i < len(encoded):
        if encoded[i] == "\\":
            i += 2  # an escape: the next character is never a separator
            continue
        count += encoded[i] == ";"
        i += 1
    return count


@given(_argvs(8))
def test_exec_round_trips_with_field_codes_told_apart(argv: list[str]) -> None:
    value = exec_value(argv)
    assert "\n" not in value and "\r" not in value
    back = resolve_field_codes(split_exec(unescape(value)))
    assert back == argv
    assert [isinstance(a, FieldCode) for a in back] == [isinstance(a, FieldCode) for a in argv]


def _guest_file(names: dict[str, str], comment: str, keywords: list[str],
                argv: list[str]) -> str:
    lines = ["[Desktop Entry]", "Type=Application"]
    lines += [f"{key}={encode_string(value)}" for key, value in names.items()]
    lines += [f"Comment={encode_string(comment)}", f"Keywords={encode_list(keywords)}",
              f"Exec={exec_value(argv)}", "", "[Desktop Action x]", "Exec=evil", "Icon=evil"]
    return "\n".join(lines) + "\n"


_ENTRY = st.tuples(
    _VM, _WORD, st.dictionaries(_LOCALES, _SHOWN, max_size=3), _SHOWN,
    st.lists(_WORD, max_size=4), _argvs())


@given(_ENTRY)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_any_guest_entry_is_written_and_read_back_exactly(case: tuple) -> None:  # type: ignore[type-arg]
    vm, name, translations, comment, keywords, argv = case
    names = {"Name": name, **{f"Name[{loc}]": v for loc, v in translations.items()}}
    entry = parse("x.desktop", _guest_file(names, comment, keywords, argv).encode())
    assert entry.dropped == []
    assert entry.keys == {**names, "Comment": comment} and entry.argv == argv
    assert entry.lists.get("Keywords", []) == keywords
    text = render(entry, vm, None, CATEGORY)
    keys = _structure(text)
    assert "Icon" not in keys
    back = _reread(text)
    assert back.keys == {key: f"[{vm}] {v}" if key.startswith("Name") else v
                         for key, v in entry.keys.items()}
    assert back.argv == ["vm-run", vm, "--", *argv]
    assert back.lists.get("Keywords", []) == keywords
    assert back.lists["Categories"] == [CATEGORY]


_LINE = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=30),
    st.tuples(st.sampled_from(["Name", "Name[de]", "Comment", "Exec", "Keywords", "Icon",
                               "Categories", "MimeType", "Terminal", "[Desktop Action a]",
                               "[Desktop Entry]"]),
              st.text(st.sampled_from('ab \\"%;=\n\t\r$[]snu\u2028\x85'), max_size=20))
    .map(lambda kv: f"{kv[0]}={kv[1]}"))


@given(st.lists(_LINE, max_size=12), _VM)
def test_hostile_entries_come_out_one_key_per_line(lines: list[str], vm: str) -> None:
    text = HEAD + "\n".join(lines) + "\nExec=fallback\n"
    try:
        entry = parse("h.desktop", text.encode())
        written = render(entry, vm, None, CATEGORY)
    except EntryRejected:
        return
    _structure(written)
    back = _reread(written)
    assert back.argv == ["vm-run", vm, "--", *entry.argv]
    assert {k: v for k, v in back.keys.items() if not k.startswith("Name")} == {
        k: v for k, v in entry.keys.items() if not k.startswith(("Name", "Icon"))}
    assert {k: v for k, v in back.lists.items() if k != "Categories"} == {
        k: v for k, v in entry.lists.items() if k != "Categories" and v}


@pytest.mark.allow_subprocess
@pytest.mark.skipif(VALIDATE is None, reason="desktop-file-validate is not installed")
@given(_ENTRY, st.lists(st.sampled_from(sorted(CATEGORIES)), max_size=3, unique=True))
@settings(max_examples=40, deadline=None)
def test_desktop_file_validate_accepts_every_written_entry(
        case: tuple, categories: list[str]) -> None:  # type: ignore[type-arg]
    vm, name, translations, comment, keywords, argv = case
    names = {"Name": name, **{f"Name[{loc}]": v for loc, v in translations.items()}}
    guest = _guest_file(names, comment, keywords, argv)
    guest += "[Desktop Entry]\n"  # ignored: the first group's keys were read already
    entry = parse("x.desktop", guest.replace(
        "Type=Application", f"Type=Application\nCategories={encode_list(categories or ['X-a'])}"
    ).encode())
    text = render(entry, vm, "/home/u s/.local/share/vmsilo/icons/i.svg", f"X-vmsilo-{vm}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vmsilo-work-x.desktop"
        path.write_text(text)
        result = subprocess.run([str(VALIDATE), str(path)], capture_output=True, text=True)
    errors = [line for line in result.stdout.splitlines() if "error:" in line]
    assert errors == [], text
