"""Candid on the wire, through icp-py-core, with the guards and the subtyping its decoder lacks.

icp-py-core encodes values, decodes primitives, records and variants, and parses `.did` files. Its
`decode()` trusts the input, though: a declared type-table length of 2**60 allocates before reading
anything, a `vec null` of 2**60 elements never ends, a 2 MiB LEB128 number takes quadratic time, and
an `opt` whose value has the wrong type fails instead of decoding as `null`. So this module reads the
type table itself (with the library's LEB128 reader and type classes) under explicit limits, and decodes
values with subclasses of the library's type classes that are metered (a quota of values and bytes, a
nesting depth) and apply Candid's `opt` rule: a value that does not fit its expected `opt` type is
skipped and decodes as `null`, as the Rust decoder that the real canister uses does.

Encoding goes through the library's `encode`; the type table is laid out children first and shares
structurally equal types, as `@dfinity/candid` does, so that the bytes match DFINITY's encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from icp_candid.candid import (
    LEB128,
    PREFIX,
    ConstructType,
    EmptyClass,
    FixedNatClass,
    FuncClass,
    NullClass,
    OptClass,
    Pipe,
    PrimitiveType,
    RecClass,
    RecordClass,
    ReservedClass,
    ServiceClass,
    Type,
    TypeIds,
    Types,
    TypeTable,
    VariantClass,
    VecClass,
    encode,
)

from icllm_emulator.errors import IcllmError

__all__ = ["CandidError", "DecodeLimits", "decode_args", "encode_args", "intern"]


class CandidError(IcllmError, ValueError):
    """Bytes that are not a valid Candid message for the expected types; the message says what failed."""


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What one decode may cost, so that no input takes long or much memory.

    A v1_chat argument as ic-llm or @dfinity/candid encodes it has 23 types with 29 fields and nests
    about 12 deep; the limits leave room for callers that send extra fields and types, and stop
    bombs early.
    """

    max_types: int = 1000
    max_fields: int = 5000
    max_depth: int = 64
    # Values decoded or skipped (vec elements, record fields, opt and variant values) plus bytes read
    # one at a time (LEB128 numbers, flags); text and blob bytes are copied in bulk and not counted.
    max_work: int = 20_000
    max_leb128_bytes: int = 32


DEFAULT_LIMITS = DecodeLimits()

_PRIMITIVES: dict[int, Type] = {
    TypeIds.Null.value: Types.Null,
    TypeIds.Bool.value: Types.Bool,
    TypeIds.Nat.value: Types.Nat,
    TypeIds.Int.value: Types.Int,
    TypeIds.Nat8.value: Types.Nat8,
    TypeIds.Nat16.value: Types.Nat16,
    TypeIds.Nat32.value: Types.Nat32,
    TypeIds.Nat64.value: Types.Nat64,
    TypeIds.Int8.value: Types.Int8,
    TypeIds.Int16.value: Types.Int16,
    TypeIds.Int32.value: Types.Int32,
    TypeIds.Int64.value: Types.Int64,
    TypeIds.Float32.value: Types.Float32,
    TypeIds.Float64.value: Types.Float64,
    TypeIds.Text.value: Types.Text,
    TypeIds.Reserved.value: Types.Reserved,
    TypeIds.Empty.value: Types.Empty,
    TypeIds.Principal.value: Types.Principal,
}
_MAX_FIELD_ID = 2**32 - 1


def resolve(t: Type) -> Any:
    """The type behind any number of `Rec` indirections (named and recursive types)."""
    return t.get_type() if isinstance(t, RecClass) else t


def kind(t: Type) -> str:
    """A short, non-recursive name of a type for messages (a deep type's full name can be huge)."""
    t = resolve(t)
    for cls, name in (
        (OptClass, "opt"),
        (VecClass, "vec"),
        (RecordClass, "record"),
        (VariantClass, "variant"),
        (FuncClass, "func"),
        (ServiceClass, "service"),
    ):
        if isinstance(t, cls):
            return name
    return str(t.name)


# -- the metered input -----------------------------------------------------------------------------


