"""A canister module's bytes: checked, its Candid interface read, rewritten so the runtime can see inside.

The runtime restores a message's mutable globals after a trap and calls reply/reject/cleanup callbacks
through function table 0. Motoko exports its table; Rust/LLVM and ic-cdk modules export neither the
table nor their globals, so `prepare` appends those exports (under names no canister uses) to the export
section. Nothing else in the module changes. Compiled modules are cached on disk, keyed by the prepared
bytes, the engine settings and the wasmtime version, so a second run installs in milliseconds; both that
cache and a runtime's compiled modules in memory are bounded, the least recently used going first.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import NamedTuple

import wasmtime
from icp_candid.candid import LEB128

from icllm_emulator.runtime.errors import ModuleError

WASM_MAGIC = b"\0asm\x01\0\0\0"
GZIP_MAGIC = b"\x1f\x8b"
TABLE_EXPORT = "__icllm_table"
EXPORT_FUNC, EXPORT_MEMORY = 0, 2
# The IC's limits on a module's exported methods (canister_update/query/composite_query ...): their
# number, and the sum of their names' lengths.
MAX_EXPORTED_FUNCTIONS = 1_000
MAX_EXPORTED_NAME_BYTES = 20_000
METHOD_PREFIXES = ("canister_update ", "canister_query ", "canister_composite_query ")
GLOBAL_EXPORT = "__icllm_global_"
# The IC's limit on an installed module (after decompression): 100 MiB, with 30 MiB of code sections.
MAX_MODULE_BYTES = 100 * 1024 * 1024
CACHE_ENV = "ICLLM_MODULE_CACHE"
# Compiled code is several times the size of its module (the Motoko agent's 0.4 MB compile to 1.5 MB), and
# a module made to compile badly costs far more (98 KiB that compile to 99 MiB). The disk cache is shared
# by every run on the machine: 1 GiB holds the test canisters of many projects, while a stream of distinct
# modules (generated ones, a fuzzer) can no longer fill the disk.
DISK_CACHE_BYTES = 1024**3
# What one runtime keeps compiled in memory, so that installing a module again skips even the disk cache:
# 256 MiB holds twenty Azle (ic-cdk) canisters of 12 MB compiled, or over a hundred Motoko agents of
# 1.5 MB, and bounds the process when many distinct modules are installed (the disk cache still answers).
MEMORY_CACHE_BYTES = 256 * 1024**2
# Sections that come after the export section: start, element, data count, code, data.
_AFTER_EXPORT = frozenset({8, 9, 10, 11, 12})

_SECTION_CUSTOM, _SECTION_IMPORT, _SECTION_TABLE, _SECTION_MEMORY, _SECTION_GLOBAL, _SECTION_EXPORT = (
    0,
    2,
    4,
    5,
    6,
    7,
)


def _leb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ModuleError("the module is truncated (a LEB128 number runs past its end)")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos
        if shift > 70:
            raise ModuleError("the module has a malformed LEB128 number")


def _uleb(value: int) -> bytes:
    return bytes(LEB128.encode_u(value))


def _encoded(section: int, content: bytes) -> bytes:
    """A section's bytes: its id, its size, its content."""
    return bytes([section]) + _uleb(len(content)) + content


def _name(data: bytes, pos: int) -> tuple[str, int]:
    size, pos = _leb(data, pos)
    raw = data[pos : pos + size]
    if len(raw) != size:
        raise ModuleError("the module is truncated (a name runs past its end)")
    return raw.decode("utf-8", "replace"), pos + size


def _skip_limits(data: bytes, pos: int) -> int:
    flags, pos = _leb(data, pos)
    _, pos = _leb(data, pos)
    if flags & 1:
        _, pos = _leb(data, pos)
    return pos


