"""vmsilo-balloond with real VMs (issue 15): it outlives a vmsilod restart while VMs run (the
next vmsilod re-adopts them and finds the same balloond), and goes with vmsilod's end for
good (``make demo``'s stop: ``vm-stop --all``, then SIGTERM)."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.support.daemon import RunningDaemon
from vmsilo.daemon import balloond
from vmsilo.host.paths import Mode, Paths
from vmsilo.host.procid import ProcessIdentity

CONFIG = """
enable = true
user = "nobody"

[vms.keep]
memory = 768
cpus = 1
sharedHome = false
gpu = false
sound.playback = false
"""


def test_balloond_outlives_a_restart_with_vms_but_not_the_end(test_image: None) -> None:
    daemon = RunningDaemon(CONFIG)
    paths = Paths.under(daemon.root, Mode.SYSTEM)
    try:
        daemon.start()
        started = daemon.cli("vm-start", "keep", timeout=300)
        assert started.returncode == 0, started.stderr
        pid = balloond.running_pid(paths)
        assert pid is not None
        identity = ProcessIdentity.of(pid)
        assert identity is not None

        vmm = daemon.vmm_pid("keep")
        # SIGTERM with a VM running: a restart to be. The VM and balloond stay.
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(30) == 0
        assert Path(f"/proc/{vmm}").exists()
        assert identity.alive(), "balloond did not outlive a vmsilod restart"
        daemon.start()  # the next vmsilod finds the same balloond
        assert balloond.running_pid(paths) == pid

        stopped = daemon.cli("vm-stop", "--all", timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(30) == 0
        assert not identity.alive(), "balloond outlived vmsilod's end"
        assert not (paths.run_dir / balloond.PIDFILE).exists()
    finally:
        daemon.stop()
