"""``python -m vmsilo.desktop.write_menu``: write the menu into one home, as its user.

Started by ``vmsilo.desktop.menu`` (root) after dropping to the home's user: reads one JSON
object on standard input, ``{"home": path, "entries": {vm: [manifest entries]}, "icon_dirs":
{vm: path}}``, runs ``vmsilo.desktop.install`` with this process's rights only, and prints the
report as one JSON object, ``{"written": [paths], "removed": [paths], "rejected": [text],
"dropped": [text]}``.
An error (a file the user cannot write, say) ends it with status 1 and one line on stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vmsilo.desktop.install import Targets, install


def main() -> int:
    request = json.load(sys.stdin)
    home = Path(request["home"])
    icon_dirs = {vm: Path(path) for vm, path in request["icon_dirs"].items()}
    try:
        report = install(request["entries"], Targets.for_home(home), icon_dirs)
    except OSError as exc:
        print(f"{exc}", file=sys.stderr)
        return 1
    json.dump({"written": [str(p) for p in report.written],
               "removed": [str(p) for p in report.removed],
               "rejected": report.rejected, "dropped": report.dropped}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
