"""Balloon policy: how fast the balloons settle after a 1 GiB step, and what a tick costs.

Runs the real ``BalloonPolicy`` in the simulator (``vmsilo.balloon.simulate``): two 4 GiB guests
on a 12 GiB host, settled first; then one guest's demand rises by 1 GiB. Reported: ticks and
seconds (ticks times the poll interval) until both balloons stay within 5 % of the balanced
point the simulator solves for. Then the policy's CPU time per decision
(``time.process_time`` over many ticks) against a baseline measured in the same run: parsing
this host's ``/proc/meminfo`` once, which the daemon does every tick anyway; and the daemon's
own CPU time per tick (``Balloond.tick`` over two VMs, status file included) against the same
baseline.

Run: ``.venv/bin/python -m bench.balloon_settle``
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.common import Comparison, Sample, print_comparisons
from vmsilo.balloon.interval import host_memory
from vmsilo.balloon.policy import MIB, BalloonPolicy, Observation
from vmsilo.balloon.settings import BalloonSettings
from vmsilo.balloon.simulate import GuestModel, Simulation

GIB = 1024 * MIB
TOLERANCE = 0.05
REPEATS = 5
DECISIONS = 20_000


def settle_after_step(settings: BalloonSettings, step: int = GIB) -> dict[str, float]:
    sim = Simulation(settings, host_total=12 * GIB, host_used=3 * GIB,
                     guests=[GuestModel("a", 4 * GIB, 1 * GIB, 512 * MIB),
                             GuestModel("b", 4 * GIB, 1 * GIB, 512 * MIB)])
    sim.run(60)  # settle before the step
    sim.guests["a"].demand += step
    start_tick, start_seconds = sim.tick, sim.seconds
    records = sim.run(100)
    balanced = sim.balanced_point()
    settled = None
    for record in records:
        inside = all(abs(g.balloon - balanced[name]) <= TOLERANCE * max(balanced[name], 1)
                     for name, g in record.guests.items())
        settled = (settled or record) if inside else None
    if settled is None:
        return {"ticks": float("nan"), "seconds": float("nan")}
    return {"ticks": settled.tick - start_tick, "seconds": settled.seconds - start_seconds,
            "balanced_a_mib": balanced["a"] / MIB, "balanced_b_mib": balanced["b"] / MIB}


def policy_cpu_per_decision() -> float:
    policy = BalloonPolicy(critical_host_available=600 * MIB,
                           critical_guest_available=256 * MIB, guest_available_bias=400 * MIB)
    observations = [Observation(i * 3 * MIB % GIB, 600 * MIB + i % 97 * MIB, 200 * MIB,
                                4 * GIB, 2 * GIB - i % 89 * MIB) for i in range(DECISIONS)]
    start = time.process_time()
    for obs in observations:
        policy.decide(obs)
    return (time.process_time() - start) / DECISIONS


def meminfo_parse_cpu() -> float:
    text = Path("/proc/meminfo").read_text()
    runs = DECISIONS // 4
    start = time.process_time()
    for _ in range(runs):
        host_memory(text)
    return (time.process_time() - start) / runs


def daemon_cpu_per_tick(ticks: int = 400) -> float:
    """vmsilo-balloond's own CPU per tick (``Balloond.tick``: host meminfo and PSI, the runtime
    directory scan, two VMs' stats, decisions and targets, the status file), with the VMs as
    in-memory models behind the driver interface, so that only the daemon's work is counted."""
    import asyncio
    import json
    import tempfile

    from vmsilo.balloon.daemon import Balloond
    from vmsilo.balloon.drivers.base import BalloonDriver, GuestStats

    class ModelDriver(BalloonDriver):
        def __init__(self, vm: str) -> None:
            super().__init__(vm)
            self.guest = GuestModel(vm, 4 * GIB, 1 * GIB, 512 * MIB)
            self.stamp = 0.0

        async def stats(self) -> GuestStats | None:
            self.stamp += 1
            g = self.guest
            return GuestStats(None, g.free, g.total, g.cached, self.stamp)

        async def actual(self) -> int:
            return self.guest.balloon

        async def set_target(self, balloon_bytes: int) -> None:
            self.guest.move_balloon_towards(balloon_bytes)

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        for vm in ("a", "b"):
            (run_dir / vm).mkdir()
            (run_dir / vm / "launch.json").write_text(json.dumps({"name": vm, "balloon": True}))
            (run_dir / vm / "balloon.sock").touch()
        daemon = Balloond(run_dir, BalloonSettings(),
                          make_driver=lambda vm, _dir: ModelDriver(vm))

        async def run() -> None:
            for _ in range(ticks):
                await daemon.tick()

        asyncio.run(run())
        return daemon.cpu_seconds / daemon.ticks


def main() -> None:
    console = Console()
    table = Table(title="Balloons settling after a 1 GiB step in one guest's demand (within 5 %)")
    for column in ("poll interval", "ticks", "seconds", "balanced a / b (MiB)"):
        table.add_column(column, justify="right")
    for interval in (2.0, 1.0, 0.5):
        result = settle_after_step(BalloonSettings(poll_interval=interval,
                                                   min_poll_interval=min(0.25, interval)))
        table.add_row(f"{interval:g} s", f"{result['ticks']:.0f}", f"{result['seconds']:.1f}",
                      f"{result.get('balanced_a_mib', 0):.0f} / "
                      f"{result.get('balanced_b_mib', 0):.0f}")
    console.print(table)
    policy = Sample("BalloonPolicy.decide",
                    [policy_cpu_per_decision() * 1e6 for _ in range(REPEATS)], "µs CPU")
    baseline = Sample("parse /proc/meminfo", [meminfo_parse_cpu() * 1e6 for _ in range(REPEATS)],
                      "µs CPU")
    daemon = Sample("Balloond.tick, 2 VMs", [daemon_cpu_per_tick() * 1e6 for _ in range(REPEATS)],
                    "µs CPU")
    print_comparisons("Policy CPU time per decision (one VM, one tick)",
                      [Comparison("CPU per decision", policy, baseline),
                       Comparison("balloond CPU per tick (2 VMs)", daemon, baseline)], console)


if __name__ == "__main__":
    main()
