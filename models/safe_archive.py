"""Checks a model archive before torch reads it, so that opening a file never runs its code.

torch's readers trust their input: `torch.export.load` unpickles sample inputs, constants
and weights with the full pickle machinery, hands symbolic-shape strings to
`sympy.sympify` (which evaluates them), compiles `guards_code` into Python and
resolves graph targets by walking attributes of `torch`; the zip readers allocate
whatever size a member declares. Everything here reads the bytes with `zipfile`,
`json` and `pickletools` only — nothing is unpickled, compiled or imported — and
raises `ModelLoadError` (`UnsafeModelError` for content that would run code) naming
the member and what is allowed. After loading, `check_export_graph` and
`check_script_graphs` refuse graphs that call operators which touch files.
"""

from __future__ import annotations

import io
import json
import pickletools
import re
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from deeproom.models.errors import ModelLoadError, UnsafeModelError

MAX_MEMBERS = 10_000
"""Members in one archive; a torch archive holds one per tensor plus a few dozen."""
MAX_MEMBER_BYTES = 4 << 30
"""Uncompressed size of one member."""
MAX_TOTAL_BYTES = 4 << 30
"""Uncompressed size of all members together."""
MAX_RATIO = 20
"""Uncompressed total may exceed the archive's size by this factor (plus RATIO_FLOOR):
torch stores tensors uncompressed, so genuine archives stay near 1."""
RATIO_FLOOR = 64 << 20
MAX_PICKLE_BYTES = 64 << 20
"""A pickle program (not its tensor data, which lives in separate members)."""
MAX_JSON_BYTES = 256 << 20
MAX_NESTING = 2
"""torch.save archives inside a .pt2 archive, but no deeper."""

# The only opcodes torch's weights-only unpickler understands; STACK_GLOBAL, INST, OBJ,
# EXT* and the rest can build calls the scan could not name, so they are refused too.
_PICKLE_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "GLOBAL", "REDUCE", "NEWOBJ", "BUILD", "MARK", "POP", "POP_MARK",
    "APPEND", "APPENDS", "SETITEM", "SETITEMS", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
    "EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "NONE", "NEWTRUE", "NEWFALSE",
    "BINPERSID", "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "BINUNICODE",
    "SHORT_BINUNICODE", "SHORT_BINSTRING", "BINSTRING", "SHORT_BINBYTES", "BINBYTES",
    "BINGET", "LONG_BINGET", "BINPUT", "LONG_BINPUT", "MEMOIZE",
})


def _allowed_pickle_globals() -> frozenset[str]:
    # torch's own list, without anything a caller added with add_safe_globals
    from torch._weights_only_unpickler import _get_allowed_globals

    return frozenset(_get_allowed_globals())


# --- zip structure -------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveIndex:
    """The members of a zip archive that passed the structure checks."""

    prefix: str
    """The one top-level folder every member sits in ("" when there is none)."""
    members: dict[str, zipfile.ZipInfo]
    """Member name without the prefix → its entry."""
    archive: zipfile.ZipFile
    """The parsed archive, for reading members (its directory is parsed once)."""


def _entry_count(data: bytes, where: str) -> int:
    """Members declared by the end-of-central-directory record, read before zipfile parses
    the directory (which would build one object per entry, however many there are)."""
    if len(data) < 22 or data[-22:-18] != b"PK\x05\x06":
        raise ModelLoadError(
            f"{where}: a damaged or truncated zip archive (no end record at the end of the file; "
            "torch archives carry no zip comment)")
    count = struct.unpack("<H", data[-12:-10])[0]
    if count == 0xFFFF and len(data) >= 42 and data[-42:-38] == b"PK\x06\x07":
        (offset,) = struct.unpack("<Q", data[-34:-26])
        if offset + 56 <= len(data) and data[offset:offset + 4] == b"PK\x06\x06":
            count = struct.unpack("<Q", data[offset + 32:offset + 40])[0]
    return int(count)