class Meter(Pipe):  # type: ignore[misc]
    """The library's input pipe, counting work and depth and remembering where decoding is."""

    __slots__ = ("_leb_run", "depth", "empties", "limits", "path", "subtypes", "work")

    def __init__(self, buffer: bytes | memoryview, limits: DecodeLimits) -> None:
        super().__init__(buffer)
        self.limits = limits
        self.work = 0
        self.depth = 0
        self._leb_run = 0
        self.path: list[str] = []
        self.subtypes: dict[tuple[int, int], bool] = {}
        self.empties: dict[int, bool] = {}

    def charge(self, units: int) -> None:
        """Count work; every step of decoding is charged, so no input costs more than the quota."""
        self.work += units
        if self.work > self.limits.max_work:
            raise CandidError(
                f"the message is too costly to decode: it takes more than {self.limits.max_work} steps "
                "(a step per vec element, record field, option, variant and number byte), the decoder's "
                "quota; requests to the LLM canister take a few hundred"
            )

    def read_byte(self) -> int:
        self.charge(1)
        byte: int = super().read_byte()
        if byte & 0x80:
            self._leb_run += 1
            if self._leb_run >= self.limits.max_leb128_bytes:
                raise CandidError(
                    f"a LEB128 number runs over {self.limits.max_leb128_bytes} bytes; lengths, "
                    "indices and field ids fit in 10"
                )
        else:
            self._leb_run = 0
        return byte

    def read(self, num: int) -> bytes:
        self._leb_run = 0
        data: bytes = super().read(num)
        return data

    def enter(self) -> None:
        self.depth += 1
        if self.depth > self.limits.max_depth:
            raise CandidError(f"values nest deeper than {self.limits.max_depth} levels")

    def leave(self) -> None:
        self.depth -= 1

    def where(self) -> str:
        """Where decoding stopped, e.g. `messages[2].assistant.content`."""
        return "".join(self.path).lstrip(".")


def _leb_u(pipe: Meter) -> int:
    value: int = LEB128.decode_u(pipe)
    return value


def _leb_i(pipe: Meter) -> int:
    value: int = LEB128.decode_i(pipe)
    return value


# -- metered, subtyping versions of the library's constructed types --------------------------------


class Field(RecClass):  # type: ignore[misc]
    """A record field's or variant case's type, labelled so that errors can say where they happened.

    A `Rec` is the library's transparent indirection, so the library's record and variant code
    (missing `opt` fields, skipping, encoding) treats a labelled type exactly as the type itself.
    """

    def __init__(self, label: str, inner: Type) -> None:
        super().__init__()
        self.label = label
        self.fill(inner)

    def decodeValue(self, b: Meter, t: Type) -> Any:
        b.path.append(f".{self.label}")
        value = self.get_type().decodeValue(b, t)
        b.path.pop()
        return value

    def _buildTypeTableImpl(self, typeTable: TypeTable) -> None:
        inner = self.get_type()
        if isinstance(inner, ConstructType):
            inner.buildTypeTable(typeTable)


def _mismatch(expected: Type, wire: Type) -> CandidError:
    return CandidError(f"expected {kind(expected)}, the argument has {kind(wire)}")


class Opt(OptClass):  # type: ignore[misc]
    """`opt`, with Candid's rule that a value which does not fit decodes as null (the library fails)."""

    @property
    def name(self) -> str:
        return "opt"

    def decodeValue(self, b: Meter, t: Type) -> list[Any]:
        """Candid's `opt` rule: a value that does not fit the expected type is skipped and is `null`."""
        wire = resolve(t)
        b.charge(1)
        if isinstance(wire, NullClass | ReservedClass):
            return []
        b.enter()
        if isinstance(wire, OptClass):
            flag = b.read_byte()
            if flag == 0:
                b.leave()
                return []
            if flag != 1:
                raise CandidError(f"an opt value starts with 0 (null) or 1 (a value), not {flag}")
            wire = wire._type
        elif isinstance(resolve(self._type), NullClass | ReservedClass | OptClass):
            _skip(b, wire)  # only an `opt` on the wire can fill an `opt opt`, `opt null` or `opt reserved`
            b.leave()
            return []
        if is_subtype(wire, self._type, b):
            value = [self._type.decodeValue(b, wire)]
        else:
            _skip(b, wire)
            value = []
        b.leave()
        return value

    def _buildTypeTableImpl(self, typeTable: TypeTable) -> None:
        self._type.buildTypeTable(typeTable)
        _add_last(typeTable, self, LEB128.encode_i(TypeIds.Opt.value) + self._type.encodeType(typeTable))


