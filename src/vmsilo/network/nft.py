"""Builders for nftables JSON (the schema of libnftables-json(5)): statements, matches and
commands as plain dicts, so a ruleset is data that tests compare and ``nft -j -f -`` applies.
Nothing here knows about VMs; ``plan`` decides what the rules say.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Json = dict[str, Any]


def match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def meta(key: str) -> Json:
    return {"meta": {"key": key}}


def payload(protocol: str, field: str) -> Json:
    return {"payload": {"protocol": protocol, "field": field}}


def iifname(name: str) -> Json:
    return match(meta("iifname"), name)


def oifname(name: str, op: str = "==") -> Json:
    return match(meta("oifname"), name, op)


def one_of(values: Sequence[Any]) -> Any:
    """A single value as is, several as an anonymous set."""
    return values[0] if len(values) == 1 else {"set": list(values)}


def prefix(network: str) -> Any:
    """``10.0.0.0/24`` as an nft prefix, a /32 as a plain address."""
    address, _, length = network.partition("/")
    if not length or length in ("32", "128"):
        return address
    return {"prefix": {"addr": address, "len": int(length)}}


def ct_state(*states: str) -> Json:
    return match({"ct": {"key": "state"}}, list(states), "in")


ACCEPT: Json = {"accept": None}
DROP: Json = {"drop": None}
MASQUERADE: Json = {"masquerade": None}


def counter_and(verdict: Json) -> list[Json]:
    return [{"counter": None}, verdict]


def table(family: str, name: str) -> Json:
    return {"table": {"family": family, "name": name}}


def base_chain(
    family: str, table_name: str, name: str, kind: str, hook: str, priority: int
) -> Json:
    return {
        "chain": {
            "family": family,
            "table": table_name,
            "name": name,
            "type": kind,
            "hook": hook,
            "prio": priority,
            "policy": "accept",
        }
    }


def rule(
    family: str, table_name: str, chain: str, expr: list[Json], comment: str | None = None
) -> Json:
    body: Json = {"family": family, "table": table_name, "chain": chain, "expr": expr}
    if comment:
        body["comment"] = comment
    return {"rule": body}
