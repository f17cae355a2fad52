"""A strict request/response validator driven by a Swagger 2.0 document.

The fakes are only useful if they reject what the real service would reject,
so every rule here is read from the vendor's spec rather than written by hand:
path templates and methods, parameters (location, required, type, format,
pattern, bounds), and JSON bodies (types, enums, required and read-only
properties, and no properties the schema does not declare).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote

_BASE64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_INT32 = (-(2**31), 2**31 - 1)
# The spec marks path parameters that may be left empty only in prose.
_OPTIONAL_SEGMENT = "This URI fragment is optional"
# x-ms-pageable operations are re-entered through nextLink, which adds this.
_PAGING_QUERY = "$skiptoken"


class SpecViolation(Exception):
    """The request does not conform to the spec; `problems` lists every issue."""

    def __init__(self, problems: list[str], operation: Operation | None = None) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.operation = operation


@dataclass(frozen=True)
class Operation:
    operation_id: str
    method: str
    template: str
    segments: tuple[str, ...]
    parameters: tuple[dict[str, Any], ...]
    responses: dict[str, Any]
    pageable: bool

    @property
    def literal_count(self) -> int:
        return sum(1 for s in self.segments if not s.startswith("{"))


@dataclass(frozen=True)
class ValidatedRequest:
    operation: Operation
    path_params: dict[str, str]
    query: dict[str, Any]
    body: Any


class SwaggerSpec:
    def __init__(self, document: dict[str, Any]) -> None:
        if document.get("swagger") != "2.0":
            raise ValueError("only Swagger 2.0 documents are supported")
        self._doc = document
        self.operations = [
            Operation(
                operation_id=op["operationId"],
                method=method.upper(),
                template=template,
                segments=tuple(template.strip("/").split("/")),
                parameters=tuple(self.resolve(p) for p in op.get("parameters", [])),
                responses=op["responses"],
                pageable="x-ms-pageable" in op,
            )
            for template, item in document["paths"].items()
            for method, op in item.items()
            if method != "parameters"
        ]
        locations = {p["in"] for op in self.operations for p in op.parameters}
        if not locations <= {"path", "query", "body"}:
            raise ValueError(f"parameter locations {locations} are not all supported")

    @classmethod
    def load(cls, path: Path) -> SwaggerSpec:
        return cls(json.loads(path.read_text()))

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        """Follow local `$ref`s; only `#/...` refs occur in request schemas."""
        while "$ref" in node:
            ref = node["$ref"]
            if not ref.startswith("#/"):
                raise ValueError(f"external $ref {ref} is not supported")
            target: Any = self._doc
            for part in ref[2:].split("/"):
                target = target[part]
            node = cast(dict[str, Any], target)
        return node

    def definition(self, name: str) -> dict[str, Any]:
        return cast(dict[str, Any], self._doc["definitions"][name])

    # -- requests ---------------------------------------------------------

    def match(self, method: str, path: str) -> tuple[Operation, dict[str, str]]:
        # A trailing slash yields an empty last segment: an omitted optional one.
        segments = [unquote(s) for s in path.removeprefix("/").split("/")]
        candidates = []
        for op in self.operations:
            params = self._bind(op, segments)
            if params is not None:
                candidates.append((op, params))
        if not candidates:
            raise SpecViolation([f"no path template in the spec matches {path}"])
        allowed = [c for c in candidates if c[0].method == method]
        if not allowed:
            templates = sorted({f"{c[0].method} {c[0].template}" for c in candidates})
            raise SpecViolation([f"{method} {path} is not in the spec (it has {', '.join(templates)})"])
        return max(allowed, key=lambda c: c[0].literal_count)

    def _bind(self, op: Operation, segments: list[str]) -> dict[str, str] | None:
        if len(segments) != len(op.segments):
            return None
        params: dict[str, str] = {}
        for template_part, value in zip(op.segments, segments):
            if template_part.startswith("{"):
                params[template_part[1:-1]] = value
            elif template_part != value:
                return None
        return params

    def validate_request(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        content_type: str | None,
        body: bytes,
    ) -> ValidatedRequest:
        op, path_params = self.match(method, path)
        problems = self._check_path(op, path_params)
        query_problems, parsed_query = self._check_query(op, query)
        problems += query_problems
        body_params = [p for p in op.parameters if p["in"] == "body"]
        body_value: Any = None
        if body_params:
            body_problems, body_value = self._check_body(body_params[0], content_type, body)
            problems += body_problems
        elif body.strip():
            problems.append(f"{op.operation_id} takes no request body")
        if problems:
            raise SpecViolation(problems, op)
        return ValidatedRequest(op, path_params, parsed_query, body_value)

    @staticmethod
    def _check_path(op: Operation, path_params: dict[str, str]) -> list[str]:
        problems: list[str] = []
        for param in op.parameters:
            if param["in"] != "path":
                continue
            name, value = param["name"], path_params[param["name"]]
            if value == "":
                if _OPTIONAL_SEGMENT not in param.get("description", ""):
                    problems.append(f"path parameter {name!r} is empty")
                continue
            problems += _parse_scalar(param, value, f"path parameter {name!r}")[0]
        return problems

    @staticmethod
    def _check_query(op: Operation, query: dict[str, list[str]]) -> tuple[list[str], dict[str, Any]]:
        problems: list[str] = []
        parsed: dict[str, Any] = {}
        declared = {p["name"]: p for p in op.parameters if p["in"] == "query"}
        for name, values in query.items():
            if op.pageable and name == _PAGING_QUERY:
                parsed[name] = values[0]
            elif name not in declared:
                problems.append(f"query parameter {name!r} is not defined for {op.operation_id}")
            elif len(values) > 1:
                problems.append(f"query parameter {name!r} is repeated")
            else:
                value_problems, parsed[name] = _parse_scalar(declared[name], values[0], f"query parameter {name!r}")
                problems += value_problems
        missing = [n for n, p in declared.items() if p.get("required") and n not in query]
        problems += [f"required query parameter {name!r} is missing" for name in missing]
        return problems, parsed

    def _check_body(
        self, param: dict[str, Any], content_type: str | None, body: bytes
    ) -> tuple[list[str], Any]:
        if not body.strip():
            return (["request body is required"] if param.get("required") else []), None
        consumes = self._doc.get("consumes", ["application/json"])
        media_type = (content_type or "").split(";")[0].strip().lower()
        if media_type not in consumes:
            return [f"Content-Type {content_type!r} is not one of {consumes}"], None
        try:
            value = json.loads(body, object_pairs_hook=_no_duplicate_members)
        except (UnicodeDecodeError, ValueError) as error:
            return [f"request body is not valid JSON: {error}"], None
        return self.check(param["schema"], value, "body", request=True), value

    def validate_response(self, op: Operation, status: int, body: Any) -> list[str]:
        """Check the fake's own output, so its fidelity is tested too."""
        spec = op.responses.get(str(status)) or op.responses.get("default")
        if spec is None:
            return [f"{op.operation_id} has no response {status} in the spec"]
        if "schema" not in spec:
            return [] if body is None else [f"{op.operation_id} {status} must have no body"]
        return self.check(spec["schema"], body, "response", request=False)

    # -- schemas ----------------------------------------------------------

    def check(self, schema: dict[str, Any], value: Any, where: str, *, request: bool) -> list[str]:
        """All the ways `value` violates `schema`; read-only fields are request errors."""
        schema = self.resolve(schema)
        if value is None:
            return [] if schema.get("x-nullable") else [f"{where} must not be null"]
        kind = schema.get("type", "object" if "properties" in schema else None)
        if kind == "object":
            return self._check_object(schema, value, where, request=request)
        if kind == "array":
            if not isinstance(value, list):
                return [f"{where} must be an array"]
            problems = []
            for index, item in enumerate(value):
                problems += self.check(schema["items"], item, f"{where}[{index}]", request=request)
            return problems
        return _check_json_scalar(schema, value, where)

    def _check_object(
        self, schema: dict[str, Any], value: Any, where: str, *, request: bool
    ) -> list[str]:
        if not isinstance(value, dict):
            return [f"{where} must be an object"]
        properties: dict[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties", False)
        problems = [
            f"{where}.{name} is required" for name in schema.get("required", []) if name not in value
        ]
        for name, item in value.items():
            child = f"{where}.{name}"
            if name in properties:
                prop = properties[name]
                if request and prop.get("readOnly"):
                    problems.append(f"{child} is read-only and must not be sent")
                    continue
                problems += self.check(prop, item, child, request=request)
            elif isinstance(extra, dict):
                problems += self.check(extra, item, child, request=request)
            elif extra is not True:
                problems.append(f"{child} is not a property of this schema")
        return problems


def _check_json_scalar(schema: dict[str, Any], value: Any, where: str) -> list[str]:
    kind = schema.get("type")
    if kind == "string":
        if not isinstance(value, str):
            return [f"{where} must be a string"]
        return _string_rules(schema, value, where)
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            return [f"{where} must be an integer"]
        return _number_rules(schema, value, where)
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return [f"{where} must be a number"]
        return _number_rules(schema, value, where)
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"{where} must be a boolean"]
    return [f"{where}: schema type {kind!r} is not supported by the validator"]


