"""Balloon policy: how fast the balloons settle after a 1 GiB step, and what a tick costs.

Runs the real ``BalloonPolicy`` in the simulator (``vmsilo.balloon.simulate``): two 4 GiB guests
on a 12 GiB host, settled first; then one guest's demand rises by 1 GiB. Reported: ticks and
seconds (ticks times the poll interval) until both balloons stay within 5 % of the balanced
point the simulator solves for. Then the policy's CPU time per decision
(``time.process_time`` over many ticks) against a baseline measured in the same run: parsing
this host's ``/proc/meminfo`` once, which the daemon does every tick anyway.

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
    print_comparisons("Policy CPU time per decision (one VM, one tick)",
                      [Comparison("CPU per decision", policy, baseline)], console)


if __name__ == "__main__":
    main()