def _skip_init_expr(data: bytes, pos: int) -> int:
    """Skip a constant expression (i32/i64/f32/f64.const, global.get, ref.null/func, extended-const)."""
    while pos < len(data):
        op = data[pos]
        pos += 1
        if op == 0x0B:
            return pos
        if op in (0x41, 0x42, 0x23, 0xD2, 0xD0):  # consts, global.get, ref.func: one immediate
            _, pos = _leb(data, pos)
        elif op == 0x43:
            pos += 4
        elif op == 0x44:
            pos += 8
        elif op not in (0x6A, 0x6B, 0x6C, 0x7C, 0x7D, 0x7E):  # extended-const arithmetic
            raise ModuleError(f"the module's global initialiser uses opcode 0x{op:02x}, not a constant")
    raise ModuleError("the module is truncated (a global initialiser has no end)")


@dataclass
class ModuleInfo:
    """What the runtime needs to know of a module before compiling it."""

    imports: list[tuple[str, str]] = field(default_factory=list)
    custom: dict[str, bytes] = field(default_factory=dict)
    exports: dict[str, int] = field(default_factory=dict)
    imported_globals: int = 0
    mutable_globals: list[int] = field(default_factory=list)
    has_table: bool = False
    # The name under which table 0 is exported, if the module exports it itself.
    own_table_export: str | None = None

    @property
    def table_export(self) -> str | None:
        """Where the prepared module exports table 0 (None: the module has no table)."""
        if self.own_table_export is not None:
            return self.own_table_export
        return TABLE_EXPORT if self.has_table else None

    @property
    def candid(self) -> str | None:
        """The `candid:service` section, with the init arguments of `candid:args` (moc keeps them apart)."""
        service = _section(self.custom, "candid:service")
        if service is None:
            return None
        args = _section(self.custom, "candid:args")
        if args and not re.search(r"service\s*:\s*\(", service):
            service = re.sub(
                r"service\s*:\s*\{", lambda _: f"service : {args.strip()} -> {{", service, count=1
            )
        return service


def _section(custom: dict[str, bytes], name: str) -> str | None:
    for visibility in ("icp:public", "icp:private"):
        if f"{visibility} {name}" in custom:
            return custom[f"{visibility} {name}"].decode("utf-8", "replace")
    return None


def unpack(data: bytes, source: str = "the module") -> bytes:
    """The raw Wasm of a `.wasm` or `.wasm.gz`, or a `ModuleError` that says what the bytes are instead."""
    if data[:2] == GZIP_MAGIC:
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as handle:
                data = handle.read(MAX_MODULE_BYTES + 1)
        except (OSError, EOFError) as error:
            raise ModuleError(f"{source} is gzip that does not decompress: {error}") from None
    if len(data) > MAX_MODULE_BYTES:
        raise ModuleError(
            f"{source} is larger than the IC's limit of {MAX_MODULE_BYTES // (1024 * 1024)} MiB for a module"
        )
    if data[:8] != WASM_MAGIC:
        shown = data[:8].hex(" ") or "nothing"
        raise ModuleError(
            f"{source} is not a WebAssembly module: it starts with {shown}, not 00 61 73 6d 01 00 00 00 "
            "(give a .wasm or .wasm.gz file as built by moc, cargo or dfx)"
        )
    return data


