"""Strict JSON reading shared by the telemetry codecs.

MQTT payloads come from other processes and possibly other people: decoding
is strict (size limit, UTF-8, no duplicate keys, no NaN or infinities, exact
types, bounded numbers and strings) and every problem raises
:class:`InvalidPayload` with a message fit to send back to the sender.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from orchestrator.errors import UsageError

# 16 TiB in KiB: more than any Xen host has (Xen 4.17 supports up to 16 TiB of
# host RAM); the same bound as the guest report codec.
MAX_MEMORY_KB: Final = 1 << 34
# Wall-clock timestamps: 0 to the year 2286 in Unix seconds.
MAX_TIMESTAMP_S: Final = 10**10
MAX_TEXT_CHARS: Final = 500

JsonValue = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]


class InvalidPayload(UsageError):
    """An MQTT payload that does not follow its schema."""


def _reject_constant(name: str) -> Any:
    raise InvalidPayload(f"non-finite number {name} is not allowed")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidPayload(f"duplicate field {key!r}")
        result[key] = value
    return result


def load_object(raw: bytes, what: str, *, max_bytes: int) -> dict[str, Any]:
    """Parse ``raw`` as one JSON object of at most ``max_bytes`` bytes."""
    if len(raw) > max_bytes:
        raise InvalidPayload(f"{what} is {len(raw)} bytes, over the {max_bytes}-byte limit")
    try:
        doc = json.loads(
            raw.decode("utf-8"),
            parse_constant=_reject_constant,
            object_pairs_hook=_reject_duplicates,
        )
    except InvalidPayload:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidPayload(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidPayload(f"{what} must be a JSON object, not {_json_type(doc)}")
    return doc


def dump(doc: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _json_type(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case dict():
            return "an object"
    return type(value).__name__


def check_keys(doc: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    """Reject fields a schema does not know (commands are strict both ways)."""
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise InvalidPayload(f"{what} has unknown field(s) {', '.join(map(repr, unknown))}")


def get_int(
    doc: dict[str, Any], name: str, *, low: int, high: int, required: bool = True
) -> int | None:
    """A whole number within ``[low, high]``; ``None`` when optional and absent/null."""
    value = doc.get(name)
    if value is None:
        if required:
            raise InvalidPayload(f"required field {name!r} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPayload(f"field {name!r} must be a whole number, not {_json_type(value)}")
    if not low <= value <= high:
        raise InvalidPayload(f"field {name!r} = {value} is outside {low}..{high}")
    return value


def get_num(
    doc: dict[str, Any], name: str, *, low: float, high: float, required: bool = True
) -> float | None:
    """A finite number within ``[low, high]``."""
    value = doc.get(name)
    if value is None:
        if required:
            raise InvalidPayload(f"required field {name!r} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidPayload(f"field {name!r} must be a number, not {_json_type(value)}")
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidPayload(f"field {name!r} = {value} is outside {low}..{high}")
    return float(value)


def get_str(
    doc: dict[str, Any],
    name: str,
    *,
    max_chars: int = MAX_TEXT_CHARS,
    required: bool = True,
    allow_empty: bool = True,
) -> str | None:
    """A string of at most ``max_chars`` characters."""
    value = doc.get(name)
    if value is None:
        if required:
            raise InvalidPayload(f"required field {name!r} is missing")
        return None
    if not isinstance(value, str):
        raise InvalidPayload(f"field {name!r} must be a string, not {_json_type(value)}")
    if len(value) > max_chars:
        raise InvalidPayload(f"field {name!r} is {len(value)} characters, over {max_chars}")
    if not allow_empty and not value:
        raise InvalidPayload(f"field {name!r} may not be empty")
    return value


def get_bool(doc: dict[str, Any], name: str) -> bool:
    """A required boolean."""
    value = doc.get(name)
    if not isinstance(value, bool):
        if value is None:
            raise InvalidPayload(f"required field {name!r} is missing")
        raise InvalidPayload(f"field {name!r} must be true or false, not {_json_type(value)}")
    return value


def json_type(value: object) -> str:
    """Name of a JSON value's type, for error messages."""
    return _json_type(value)