class Vec(VecClass):  # type: ignore[misc]
    """`vec`, whose declared length is checked against the bytes left and charged before any element."""

    @property
    def name(self) -> str:
        return "vec"

    def checkType(self, t: Type) -> Any:
        wire = resolve(t)
        if not isinstance(wire, VecClass):
            raise _mismatch(self, wire)
        return wire

    def decodeValue(self, b: Meter, t: Type) -> Any:
        wire = self.checkType(t)
        b.enter()
        length = _leb_u(b)
        element, wire_element = self._type, wire._type
        if length > b.remaining and not _may_be_empty(wire_element, b):
            raise CandidError(
                f"a vec declares {length} elements, but only {b.remaining} bytes of the message remain"
            )
        if _is_nat8(wire_element) and _is_nat8(element):
            data = b.read(length)  # a blob: copied in bulk
            b.leave()
            return data
        b.charge(length)
        values = []
        for index in range(length):
            b.path.append(f"[{index}]")
            values.append(element.decodeValue(b, wire_element))
            b.path.pop()
        b.leave()
        return values

    def _buildTypeTableImpl(self, typeTable: TypeTable) -> None:
        self._type.buildTypeTable(typeTable)
        _add_last(typeTable, self, LEB128.encode_i(TypeIds.Vec.value) + self._type.encodeType(typeTable))


def _is_nat8(t: Type) -> bool:
    t = resolve(t)
    return isinstance(t, FixedNatClass) and t._bits == 8


class Record(RecordClass):  # type: ignore[misc]
    """`record`: the library's field matching (extra fields skipped, missing `opt` fields null), metered."""

    @property
    def name(self) -> str:
        return "record"

    def tryAsTuple(self) -> bool:
        """Records stay dicts: the library's check is quadratic in the fields, and the door needs none."""
        return False

    def checkType(self, t: Type) -> Any:
        wire = resolve(t)
        if not isinstance(wire, RecordClass):
            raise _mismatch(self, wire)
        return wire

    def decodeValue(self, b: Meter, t: Type) -> Any:
        wire = self.checkType(t)
        b.charge(1 + len(wire._sorted_hashes))
        b.enter()
        try:
            value = super().decodeValue(b, wire)
        except ValueError as error:
            if str(error).startswith("Missing field"):
                raise CandidError(
                    f"a record lacks the field {str(error)[14:]!r}, which is not optional"
                ) from None
            raise
        b.leave()
        return value

    def _buildTypeTableImpl(self, typeTable: TypeTable) -> None:
        fields = [self._field_map[h] for h in self._sorted_hashes]
        for _, field_type in fields:
            field_type.buildTypeTable(typeTable)
        _add_last(typeTable, self, _fields_type(TypeIds.Record.value, self._sorted_hashes, fields, typeTable))


class Variant(VariantClass):  # type: ignore[misc]
    """`variant`, metered, naming the valid cases when the argument's case is unknown."""

    @property
    def name(self) -> str:
        return "variant"

    def checkType(self, t: Type) -> Any:
        wire = resolve(t)
        if not isinstance(wire, VariantClass):
            raise _mismatch(self, wire)
        return wire

    def decodeValue(self, b: Meter, t: Type) -> Any:
        wire = self.checkType(t)
        b.charge(1)
        b.enter()
        index = _leb_u(b)
        cases = wire._sorted_hashes
        if index >= len(cases):
            raise CandidError(
                f"variant case {index} is out of range: the variant type has {len(cases)} cases"
            )
        case_id = cases[index]
        if case_id not in self._field_map:
            known = ", ".join(str(self._field_map[h][0]) for h in self._sorted_hashes)
            raise CandidError(f"unknown variant case (field id {case_id}); valid cases: {known}")
        name, case_type = self._field_map[case_id]
        value = {name: case_type.decodeValue(b, wire._field_map[case_id][1])}
        b.leave()
        return value

    def _buildTypeTableImpl(self, typeTable: TypeTable) -> None:
        fields = [self._field_map[h] for h in self._sorted_hashes]
        for _, field_type in fields:
            field_type.buildTypeTable(typeTable)
        _add_last(
            typeTable, self, _fields_type(TypeIds.Variant.value, self._sorted_hashes, fields, typeTable)
        )


