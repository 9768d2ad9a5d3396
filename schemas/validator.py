"""Compile the JSON Schema files in this folder into fast Python validators.

The schema files are the contracts: people read them, `jsonschema` can check
them, and this module turns them into closures that check a decoded event in
about a microsecond (fastjsonschema costs ~6 µs and jsonschema ~65 µs an event
on these machines; docs/design.md#validation-cost). Only the subset of JSON Schema that
the contracts use is supported, and an unsupported keyword is an error at
load time rather than a silently skipped check. The test suite cross-checks
these validators against the `jsonschema` reference implementation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import orjson

SCHEMA_DIR = Path(__file__).resolve().parent

Check = Callable[[Any], None]

# Keywords that only annotate: they never reject a value.
_ANNOTATIONS = {
    "$schema", "$id", "$defs", "title", "description", "default", "examples",
    "x-omnitrigger-event-time", "additionalProperties",
}
_SUPPORTED = _ANNOTATIONS | {
    "type", "enum", "const", "required", "properties", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "items",
    "minItems", "maxItems", "minProperties", "allOf", "if", "then", "$ref",
}


class ContractViolation(Exception):
    """A value broke its contract; `reason` is a stable code, `detail` names the field and the fault.

    Checks raise it with the fault alone; each enclosing object or array adds
    its segment of the path on the way out, so the happy path builds no strings.
    """

    def __init__(self, reason: str, message: str, path: tuple[str, ...] = ()) -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message
        self.path = path

    def within(self, segment: str) -> "ContractViolation":
        self.path = (segment, *self.path)
        return self

    @property
    def detail(self) -> str:
        if not self.path:
            return self.message
        joined = "".join(part if part.startswith("[") else f".{part}" for part in self.path).lstrip(".")
        return f"{joined}: {self.message}"

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class SchemaCompiler:
    """Loads schema files from a folder and compiles them, resolving `$ref`s between files."""

    def __init__(self, schema_dir: Path = SCHEMA_DIR) -> None:
        self.schema_dir = schema_dir
        self._documents: dict[str, dict] = {}
        self._compiled_refs: dict[str, Check] = {}

    def document(self, name: str) -> dict:
        if name not in self._documents:
            self._documents[name] = orjson.loads((self.schema_dir / name).read_bytes())
        return self._documents[name]

    def compile_file(self, name: str) -> Check:
        return self._compile(self.document(name), name)

    def _resolve(self, ref: str, base: str) -> tuple[dict, str]:
        file_part, _, pointer = ref.partition("#")
        doc_name = file_part or base
        node: Any = self.document(doc_name)
        for token in filter(None, pointer.split("/")):
            node = node[token]
        return node, doc_name

    def _compile(self, schema: dict, base: str) -> Check:
        unknown = set(schema) - _SUPPORTED
        if unknown:
            raise ValueError(f"{base}: unsupported schema keywords {sorted(unknown)}")
        checks: list[Check] = []
        if "$ref" in schema:
            checks.append(self._compile_ref(schema["$ref"], base))
        if "type" in schema:
            checks.append(_type_check(schema["type"]))
        if "enum" in schema or "const" in schema:
            checks.append(_enum_check(schema["enum"] if "enum" in schema else [schema["const"]]))
        checks.extend(_range_checks(schema))
        checks.extend(_size_checks(schema))
        if "required" in schema or "properties" in schema:
            checks.append(_object_check(
                schema.get("required", []),
                {key: self._compile(sub, base) for key, sub in schema.get("properties", {}).items()}))
        if "items" in schema:
            checks.append(_items_check(self._compile(schema["items"], base)))
        for sub in schema.get("allOf", []):
            checks.append(self._compile(sub, base))
        if "if" in schema:
            condition = self._compile(schema["if"], base)
            consequence = self._compile(schema.get("then", {}), base)
            checks.append(_if_then_check(condition, consequence, _fast_condition(schema["if"])))
        return _all_of(checks)

    def _compile_ref(self, ref: str, base: str) -> Check:
        file_part = ref.partition("#")[0] or base
        cache_key = f"{file_part}#{ref.partition('#')[2]}"
        if cache_key not in self._compiled_refs:
            node, doc_name = self._resolve(ref, base)
            self._compiled_refs[cache_key] = self._compile(node, doc_name)
        return self._compiled_refs[cache_key]


def depth_exceeds(value: Any, limit: int) -> bool:
    """True when `value` nests objects and arrays more than `limit` levels deep (a scalar is 0, `{}` is 1).

    Level by level and without recursion, so any depth is safe to ask about,
    and it stops at `limit + 1` levels: an ordinary event costs a few type checks.
    """
    if type(value) is not dict and type(value) is not list:
        return False
    level: list[Any] = [value]
    depth = 1
    while level:
        if depth > limit:
            return True
        below: list[Any] = []
        for container in level:
            for item in (container.values() if type(container) is dict else container):
                kind = type(item)
                if kind is dict or kind is list:
                    below.append(item)
        level = below
        depth += 1
    return False


def _all_of(checks: list[Check]) -> Check:
    if not checks:
        return _accept
    if len(checks) == 1:
        return checks[0]
    checks_tuple = tuple(checks)

    def check(value: Any) -> None:
        for one in checks_tuple:
            one(value)

    return check


def _accept(value: Any) -> None:
    return None


def _type_check(declared: str | list[str]) -> Check:
    names = [declared] if isinstance(declared, str) else list(declared)
    python_types = {str: "string", dict: "object", list: "array", bool: "boolean", type(None): "null"}
    exact = frozenset(t for t, name in python_types.items() if name in names)
    numeric = "number" in names or "integer" in names
    integer_only = "integer" in names and "number" not in names
    expected = " or ".join(names)

    def check(value: Any) -> None:
        kind = type(value)
        if kind in exact:
            return
        if numeric:
            if kind is int:
                return
            if kind is float:
                if not math.isfinite(value):
                    raise ContractViolation("non_finite_number", f"{value!r} is not a finite number")
                if not integer_only or value.is_integer():
                    return
        raise ContractViolation("wrong_type", f"expected {expected}, got {_json_type(value)}")

    return check


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string",
            list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _enum_check(allowed: list[Any]) -> Check:
    allowed_set = frozenset(allowed)
    shown = sorted(map(str, allowed_set))

    def check(value: Any) -> None:
        try:
            if value in allowed_set and type(value) is not bool:
                return
        except TypeError:  # unhashable: a list or an object
            pass
        raise ContractViolation("invalid_value", f"{str(value)[:64]!r} is not one of {shown}")

    return check


def _range_checks(schema: dict) -> list[Check]:
    ops = {
        "minimum": lambda v, b: v >= b,
        "maximum": lambda v, b: v <= b,
        "exclusiveMinimum": lambda v, b: v > b,
        "exclusiveMaximum": lambda v, b: v < b,
    }
    tests = tuple((key, schema[key], ops[key]) for key in ops if key in schema)
    if not tests:
        return []

    def check(value: Any) -> None:
        if type(value) is not int and type(value) is not float:
            return
        for key, bound, test in tests:
            if not test(value, bound):
                raise ContractViolation("out_of_range", f"{value!r} breaks {key} {bound}")

    return [check]


def _size_checks(schema: dict) -> list[Check]:
    checks: list[Check] = []
    for key, kind, test in (
        ("minLength", str, lambda n, b: n >= b),
        ("maxLength", str, lambda n, b: n <= b),
        ("minItems", list, lambda n, b: n >= b),
        ("maxItems", list, lambda n, b: n <= b),
        ("minProperties", dict, lambda n, b: n >= b),
    ):
        if key in schema:
            checks.append(_size_check(key, kind, schema[key], test))
    return checks


def _size_check(key: str, kind: type, bound: int, test: Callable[[int, int], bool]) -> Check:
    def check(value: Any) -> None:
        if type(value) is kind and not test(len(value), bound):
            raise ContractViolation("invalid_value", f"size {len(value)} breaks {key} {bound}")

    return check


def _object_check(required: list[str], properties: dict[str, Check]) -> Check:
    """required + properties in one pass; path segments are added only when a check fails."""
    names = tuple(required)
    items = tuple(properties.items())

    def check(value: Any) -> None:
        if type(value) is not dict:
            return
        for name in names:
            if name not in value:
                raise ContractViolation("missing_field", "is required", (name,))
        for name, sub in items:
            if name in value:
                try:
                    sub(value[name])
                except ContractViolation as violation:
                    raise violation.within(name) from None

    return check


def _items_check(item_check: Check) -> Check:
    def check(value: Any) -> None:
        if type(value) is not list:
            return
        for index, item in enumerate(value):
            try:
                item_check(item)
            except ContractViolation as violation:
                raise violation.within(f"[{index}]") from None

    return check


def _if_then_check(condition: Check, consequence: Check, fast_condition: Callable[[Any], bool] | None) -> Check:
    if fast_condition is not None:
        def check(value: Any) -> None:
            if fast_condition(value):
                consequence(value)

        return check

    def check_generic(value: Any) -> None:
        try:
            condition(value)
        except ContractViolation:
            return
        consequence(value)

    return check_generic


def _fast_condition(schema: dict) -> Callable[[Any], bool] | None:
    """`{"properties": {F: {"enum"|"const": ...}}, "required": [F]}` as a plain membership test."""
    properties = schema.get("properties", {})
    if set(schema) != {"properties", "required"} or len(properties) != 1 or schema["required"] != list(properties):
        return None
    (name, sub), = properties.items()
    if set(sub) == {"enum"}:
        allowed = frozenset(sub["enum"])
    elif set(sub) == {"const"}:
        allowed = frozenset([sub["const"]])
    else:
        return None

    def test(value: Any) -> bool:
        if type(value) is not dict:
            return False
        field = value.get(name)
        try:
            return field in allowed and type(field) is not bool
        except TypeError:
            return False

    return test
