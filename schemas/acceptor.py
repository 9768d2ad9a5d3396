"""Generate one straight-line Python function per schema that answers "valid or not?".

The closure validator (`validator.py`) says precisely why a value is invalid,
but costs a Python call per keyword: about 6 µs a record on the real-data mix,
the largest part of decoding. Almost every record is valid, so `Contracts`
first asks the generated acceptor (about 1 µs, no calls, no exceptions) and
only asks the closure validator for the reason when the acceptor says no.

Both are built from the same schema files and support the same keywords with
the same semantics; tests/test_contracts.py holds both to the `jsonschema`
reference on the same mutated bodies, so they cannot drift apart unnoticed.
`source_of(name)` shows the generated code, for whoever debugs it.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import orjson

from omnitrigger.schemas.validator import _ANNOTATIONS, _SUPPORTED, SchemaCompiler

Acceptor = Callable[[Any], bool]

_JSON_TYPES = {"string": "str", "object": "dict", "array": "list", "boolean": "bool", "null": "NoneType"}
_RANGE_OPERATORS = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
_SIZE_KEYWORDS = {"minLength": ("str", ">="), "maxLength": ("str", "<="), "minItems": ("list", ">="),
                  "maxItems": ("list", "<="), "minProperties": ("dict", ">=")}


class _Generator:
    """Emits the statements of one acceptor; each statement block `return False`s on the first fault."""

    def __init__(self, compiler: SchemaCompiler) -> None:
        self.compiler = compiler
        self.constants: dict[str, Any] = {"NoneType": type(None), "isfinite": math.isfinite}
        self.helpers: list[str] = []
        self._names = 0

    def fresh(self, prefix: str) -> str:
        self._names += 1
        return f"{prefix}{self._names}"

    def constant(self, value: Any) -> str:
        name = self.fresh("K")
        self.constants[name] = value
        return name

    def emit(self, schema: dict, base: str, var: str, indent: str) -> list[str]:
        unknown = set(schema) - _SUPPORTED
        if unknown:
            raise ValueError(f"{base}: unsupported schema keywords {sorted(unknown)}")
        lines: list[str] = []
        known = _single_type(schema.get("type"))  # once checked, guards on that type go without saying
        if "$ref" in schema:
            node, doc_name = self.compiler._resolve(schema["$ref"], base)
            lines += self.emit(node, doc_name, var, indent)
        if "type" in schema:
            lines += self._type(schema["type"], var, indent)
        if "enum" in schema or "const" in schema:
            allowed = frozenset(schema["enum"] if "enum" in schema else [schema["const"]])
            lines.append(f"{indent}if type({var}) is bool or type({var}) not in HASHABLE "
                         f"or {var} not in {self.constant(allowed)}: return False")
        ranges = [(keyword, schema[keyword]) for keyword in _RANGE_OPERATORS if keyword in schema]
        if ranges:
            tests = " or ".join(f"not {var} {_RANGE_OPERATORS[keyword]} {bound!r}" for keyword, bound in ranges)
            guard = "" if known == "number" else f"(type({var}) is int or type({var}) is float) and "
            lines.append(f"{indent}if {guard}({tests}): return False")
        for keyword, (kind, operator) in _SIZE_KEYWORDS.items():
            if keyword in schema:
                guard = "" if known == kind else f"type({var}) is {kind} and "
                lines.append(f"{indent}if {guard}not len({var}) {operator} {schema[keyword]!r}: return False")
        if "required" in schema or "properties" in schema:
            lines += self._object(schema.get("required", []), schema.get("properties", {}), base, var, indent,
                                  known == "dict")
        if "items" in schema:
            item = self.fresh("v")
            body = self.emit(schema["items"], base, item, indent + "        ")
            if body and known == "list":
                lines += [f"{indent}for {item} in {var}:", *[line[4:] for line in body]]
            elif body:
                lines += [f"{indent}if type({var}) is list:", f"{indent}    for {item} in {var}:", *body]
        for sub in schema.get("allOf", []):
            lines += self.emit(sub, base, var, indent)
        if "if" in schema:
            condition = self._predicate(schema["if"], base)
            then = self.emit(schema.get("then", {}), base, var, indent + "    ")
            if then:
                lines += [f"{indent}if {condition}({var}):", *then]
        return lines

    def _type(self, declared: str | list[str], var: str, indent: str) -> list[str]:
        names = [declared] if isinstance(declared, str) else list(declared)
        exact = [_JSON_TYPES[name] for name in names if name in _JSON_TYPES]
        accepted = [f"type({var}) is {kind}" for kind in exact]
        if "number" in names or "integer" in names:
            accepted.append(f"type({var}) is int")
            finite = f"type({var}) is float and isfinite({var})"
            accepted.append(finite if "number" in names else f"{finite} and {var}.is_integer()")
        return [f"{indent}if not ({' or '.join(accepted)}): return False"]

    def _object(self, required: list[str], properties: dict[str, dict], base: str, var: str,
                indent: str, known_dict: bool) -> list[str]:
        lines = [] if known_dict else [f"{indent}if type({var}) is dict:"]
        inner = indent if known_dict else indent + "    "
        for name in required:
            lines.append(f"{inner}if {name!r} not in {var}: return False")
        # Optional fields that share one subschema (the six identifier types) are checked in one loop
        # over the fields present, rather than one lookup for each name the schema declares.
        groups: dict[bytes, list[str]] = {}
        for name, sub in properties.items():
            if name not in required:
                groups.setdefault(orjson.dumps(sub, option=orjson.OPT_SORT_KEYS), []).append(name)
        looped = {name for names in groups.values() if len(names) > 2 for name in names}
        for name, sub in properties.items():
            if name in looped:
                continue
            field = self.fresh("v")
            body = self.emit(sub, base, field, inner + "    ")
            if body and name in required:  # present: checked above
                lines += [f"{inner}{field} = {var}[{name!r}]", *[line[4:] for line in body]]
            elif body:
                lines += [f"{inner}{field} = {var}.get({name!r}, MISSING)", f"{inner}if {field} is not MISSING:", *body]
        for names in groups.values():
            if len(names) > 2:
                field = self.fresh("v")
                body = self.emit(properties[names[0]], base, field, inner + "        ")
                if body:
                    lines += [f"{inner}for key, {field} in {var}.items():",
                              f"{inner}    if key in {self.constant(frozenset(names))}:", *body]
        return lines if len(lines) > (0 if known_dict else 1) else []

    def _predicate(self, schema: dict, base: str) -> str:
        """A helper function for an `if` subschema: True when the value matches it."""
        name = self.fresh("matches")
        body = self.emit(schema, base, "value", "    ")
        self.helpers.append("\n".join([f"def {name}(value):", *body, "    return True"]))
        return name


def _single_type(declared: Any) -> str | None:
    """The Python type name when `type` names one JSON type, "number" when only numbers pass."""
    names = [declared] if isinstance(declared, str) else declared
    if not isinstance(names, list) or not names:
        return None
    if set(names) <= {"number", "integer"}:
        return "number"
    return _JSON_TYPES.get(names[0]) if len(names) == 1 else None


_MISSING = object()


def compile_acceptor(name: str, compiler: SchemaCompiler | None = None) -> Acceptor:
    """The acceptor of schema file `name`: True exactly when the closure validator would not raise."""
    function, _ = _build(name, compiler or SchemaCompiler())
    return function


def source_of(name: str) -> str:
    """The generated Python source of schema file `name`'s acceptor."""
    return _build(name, SchemaCompiler())[1]


def _build(name: str, compiler: SchemaCompiler) -> tuple[Acceptor, str]:
    generator = _Generator(compiler)
    body = generator.emit(compiler.document(name), name, "value", "    ")
    source = "\n\n".join([*generator.helpers, "\n".join(["def accept(value):", *body, "    return True"])])
    namespace: dict[str, Any] = {**generator.constants, "MISSING": _MISSING,
                                 "HASHABLE": frozenset({str, int, float, type(None)})}
    exec(compile(source, f"<acceptor {name}>", "exec"), namespace)  # noqa: S102 - code generated from our schemas
    return namespace["accept"], source


assert _ANNOTATIONS <= _SUPPORTED  # the generator treats every annotation as a no-op, as the validator does