def _string_rules(schema: dict[str, Any], value: str, where: str) -> list[str]:
    problems = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where} value {value!r} is not one of {schema['enum']}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        problems.append(f"{where} value {value!r} does not match {schema['pattern']}")
    if len(value) < schema.get("minLength", 0):
        problems.append(f"{where} is shorter than {schema['minLength']}")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        problems.append(f"{where} is longer than {schema['maxLength']}")
    if schema.get("format") == "base64url" and not _BASE64URL.match(value):
        problems.append(f"{where} is not unpadded base64url")
    return problems


def _number_rules(schema: dict[str, Any], value: float, where: str) -> list[str]:
    problems = []
    if schema.get("format") == "int32" and not _INT32[0] <= value <= _INT32[1]:
        problems.append(f"{where} is outside the int32 range")
    if "minimum" in schema and value < schema["minimum"]:
        problems.append(f"{where} is below the minimum {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        problems.append(f"{where} is above the maximum {schema['maximum']}")
    return problems


def _parse_scalar(param: dict[str, Any], raw: str, where: str) -> tuple[list[str], Any]:
    """Convert a path/query string to the parameter's declared type, then check it."""
    kind = param.get("type")
    if kind == "integer":
        if not re.fullmatch(r"-?\d+", raw):
            return [f"{where} must be an integer"], None
        value: Any = int(raw)
    elif kind == "boolean":
        if raw not in ("true", "false"):
            return [f"{where} must be true or false"], None
        value = raw == "true"
    else:
        value = raw
    return _check_json_scalar(param, value, where), value


def _no_duplicate_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Python keeps the last of duplicate JSON members; a server might keep the first."""
    names = [name for name, _ in pairs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"duplicate members {duplicates}")
    return dict(pairs)
