"""Render: an input row becomes chat messages, a request body and the hash that names the request."""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from batchrun.errors import UsageError
from batchrun.protocol.tokens import count_prompt_tokens
from batchrun.settings.config import BODY_PARAMETERS, SETTINGS, RunConfig

# TPM reservation when the job sets no max_tokens: what OpenAI-compatible servers assume by default.
DEFAULT_COMPLETION_RESERVE = 1024
ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


def completion_reserve(config: RunConfig) -> int:
    """Completion tokens one request may use: --max-tokens, else what servers assume by default."""
    return config.max_tokens or DEFAULT_COMPLETION_RESERVE


class Request(NamedTuple):
    """A rendered request: the exact body bytes, the hash naming it, and its TPM reservation."""

    key: bytes
    body: bytes
    tokens: int


class Invalid(NamedTuple):
    """A row that cannot be sent; it becomes a row error without touching the network."""

    key: bytes
    message: str


def compile_template(template: str, columns: Sequence[str]) -> tuple[tuple[str, str | None], ...]:
    """Split a template into (literal, column) pieces, refusing anything but plain {column}."""
    pieces: list[tuple[str, str | None]] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise UsageError(
            f"--template is not valid: {exc}; write literal braces as {{{{ and }}}}"
        ) from None
    for literal, name, spec, conversion in parsed:
        if name is None:
            pieces.append((literal, None))
            continue
        if conversion or spec:
            raise UsageError(
                f"--template placeholder {{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} is not allowed: only plain {{column}} placeholders; "
                "write literal braces as {{ and }}"
            )
        if not name or not re.fullmatch(r"[^.\[\]{}]+", name) or (
            name.isdigit() and name not in columns
        ):
            what = ("attributes" if "." in name else "indexes" if "[" in name
                    else "positional fields")
            raise UsageError(
                f"--template placeholder {{{name}}} is not allowed: {what} are not; only plain "
                "{column} placeholders naming an input column; write literal braces as {{ and }}"
            )
        if name not in columns:
            raise UsageError(
                f"--template names column '{name}', which the input does not have; "
                f"columns: {', '.join(columns)}"
            )
        pieces.append((literal, name))
    return tuple(pieces)


def occurrence_key(base: bytes, occurrence: int) -> bytes:
    """The key of the n-th identical request when identical requests are each sent (no dedup)."""
    if occurrence == 0:
        return base
    return hashlib.blake2b(base + b"#%d" % occurrence, digest_size=16).digest()


