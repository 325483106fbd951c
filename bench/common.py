"""Shared by the benchmarks: repeat a measurement, and print results as a table of ratios.

Every benchmark measures a thing and its baseline in the same run (these machines are noisy:
absolute numbers from different runs are not comparable; ratios within one run are).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class Sample:
    name: str
    values: list[float]  # one per repetition
    unit: str

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> str:
        if len(self.values) < 2:
            return "-"
        return f"{min(self.values):.3g}-{max(self.values):.3g}"


@dataclass(frozen=True)
class Comparison:
    what: str
    measured: Sample
    baseline: Sample
    # True when bigger is better (throughput); the ratio is then baseline/measured so that a
    # ratio above 1 always means "slower/costlier than the baseline".
    higher_is_better: bool = False

    @property
    def ratio(self) -> float:
        m, b = self.measured.median, self.baseline.median
        if self.higher_is_better:
            return b / m if m else float("inf")
        return m / b if b else float("inf")


async def repeat_async(times: int, action: Callable[[], Awaitable[float]]) -> list[float]:
    return [await action() for _ in range(times)]


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def print_comparisons(title: str, rows: list[Comparison], console: Console | None = None) -> None:
    table = Table(title=title)
    for column in ("what", "measured", "baseline", "ratio (cost vs baseline)", "runs"):
        table.add_column(column, justify="left" if column == "what" else "right")
    for row in rows:
        m, b = row.measured, row.baseline
        table.add_row(
            f"{row.what}\n  {m.name} vs {b.name}",
            f"{m.median:.4g} {m.unit}\n{m.spread}",
            f"{b.median:.4g} {b.unit}\n{b.spread}",
            f"{row.ratio:.2f}x",
            str(len(m.values)),
        )
    (console or Console()).print(table)