def _fields_type(
    opcode: int, ids: Sequence[int], fields: Sequence[tuple[Any, Type]], table: TypeTable
) -> bytes:
    out: bytes = LEB128.encode_i(opcode) + LEB128.encode_u(len(fields))
    return out + b"".join(
        LEB128.encode_u(h) + t.encodeType(table) for h, (_, t) in zip(ids, fields, strict=True)
    )


def _add_last(table: TypeTable, t: Type, entry: bytes) -> None:
    """Add a type after its children, as @dfinity/candid lays out its type table."""
    table.get_or_reserve_index(t)
    table.update(t, entry)


def _skip(b: Meter, wire: Type) -> None:
    """Read past a value the expected type has no use for (an extra field, a mismatched `opt`)."""
    wire.decodeValue(b, wire)


def _may_be_empty(t: Type, b: Meter, depth: int = 0) -> bool:
    """Whether a value of this type can take no bytes at all (null, reserved, records of such)."""
    t = resolve(t)
    if isinstance(t, NullClass | ReservedClass):
        return True
    if not isinstance(t, RecordClass) or depth > b.limits.max_depth:
        return False  # too deep to hold a value anyway
    if id(t) not in b.empties:
        b.empties[id(t)] = True  # a record that contains itself: assume so while looking
        b.charge(len(t._field_map))
        b.empties[id(t)] = all(
            _may_be_empty(field_type, b, depth + 1) for _, field_type in t._field_map.values()
        )
    return b.empties[id(t)]


# -- subtyping -------------------------------------------------------------------------------------


def is_subtype(wire: Type, expected: Type, b: Meter) -> bool:
    """Candid's subtype relation `wire <: expected`, as the Rust implementation checks it.

    Recursive types are handled coinductively: a pair under examination is assumed to hold. Each
    pair is checked once per message, and its fields are charged to the message's quota.
    """
    w, e = resolve(wire), resolve(expected)
    key = (id(w), id(e))
    memo = b.subtypes
    if key in memo:
        return memo[key]
    memo[key] = True
    memo[key] = result = _subtype(w, e, b)
    return result


def _subtype(w: Any, e: Any, b: Meter) -> bool:
    if isinstance(e, ReservedClass) or isinstance(w, EmptyClass):
        return True
    if isinstance(e, OptClass):
        return True  # any value decodes into an opt: as itself when it fits, as null when not
    if isinstance(w, VecClass) and isinstance(e, VecClass):
        return is_subtype(w._type, e._type, b)
    if isinstance(w, RecordClass | VariantClass):
        b.charge(1 + len(w._field_map))
    if isinstance(w, RecordClass) and isinstance(e, RecordClass):
        for field_id, (_, field_type) in e._field_map.items():
            if field_id in w._field_map:
                if not is_subtype(w._field_map[field_id][1], field_type, b):
                    return False
            elif not isinstance(resolve(field_type), NullClass | ReservedClass | OptClass):
                return False
        return True
    if isinstance(w, VariantClass) and isinstance(e, VariantClass):
        return all(
            field_id in e._field_map and is_subtype(case_type, e._field_map[field_id][1], b)
            for field_id, (_, case_type) in w._field_map.items()
        )
    if isinstance(w, FuncClass) and isinstance(e, FuncClass):
        return True  # references are opaque here; the LLM canister's interface has none
    if isinstance(w, ServiceClass) and isinstance(e, ServiceClass):
        return True
    if isinstance(w, PrimitiveType) and isinstance(e, PrimitiveType):
        return bool(w.name == e.name or (w.name == "nat" and e.name == "int"))
    return False


# -- the type table --------------------------------------------------------------------------------


