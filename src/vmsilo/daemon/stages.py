"""Start and stop in bounded stages, rolled back through one guard.

A VM start is a sequence of stages (runtime dir, overlay disk, networking, helpers, VMM, agent
hello). Each stage is bounded in time and registers how to undo itself. If any stage fails or
times out, everything done so far is undone in reverse order, once, here — not by a copy of
the same ``except`` block in every stage. On success the undo steps are kept: they are exactly
what stopping the VM has to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Undo = Callable[[], Awaitable[None]]


class StageError(Exception):
    """A stage failed; carries which one and why, and the log to read if there is one."""

    def __init__(self, stage: str, reason: str, log_path: str | None = None) -> None:
        self.stage = stage
        self.reason = reason
        self.log_path = log_path
        super().__init__(f"{stage}: {reason}")


@dataclass
class Stages:
    """Runs stages and remembers their undo steps (last done, first undone)."""

    vm: str
    undo_steps: list[tuple[str, Undo]] = field(default_factory=list)

    async def run(
        self, name: str, action: Callable[[], Awaitable[Undo | None]], timeout: float,
        on_timeout: str | None = None,
    ) -> None:
        """Run one stage, bounded by ``timeout`` seconds; ``on_timeout`` says what a timeout
        means for this stage (default: that it did not finish in time)."""
        try:
            undo = await asyncio.wait_for(action(), timeout)
        except TimeoutError as exc:
            raise StageError(name, on_timeout or f"did not finish within {timeout:g} s") from exc
        except StageError:
            raise
        except Exception as exc:
            raise StageError(name, str(exc) or type(exc).__name__) from exc
        if undo is not None:
            self.undo_steps.append((name, undo))

    async def unwind(self, timeout_each: float = 30.0) -> list[str]:
        """Undo every stage in reverse; an undo that fails is logged and the rest still run.
        Returns the problems met, for the caller to report."""
        problems: list[str] = []
        while self.undo_steps:
            name, undo = self.undo_steps.pop()
            try:
                await asyncio.wait_for(undo(), timeout_each)
            except Exception as exc:  # every undo step must get its chance
                log.warning("VM %s: undoing %s failed: %s", self.vm, name, exc)
                problems.append(f"undo {name}: {exc}")
        return problems


@contextlib.asynccontextmanager
async def rollback_on_failure(stages: Stages) -> AsyncIterator[Stages]:
    """``async with rollback_on_failure(stages): await stages.run(...)…`` — on any exception
    (including cancellation) the done stages are undone before the exception propagates."""
    try:
        yield stages
    except BaseException:
        await asyncio.shield(stages.unwind())
        raise
