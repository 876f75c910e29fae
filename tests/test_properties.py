"""Property-based: any text survives reading (CSV, Parquet) and rendering exactly, in-process."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from batchrun.data.read import open_input
from batchrun.protocol.render import Invalid, Renderer, Request
from batchrun.settings.config import RunConfig

# Any Unicode text a UTF-8 file can hold (lone surrogates cannot be encoded, so they are out).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
NAME = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(
    lambda s: not s.startswith("\ufeff")
)
# More examples on demand: BATCHRUN_EXAMPLES=2000 (2000 pass in ~30 s); 60 keep the suite quick.
SETTINGS = settings(max_examples=int(os.environ.get("BATCHRUN_EXAMPLES", "60")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _read_all(path: Path) -> list[dict[str, object]]:
    table = open_input(path)
    return [row for batch in table.batches(7) for row in batch.to_pylist()]


@st.composite
def tables(draw: st.DrawFn, nullable: bool) -> tuple[list[str], list[dict[str, object]]]:
    names = draw(st.lists(NAME, min_size=1, max_size=4, unique=True))
    cell = st.one_of(st.none(), TEXT) if nullable else TEXT
    rows = draw(st.lists(st.fixed_dictionaries({n: cell for n in names}), max_size=25))
    return names, rows


@SETTINGS
@given(tables(nullable=False), st.sampled_from(["\n", "\r\n"]),
       st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]), st.booleans(), st.booleans())
def test_csv_write_then_read_gives_the_same_text(
    data, line_end: str, quoting: int, last_line_end: bool, bom: bool
) -> None:
    names, rows = data
    # Python's writer leaves a lone \r unquoted when the line end is \n: no reader can tell it
    # from a line end, so that file is ambiguous by construction, not a reading problem.
    texts = [*names, *(v for row in rows for v in row.values())]
    assume(not (quoting == csv.QUOTE_MINIMAL and line_end == "\n"
                and any("\r" in str(t) for t in texts)))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator=line_end, quoting=quoting)
    writer.writeheader()
    writer.writerows(rows)
    text = buffer.getvalue()
    if not last_line_end:  # files cut without a final line end are common
        text = text.removesuffix(line_end)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "in.csv"
        path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))
        table = open_input(path)
        assert table.columns == names
        assert [row for batch in table.batches(7) for row in batch.to_pylist()] == rows
        assert table.count_rows() == len(rows)


@SETTINGS
@given(tables(nullable=True))
def test_parquet_write_then_read_gives_the_same_values(data) -> None:
    names, rows = data
    arrow = pa.table({n: pa.array([r[n] for r in rows], pa.string()) for n in names})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "in.parquet"
        pq.write_table(arrow, path)
        table = open_input(path)
        table.check_text(names)
        assert table.columns == names
        assert _read_all(path) == rows


def _literal(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


@SETTINGS
@given(
    literals=st.lists(TEXT, min_size=3, max_size=3),
    values=st.fixed_dictionaries({"a": st.one_of(st.none(), TEXT), "b": TEXT}),
    extra=TEXT,
)
def test_rendering_never_raises_and_keeps_text_exactly(literals, values, extra) -> None:
    template = f"{_literal(literals[0])}{{a}}{_literal(literals[1])}{{b}}{_literal(literals[2])}"
    config = RunConfig(input=Path("in.csv"), output=Path("out.parquet"),
                       base_url="http://127.0.0.1:1/v1", model="m", template=template)
    marker = "UNUSED-COLUMN-MARKER"
    renderer = Renderer(config, ["a", "b", "unused"])
    assert renderer.needed == ["a", "b"]
    row = {**values, "unused": marker + extra}
    expected = literals[0] + (values["a"] or "") + literals[1] + values["b"] + literals[2]
    result = renderer.render(row)
    if not expected.strip():
        assert isinstance(result, Invalid) and "empty prompt" in result.message
        return
    assert isinstance(result, Request)
    body = orjson.loads(result.body)
    assert body["messages"] == [{"role": "user", "content": expected}]
    assert marker.encode() not in result.body
    # The same row renders to the same bytes and key (resume depends on it).
    again = renderer.render(dict(row))
    assert isinstance(again, Request) and (again.key, again.body) == (result.key, result.body)


@SETTINGS
@given(st.text(max_size=40))
def test_any_template_is_compiled_or_refused_cleanly(template: str) -> None:
    from batchrun.errors import UsageError
    from batchrun.protocol.render import compile_template

    try:
        pieces = compile_template(template, ["prompt"])
    except UsageError as exc:
        assert exc.message.startswith("--template") and "\n" not in exc.message[:200]
        return
    assert all(name in (None, "prompt") for _, name in pieces)


# Odd values a server might put anywhere in an answer (JSON has no NaN or infinity: the body is
# compared as bytes on the wire and as decoded data, and orjson writes infinity as null).
_ODD = st.one_of(st.none(), st.booleans(), st.integers(-5, 20_000_000),
                 st.floats(allow_nan=False, allow_infinity=False), TEXT,
                 st.lists(st.integers(-9, 9), max_size=2),
                 st.dictionaries(TEXT, st.integers(-9, 9), max_size=2))
# Where in an answer a damage can land: (containing object, field).
_SPOTS = [("body", k) for k in ("id", "model", "choices", "usage", "error")] + [
    ("choice", k) for k in ("message", "finish_reason")] + [
    ("message", k) for k in ("content", "tool_calls")] + [
    ("usage", k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")]


@st.composite
def answer_bodies(draw: st.DrawFn) -> object:
    """A well-formed answer with none, one or a few fields removed or replaced by odd values."""
    message: dict[str, object] = {"role": "assistant", "content": draw(TEXT)}
    choice: dict[str, object] = {"index": 0, "message": message,
                                 "finish_reason": draw(st.sampled_from(["stop", "length"]))}
    usage = {name: draw(st.integers(0, 10_000))
             for name in ("prompt_tokens", "completion_tokens", "total_tokens")}
    body: dict[str, object] = {"id": draw(TEXT), "model": draw(TEXT), "choices": [choice],
                               "usage": usage}
    parts: dict[str, dict[str, object]] = {"body": body, "choice": choice, "message": message,
                                           "usage": usage}
    for where, field in draw(st.lists(st.sampled_from(_SPOTS), max_size=3)):
        if draw(st.booleans()):
            parts[where].pop(field, None)
        else:
            parts[where][field] = draw(_ODD)
    return draw(st.one_of(st.just(body), _ODD)) if draw(st.integers(0, 9)) == 0 else body


def _answer(**changes: object) -> dict[str, object]:
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    message: dict[str, object] = {"role": "assistant", "content": "hi"}
    body: dict[str, object] = {"id": "r1", "model": "m", "usage": usage,
                               "choices": [{"message": message, "finish_reason": "stop"}]}
    for path, value in changes.items():
        where, _, field = path.rpartition("__")
        target = {"": body, "usage": usage, "message": message,
                  "choice": body["choices"][0]}[where]  # type: ignore[index]
        target[field] = value
    return body


@SETTINGS
@given(answer_bodies())
@example(_answer())
@example(_answer(usage__prompt_tokens=True))
@example(_answer(usage__total_tokens=10_000_001))
@example(_answer(usage__completion_tokens=-1))
@example(_answer(usage__total_tokens=None))
@example(_answer(choice__finish_reason=""))
@example(_answer(message__content=None, message__tool_calls=[{"id": "c1"}]))
@example(_answer(message__content=["not", "text"]))
@example(_answer(model=7, id=None))
@example(_answer(error={"message": "partial"}))
def test_the_quick_reading_of_an_answer_agrees_with_the_careful_one(body: object) -> None:
    """The hot path takes the usual answer in one look; whatever it accepts, the careful reading
    accepts the same way, and whatever it passes on gets the careful reading's verdict."""
    from batchrun.protocol.answers import parse_answer, read_answer

    assert parse_answer(orjson.dumps(body)) == read_answer(body)