def _read_type_table(pipe: Meter) -> Callable[[int], Type]:
    """Read the message's type table into library types; returns the lookup of a type index."""
    limits = pipe.limits
    count = _leb_u(pipe)
    if count > limits.max_types:
        raise CandidError(
            f"the type table declares {count} types; this decoder accepts at most {limits.max_types} "
            "(a v1_chat argument needs about 25)"
        )
    table = [Types.Rec() for _ in range(count)]

    def ref(index: int) -> Type:
        if 0 <= index < count:
            return table[index]
        if index in _PRIMITIVES:
            return _PRIMITIVES[index]
        if index >= 0:
            raise CandidError(f"the type table refers to type {index}, but it has only {count} types")
        raise CandidError(f"unknown primitive type code {index}")

    fields = 0

    def read_fields(what: str) -> dict[int, Type]:
        nonlocal fields
        n = _leb_u(pipe)
        fields += n
        if fields > limits.max_fields:
            raise CandidError(
                f"the type table declares more than {limits.max_fields} record and variant fields"
            )
        result: dict[int, Type] = {}
        previous = -1
        for _ in range(n):
            field_id = _leb_u(pipe)
            if field_id > _MAX_FIELD_ID:
                raise CandidError(f"{what} field id {field_id} does not fit in 32 bits")
            if field_id <= previous:
                raise CandidError(f"{what} field ids must increase, but {field_id} follows {previous}")
            previous = field_id
            result[field_id] = ref(_leb_i(pipe))
        return result

    for index in range(count):
        code = _leb_i(pipe)
        t: Type
        if code == TypeIds.Opt.value:
            t = Opt(ref(_leb_i(pipe)))
        elif code == TypeIds.Vec.value:
            t = Vec(ref(_leb_i(pipe)))
        elif code == TypeIds.Record.value:
            t = Record(read_fields("record"))
        elif code == TypeIds.Variant.value:
            t = Variant(read_fields("variant"))
        elif code == TypeIds.Func.value:
            t = _read_func(pipe, ref)
        elif code == TypeIds.Service.value:
            t = _read_service(pipe, ref)
        else:
            raise CandidError(f"type table entry {index} has type code {code}, which is no constructed type")
        table[index].fill(t)
    return ref


def _read_func(pipe: Meter, ref: Callable[[int], Type]) -> Type:
    args = [ref(_leb_i(pipe)) for _ in range(_bounded_count(pipe, "func arguments"))]
    rets = [ref(_leb_i(pipe)) for _ in range(_bounded_count(pipe, "func results"))]
    modes = {1: "query", 2: "oneway", 3: "composite_query"}
    annotations = []
    for _ in range(_bounded_count(pipe, "func annotations")):
        byte = pipe.read_byte()
        if byte not in modes:
            raise CandidError(f"unknown func annotation {byte}")
        annotations.append(modes[byte])
    return Types.Func(args, rets, annotations)


def _read_service(pipe: Meter, ref: Callable[[int], Type]) -> Type:
    methods = {}
    for _ in range(_bounded_count(pipe, "service methods")):
        name = pipe.read(_bounded_count(pipe, "method name")).decode("utf-8")
        methods[name] = ref(_leb_i(pipe))
    return Types.Service(methods)


def _bounded_count(pipe: Meter, what: str) -> int:
    n = _leb_u(pipe)
    if n > pipe.remaining:
        raise CandidError(f"{what}: {n} declared, but only {pipe.remaining} bytes remain")
    pipe.charge(n)
    return n


# -- the whole message -----------------------------------------------------------------------------


def decode_args(data: bytes, expected: Sequence[Type], limits: DecodeLimits = DEFAULT_LIMITS) -> list[Any]:
    """Decode a Candid message into values of the expected types, or raise `CandidError`.

    Extra arguments are read and ignored; a missing trailing argument of an `opt` type is null.
    """
    if data[:4] != PREFIX:
        raise CandidError(
            f"not a Candid message: it must start with the magic bytes 'DIDL' (44 49 44 4c), "
            f"these start with {data[:4].hex(' ') or 'nothing'}"
        )
    pipe = Meter(memoryview(data)[4:], limits)
    try:
        ref = _read_type_table(pipe)
        wire = [ref(_leb_i(pipe)) for _ in range(_bounded_count(pipe, "argument count"))]
    except CandidError:
        raise
    except (ValueError, IndexError) as error:
        raise CandidError(f"the type table is malformed: {_explain(error)}") from None
    values = []
    position = 0
    try:
        for position, expected_type in enumerate(expected):
            if position < len(wire):
                values.append(expected_type.decodeValue(pipe, wire[position]))
            elif isinstance(resolve(expected_type), OptClass | NullClass | ReservedClass):
                values.append([])
            else:
                raise CandidError(
                    f"the message has {len(wire)} arguments, but argument {position + 1} is required "
                    "(its type is not opt)"
                )
            pipe.path = []
        for position in range(len(expected), len(wire)):
            _skip(pipe, wire[position])  # extra arguments are ignored, but must be well formed
    except CandidError as error:
        raise CandidError(_located(pipe, position, len(expected), str(error))) from None
    except (ValueError, IndexError, KeyError, TypeError, AttributeError, RecursionError) as error:
        raise CandidError(_located(pipe, position, len(expected), _explain(error))) from None
    if pipe.remaining:
        raise CandidError(f"{pipe.remaining} bytes follow the last argument; a Candid message ends there")
    return values