def index_zip(data: bytes, where: str) -> ArchiveIndex:
    """Check a zip archive's structure without decompressing anything.

    Refused: more than MAX_MEMBERS members, a member or a total over the size caps, a
    total that exceeds the archive's own size more than MAX_RATIO times (a decompression
    bomb), absolute or `..` paths, backslashes, duplicate names, also ignoring case (two
    readers could pick different ones), an end record that miscounts the members, encrypted members and members outside one top-level folder.
    """
    count = _entry_count(data, where)
    if count > MAX_MEMBERS:
        raise ModelLoadError(f"{where}: the archive declares {count} members; at most {MAX_MEMBERS} are allowed")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, struct.error) as exc:
        raise ModelLoadError(f"{where}: a damaged or truncated zip archive ({exc})") from None
    if len(infos) > MAX_MEMBERS:
        raise ModelLoadError(f"{where}: the archive holds {len(infos)} members; at most {MAX_MEMBERS} are allowed")
    if len(infos) != count:
        # zipfile walks the directory by its size, torch's reader by this count: they must agree
        raise ModelLoadError(f"{where}: the zip end record declares {count} members but the directory holds "
                             f"{len(infos)}; refused")
    if not infos:
        raise ModelLoadError(f"{where}: an empty zip archive")
    total = 0
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        parts = name.split("/")
        if (name.startswith("/") or "\\" in name or "\x00" in name or ".." in parts or ":" in parts[0]
                or any(p == "" for p in parts[:-1])):
            raise ModelLoadError(f"{where}: member {name!r} has an unsafe path; refused")
        # torch's zip reader looks names up ignoring case: names equal but for case are duplicates too
        if name.casefold() in seen:
            raise ModelLoadError(f"{where}: member {name!r} appears twice (names compared ignoring case); refused")
        seen.add(name.casefold())
        if info.flag_bits & 0x1:
            raise ModelLoadError(f"{where}: member {name!r} is encrypted; refused")
        if info.file_size > MAX_MEMBER_BYTES:
            raise ModelLoadError(
                f"{where}: member {name!r} declares {info.file_size} bytes uncompressed; the cap is {MAX_MEMBER_BYTES}")
        total += info.file_size
    cap = min(MAX_TOTAL_BYTES, len(data) * MAX_RATIO + RATIO_FLOOR)
    if total > cap:
        biggest = max(infos, key=lambda i: i.file_size)
        raise ModelLoadError(
            f"{where}: members declare {total} bytes uncompressed from a {len(data)}-byte archive "
            f"(largest: {biggest.filename!r}, {biggest.file_size} bytes); the cap is {cap} — refused as a "
            "decompression bomb")
    tops = {i.filename.split("/", 1)[0] for i in infos}
    nested = all("/" in i.filename for i in infos)
    if nested and len(tops) != 1:
        raise ModelLoadError(f"{where}: members sit in several top-level folders {sorted(tops)[:5]}; "
                             "a torch archive has one")
    prefix = (tops.pop() + "/") if nested else ""
    members = {i.filename[len(prefix):]: i for i in infos}
    return ArchiveIndex(prefix, members, archive)


def read_member(index: ArchiveIndex, name: str, where: str, cap: int) -> bytes:
    """One member's bytes, at most `cap` of them; the CRC is checked by zipfile."""
    info = index.members[name]
    if info.file_size > cap:
        raise ModelLoadError(f"{where}: member {info.filename!r} declares {info.file_size} bytes; "
                             f"the cap for this kind of member is {cap}")
    try:
        with index.archive.open(info) as f:
            out = f.read(cap + 1)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise ModelLoadError(f"{where}: member {info.filename!r} is damaged ({exc})") from None
    if len(out) > cap or len(out) != info.file_size:
        raise ModelLoadError(f"{where}: member {info.filename!r} is not the size it declares; refused")
    return out


# --- pickles -------------------------------------------------------------------------------


