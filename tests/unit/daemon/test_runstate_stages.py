"""The lifecycle state machine and the staged start with its single rollback guard."""

from __future__ import annotations

import asyncio

import pytest

from vmsilo.daemon.runstate import Runstate, StateError, check_transition, require
from vmsilo.daemon.stages import StageError, Stages, rollback_on_failure


class Machine:
    def __init__(self, state: Runstate) -> None:
        self.name = "banking"
        self.state = state

    @require(Runstate.RUNNING)
    async def run_command(self) -> str:
        return "ran"


async def test_require_lets_the_right_state_through_and_names_the_wrong_one() -> None:
    assert await Machine(Runstate.RUNNING).run_command() == "ran"
    with pytest.raises(StateError, match="VM banking is stopping; this needs it running"):
        await Machine(Runstate.STOPPING).run_command()


def test_transitions() -> None:
    check_transition("vm", Runstate.STOPPED, Runstate.STARTING)
    check_transition("vm", Runstate.STOPPED, Runstate.RUNNING)  # re-adoption
    check_transition("vm", Runstate.FAILED, Runstate.STARTING)
    with pytest.raises(StateError, match="cannot go from stopped to stopping"):
        check_transition("vm", Runstate.STOPPED, Runstate.STOPPING)
    with pytest.raises(StateError):
        check_transition("vm", Runstate.RUNNING, Runstate.STARTING)


async def test_failed_stage_undoes_earlier_stages_in_reverse() -> None:
    done: list[str] = []
    stages = Stages("banking")

    def stage(name: str, fail: bool = False):  # type: ignore[no-untyped-def]
        async def action():  # type: ignore[no-untyped-def]
            if fail:
                raise OSError(f"{name} broke")
            done.append(f"do {name}")

            async def undo() -> None:
                done.append(f"undo {name}")

            return undo

        return action

    with pytest.raises(StageError) as info:
        async with rollback_on_failure(stages):
            await stages.run("runtime-dir", stage("runtime-dir"), timeout=1)
            await stages.run("overlay", stage("overlay"), timeout=1)
            await stages.run("vmm", stage("vmm", fail=True), timeout=1)
    assert info.value.stage == "vmm" and "vmm broke" in info.value.reason
    assert done == ["do runtime-dir", "do overlay", "undo overlay", "undo runtime-dir"]
    assert stages.undo_steps == []


async def test_stage_timeout_is_a_stage_error_and_rolls_back() -> None:
    undone: list[str] = []
    stages = Stages("banking")

    async def quick():  # type: ignore[no-untyped-def]
        async def undo() -> None:
            undone.append("quick")

        return undo

    async def slow() -> None:
        await asyncio.sleep(10)

    with pytest.raises(StageError, match=r"hello: did not finish within 0\.05 s"):
        async with rollback_on_failure(stages):
            await stages.run("quick", quick, timeout=1)
            await stages.run("hello", slow, timeout=0.05)
    assert undone == ["quick"]


async def test_success_keeps_undo_steps_for_stop_and_a_failing_undo_does_not_stop_others() -> None:
    calls: list[str] = []
    stages = Stages("banking")

    async def first():  # type: ignore[no-untyped-def]
        async def undo() -> None:
            calls.append("first")

        return undo

    async def second():  # type: ignore[no-untyped-def]
        async def undo() -> None:
            raise OSError("socket already gone")

        return undo

    async with rollback_on_failure(stages):
        await stages.run("first", first, timeout=1)
        await stages.run("second", second, timeout=1)
    assert [name for name, _ in stages.undo_steps] == ["first", "second"]
    problems = await stages.unwind()
    assert calls == ["first"]
    assert problems == ["undo second: socket already gone"]
