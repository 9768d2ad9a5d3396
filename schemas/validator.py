"""Compile the JSON Schema files in this folder into fast Python validators.

The schema files are the contracts: people read them, `jsonschema` can check
them, and this module turns them into closures that check a decoded event in
about a microsecond (fastjsonschema costs ~6 µs and jsonschema ~65 µs an event
on these machines; DESIGN.md section 5). Only the subset of JSON Schema that
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

Check = Callable[[Any, str], None]

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
    """A value broke its contract; `reason` is a stable code, `detail` names the field."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _is_number(value: Any) -> bool:
    return (type(value) is int or type(value) is float)


def _is_integer(value: Any) -> bool:
    return type(value) is int or (type(value) is float and value.is_integer())


_TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: type(v) is str,
    "integer": _is_integer,
    "number": _is_number,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
}


def _field(path: str) -> str:
    return path or "(record)"


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
            allowed = schema["enum"] if "enum" in schema else [schema["const"]]
            checks.append(_enum_check(allowed))
        checks.extend(_range_checks(schema))
        checks.extend(_size_checks(schema))
        if "required" in schema:
            checks.append(_required_check(schema["required"]))
        if "properties" in schema:
            checks.append(_properties_check(
                {key: self._compile(sub, base) for key, sub in schema["properties"].items()}))
        if "items" in schema:
            checks.append(_items_check(self._compile(schema["items"], base)))
        for sub in schema.get("allOf", []):
            checks.append(self._compile(sub, base))
        if "if" in schema:
            condition = self._compile(schema["if"], base)
            consequence = self._compile(schema.get("then", {}), base)
            checks.append(_if_then_check(condition, consequence))
        return _all_of(checks)

    def _compile_ref(self, ref: str, base: str) -> Check:
        file_part = ref.partition("#")[0] or base
        cache_key = f"{file_part}#{ref.partition('#')[2]}"
        if cache_key not in self._compiled_refs:
            node, doc_name = self._resolve(ref, base)
            self._compiled_refs[cache_key] = self._compile(node, doc_name)
        return self._compiled_refs[cache_key]


def _all_of(checks: list[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]

    def check(value: Any, path: str) -> None:
        for one in checks:
            one(value, path)

    return check


def _type_check(declared: str | list[str]) -> Check:
    names = [declared] if isinstance(declared, str) else list(declared)
    tests = [_TYPE_TESTS[name] for name in names]
    numeric = "number" in names or "integer" in names
    expected = " or ".join(names)

    def check(value: Any, path: str) -> None:
        if numeric and type(value) is float and not math.isfinite(value):
            raise ContractViolation("non_finite_number", f"{_field(path)}: {value!r} is not a finite number")
        for test in tests:
            if test(value):
                return
        raise ContractViolation("wrong_type", f"{_field(path)}: expected {expected}, got {_json_type(value)}")

    return check


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string",
            list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _enum_check(allowed: list[Any]) -> Check:
    allowed_set = frozenset(allowed)

    def check(value: Any, path: str) -> None:
        try:
            ok = value in allowed_set and type(value) is not bool
        except TypeError:  # unhashable: a list or an object
            ok = False
        if not ok:
            raise ContractViolation("invalid_value", f"{_field(path)}: {str(value)[:64]!r} is not one of {sorted(allowed_set)}")

    return check


def _range_checks(schema: dict) -> list[Check]:
    bounds = [(key, schema[key]) for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if key in schema]
    if not bounds:
        return []
    ops = {
        "minimum": lambda v, b: v >= b,
        "maximum": lambda v, b: v <= b,
        "exclusiveMinimum": lambda v, b: v > b,
        "exclusiveMaximum": lambda v, b: v < b,
    }
    tests = [(key, bound, ops[key]) for key, bound in bounds]

    def check(value: Any, path: str) -> None:
        if not _is_number(value):
            return
        for key, bound, test in tests:
            if not test(value, bound):
                raise ContractViolation("out_of_range", f"{_field(path)}: {value!r} breaks {key} {bound}")

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
    def check(value: Any, path: str) -> None:
        if type(value) is kind and not test(len(value), bound):
            raise ContractViolation("invalid_value", f"{_field(path)}: size {len(value)} breaks {key} {bound}")

    return check


def _required_check(required: list[str]) -> Check:
    names = tuple(required)

    def check(value: Any, path: str) -> None:
        if type(value) is not dict:
            return
        for name in names:
            if name not in value:
                raise ContractViolation("missing_field", f"{path + '.' if path else ''}{name} is required")

    return check


def _properties_check(properties: dict[str, Check]) -> Check:
    items = tuple(properties.items())

    def check(value: Any, path: str) -> None:
        if type(value) is not dict:
            return
        prefix = path + "." if path else ""
        for name, sub in items:
            if name in value:
                sub(value[name], prefix + name)

    return check


def _items_check(item_check: Check) -> Check:
    def check(value: Any, path: str) -> None:
        if type(value) is not list:
            return
        for index, item in enumerate(value):
            item_check(item, f"{path}[{index}]")

    return check


def _if_then_check(condition: Check, consequence: Check) -> Check:
    def check(value: Any, path: str) -> None:
        try:
            condition(value, path)
        except ContractViolation:
            return
        consequence(value, path)

    return check
