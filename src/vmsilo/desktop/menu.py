"""Refreshing the desktop user's menu from the config and the built images: which home, whose
rights, which image of each VM (see ``vmsilo.desktop.install`` for the files). Used by
``vmsilo desktop install``, ``vmsilo image build`` and vmsilod.

Root never writes into a user's home. Run as root, ``refresh`` collects the entries (from the
root-owned, world-readable image store) and starts ``python -m vmsilo.desktop.write_menu`` as
the home's user (uid and gid, no supplementary groups, set before exec), handing it the
entries and icon directories as JSON on its standard input; the child writes with that user's
rights, so the kernel's permission checks apply to every link the user planted, and it reports
what it wrote as JSON. That report comes from a process the user controls: it is size-capped
and checked before use. Run as a user, the same writing happens in-process in one's own home.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from pathlib import Path
from typing import Any

from vmsilo.config import resolve
from vmsilo.config.model import VmsiloConfig
from vmsilo.desktop.install import Report, Targets, install
from vmsilo.errors import UserError
from vmsilo.host import proc
from vmsilo.host.interpreter import helper_python
from vmsilo.host.paths import Paths
from vmsilo.image import manifest
from vmsilo.image.spec import agent_digest, spec_for_vm

WRITER = "vmsilo.desktop.write_menu"
WRITE_TIMEOUT = 60.0  # seconds for the child to write the menu
REPORT_LIMIT = 4 * 1024 * 1024  # bytes of the child's report read back
ERROR_LIMIT = 64 * 1024  # bytes of its error output read back


class MenuWriteError(UserError):
    """The child writing the menu as the user failed; the message holds its error."""


def _collect(config: VmsiloConfig) -> tuple[dict[str, list[Any]], dict[str, Path]]:
    resolved = resolve(config)
    paths = Paths.for_mode()
    digest = agent_digest()
    entries_by_vm: dict[str, list[Any]] = {}
    icon_dirs: dict[str, Path] = {}
    for name, rvm in resolved.vms.items():
        spec = spec_for_vm(name, rvm.vm, suite=config.image.suite, mirror=config.image.mirror,
                           agent=digest)
        entries_by_vm[name] = manifest.desktop_entries(paths.image(spec.digest()))
        icon_dirs[name] = paths.image(spec.digest()) / "icons"
    return entries_by_vm, icon_dirs


def _owner_of(home: Path) -> tuple[int, int]:
    """The user a given home belongs to: the owner of it (or of its nearest existing
    parent), with that user's primary group."""
    where = home
    while not where.exists() and where != where.parent:
        where = where.parent
    st = os.stat(where)
    try:
        return st.st_uid, pwd.getpwuid(st.st_uid).pw_gid
    except KeyError:
        return st.st_uid, st.st_gid


def refresh(config: VmsiloConfig, home: Path | None = None) -> tuple[Path, Report,
                                                                     dict[str, list[Any]]]:
    """Write the menu for every VM of ``config`` into ``home`` (default: the configured
    user's when root, else one's own), as that home's user. Raises ``FileNotFoundError``
    when the default home does not exist (it is never created), ``MenuWriteError`` when the
    child fails."""
    entries_by_vm, icon_dirs = _collect(config)
    if home is None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(config.user)
            home, owner = Path(entry.pw_dir), (entry.pw_uid, entry.pw_gid)
        else:
            home, owner = Path.home(), (os.getuid(), os.getgid())
        if not home.is_dir():  # never create an account's home (e.g. /nonexistent)
            raise FileNotFoundError(f"{home} is not a directory")
    else:
        owner = _owner_of(home)
    if os.geteuid() != 0:
        return home, install(entries_by_vm, Targets.for_home(home), icon_dirs), entries_by_vm
    return home, write_as(owner, home, entries_by_vm, icon_dirs), entries_by_vm


def write_as(owner: tuple[int, int], home: Path, entries_by_vm: dict[str, list[Any]],
             icon_dirs: dict[str, Path]) -> Report:
    """Run ``install`` in a child as ``owner`` (uid, gid; no supplementary groups)."""
    request = json.dumps({"home": str(home), "entries": entries_by_vm,
                          "icon_dirs": {vm: str(path) for vm, path in icon_dirs.items()}})
    # Memory files, not pipes, both ways: nothing the child does (not reading, writing
    # forever) can block root or make it hold more than the limits below.
    stdin, stdout, stderr = (os.memfd_create(name, os.MFD_CLOEXEC)
                             for name in ("menu-request", "menu-report", "menu-errors"))
    try:
        os.write(stdin, request.encode())
        os.lseek(stdin, 0, os.SEEK_SET)
        uid, gid = owner
        child = proc.spawn([helper_python(), "-m", WRITER], stdin=stdin, stdout=stdout,
                           stderr=stderr, user=uid, group=gid, extra_groups=[])
        try:
            status = child.wait(WRITE_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.stop(child, grace=1.0)
            raise MenuWriteError(f"writing the menu in {home} as uid {uid} took longer than "
                                 f"{WRITE_TIMEOUT:g} s; it was stopped") from None
        untrusted_report = os.pread(stdout, REPORT_LIMIT + 1, 0)
        errors = os.pread(stderr, ERROR_LIMIT, 0).decode(errors="replace").strip()
    finally:
        for fd in (stdin, stdout, stderr):
            os.close(fd)
    if status != 0:
        tail = "\n  ".join(errors.splitlines()[-5:]) or f"exit status {status}"
        raise MenuWriteError(f"writing the menu in {home} as uid {uid} failed:\n  {tail}")
    return _report(untrusted_report)


def _report(untrusted_data: bytes) -> Report:
    """The child's report, checked: it comes from a process the user controls."""
    if len(untrusted_data) > REPORT_LIMIT:
        raise MenuWriteError(f"the menu writer's report is larger than {REPORT_LIMIT} bytes")
    try:
        untrusted = json.loads(untrusted_data)
    except ValueError as exc:
        raise MenuWriteError(f"the menu writer's report is not JSON: {exc}") from None
    fields: dict[str, list[str]] = {}
    for key in ("written", "removed", "rejected", "dropped"):
        value = untrusted.get(key) if isinstance(untrusted, dict) else None
        if key == "dropped" and value is None:
            value = []  # a writer of an older vmsilo reports no dropped keys
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise MenuWriteError(f"the menu writer's report has no list of strings {key!r}")
        fields[key] = value
    return Report(written=[Path(p) for p in fields["written"]],
                  removed=[Path(p) for p in fields["removed"]], rejected=fields["rejected"],
                  dropped=fields["dropped"])


def refresh_quietly(config: VmsiloConfig) -> str:
    """``refresh`` for callers whose own work must not fail on the menu (image build,
    vmsilod): a one-line outcome."""
    try:
        home, report, _ = refresh(config)
    except (OSError, KeyError, UserError, proc.ProcessError) as exc:
        return f"menu not refreshed: {exc}"
    return (f"menu refreshed in {home}: {len(report.written)} files written, "
            f"{len(report.removed)} removed")
