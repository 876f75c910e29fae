"""Structured output: parse an answer as JSON, check it against the job's schema, type its column."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import pyarrow as pa


def check_json(content: str | None, schema: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """(parsed JSON text, None) when the answer is a JSON object matching the schema, else (None, why)."""
    if content is None or not content.strip():
        return None, "answer is empty, expected JSON"
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        return None, f"answer is not valid JSON ({exc})"
    if not isinstance(value, dict):
        return None, f"answer is JSON {type(value).__name__}, expected an object"
    if schema is not None:
        problem = validate(value, schema)
        if problem:
            return None, f"answer does not match the schema: {problem}"
    return orjson.dumps(value).decode(), None


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "integer": (int,),
    "number": (int, float), "boolean": (bool,), "null": (type(None),),
}


def validate(value: Any, schema: Mapping[str, Any], path: str = "$") -> str | None:
    """The first way `value` breaks the common JSON-schema keywords, or None when it conforms."""
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        ok = any(
            isinstance(value, _JSON_TYPES.get(t, ()))
            and not (t in ("integer", "number") and isinstance(value, bool))
            for t in names
        )
        if not ok:
            return f"{path} should be {' or '.join(names)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path} should be one of {schema['enum']}"
    if "const" in schema and value != schema["const"]:
        return f"{path} should be {schema['const']!r}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{path} should be >= {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{path} should be <= {schema['maximum']}"
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            return f"{path} is shorter than {schema['minLength']}"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return f"{path} is longer than {schema['maxLength']}"
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                return f"{path} is missing '{name}'"
        if schema.get("additionalProperties") is False:
            extra = sorted(set(value) - set(props))
            if extra:
                return f"{path} has unexpected '{extra[0]}'"
        for name, sub in props.items():
            if name in value:
                problem = validate(value[name], sub, f"{path}.{name}")
                if problem:
                    return problem
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            problem = validate(item, schema["items"], f"{path}[{i}]")
            if problem:
                return problem
    return None


def arrow_type(schema: Mapping[str, Any]) -> pa.DataType:
    """The Arrow type of the `parsed` column for a JSON schema."""
    types = schema.get("type")
    if isinstance(types, list):
        non_null = [t for t in types if t != "null"]
        types = non_null[0] if len(non_null) == 1 else None
    if types == "object" or (types is None and "properties" in schema):
        props = schema.get("properties", {})
        if not props:
            return pa.string()  # free-form object: kept as JSON text
        return pa.struct([pa.field(n, arrow_type(s)) for n, s in props.items()])
    if types == "array":
        items = schema.get("items")
        return pa.list_(arrow_type(items) if isinstance(items, Mapping) else pa.string())
    return {
        "string": pa.string(), "integer": pa.int64(), "number": pa.float64(),
        "boolean": pa.bool_(),
    }.get(str(types), pa.string())


def conform(value: Any, type_: pa.DataType) -> Any:
    """Shape a parsed value for its Arrow type: parts typed as text (free-form) become JSON text."""
    if value is None:
        return None
    if pa.types.is_string(type_):
        return value if isinstance(value, str) else orjson.dumps(value).decode()
    if pa.types.is_struct(type_) and isinstance(value, dict):
        return {f.name: conform(value.get(f.name), f.type) for f in type_}
    if pa.types.is_list(type_) and isinstance(value, list):
        return [conform(v, type_.value_type) for v in value]
    if pa.types.is_floating(type_) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def infer_type(parsed_texts: Iterable[str | None]) -> pa.DataType:
    """The Arrow type of free-form parsed objects (json_object mode), unified over all answers.

    Answers that disagree on a field's type, or objects with no fields at all, fall back to JSON
    text: a column must always be writable, whatever the model said.
    """
    schemas = []
    chunk: list[Any] = []
    try:
        for text in parsed_texts:
            if text is not None:
                chunk.append(orjson.loads(text))
            if len(chunk) >= 10_000:
                schemas.append(pa.schema([pa.field("p", pa.array(chunk).type)]))
                chunk = []
        if chunk:
            schemas.append(pa.schema([pa.field("p", pa.array(chunk).type)]))
        if not schemas:
            return pa.string()
        unified = pa.unify_schemas(schemas, promote_options="permissive").field("p").type
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pa.string()
    return _writable(unified) if pa.types.is_struct(unified) else pa.string()


def _writable(type_: pa.DataType) -> pa.DataType:
    """Parquet cannot store a struct without fields: such parts are kept as JSON text."""
    if pa.types.is_struct(type_):
        if type_.num_fields == 0:
            return pa.string()
        return pa.struct([pa.field(f.name, _writable(f.type)) for f in type_])
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        return pa.list_(_writable(type_.value_type))
    return type_
