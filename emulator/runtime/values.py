"""A canister's Candid interface, and Python values in and out of it.

Values follow the shape a test reads most easily: records are dicts by field name, tuples (records
with fields 0, 1, ...) are tuples, `opt` is the value or None, `vec` a list (`blob` bytes), variants a
one-key dict (`{"ok": 5}`; a variant case without data may also be given as the string `"ok"`),
principals text, `nat`/`int` ints. Encoding checks every value against the interface and says which
argument and field did not fit and what was expected. The bytes are icp-py-core's, through the guarded
wire module the Candid door uses.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any

import icp_candid.candid as c
from icp_candid import DIDLoader
from icp_principal import Principal

from icllm_emulator.candid._wire import CandidError, decode_args, encode_args
from icllm_emulator.runtime.errors import RuntimeUsageError


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    args: tuple[Any, ...]
    rets: tuple[Any, ...]
    query: bool


class Interface:
    """The methods (and init arguments) of a `.did` text."""

    def __init__(self, did: str, source: str = "the interface") -> None:
        try:
            parsed = DIDLoader().load_did_source(did)
        except Exception as error:
            raise RuntimeUsageError(f"{source} is not valid Candid: {error}") from None
        self.did = did
        self.init: tuple[Any, ...] = tuple(parsed.get("arguments") or ())
        self.methods = {
            name: Method(
                name, tuple(f.args), tuple(f.rets), bool({"query", "composite_query"} & set(f.modes))
            )
            for name, f in parsed["methods"].items()
        }

    def method(self, name: str) -> Method:
        if name not in self.methods:
            raise RuntimeUsageError(
                f"the canister's interface has no method {name!r}; "
                f"it has {', '.join(sorted(self.methods)) or 'none'}"
            )
        return self.methods[name]

    def encode_init(self, values: tuple[Any, ...]) -> bytes:
        return encode_values("canister_init", self.init, values)

    def encode_call(self, name: str, values: tuple[Any, ...]) -> bytes:
        return encode_values(name, self.method(name).args, values)

    def decode_call(self, name: str, arg: bytes) -> tuple[Any, ...]:
        """A method's argument bytes as Python values (a `RuntimeUsageError` if they do not decode)."""
        method = self.method(name)
        try:
            decoded = decode_args(arg, list(method.args))
        except (CandidError, ValueError) as error:
            raise RuntimeUsageError(f"the argument of {name!r} does not decode: {error}") from None
        return tuple(from_candid(t, v) for t, v in zip(method.args, decoded, strict=True))

    def encode_reply(self, name: str, values: tuple[Any, ...]) -> bytes:
        return encode_values(f"the reply of {name}", self.method(name).rets, values)

    def decode_reply(self, name: str, reply: bytes) -> Any:
        """No return value: None; one: that value; several: a tuple."""
        method = self.method(name)
        try:
            decoded = decode_args(reply, list(method.rets))
        except (CandidError, ValueError) as error:
            raise RuntimeUsageError(
                f"the reply of {name!r} does not decode as its declared result "
                f"({', '.join(describe(t) for t in method.rets) or 'nothing'}): {error}"
            ) from None
        values = [from_candid(t, v) for t, v in zip(method.rets, decoded, strict=True)]
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)


def encode_values(what: str, types: tuple[Any, ...], values: tuple[Any, ...]) -> bytes:
    if len(values) != len(types):
        raise RuntimeUsageError(
            f"{what} takes {len(types)} argument(s) ({', '.join(describe(t) for t in types) or 'none'}), "
            f"got {len(values)}"
        )
    converted = [
        to_candid(t, v, f"argument {i} of {what}")
        for i, (t, v) in enumerate(zip(types, values, strict=True), 1)
    ]
    return encode_args(list(types), converted)


def _resolve(kind: Any) -> Any:
    while isinstance(kind, c.RecClass):
        kind = kind._type
    return kind


def _is_tuple(kind: Any) -> bool:
    names = [name for name, _ in kind._field_map.values()]
    return bool(names) and names == [str(i) for i in range(len(names))]


