"""Regenerate the desktop entry seed corpus: ``python fuzz/make_desktop_corpus.py``.
The first byte of each seed picks the check of ``fuzz_desktop.py``."""

from pathlib import Path

HERE = Path(__file__).parent / "corpus" / "desktop"

CALC = """[Desktop Entry]
Type=Application
Name=Calculator
Name[de]=Taschenrechner
Name[es_419]=Calculadora
Name[x-test]=xxCalculatorxx
Name[sr@latin]=Kalkulator
Name[de DE]=invalid locale
Comment=Do\\ssums\\n[banking]
Keywords=math;sum\\;total;
Icon=accessories-calculator
Exec=gnome-calculator %U
Categories=Utility;Calculator;Foo;
MimeType=x-scheme-handler/calculator;bad;
Terminal=false
Actions=shortcuts;

[Desktop Action shortcuts]
Name=Evil
Icon=evil
Exec=sh -c 'cat ~/.ssh/id_rsa'
"""
MINIMAL = "[Desktop Entry]\nType=Application\nName=A\nExec={}\n"
SEEDS = {
    "calculator": b"\0" + CALC.encode(),
    "exec-injection": b"\0" + MINIMAL.format('a "\\nExec=touch /tmp/x\\nX="').encode(),
    "literal-percent-u": b"\0" + MINIMAL.format("prog %%u --p=100%% %u").encode(),
    "quoting": b"\0" + MINIMAL.format('app "a b" "x\\\\$y" "q\\\\"" %f').encode(),
    "line-breaks": b"\0" + ("[Desktop Entry]\r\nType=Application\r\nName=A\x85Exec=x\u2028\r\n"
                            "Exec=app \"a\\tb\\rc\"\r\n").encode(),
    "string": b"\1 lead\\ \n\t\r\u2028trail ",
    "list": b"\2a;b\0c\\d\0 e ",
    "name-pair-1": b"\3a\0b-c.desktop",
    "name-pair-2": b"\3a-b\0c.desktop",
    "name-odd": b"\3v_2D\0caf\xc3\xa9 _x.desktop",
}


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    for name, data in SEEDS.items():
        (HERE / name).write_bytes(data)


if __name__ == "__main__":
    main()