class Renderer:
    """Turns rows (dicts of column values) into requests; built once per run, validated up front."""

    def __init__(self, config: RunConfig, columns: Sequence[str]) -> None:
        self.config = config
        self.columns = list(columns)
        if config.messages_column:
            self._need(config.messages_column, "--messages-column")
            self.pieces: tuple[tuple[str, str | None], ...] = ()
        elif config.template is not None:
            self.pieces = compile_template(config.template, self.columns)
        else:
            self._need(config.prompt_column, "--prompt-column")
            self.pieces = (("", config.prompt_column),)
        if config.image_column:
            self._need(config.image_column, "--image-column")
        if config.id_column:
            self._need(config.id_column, "--id-column")
        self.needed = sorted(
            {name for _, name in self.pieces if name}
            | {c for c in (config.messages_column, config.image_column) if c}
        )
        self._params = _params(config)
        self._salt, self._model = _identity(config, self._params)
        self._reserve = completion_reserve(config)
        # Local image files are relative to the input's folder; to the working one for a URL.
        self._image_base = config.input.parent if isinstance(config.input, Path) else Path()

    def _need(self, column: str, option: str) -> None:
        if column not in self.columns:
            raise UsageError(
                f"{option} '{column}' is not a column of {self.config.input}; "
                f"columns: {', '.join(self.columns)}"
            )

    def render(self, row: Mapping[str, Any]) -> Request | Invalid:
        """Render one row into its request (or the reason it cannot be sent)."""
        try:
            messages = self._messages(row)
        except _RowProblem as problem:
            digest = hashlib.blake2b(
                b"invalid\n" + str(problem).encode("utf-8", "surrogatepass") + repr(row).encode(
                    "utf-8", "surrogatepass"
                ),
                digest_size=16,
            ).digest()
            return Invalid(digest, str(problem))
        body = dict(self._params)
        body["messages"] = messages
        raw = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        h = hashlib.blake2b(self._salt, digest_size=16)
        h.update(raw)
        if self._model is not None:  # several endpoints: the key above names no model
            raw = self._model + raw[1:]
        return Request(h.digest(), raw, count_prompt_tokens(messages) + self._reserve)

    def _messages(self, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        config = self.config
        if config.messages_column:
            messages = _parse_chat(row.get(config.messages_column))
            if config.system and not any(m["role"] == "system" for m in messages):
                messages.insert(0, {"role": "system", "content": config.system})
            return messages
        text = self._fill(row)
        if not text.strip():
            column = self.pieces[0][1] if len(self.pieces) == 1 else None
            what = f"column '{column}'" if column else "the rendered template"
            raise _RowProblem(f"empty prompt: {what} is empty or null in this row")
        content: Any = text
        if config.image_column:
            image = row.get(config.image_column)
            if image is not None and str(image).strip():
                content = [
                    {"type": "text", "text": text},
                    {"type": "image_url",
                     "image_url": {"url": _image_url(str(image).strip(), self._image_base)}},
                ]
        messages = [{"role": "user", "content": content}]
        if config.system:
            messages.insert(0, {"role": "system", "content": config.system})
        return messages

    def _fill(self, row: Mapping[str, Any]) -> str:
        parts = []
        for literal, name in self.pieces:
            parts.append(literal)
            if name is not None:
                value = row.get(name)
                if value is not None:
                    parts.append(value if isinstance(value, str) else str(value))
        return "".join(parts)


class BodyRenderer(Renderer):
    """Turns batch-input bodies (JSONL `body` column) into requests.

    A body's model and parameters are sent as they are; the job's settings fill in only what a
    body leaves out. The merged body is keyed exactly as `Renderer` keys a row, so a JSONL line
    and a CSV row asking the same thing are the same request (resume, dedup).
    """

    def __init__(self, config: RunConfig, first_without_model: int | None) -> None:
        # Not Renderer.__init__: no prompt column or template applies to a body.
        self.config = config
        self.columns = ["custom_id", "body"]
        for option, value in (("--template", config.template),
                              ("--messages-column", config.messages_column),
                              ("--image-column", config.image_column)):
            if value is not None:
                raise UsageError(f"{option} does not apply to a .jsonl input, whose bodies hold "
                                 "the messages; drop it")
        if config.id_column not in (None, "custom_id"):
            raise UsageError(f"--id-column {config.id_column!r}: a .jsonl input's rows are "
                             "identified by custom_id; drop --id-column")
        if first_without_model is not None and not config.model and not config.endpoints:
            raise UsageError(f"input {config.input} line {first_without_model}: the body names no "
                             "model and no --model is given; add \"model\" to the body or pass --model")
        self.pieces = ()
        self.needed = ["body"]
        self._params = _params(config)
        self._salt, self._model = _identity(config, self._params)
        self._reserve = completion_reserve(config)

    def render(self, row: Mapping[str, Any]) -> Request | Invalid:
        """Render one body into its request (or the reason it cannot be sent)."""
        text = row.get("body")
        body = orjson.loads(text) if isinstance(text, str | bytes) else dict(text or {})
        try:
            messages = _parse_chat(body.get("messages"))
        except _RowProblem as problem:
            message = str(problem).replace("messages column", "body's messages")
            digest = hashlib.blake2b(b"invalid\n" + message.encode() + b"\n"
                                     + orjson.dumps(body, option=orjson.OPT_SORT_KEYS),
                                     digest_size=16).digest()
            return Invalid(digest, message)
        if self.config.system and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": self.config.system})
        merged = dict(self._params)
        merged.update(_canonical(body))
        merged["messages"] = messages
        if self._model is not None:  # several endpoints: each names its own model
            merged.pop("model", None)
        raw = orjson.dumps(merged, option=orjson.OPT_SORT_KEYS)
        h = hashlib.blake2b(self._salt, digest_size=16)
        h.update(raw)
        if self._model is not None:
            raw = self._model + raw[1:]
        # The job's reserve, not the body's max_tokens: plan and budget estimates subtract the
        # job's reserve to find the prompt, so the two must agree (--max-tokens sets both).
        return Request(h.digest(), raw, count_prompt_tokens(messages) + self._reserve)


# Parameters the CLI reads as floats: a body's `"temperature": 0` is sent as 0.0, so it hashes
# like `--temperature 0` (orjson writes 0 and 0.0 differently).
_FLOAT_PARAMS = tuple(s.name for s in SETTINGS if s.shapes == "body" and s.value is float)
# Body parameters the API takes in a shape of their own; every other one is sent as it is, if set.
_SHAPED = frozenset({"stop", "response_format", "tools"})


def _canonical(body: Mapping[str, Any]) -> dict[str, Any]:
    """A body's parameters in the shapes the job's settings take (floats, a list of stops)."""
    out = dict(body)
    for name in _FLOAT_PARAMS:
        value = out.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            out[name] = float(value)
    if isinstance(out.get("stop"), str):
        out["stop"] = [out["stop"]]
    return out


class _RowProblem(Exception):
    pass


# With several endpoints a row's identity (its key: resume, dedup) is its messages and
# parameters alone, the same whichever endpoints a run lists; one endpoint keeps its model and
# base URL in the key, as it always has.
POOL_SALT = b"endpoints\n"


def _identity(config: RunConfig, params: dict[str, Any]) -> tuple[bytes, bytes | None]:
    """The salt of a request's key, and with several endpoints the body's model prefix (the
    first endpoint's model: `params` loses its model, which the key must not name)."""
    if not config.endpoints:
        return config.base_url.encode() + b"\n", None
    params.pop("model", None)
    return POOL_SALT, rendered_prefix(config)


def rendered_prefix(config: RunConfig) -> bytes:
    """How the bodies of a run with several endpoints are rendered: with its first pool
    endpoint's model, which the others swap for their own (`with_model`)."""
    first = next((e for e in config.endpoints if not e.fallback), config.endpoints[0])
    return model_prefix(first.model)


def model_prefix(model: str | None) -> bytes:
    """How a body of a run with several endpoints begins: the model its endpoint names."""
    return b'{"model":' + orjson.dumps(model) + b"," if model else b"{"


def alone_key(body: bytes, base_url: str, model: str | None = None) -> bytes:
    """The key a run with this one endpoint gives the request of `body` (`model`: its model
    instead of the body's; None: the body's own), as `Renderer` keys it: the body sorted, salted
    with the base URL. Several endpoints look the shared cache up and store in it by these."""
    fields = orjson.loads(body)
    if model is not None:
        fields["model"] = model
    raw = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(base_url.encode() + b"\n" + raw, digest_size=16).digest()


def pooled_key(body: bytes) -> bytes:
    """The key a run with several endpoints gives the request of `body`: no model in it."""
    fields = orjson.loads(body)
    fields.pop("model", None)
    raw = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(POOL_SALT + raw, digest_size=16).digest()


def with_model(body: bytes, prefix: bytes, other: bytes) -> bytes:
    """A body rendered with `prefix` (`model_prefix`) as another endpoint sends it."""
    return other + body[len(prefix):]


def _params(config: RunConfig) -> dict[str, Any]:
    """The job's part of every body: the settings declared as body parameters, in the API's shapes."""
    body: dict[str, Any] = {}
    for name in BODY_PARAMETERS:
        value = getattr(config, name)
        if name not in _SHAPED and value is not None:
            body[name] = value
    if config.stop:
        body["stop"] = list(config.stop)
    if config.response_format == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif config.schema is not None:
        # The schema's title names it, else its file name ("review_label.json" -> review_label).
        title = config.schema.get("title") or Path(config.response_format).stem
        name = re.sub(r"[^A-Za-z0-9_-]", "_", str(title))[:64]
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": name or "response", "schema": config.schema, "strict": True},
        }
    if config.tools:
        body["tools"] = list(config.tools)
    return body