def describe(kind: Any, depth: int = 0) -> str:
    """A Candid type as it is written in a .did (shortened when deep)."""
    kind = _resolve(kind)
    if depth > 2:
        return "..."
    if isinstance(kind, c.OptClass):
        return f"opt {describe(kind._type, depth + 1)}"
    if isinstance(kind, c.VecClass):
        return "blob" if getattr(kind, "_is_blob", False) else f"vec {describe(kind._type, depth + 1)}"
    if isinstance(kind, c.RecordClass):
        if _is_tuple(kind):
            return "record { " + "; ".join(describe(t, depth + 1) for _, t in kind._field_map.values()) + " }"
        fields = "; ".join(f"{n} : {describe(t, depth + 1)}" for n, t in kind._field_map.values())
        return f"record {{ {fields} }}"
    if isinstance(kind, c.VariantClass):
        cases = "; ".join(
            n if isinstance(_resolve(t), c.NullClass) else f"{n} : {describe(t, depth + 1)}"
            for n, t in kind._field_map.values()
        )
        return f"variant {{ {cases} }}"
    if isinstance(kind, c.FixedNatClass):
        return f"nat{kind._bits}"
    if isinstance(kind, c.FixedIntClass):
        return f"int{kind._bits}"
    if isinstance(kind, c.FloatClass):
        return f"float{kind._bits}"
    names = {
        c.NatClass: "nat",
        c.IntClass: "int",
        c.TextClass: "text",
        c.BoolClass: "bool",
        c.NullClass: "null",
        c.ReservedClass: "reserved",
        c.EmptyClass: "empty",
        c.PrincipalClass: "principal",
        c.FuncClass: "func",
        c.ServiceClass: "service",
    }
    return names.get(type(kind), type(kind).__name__)


def _fail(where: str, kind: Any, value: Any, hint: str = "") -> RuntimeUsageError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return RuntimeUsageError(
        f"{where}: expected {describe(kind)}, got {type(value).__name__} {shown}"
        + (f" ({hint})" if hint else "")
    )


