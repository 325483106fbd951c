"""The ``main`` of every atheris target here: fuzz with atheris when it is installed, else run
the given corpus files or directories once (a corpus check)."""

import sys
from collections.abc import Callable
from pathlib import Path


def run(test_one_input: Callable[[bytes], None]) -> None:
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        for name in sys.argv[1:]:
            paths = sorted(Path(name).iterdir()) if Path(name).is_dir() else [Path(name)]
            for path in paths:
                test_one_input(path.read_bytes())
        print(f"ran the corpus once ({len(sys.argv) - 1} paths); install atheris to fuzz")
        return
    atheris.instrument_all()  # the decoders were imported already; instrument them now
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