def inspect(wasm: bytes) -> ModuleInfo:
    """Read the sections the runtime cares about; malformed sections are a `ModuleError`."""
    info = ModuleInfo()
    pos = 8
    while pos < len(wasm):
        section = wasm[pos]
        size, body = _leb(wasm, pos + 1)
        end = body + size
        if end > len(wasm):
            raise ModuleError(
                f"the module is truncated: section {section} runs {end - len(wasm)} bytes past its end"
            )
        if section == _SECTION_CUSTOM:
            name, start = _name(wasm, body)
            info.custom[name] = wasm[start:end]
        elif section == _SECTION_IMPORT:
            count, p = _leb(wasm, body)
            for _ in range(count):
                module, p = _name(wasm, p)
                name, p = _name(wasm, p)
                kind = wasm[p]
                p += 1
                if kind == 0:
                    _, p = _leb(wasm, p)
                    info.imports.append((module, name))
                elif kind == 1:
                    p = _skip_limits(wasm, p + 1)
                    info.has_table = True
                    info.imports.append((module, name))
                elif kind == 2:
                    p = _skip_limits(wasm, p)
                    info.imports.append((module, name))
                elif kind == 3:
                    p += 2
                    info.imported_globals += 1
                    info.imports.append((module, name))
                else:
                    raise ModuleError(f"the module imports {module}.{name} of unknown kind {kind}")
        elif section == _SECTION_TABLE:
            count, _ = _leb(wasm, body)
            info.has_table = info.has_table or count > 0
        elif section == _SECTION_GLOBAL:
            count, p = _leb(wasm, body)
            for index in range(count):
                p += 1  # value type
                mutable = wasm[p]
                p = _skip_init_expr(wasm, p + 1)
                if mutable:
                    info.mutable_globals.append(info.imported_globals + index)
        elif section == _SECTION_EXPORT:
            count, p = _leb(wasm, body)
            for _ in range(count):
                name, p = _name(wasm, p)
                kind = wasm[p]
                index, p = _leb(wasm, p + 1)
                info.exports[name] = kind
                if kind == 1 and index == 0:
                    info.own_table_export = name
        pos = end
    _check_exports(info)
    return info


def _check_exports(info: ModuleInfo) -> None:
    functions = [
        name.split(" ", 1)[1]
        for name, kind in info.exports.items()
        if kind == EXPORT_FUNC and name.startswith(METHOD_PREFIXES)
    ]
    if len(functions) > MAX_EXPORTED_FUNCTIONS:
        raise ModuleError(
            f"the module exports {len(functions)} methods; the IC accepts at most {MAX_EXPORTED_FUNCTIONS} "
            "(canister_update, canister_query and canister_composite_query functions together)"
        )
    length = sum(len(name.encode()) for name in functions)
    if length > MAX_EXPORTED_NAME_BYTES:
        raise ModuleError(
            f"the names of the module's methods are {length} bytes long together; the IC accepts "
            f"at most {MAX_EXPORTED_NAME_BYTES}"
        )


def prepare(wasm: bytes, info: ModuleInfo) -> bytes:
    """The module with table 0 and every mutable global exported, for callbacks and rollback."""
    extra = []
    if info.has_table and info.own_table_export is None:
        extra.append(_uleb(len(TABLE_EXPORT)) + TABLE_EXPORT.encode() + b"\x01" + _uleb(0))
    for index in info.mutable_globals:
        name = f"{GLOBAL_EXPORT}{index}".encode()
        extra.append(_uleb(len(name)) + name + b"\x03" + _uleb(index))
    return _with_exports(wasm, extra) if extra else wasm


def _with_exports(wasm: bytes, entries: list[bytes], drop: int | None = None) -> bytes:
    """The module with `entries` (encoded export entries) added to its export section (one is made where
    the section order wants it if there is none), and the section with id `drop` left out."""
    added = b"".join(entries)
    out = bytearray(wasm[:8])
    pos = 8
    done = False
    while pos < len(wasm):
        section = wasm[pos]
        size, body = _leb(wasm, pos + 1)
        end = body + size
        if section == _SECTION_EXPORT:
            count, p = _leb(wasm, body)
            out += _encoded(section, _uleb(count + len(entries)) + wasm[p:end] + added)
            done = True
        elif section != drop:
            if not done and section in _AFTER_EXPORT:
                out += _encoded(_SECTION_EXPORT, _uleb(len(entries)) + added)
                done = True
            out += wasm[pos:end]
        pos = end
    if not done:
        out += _encoded(_SECTION_EXPORT, _uleb(len(entries)) + added)
    return bytes(out)


START_EXPORT = "__icllm_start"
_SECTION_START = 8


def defer_start(wasm: bytes) -> bytes:
    """The module without its start section, the start function exported as `START_EXPORT` instead.

    An upgrade that keeps the heap (enhanced orthogonal persistence) must run the new module's start
    function on the kept memory, as the IC does: instantiate, put the heap in, then call it. A module
    without a start function comes back as it is.
    """
    start: bytes | None = None
    pos = 8
    while pos < len(wasm):
        size, body = _leb(wasm, pos + 1)
        if wasm[pos] == _SECTION_START:
            start = wasm[body : body + size]
        pos = body + size
    if start is None:
        return wasm
    entry = _uleb(len(START_EXPORT)) + START_EXPORT.encode() + b"\x00" + start
    return _with_exports(wasm, [entry], drop=_SECTION_START)


