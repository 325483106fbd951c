"""Declarative field tables for JSON control messages.

A message is a frozen dataclass plus a ``Schema``: a table mapping each field name to a
``Kind`` (string, integer, boolean, list of strings, string map) with its caps and allowed
values. ``decode`` parses a JSON payload with strict settings (no NaN, no duplicate keys,
bounded nesting) and checks every field before the dataclass is built, so a message object
only ever holds validated values. ``encode`` checks the same table, so neither side can send
what the other would refuse.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from vmsilo.protocol.errors import ProtocolError

T = TypeVar("T")

_ABSENT = object()


class Kind:
    """How one field is checked. ``check`` returns the validated value or raises."""

    nullable: bool = False

    def check(self, name: str, untrusted_value: object) -> object:
        raise NotImplementedError


def _bad(name: str, why: str) -> ProtocolError:
    return ProtocolError(f"field {name!r}: {why}")


@dataclass(frozen=True)
class Str(Kind):
    max_len: int
    min_len: int = 0
    pattern: str | None = None
    allowed: frozenset[str] | None = None
    nullable: bool = False

    def check(self, name: str, untrusted_value: object) -> object:
        if untrusted_value is None and self.nullable:
            return None
        if not isinstance(untrusted_value, str):
            raise _bad(name, f"expected a string, got {type(untrusted_value).__name__}")
        if not self.min_len <= len(untrusted_value) <= self.max_len:
            limits = f"{self.min_len}..{self.max_len}"
            raise _bad(name, f"length {len(untrusted_value)} outside {limits}")
        if "\x00" in untrusted_value:
            raise _bad(name, "contains a NUL character")
        if self.pattern is not None and not re.fullmatch(self.pattern, untrusted_value):
            raise _bad(name, "does not match the allowed pattern")
        if self.allowed is not None and untrusted_value not in self.allowed:
            raise _bad(name, "not one of the allowed values")
        return untrusted_value


@dataclass(frozen=True)
class Int(Kind):
    min: int
    max: int
    nullable: bool = False

    def check(self, name: str, untrusted_value: object) -> object:
        if untrusted_value is None and self.nullable:
            return None
        # bool is an int subclass in Python; on the wire it is a different type.
        if not isinstance(untrusted_value, int) or isinstance(untrusted_value, bool):
            raise _bad(name, f"expected an integer, got {type(untrusted_value).__name__}")
        if not self.min <= untrusted_value <= self.max:
            raise _bad(name, f"value outside {self.min}..{self.max}")
        return untrusted_value


@dataclass(frozen=True)
class Float(Kind):
    min: float
    max: float
    nullable: bool = False

    def check(self, name: str, untrusted_value: object) -> object:
        if untrusted_value is None and self.nullable:
            return None
        if isinstance(untrusted_value, bool) or not isinstance(untrusted_value, int | float):
            raise _bad(name, f"expected a number, got {type(untrusted_value).__name__}")
        if not self.min <= untrusted_value <= self.max:
            raise _bad(name, f"value outside {self.min}..{self.max}")
        return float(untrusted_value)


@dataclass(frozen=True)
class Bool(Kind):
    def check(self, name: str, untrusted_value: object) -> object:
        if not isinstance(untrusted_value, bool):
            raise _bad(name, f"expected a boolean, got {type(untrusted_value).__name__}")
        return untrusted_value


@dataclass(frozen=True)
class ListOf(Kind):
    """A JSON list of ``min_items``..``max_items`` values of one kind."""

    item: Kind
    max_items: int
    min_items: int = 0

    def check(self, name: str, untrusted_value: object) -> object:
        if not isinstance(untrusted_value, list):
            raise _bad(name, f"expected a list, got {type(untrusted_value).__name__}")
        if not self.min_items <= len(untrusted_value) <= self.max_items:
            limits = f"{self.min_items}..{self.max_items}"
            raise _bad(name, f"{len(untrusted_value)} items, outside {limits}")
        return [self.item.check(f"{name}[{i}]", v) for i, v in enumerate(untrusted_value)]


@dataclass(frozen=True)
class MapOf(Kind):
    """A JSON object of at most ``max_items`` entries, keys and values each of one kind
    (distinct JSON keys must check to distinct keys: e.g. canonical base64)."""

    key: Kind
    value: Kind
    max_items: int

    def check(self, name: str, untrusted_value: object) -> object:
        if not isinstance(untrusted_value, dict):
            raise _bad(name, f"expected an object, got {type(untrusted_value).__name__}")
        if len(untrusted_value) > self.max_items:
            raise _bad(name, f"{len(untrusted_value)} entries, more than {self.max_items}")
        return {
            self.key.check(f"{name} key", k): self.value.check(f"{name}[{k!r}]", v)
            for k, v in untrusted_value.items()
        }


@dataclass(frozen=True)
class Schema(Generic[T]):
    """The field table of one message type. Fields listed in ``optional`` may be absent and
    then take the dataclass default. ``invariant`` checks rules spanning several fields."""

    cls: type[T]
    fields: Mapping[str, Kind]
    optional: frozenset[str] = frozenset()
    invariant: Callable[[T], None] | None = None


def _reject_constant(untrusted_token: str) -> Any:
    raise ProtocolError(f"non-finite number {untrusted_token!r} is not allowed")


def _reject_duplicates(untrusted_pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in untrusted_pairs:
        if key in result:
            raise ProtocolError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_json(untrusted_payload: bytes) -> object:
    """Parse JSON strictly; any failure (including deep nesting) is a ``ProtocolError``."""
    try:
        text = untrusted_payload.decode("utf-8")
        return json.loads(
            text, parse_constant=_reject_constant, object_pairs_hook=_reject_duplicates
        )
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeError are ValueErrors
        raise ProtocolError(f"malformed JSON: {exc}") from None


def validate(schema: Schema[T], untrusted_obj: object) -> T:
    if not isinstance(untrusted_obj, dict):
        raise ProtocolError(f"{schema.cls.__name__}: expected a JSON object")
    unknown = set(untrusted_obj) - set(schema.fields)
    if unknown:
        raise ProtocolError(f"{schema.cls.__name__}: unknown fields {sorted(unknown)!r}")
    values: dict[str, object] = {}
    for name, kind in schema.fields.items():
        untrusted_value = untrusted_obj.get(name, _ABSENT)
        if untrusted_value is _ABSENT:
            if name in schema.optional:
                continue
            raise ProtocolError(f"{schema.cls.__name__}: missing field {name!r}")
        values[name] = kind.check(name, untrusted_value)
    message = schema.cls(**values)
    if schema.invariant is not None:
        schema.invariant(message)
    return message


def decode(schema: Schema[T], untrusted_payload: bytes) -> T:
    return validate(schema, parse_json(untrusted_payload))


def encode(schema: Schema[T], message: T) -> bytes:
    """Serialise ``message``, checking it against its own table first."""
    if not dataclasses.is_dataclass(message) or isinstance(message, type):
        raise TypeError("encode expects a dataclass instance")
    obj = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    validate(schema, json.loads(json.dumps(obj)))
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
