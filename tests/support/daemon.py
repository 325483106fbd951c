"""A real vmsilod for tests, run as a user would run it, below a throwaway root directory.

``RunningDaemon`` starts ``vmsilo daemon`` as a subprocess with its own config, control socket
and state, sharing the cached test image. ``cli`` runs the installed commands (vm-run,
vm-start, …) against it: argv in, exit status and output out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.images import image_paths

BIN = Path(sys.executable).parent

# Helpers vmsilod runs as the desktop user (`nobody` in the tests) cannot reach the suite's
# own interpreter where it lives under /root: they run with the system's, on this checkout and
# the suite's installed packages.
SYSTEM_PYTHON = Path("/usr/bin/python3")
SRC = Path(__file__).resolve().parents[2] / "src"
HELPER_ENV = {"PYTHONPATH": f"{SRC}:{sysconfig.get_paths()['purelib']}"}


@dataclass
class RunningDaemon:
    config: str
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="vmsilo-test-",
                                                                     dir="/var/tmp")))
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        # QEMU may run as an unprivileged user: it must be able to reach its runtime dir.
        self.root.chmod(0o755)
        self.config_path = self.root / "vmsilo.toml"
        self.config_path.write_text(self.config)
        self.log_path = self.root / "daemon.log"

    @property
    def socket(self) -> Path:
        return self.root / "run" / "control.socket"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "VMSILO_ROOT": str(self.root),
            "VMSILO_IMAGE_DIR": str(image_paths().image_dir),
            "VMSILO_CONFIG": str(self.config_path),
            "VMSILO_CONTROL_SOCKET": str(self.socket),
            "VMSILO_LOG_LEVEL": "DEBUG",
        })
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the daemon's life
        self.process = subprocess.Popen(
            [str(BIN / "vmsilo"), "daemon"], env=self.env(), stdout=log, stderr=log,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vmsilod exited at start:\n{self.log()}")
            if self.cli("vmsilo", "status").returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"vmsilod did not come up:\n{self.log()}")

    def restart_daemon_only(self) -> None:
        """End vmsilod (VMs keep running) and start a new one."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.cli("vm-stop", "--all", timeout=120)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._kill_leftover_vmms()
        self._stop_balloond()
        subprocess.run(["umount", "-l", str(self.root / "state")], capture_output=True,
                       check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _stop_balloond(self) -> None:
        from vmsilo.daemon import balloond
        from vmsilo.host.paths import Mode, Paths

        balloond.stop(Paths.under(self.root, Mode.SYSTEM))

    def _kill_leftover_vmms(self) -> None:
        import json

        for record in (self.root / "run").glob("*/processes.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                os.kill(int(json.loads(record.read_text())["vmm"]["pid"]), signal.SIGKILL)

    def vmm_pid(self, vm: str) -> int:
        """The running VMM's host pid, from vmsilod's record of what it launched."""
        import json

        record = json.loads((self.root / "run" / vm / "processes.json").read_text())
        return int(record["vmm"]["pid"])

    def cli(self, command: str, *args: str, input: bytes | None = None, timeout: float = 300,
            env_override: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        env = self.env()
        env.update(env_override or {})
        return subprocess.run(
            [str(BIN / command), *args], env=env, input=input,
            capture_output=True, timeout=timeout, check=False,
        )

    def popen(self, command: str, *args: str) -> subprocess.Popen[bytes]:
        """A command left running, for tests that signal it or run others meanwhile."""
        return subprocess.Popen([str(BIN / command), *args], env=self.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def status(self) -> dict[str, dict[str, object]]:
        import json

        result = self.cli("vmsilo", "status", "--json")
        assert result.returncode == 0, result.stderr
        return {vm["name"]: vm for vm in json.loads(result.stdout)}

    def wait_for_state(self, vm: str, state: str, timeout: float = 120) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        row: dict[str, object] = {}
        while time.monotonic() < deadline:
            row = self.status()[vm]
            if row["state"] == state:
                return row
            time.sleep(0.5)
        raise AssertionError(f"{vm} did not become {state} in {timeout} s: {row}\n{self.log()}")