def check_pickle(program: bytes, where: str) -> None:
    """Refuse a pickle unless it only rebuilds tensors and containers.

    Only the opcodes of torch's weights-only unpickler are accepted, and each GLOBAL must
    be one that unpickler allows. Nothing is unpickled.
    """
    allowed = _allowed_pickle_globals()
    try:
        for op, arg, _pos in pickletools.genops(program):
            if op.name not in _PICKLE_OPCODES:
                raise UnsafeModelError(f"{where} could run code (pickle opcode {op.name}); refused. "
                                       "Only tensors and plain containers may be pickled")
            if op.name == "GLOBAL":
                module, _, name = str(arg).partition(" ")
                if f"{module}.{name}" not in allowed:
                    raise UnsafeModelError(f"{where} would run code (pickled global {module}.{name}); refused. "
                                           "Only tensors and plain containers may be pickled")
    except UnsafeModelError:
        raise
    except Exception as exc:  # pickletools raises ValueError and others on damaged programs
        raise ModelLoadError(f"{where} is not a readable pickle ({type(exc).__name__}: {str(exc)[:120]})") from None


def check_torch_save(blob: bytes, where: str, depth: int = 1) -> None:
    """Check a `torch.save` zip held inside another archive: structure, then its pickle."""
    if depth > MAX_NESTING:
        raise ModelLoadError(f"{where}: archives nested too deep; refused")
    if blob[:4] != b"PK\x03\x04":
        raise UnsafeModelError(f"{where} is not a torch.save zip archive (a bare pickle or another format); refused")
    inner = index_zip(blob, where)
    pickles = [n for n in inner.members if n.endswith(".pkl")]
    if pickles != ["data.pkl"]:
        raise ModelLoadError(f"{where}: expected one data.pkl in a torch.save archive, found {pickles[:5]}")
    check_pickle(read_member(inner, "data.pkl", where, MAX_PICKLE_BYTES), f"{where} (data.pkl)")


# --- torch.export (.pt2) ---------------------------------------------------------------------

_PT2_META = {"archive_format", "archive_version", ".data/version", "byteorder", ".data/serialization_id",
             ".data/serialization_id.txt", "version"}
