"""The one place that spawns processes.

Every external command vmsilo runs goes through here, so that failures carry the command,
its exit code and its output (``ProcessError``), and so that unit tests can forbid spawning
in a single place. Long-running children (VMMs, helpers) are started with ``spawn``;
one-shot commands with ``run`` or ``run_async``.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

# What a child's standard stream may be: a subprocess constant, a file descriptor, or a file.
Stdio = int | IO[Any] | None


class ProcessError(Exception):
    """A command failed to start, timed out, or exited with a non-zero status."""

    def __init__(
        self,
        command: Sequence[str],
        returncode: int | None,
        stdout: str = "",
        stderr: str = "",
        reason: str = "",
    ) -> None:
        self.command = list(command)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.reason = reason
        super().__init__(self._describe())

    def _describe(self) -> str:
        cmd = shlex.join(self.command)
        if self.reason:
            head = f"{cmd}: {self.reason}"
        else:
            head = f"{cmd}: exited with status {self.returncode}"
        tail = (self.stderr or self.stdout).strip().splitlines()[-5:]
        return head + ("".join(f"\n  {line}" for line in tail) if tail else "")


@dataclass(frozen=True)
class Completed:
    command: list[str]
    returncode: int
    stdout: str
    stderr: str


def _child_env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    if env is None:
        return None
    merged = dict(os.environ)
    merged.update(env)
    return merged


def run(
    command: Sequence[str],
    *,
    input: str | bytes | None = None,
    check: bool = True,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
) -> Completed:
    """Run a command to completion and capture its output as text."""
    argv = [str(a) for a in command]
    data = input.encode() if isinstance(input, str) else input
    try:
        proc = subprocess.run(
            argv,
            input=data,
            capture_output=True,
            timeout=timeout,
            env=_child_env(env),
            cwd=cwd,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ProcessError(argv, None, reason=f"command not found ({exc.filename})") from exc
    except subprocess.TimeoutExpired as exc:
        raise ProcessError(argv, None, reason=f"timed out after {timeout} s") from exc
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    if check and proc.returncode != 0:
        raise ProcessError(argv, proc.returncode, out, err)
    return Completed(argv, proc.returncode, out, err)


async def run_async(
    command: Sequence[str],
    *,
    input: bytes | None = None,
    check: bool = True,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> Completed:
    """``run`` for asyncio code: the event loop keeps going while the command runs."""
    argv = [str(a) for a in command]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_child_env(env),
        )
    except FileNotFoundError as exc:
        raise ProcessError(argv, None, reason=f"command not found ({exc.filename})") from exc
    try:
        out_b, err_b = await asyncio.wait_for(proc.communicate(input), timeout)
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise ProcessError(argv, None, reason=f"timed out after {timeout} s") from exc
    out, err = out_b.decode(errors="replace"), err_b.decode(errors="replace")
    assert proc.returncode is not None
    if check and proc.returncode != 0:
        raise ProcessError(argv, proc.returncode, out, err)
    return Completed(argv, proc.returncode, out, err)


def spawn(
    command: Sequence[str],
    *,
    stdout: Stdio = subprocess.DEVNULL,
    stderr: Stdio = subprocess.DEVNULL,
    stdin: Stdio = subprocess.DEVNULL,
    env: Mapping[str, str] | None = None,
    new_session: bool = True,
    pass_fds: Sequence[int] = (),
    user: int | None = None,
    group: int | None = None,
    extra_groups: Sequence[int] | None = None,
    cwd: Path | str = "/",
) -> subprocess.Popen[bytes]:
    """Start a long-running child. By default in its own session, so that it outlives a
    restart of the process that started it (vmsilod re-adopts its VMMs). ``user``/``group``
    drop privileges before exec, so the child never runs with ours. It starts in ``/``: a
    ``python -m`` child looks for modules in its working directory first, which must never
    be one someone else can write."""
    argv = [str(a) for a in command]
    try:
        return subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=_child_env(env),
            start_new_session=new_session,
            pass_fds=tuple(pass_fds),
            user=user,
            group=group,
            extra_groups=extra_groups,
            cwd=cwd,
        )
    except FileNotFoundError as exc:
        raise ProcessError(argv, None, reason=f"command not found ({exc.filename})") from exc


def stop(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """End a child started with ``spawn``: SIGTERM, ``grace`` seconds, then SIGKILL; reaped."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()