def explain(error: BaseException) -> str:
    """wasmtime's multi-line error as one line: its causes, innermost last."""
    lines = [line.strip() for line in str(error).splitlines()]
    causes = [line.split(": ", 1)[1] if line[:1].isdigit() and ": " in line else line for line in lines]
    return "; ".join(c for c in causes if c and c != "Caused by:") or type(error).__name__


def cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV)
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pytest-icllm" / "modules"


ENGINE_SETTINGS = "memory64+fuel+epoch+v1"


def make_engine() -> wasmtime.Engine:
    config = wasmtime.Config()
    config.wasm_memory64 = True
    config.consume_fuel = True
    config.epoch_interruption = True  # the wall-clock budget, and a reset, stop a running message
    return wasmtime.Engine(config)


class Compiled(NamedTuple):
    """A compiled module, whether it came from the disk cache, and its compiled size in bytes."""

    module: wasmtime.Module
    cached: bool
    size: int


def compile_module(
    engine: wasmtime.Engine, wasm: bytes, *, use_cache: bool = True, disk_limit: int = DISK_CACHE_BYTES
) -> Compiled:
    """The compiled module, from the disk cache if it has it (compiling a 3.5 MB module takes seconds).

    A cache hit marks the entry as recently used; a new entry evicts the least recently used ones until
    the cache holds at most `disk_limit` bytes.
    """
    key = hashlib.sha256(wasm + ENGINE_SETTINGS.encode() + version("wasmtime").encode()).hexdigest()
    path = cache_dir() / f"{key}.cwasm"
    if use_cache and path.is_file():
        try:
            # Read, not mapped: a cache file replaced or truncated by another run cannot fault this one.
            data = path.read_bytes()
            module = wasmtime.Module.deserialize(engine, data)
            os.utime(path)
            return Compiled(module, True, len(data))
        except (wasmtime.WasmtimeError, OSError):
            path.unlink(missing_ok=True)  # a stale or damaged cache entry is compiled again
    try:
        module = wasmtime.Module(engine, wasm)
    except wasmtime.WasmtimeError as error:
        raise ModuleError(f"the module does not validate as WebAssembly: {explain(error)}") from None
    code = module.serialize()
    if use_cache and len(code) <= disk_limit:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as handle:
                handle.write(code)
            os.replace(handle.name, path)
            _trim(path.parent, disk_limit)
        except OSError:
            pass  # an unwritable cache only costs the next run a compile
    return Compiled(module, False, len(code))


def _trim(folder: Path, limit: int) -> None:
    """Delete the least recently used compiled modules until the folder holds at most `limit` bytes."""
    entries = []
    for path in folder.glob("*.cwasm"):
        try:
            stat = path.stat()
        except OSError:
            continue  # deleted by another run meanwhile
        entries.append((stat.st_mtime_ns, stat.st_size, path))
    kept = 0
    for _, size, path in sorted(entries, reverse=True):
        kept += size
        if kept > limit:
            path.unlink(missing_ok=True)


class CompiledCache:
    """A runtime's compiled modules by key, at most `limit_bytes` of them, least recently used evicted.

    Safe to use from several threads (modules are compiled off the event loop).
    """

    def __init__(self, limit_bytes: int = MEMORY_CACHE_BYTES) -> None:
        self.limit_bytes = limit_bytes
        self.size = 0
        self._entries: OrderedDict[bytes, Compiled] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> wasmtime.Module | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry.module

    def put(self, key: bytes, compiled: Compiled) -> None:
        with self._lock:
            if key in self._entries or compiled.size > self.limit_bytes:
                return
            self._entries[key] = compiled
            self.size += compiled.size
            while self.size > self.limit_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.size -= evicted.size

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)