_TARGET_RE = re.compile(r"torch\.ops\.(aten|prims|higher_order|quantized|_quantized|quantized_decomposed)"
                        r"\.[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
_OPERATOR_TARGETS = frozenset(
    f"_operator.{n}" for n in ("getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos",
                               "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "abs", "invert",
                               "lshift", "rshift")
) | frozenset(f"math.{n}" for n in ("ceil", "floor", "trunc", "sqrt", "pow")) | frozenset(
    f"torch.{n}" for n in ("sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_sqrt", "sym_ite",
                           "sym_sum", "_sym_sqrt"))
_HIGHER_ORDER = frozenset({
    "cond", "while_loop", "map_impl", "scan", "associative_scan", "invoke_subgraph", "wrap_with_set_grad_enabled",
    "wrap_with_autocast", "auto_functionalized", "auto_functionalized_v2", "flex_attention",
})
_DENIED_OPS = frozenset({"from_file", "save", "_print"})
"""Operators that read or write files (or the terminal) when the model runs."""
_OP_NAMESPACES = frozenset({"aten", "prims", "quantized", "_quantized", "quantized_decomposed"})

# sympy.sympify evaluates its input, so a symbolic expression must be plain arithmetic over
# symbols: no attribute access, no names but these, no string but a symbol's name.
_SYM_TOKEN = re.compile(
    r"\s+|\d+\.\d*(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?|'[A-Za-z_][A-Za-z0-9_]*'|[A-Za-z_][A-Za-z0-9_]*"
    r"|\*\*|//|==|!=|<=|>=|[-+*/%(),<>=&|~]")
_SYM_NAMES = frozenset({
    "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs", "Eq", "Ne", "Lt",
    "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality",
    "Unequality", "And", "Or", "Not", "floor", "ceiling", "sqrt", "Piecewise", "ITE", "oo", "zoo", "nan",
    "Infinity", "NegativeInfinity", "True", "False", "BooleanTrue", "BooleanFalse", "true", "false", "Half",
    "One", "Zero", "NegativeOne", "pi", "E", "int_oo", "IntInfinity", "NegativeIntInfinity",
    # torch's sympy functions (torch/_export/serde/serialize.py)
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat",
    "Identity",
    # assumptions written as keyword arguments
    "positive", "negative", "integer", "real", "nonnegative", "nonpositive", "finite", "zero", "nonzero",
    "commutative", "rational", "odd", "even", "prime",
})
_SYMBOL_NAME = re.compile(r"(s|u|zf|zuf|ps|tmp|idx|i|x|y|z|h|view|indirect)[0-9]+")
"""Names torch gives shape symbols (torch.utils._sympy.symbol); sympy also has functions
named like symbols (factorial2, hankel1) that must not be reachable."""
_POWERS = frozenset({"Pow", "PowByNatural", "FloatPow"})


def check_sym_expr(text: str, where: str) -> None:
    """Refuse a symbolic-shape expression that is more than arithmetic over symbols."""
    if len(text) > 10_000:
        raise ModelLoadError(f"{where}: a symbolic expression of {len(text)} characters; refused")
    pos = 0
    powers = 0
    numbers: list[str] = []
    while pos < len(text):
        m = _SYM_TOKEN.match(text, pos)
        if m is None:
            raise UnsafeModelError(f"{where}: symbolic expression {text[:80]!r} is not plain arithmetic "
                                   f"(at {text[pos:pos + 10]!r}); refused — it would be evaluated as Python")
        tok = m.group()
        if (tok[0].isalpha() or tok[0] == "_") and tok not in _SYM_NAMES and not _SYMBOL_NAME.fullmatch(tok):
            raise UnsafeModelError(f"{where}: symbolic expression {text[:80]!r} uses the name {tok!r}; refused — "
                                   "it would be evaluated as Python")
        if tok == "**":
            raise UnsafeModelError(f"{where}: symbolic expression {text[:80]!r} uses '**' (torch writes powers as "
                                   "Pow(...)); refused")
        powers += tok in _POWERS
        if tok[0].isdigit():
            numbers.append(tok)
        pos = m.end()
    # sympy computes integer powers exactly: 10 to the 10 to the 10 would not finish
    if any(len(n) > 40 for n in numbers) or (powers and (powers > 1 or any(len(n) > 4 for n in numbers))):
        raise ModelLoadError(f"{where}: symbolic expression {text[:80]!r} has numbers too large to evaluate; "
                             "refused")


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_NAME_KEYS = frozenset({"name", "parameter_name", "buffer_name", "tensor_constant_name", "custom_obj_name",
                        "user_input_name", "fqn", "forward_arg_names", "arg_name"})
"""Fields whose strings torch.fx writes into the Python source it generates and runs
(argument lists, attribute paths): they must be plain (dotted) identifiers."""
_NAMED_TABLES = frozenset({"tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values",
                           "custom_obj_values"})


def _check_strings(program: Any, where: str) -> None:
    stack: list[Any] = [program]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            for key, value in cur.items():
                stack.append(key)
                stack.append(value)
                if key in _NAME_KEYS:
                    for v in value if isinstance(value, list) else [value]:
                        if v is not None and (not isinstance(v, str) or not (v == "" or _NAME.fullmatch(v))):
                            raise UnsafeModelError(f"{where}: {key} {str(v)[:80]!r} is not a plain name; refused "
                                                   "(names become Python source when the graph is rebuilt)")
                if key in _NAMED_TABLES and isinstance(value, dict):
                    bad = next((k for k in value if not _NAME.fullmatch(k)), None)
                    if bad is not None:
                        raise UnsafeModelError(f"{where}: value name {bad[:80]!r} is not a plain name; refused")
        elif isinstance(cur, list):
            stack.extend(cur)
        elif isinstance(cur, str) and ("\r" in cur or "\x00" in cur):
            # a carriage return ends a line in Python source: a stack trace copied into a
            # comment of the generated code would turn into code after it
            raise UnsafeModelError(f"{where}: a string holds a carriage return or NUL ({cur[:60]!r}); refused")


def _walk(obj: Any) -> Iterator[dict[str, Any]]:
    stack = [obj]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            yield cur
            stack.extend(cur.values())
        elif isinstance(cur, list):
            stack.extend(cur)


def check_export_program_json(program: dict[str, Any], where: str) -> None:
    """Refuse a serialized ExportedProgram that carries Python to run: guard code, symbolic
    expressions that are not arithmetic, graph targets other than torch operators, names that
    are not identifiers (torch.fx writes them into source it executes) or carriage returns."""
    if not isinstance(program, dict):
        raise ModelLoadError(f"{where}: not a serialized ExportedProgram (a JSON {type(program).__name__})")
    if program.get("guards_code"):
        raise UnsafeModelError(f"{where}: carries guards_code (Python source run when the model is used); refused")
    _check_strings(program, where)
    for d in _walk(program):
        expr = d.get("expr_str")
        if expr is not None:
            if not isinstance(expr, str):
                raise ModelLoadError(f"{where}: expr_str is not a string")
            check_sym_expr(expr, where)
        if "as_operator" in d:  # an operator passed as an argument (to a higher-order operator)
            _check_target(d["as_operator"], where)
        if "target" in d and "inputs" in d and "outputs" in d:
            _check_target(d["target"], where)


def _check_target(target: Any, where: str) -> None:
    if not isinstance(target, str) or not (_TARGET_RE.fullmatch(target) or target in _OPERATOR_TARGETS):
        raise UnsafeModelError(f"{where}: the graph calls {str(target)[:100]!r}; only torch operators "
                               "(torch.ops.aten.…) and arithmetic are allowed")
    parts = target.split(".")
    if len(parts) > 3 and parts[3] in _DENIED_OPS:
        raise UnsafeModelError(f"{where}: the graph calls {target} (touches files); refused")
    if len(parts) > 3 and parts[2] == "higher_order" and parts[3] not in _HIGHER_ORDER:
        raise UnsafeModelError(f"{where}: the graph calls {target}; allowed higher-order operators: "
                               f"{', '.join(sorted(_HIGHER_ORDER))}")


def check_pt2(index: ArchiveIndex, where: str) -> None:
    """Check every member of a torch.export archive that torch would parse or unpickle.

    Allowed: the archive's metadata files, `models/<name>.json` programs (checked by
    `check_export_program_json`), weight and constant payloads that are raw bytes or
    weights-only pickles, `data/sample_inputs/<name>.pt` (a weights-only torch.save) and
    `extra/` text files. Refused: compiled AOTInductor/ExecuTorch code, custom and opaque
    pickled objects, legacy pickled weight files and any member torch would not expect.
    """
    from torch.export.pt2_archive import constants as c

    names = set(index.members)
    models = sorted(n[len(c.MODELS_DIR):-5] for n in names if n.startswith(c.MODELS_DIR) and n.endswith(".json"))
    if "model" not in models:
        raise ModelLoadError(f"{where}: a torch.export archive without models/model.json")
    expected: set[str] = set(_PT2_META) & names
    expected |= {n for n in names if n.startswith(c.EXTRA_DIR) and not n.endswith("/")}
    for model in models:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", model):
            raise ModelLoadError(f"{where}: model name {model!r} is not allowed")
        prog_name = c.MODELS_FILENAME_FORMAT.format(model)
        expected.add(prog_name)
        program = _read_json(index, prog_name, where)
        check_export_program_json(program, f"{where}: {index.prefix}{prog_name}")
        sample = c.SAMPLE_INPUTS_FILENAME_FORMAT.format(model)
        if sample not in names:
            raise ModelLoadError(f"{where}: {index.prefix}{sample} is missing")
        expected.add(sample)
        blob = read_member(index, sample, where, MAX_MEMBER_BYTES)
        if blob:
            check_torch_save(blob, f"{where}: member {index.prefix}{sample}")
        for folder, cfg_fmt, legacy in ((c.WEIGHTS_DIR, c.WEIGHTS_CONFIG_FILENAME_FORMAT, "weights"),
                                        (c.CONSTANTS_DIR, c.CONSTANTS_CONFIG_FILENAME_FORMAT, "constants")):
            if f"{folder}{model}.pt" in names:
                raise UnsafeModelError(f"{where}: member {index.prefix}{folder}{model}.pt holds legacy pickled "
                                       f"{legacy} (read without weights-only checks); refused — re-save the "
                                       "program with torch.export.save")
            cfg_name = cfg_fmt.format(model)
            if cfg_name not in names:
                raise ModelLoadError(f"{where}: {index.prefix}{cfg_name} is missing")
            expected.add(cfg_name)
            expected |= _check_payload_config(index, folder, cfg_name, where)
    unexpected = sorted(names - expected - {n for n in names if n.endswith("/")})
    if unexpected:
        what = next((n for n in unexpected if n.startswith((c.AOTINDUCTOR_DIR, c.EXECUTORCH_DIR, c.MTIA_DIR))), None)
        if what:
            raise UnsafeModelError(f"{where}: member {index.prefix}{what} is compiled code; refused "
                                   "(only exported programs are opened)")
        raise ModelLoadError(f"{where}: unexpected member {index.prefix}{unexpected[0]} in a torch.export "
                             "archive; refused")


def _read_json(index: ArchiveIndex, name: str, where: str) -> Any:
    try:
        return json.loads(read_member(index, name, where, MAX_JSON_BYTES))
    except (ValueError, RecursionError) as exc:
        raise ModelLoadError(f"{where}: member {index.prefix}{name} is not valid JSON ({str(exc)[:100]})") from None


def _check_payload_config(index: ArchiveIndex, folder: str, cfg_name: str, where: str) -> set[str]:
    from torch.export.pt2_archive import constants as c

    cfg = _read_json(index, cfg_name, where)
    entries = cfg.get("config") if isinstance(cfg, dict) else None
    if not isinstance(entries, dict):
        raise ModelLoadError(f"{where}: member {index.prefix}{cfg_name} is not a payload config")
    used: set[str] = set()
    for fqn, meta in entries.items():
        path = meta.get("path_name") if isinstance(meta, dict) else None
        if not isinstance(path, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", path) or path.startswith("."):
            raise ModelLoadError(f"{where}: {index.prefix}{cfg_name}: entry {str(fqn)[:80]!r} has path "
                                 f"{str(path)[:80]!r}; refused")
        member = folder + path
        if member not in index.members:
            raise ModelLoadError(f"{where}: {index.prefix}{cfg_name} names {member}, which is missing")
        if path.startswith((c.CUSTOM_OBJ_FILENAME_PREFIX, c.OPAQUE_OBJ_FILENAME_PREFIX)):
            raise UnsafeModelError(f"{where}: member {index.prefix}{member} is a pickled Python object "
                                   f"({str(fqn)[:80]}) that would run code to load; refused")
        if not path.startswith((c.TENSOR_CONSTANT_FILENAME_PREFIX, c.WEIGHT_FILENAME_PREFIX)):
            raise ModelLoadError(f"{where}: member {index.prefix}{member} is of an unknown kind; refused")
        if meta.get("use_pickle"):
            blob = read_member(index, member, where, MAX_MEMBER_BYTES)
            check_torch_save(blob, f"{where}: member {index.prefix}{member}")
        else:
            _check_tensor_meta(meta.get("tensor_meta"), index.members[member], f"{where}: {index.prefix}{member}")
        used.add(member)
    return used


def _check_tensor_meta(meta: Any, info: zipfile.ZipInfo, where: str) -> None:
    # torch fills an empty member with torch.zeros(sizes): the sizes must not ask for more
    sizes = meta.get("sizes") if isinstance(meta, dict) else None
    if not isinstance(sizes, list):
        raise ModelLoadError(f"{where}: a raw tensor without sizes")
    numel = 1
    for s in sizes:
        n = s.get("as_int") if isinstance(s, dict) else None
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ModelLoadError(f"{where}: a stored tensor with size {str(s)[:60]}; sizes must be integers")
        numel *= n
    if info.file_size == 0 and numel:
        raise ModelLoadError(f"{where}: declares a tensor of {numel} elements {[s['as_int'] for s in sizes]} but "
                             "holds no bytes; refused")


# --- graphs, after loading ------------------------------------------------------------------


def _allowed_callable(target: Any) -> bool:
    import math
    import operator

    import torch

    if isinstance(target, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        return target.namespace in _OP_NAMESPACES and target.__name__.split(".")[0] not in _DENIED_OPS
    if isinstance(target, torch._ops.HigherOrderOperator):
        return target.name() in _HIGHER_ORDER
    module, name = getattr(target, "__module__", None), getattr(target, "__name__", None)
    if f"{module}.{name}" not in _OPERATOR_TARGETS:
        return False
    home = {"_operator": operator, "math": math, "torch": torch}.get(str(module))
    return getattr(home, str(name), None) is target


def check_export_graph(ep: Any, where: str) -> None:
    """Refuse a deserialized program whose graphs call anything but allowed operators."""
    for gm in ep.graph_module.modules():
        graph = getattr(gm, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            if node.op != "call_function" or not _allowed_callable(node.target):
                raise UnsafeModelError(f"{where}: the graph calls {node.op} {node.target!r}; only torch operators "
                                       "are allowed")


_SCRIPT_NAMESPACES = frozenset({"aten", "prim", "prims", "quantized", "_quantized"})
_SCRIPT_DENIED = frozenset({"aten::from_file", "aten::save", "prim::PythonOp", "prim::IgnoredPythonOp",
                            "debugprims::load_tensor"})


_SCRIPT_DENIED_CALL = re.compile(r"\.\s*(from_file|save|load_tensor|load_library|PythonOp|IgnoredPythonOp)\b")
_SCRIPT_OPS = re.compile(r"\bops\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")


def check_script_code(index: ArchiveIndex, where: str) -> None:
    """Refuse TorchScript source that calls file-touching operators before `torch.jit.load`
    compiles it: a `__setstate__` method runs while the archive loads, before any graph
    could be inspected."""
    for name in sorted(index.members):
        if not (name.startswith("code/") and name.endswith(".py")):
            continue
        try:
            text = read_member(index, name, where, MAX_PICKLE_BYTES).decode("utf-8")
        except UnicodeDecodeError:
            raise ModelLoadError(f"{where}: member {index.prefix}{name} is not UTF-8 TorchScript source") from None
        bad = _SCRIPT_DENIED_CALL.search(text)
        if bad:
            raise UnsafeModelError(f"{where}: member {index.prefix}{name} calls {bad.group(1)} (touches files or "
                                   "runs Python); refused")
        for ns in _SCRIPT_OPS.findall(text):
            if ns not in _SCRIPT_NAMESPACES:
                raise UnsafeModelError(f"{where}: member {index.prefix}{name} calls operators of namespace "
                                       f"{ns!r}; allowed: {', '.join(sorted(_SCRIPT_NAMESPACES))}")


_SCRIPT_PICKLE_MODULES = re.compile(r"(__torch__|torch|collections)(\.[A-Za-z0-9_]+)*")


def check_script_pickles(index: ArchiveIndex, where: str) -> None:
    """Name the first foreign global in a TorchScript archive's pickles. torch's own
    unpickler for these resolves only TorchScript types and would fail anyway; this says why."""
    for name in sorted(index.members):
        if not name.endswith(".pkl") or "/" in name:
            continue
        program = read_member(index, name, where, MAX_PICKLE_BYTES)
        try:
            ops = list(pickletools.genops(program))
        except Exception as exc:
            raise ModelLoadError(f"{where}: member {index.prefix}{name} is not a readable pickle "
                                 f"({type(exc).__name__}: {str(exc)[:120]})") from None
        for op, arg, _pos in ops:
            if op.name in ("INST", "OBJ", "EXT1", "EXT2", "EXT4", "STACK_GLOBAL"):
                raise UnsafeModelError(f"{where}: member {index.prefix}{name} would run code (pickle opcode "
                                       f"{op.name}); refused")
            if op.name == "GLOBAL":
                module = str(arg).partition(" ")[0]
                if not _SCRIPT_PICKLE_MODULES.fullmatch(module):
                    raise UnsafeModelError(f"{where}: member {index.prefix}{name} would run code (pickled global "
                                           f"{str(arg).replace(' ', '.')}); refused")


def check_script_graphs(module: Any, where: str) -> None:
    """Refuse a TorchScript module whose code calls operators that touch files or Python."""
    import torch

    for sub in module.modules():
        c = sub._c
        for name in c._method_names():
            graph = c._get_method(name).graph.copy()
            torch._C._jit_pass_inline(graph)
            nodes = list(graph.nodes())
            while nodes:
                node = nodes.pop()
                kind = node.kind()
                if kind in _SCRIPT_DENIED or kind.split("::")[0] not in _SCRIPT_NAMESPACES:
                    raise UnsafeModelError(f"{where}: TorchScript method {name} calls {kind}; refused "
                                           "(it would touch files or run Python)")
                for b in node.blocks():
                    nodes.extend(b.nodes())
