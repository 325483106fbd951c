"""A VM's lifecycle as an explicit state machine.

stopped → starting → running → stopping → stopped, and failed from starting, running or
stopping (with the reason and the log to read). ``failed`` is left by a new start or a stop.
Methods that need a state say so with ``@require``, so a wrong-state call is a clear error
instead of a half-done operation.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, cast

from vmsilo.errors import UserError


class Runstate(Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    FAILED = "failed"


ALLOWED: dict[Runstate, frozenset[Runstate]] = {
    Runstate.STOPPED: frozenset({Runstate.STARTING, Runstate.RUNNING}),  # RUNNING: re-adoption
    Runstate.STARTING: frozenset({Runstate.RUNNING, Runstate.FAILED, Runstate.STOPPING}),
    Runstate.RUNNING: frozenset({Runstate.STOPPING, Runstate.FAILED}),
    Runstate.STOPPING: frozenset({Runstate.STOPPED, Runstate.FAILED}),
    Runstate.FAILED: frozenset({Runstate.STARTING, Runstate.STOPPED, Runstate.STOPPING}),
}


class StateError(UserError):
    pass


class HasRunstate(Protocol):
    name: str
    state: Runstate


def check_transition(vm: str, current: Runstate, new: Runstate) -> None:
    if new not in ALLOWED[current]:
        raise StateError(f"VM {vm} cannot go from {current.value} to {new.value}")


P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound=HasRunstate)


def require(
    *states: Runstate,
) -> Callable[
    [Callable[Concatenate[S, P], Awaitable[R]]], Callable[Concatenate[S, P], Awaitable[R]]
]:
    """Decorate an async method that only makes sense in some states."""

    def decorate(
        method: Callable[Concatenate[S, P], Awaitable[R]],
    ) -> Callable[Concatenate[S, P], Awaitable[R]]:
        @functools.wraps(method)
        async def wrapper(self: S, *args: P.args, **kwargs: P.kwargs) -> R:
            if self.state not in states:
                wanted = " or ".join(s.value for s in states)
                raise StateError(
                    f"VM {self.name} is {self.state.value}; this needs it {wanted}"
                )
            return await method(self, *args, **kwargs)

        return cast(Callable[Concatenate[S, P], Awaitable[R]], wrapper)

    return decorate


def describe(state: Runstate, reason: str | None = None, log: Any = None) -> str:
    text = state.value
    if state is Runstate.FAILED and reason:
        text += f": {reason}" + (f" (see {log})" if log else "")
    return text