def _located(pipe: Meter, position: int, expected: int, message: str) -> str:
    """Say where decoding failed: the field path, and which argument unless there is just one."""
    where = pipe.where()
    if position >= expected:
        argument = f"argument {position + 1} (an extra one, read and ignored)"
    elif expected > 1:
        argument = f"argument {position + 1}"
    else:
        return f"at {where}: {message}" if where else message
    return f"{argument}, at {where}: {message}" if where else f"{argument}: {message}"


def _explain(error: Exception) -> str:
    """The library's terse errors, said plainly."""
    text = str(error)
    if isinstance(error, UnicodeDecodeError):
        return f"text is not valid UTF-8 ({error.reason} at byte {error.start})"
    if text in ("unexpected end of buffer", "read out of bounds"):
        return "the message ends in the middle of a value (truncated?)"
    if text.startswith("Type mismatch: wire "):
        wire, _, expected = text[len("Type mismatch: wire ") :].partition(", expect ")
        return f"expected {expected}, the argument has {wire}"
    if isinstance(error, RecursionError):
        return "values nest too deeply"
    return text or type(error).__name__


def encode_args(types: Sequence[Type], values: Sequence[Any]) -> bytes:
    """Encode values of the given types with the library's encoder."""
    data: bytes = encode([{"type": t, "value": v} for t, v in zip(types, values, strict=True)])
    return data


# -- expected types from the .did ------------------------------------------------------------------


def intern(t: Type) -> Type:
    """The metered, subtyping version of a type parsed from a `.did`, structurally shared.

    Equal types become one object, so the encoder writes each once in the type table, as
    @dfinity/candid does (it shares types by their structure too).
    """
    return _Interner().convert(t)


class _Interner:
    def __init__(self) -> None:
        self.shared: dict[tuple[Any, ...], Type] = {}
        self.named: dict[int, Type] = {}
        self.open: dict[int, RecClass] = {}

    def convert(self, t: Type) -> Type:
        if isinstance(t, RecClass):
            return self._named(t)
        if isinstance(t, OptClass):
            inner = self.convert(t._type)
            return self._share(("opt", id(inner)), lambda: Opt(inner))
        if isinstance(t, VecClass):
            inner = self.convert(t._type)
            return self._share(("vec", id(inner)), lambda: Vec(inner))
        if isinstance(t, RecordClass | VariantClass):
            fields = {h: (str(name), self.convert(ft)) for h, (name, ft) in t._field_map.items()}
            shape = tuple((h, name, id(ft)) for h, (name, ft) in sorted(fields.items()))
            cls = Record if isinstance(t, RecordClass) else Variant
            return self._share(
                (cls.__name__, shape),
                lambda: cls({name: Field(name, ft) for name, ft in fields.values()}),
            )
        return t

    def _named(self, t: RecClass) -> Type:
        key = id(t)
        if key in self.named:
            return self.named[key]
        if key in self.open:  # a recursive type: refer to it through a Rec
            return self.open[key]
        self.open[key] = placeholder = Types.Rec()
        inner = self.convert(t.get_type())
        placeholder.fill(inner)
        del self.open[key]
        self.named[key] = inner
        return inner

    def _share(self, key: tuple[Any, ...], make: Callable[[], Type]) -> Type:
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]
