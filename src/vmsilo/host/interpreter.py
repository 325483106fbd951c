"""The Python interpreter vmsilo's helper processes run with, and what it needs to run as
another user or in a sandbox.

vmsilod starts some of its own modules as children that are not root: the host halves of
guest services (sandboxed, ``vmsilo.daemon.helpers``) and the menu writer (as the desktop
user, ``vmsilo.desktop.menu``). ``VMSILO_HELPER_PYTHON`` names their interpreter (default:
vmsilod's own) and vmsilod's ``PYTHONPATH`` is passed on. A sandbox shows them, read-only,
the interpreter's prefixes, every ``PYTHONPATH`` entry and the directory holding the vmsilo
package, so that an interpreter below a directory the user cannot enter (a virtualenv under
``/root``) still runs inside; the mount's parents are made enterable by the sandbox.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import vmsilo
from vmsilo.host.sandbox import SYSTEM_DIRS


def helper_python() -> str:
    return os.environ.get("VMSILO_HELPER_PYTHON") or sys.executable


def _visible(path: Path) -> bool:
    """Already in every sandbox: below the host's /usr, /lib… (a resolved path never starts
    with a merged-/usr link such as /bin)."""
    return any(path == Path(d) or Path(d) in path.parents for d in SYSTEM_DIRS)


def runtime_binds(python: str | None = None) -> tuple[Path, ...]:
    """Directories a helper's interpreter and its imports need, read-only: the interpreter's
    prefixes (its virtualenv and the installation behind it), every ``PYTHONPATH`` entry and
    the directory holding the vmsilo package; resolved, without the host's system
    directories (always shown) and without directories inside others of the list."""
    python = python or helper_python()
    candidates = [Path(python).parent.parent, Path(os.path.realpath(python)).parent.parent,
                  Path(vmsilo.__file__).resolve().parent.parent]
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        candidates += [Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)]
    candidates += [Path(p) for p in os.environ.get("PYTHONPATH", "").split(":") if p]
    found: list[Path] = []
    for candidate in candidates:
        path = Path(os.path.realpath(candidate))
        if path.is_dir() and path != Path("/") and not _visible(path) and path not in found:
            found.append(path)
    return tuple(sorted(p for p in found if not any(q in p.parents for q in found)))


def runtime_env() -> dict[str, str]:
    """The whole environment of a sandboxed helper."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONNOUSERSITE": "1"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env