def _parse_chat(value: Any) -> list[dict[str, Any]]:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _RowProblem("empty messages: the messages column is empty or null in this row")
    try:
        chat = orjson.loads(value) if isinstance(value, str | bytes) else value
    except orjson.JSONDecodeError as exc:
        raise _RowProblem(f"messages column is not valid JSON: {exc}") from None
    if not isinstance(chat, list) or not chat:
        raise _RowProblem("messages column must hold a non-empty JSON list of {role, content}")
    messages = []
    for i, message in enumerate(chat):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise _RowProblem(
                f"message {i} must be an object with role one of {', '.join(sorted(ROLES))}"
            )
        content = message.get("content")
        if not (content is None or isinstance(content, str | list)):
            raise _RowProblem(f"message {i} content must be a string, a list of parts, or null")
        messages.append(dict(message))
    return messages


def _image_url(value: str, base: Path) -> str:
    """A URL as is; a local file inline as a data URL (relative paths: from the input's folder)."""
    if value.startswith(("http://", "https://", "data:")):
        return value
    # Relative to the input file, so a table and its images move together and a job runs the
    # same from any working directory.
    path = base / Path(value).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _RowProblem(
            f"image {value!r} is not a URL and cannot be read as a file ({exc.strerror})"
        ) from None
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if not mime.startswith("image/"):
        raise _RowProblem(f"image {value!r} is not an image file (type {mime})")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