def to_candid(kind: Any, value: Any, where: str) -> Any:
    """A Python value as icp-py-core encodes `kind`, or a `RuntimeUsageError` saying what did not fit."""
    kind = _resolve(kind)
    if isinstance(kind, c.OptClass):
        return [] if value is None else [to_candid(kind._type, value, where)]
    if isinstance(kind, c.NullClass | c.ReservedClass):
        if value is not None and not isinstance(kind, c.ReservedClass):
            raise _fail(where, kind, value, "give None")
        return None
    if isinstance(kind, c.BoolClass):
        if not isinstance(value, bool):
            raise _fail(where, kind, value)
        return value
    if isinstance(kind, c.NatClass | c.IntClass | c.FixedNatClass | c.FixedIntClass):
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(where, kind, value)
        low, high = _range(kind)
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"{low} or more" if high is None else f"{low}..{high}"
            raise _fail(where, kind, value, f"a {describe(kind)} is {bounds}")
        return value
    if isinstance(kind, c.FloatClass):
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(float(value)):
            raise _fail(where, kind, value, "a finite number")
        return float(value)
    if isinstance(kind, c.TextClass):
        if not isinstance(value, str):
            raise _fail(where, kind, value)
        return value
    if isinstance(kind, c.PrincipalClass):
        if isinstance(value, Principal):
            return value
        if not isinstance(value, str):
            raise _fail(where, kind, value, "give the principal's text")
        try:
            return Principal.from_str(value)
        except Exception:
            raise _fail(where, kind, value, "not a textual principal") from None
    if isinstance(kind, c.VecClass):
        if getattr(kind, "_is_blob", False):
            if not isinstance(value, bytes | bytearray):
                raise _fail(where, kind, value, "give bytes")
            return bytes(value)
        if isinstance(value, str | bytes | dict) or not isinstance(value, list | tuple):
            raise _fail(where, kind, value, "give a list")
        return [to_candid(kind._type, item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(kind, c.RecordClass):
        if _is_tuple(kind):
            fields = list(kind._field_map.values())
            if not isinstance(value, tuple | list) or len(value) != len(fields):
                raise _fail(where, kind, value, f"give a tuple of {len(fields)}")
            return [
                to_candid(t, v, f"{where}.{i}")
                for i, ((_, t), v) in enumerate(zip(fields, value, strict=True))
            ]
        if not isinstance(value, dict):
            raise _fail(where, kind, value, "give a dict by field name")
        names = {name for name, _ in kind._field_map.values()}
        extra = sorted(set(value) - names)
        if extra:
            raise RuntimeUsageError(f"{where}: {describe(kind)} has no field {extra[0]!r}")
        out = {}
        for name, field_type in kind._field_map.values():
            if name not in value and not isinstance(
                _resolve(field_type), c.OptClass | c.NullClass | c.ReservedClass
            ):
                raise RuntimeUsageError(f"{where}: field {name!r} ({describe(field_type)}) is missing")
            out[name] = to_candid(field_type, value.get(name), f"{where}.{name}")
        return out
    if isinstance(kind, c.VariantClass):
        cases = dict(kind._field_map.values())
        if isinstance(value, str):
            value = {value: None}
        if not isinstance(value, dict) or len(value) != 1:
            raise _fail(where, kind, value, "give one case, like {'name': value} or 'name'")
        ((case, inner),) = value.items()
        if case not in cases:
            raise RuntimeUsageError(f"{where}: {describe(kind)} has no case {case!r}")
        return {case: to_candid(cases[case], inner, f"{where}.{case}")}
    raise RuntimeUsageError(f"{where}: values of type {describe(kind)} cannot be given from Python")


def _range(kind: Any) -> tuple[int | None, int | None]:
    if isinstance(kind, c.NatClass):
        return 0, None
    if isinstance(kind, c.IntClass):
        return None, None
    bits = kind._bits
    if isinstance(kind, c.FixedNatClass):
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def from_candid(kind: Any, value: Any) -> Any:
    """A decoded value in the shape the module docstring gives."""
    kind = _resolve(kind)
    if isinstance(kind, c.OptClass):
        return from_candid(kind._type, value[0]) if value else None
    if isinstance(kind, c.PrincipalClass):
        return str(value.to_str()) if isinstance(value, Principal) else value
    if isinstance(kind, c.VecClass):
        if getattr(kind, "_is_blob", False) or isinstance(value, bytes | bytearray):
            return bytes(value)
        return [from_candid(kind._type, item) for item in value]
    if isinstance(kind, c.RecordClass):
        if _is_tuple(kind):
            items = value if isinstance(value, list | tuple) else [value[str(i)] for i in range(len(value))]
            return tuple(from_candid(t, v) for (_, t), v in zip(kind._field_map.values(), items, strict=True))
        return {
            name: from_candid(t, value.get(name)) for name, t in kind._field_map.values() if name in value
        }
    if isinstance(kind, c.VariantClass):
        ((case, inner),) = value.items()
        cases = dict(kind._field_map.values())
        return {case: from_candid(cases[case], inner) if case in cases else inner}
    if isinstance(kind, c.NullClass | c.ReservedClass):
        return None
    return value


# -- JSON (the gRPC door's form of values) -----------------------------------------------------------

# Integers beyond this travel as decimal strings: a JavaScript number holds no larger one exactly.
JSON_SAFE_INT = 2**53 - 1


def from_json(types: tuple[Any, ...], given: Any, what: str) -> tuple[Any, ...]:
    """Values given as JSON (an array, one element per type) in the shape of the module docstring:
    `nat`/`int` may be decimal strings, `blob` base64 text. Checked by `to_candid` when encoded."""
    if not isinstance(given, list) or len(given) != len(types):
        raise RuntimeUsageError(
            f"{what} is a JSON array of {len(types)} value(s) "
            f"({', '.join(describe(t) for t in types) or 'none'}), got {_short(given)}"
        )
    return tuple(_from_json(t, v, f"{what}[{i}]") for i, (t, v) in enumerate(zip(types, given, strict=True)))


def _from_json(kind: Any, value: Any, where: str) -> Any:
    kind = _resolve(kind)
    if isinstance(kind, c.OptClass):
        return None if value is None else _from_json(kind._type, value, where)
    if isinstance(kind, c.NatClass | c.IntClass | c.FixedNatClass | c.FixedIntClass) and isinstance(
        value, str
    ):
        try:
            return int(value, 10)
        except ValueError:
            raise _fail(where, kind, value, "a JSON number or a decimal string") from None
    if isinstance(kind, c.VecClass):
        if getattr(kind, "_is_blob", False) and isinstance(value, str):
            try:
                return base64.b64decode(value, validate=True)
            except binascii.Error:
                raise _fail(where, kind, value, "a blob is base64 text") from None
        if isinstance(value, list):
            return [_from_json(kind._type, item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(kind, c.RecordClass):
        if _is_tuple(kind) and isinstance(value, list):
            types = [t for _, t in kind._field_map.values()]
            if len(value) == len(types):
                return tuple(
                    _from_json(t, v, f"{where}.{i}")
                    for i, (t, v) in enumerate(zip(types, value, strict=True))
                )
        elif isinstance(value, dict):
            fields = dict(kind._field_map.values())
            return {
                k: _from_json(fields[k], v, f"{where}.{k}") if k in fields else v for k, v in value.items()
            }
    if isinstance(kind, c.VariantClass) and isinstance(value, dict) and len(value) == 1:
        cases = dict(kind._field_map.values())
        ((case, inner),) = value.items()
        return {case: _from_json(cases[case], inner, f"{where}.{case}") if case in cases else inner}
    return value  # as given: to_candid says what does not fit


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def to_json(value: Any) -> Any:
    """Python values (as `from_candid` gives them) as JSON values: bytes as base64 text, tuples as
    arrays, integers beyond 2^53 as decimal strings."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return value
    if isinstance(value, int):
        return value if abs(value) <= JSON_SAFE_INT else str(value)
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return str(value)
