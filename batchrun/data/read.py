"""Read: open a CSV, Parquet or batch JSONL input and stream it as record batches, never whole.

A batch is bounded in bytes as well as in rows, whatever the file's layout: CSV is parsed in
small blocks, cut and joined into batches of BATCH_ROWS rows or BATCH_BYTES; Parquet is read a page
at a time through a small buffer (never a whole column chunk or row group, which a writer like
pandas makes as large as the file), in batches of about BATCH_BYTES by the sizes its footer
records.

Whatever is wrong with a file is reported as one `InputError` naming the file and, where it can
be found, the line (CSV, JSONL) or row (Parquet) at fault, before anything is sent.
"""

from __future__ import annotations

import codecs
import csv
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batchrun.data import batch_jsonl as jsonl
from batchrun.data.locations import Location, open_location
from batchrun.errors import InputError

BATCH_ROWS = 2048
BATCH_BYTES = 1 << 20  # a batch holds about this much of the columns read, at most (and 1 row)
PARQUET_BUFFER = 1 << 20  # a Parquet column is read through a buffer this large, page by page
# CSV is parsed in blocks of this many bytes. Arrow reads blocks ahead of the one parsed, so the
# block bounds the reader's memory: at 1 MiB it held ~60 MiB by the end of a 100 MB file.
CSV_BLOCK_BYTES = 1 << 16
CSV_MAX_BLOCK_BYTES = 1 << 30  # a single field may be up to about this long
PARQUET_MAGIC = b"PAR1"
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t", ".txt": ","}
ENCODING_HINT = "pass --encoding (e.g. --encoding latin-1 or --encoding cp1252) if it is not UTF-8"


@dataclass(frozen=True)
class InputTable:
    """An input file whose batches can be read (again) in order; columns are known up front."""

    path: Location  # a local file or an object in a store (`s3://...`)
    format: str  # "csv", "parquet" or "jsonl" (batch requests: custom_id and body columns)
    schema: pa.Schema
    delimiter: str = ","
    encoding: str = "utf8"
    header_only: bool = False  # a CSV of one header line without a newline: arrow cannot read it
    rows: int | None = None  # known when opening counted them (JSONL: its validating pass)
    first_without_model: int | None = None  # JSONL: line of the first body naming no model

    @property
    def columns(self) -> list[str]:
        """Column names in input order."""
        return list(self.schema.names)

    def batches(self, rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """The rows in input order, `rows` at a time; text columns are checked to be UTF-8."""
        if self.header_only:
            return
        try:
            if self.format == "parquet":
                yield from self._parquet_batches(rows)
                return
            if self.format == "jsonl":
                yield from jsonl.record_batches(str(self.path), self.path.open_binary, rows)
                return
            yield from _rebatched(self._csv_blocks(), rows)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(
                f"cannot read {self.path}: {_explain(exc, self.path, self.delimiter, self.encoding)}"
            ) from None

    def _csv_blocks(self) -> Iterator[pa.RecordBatch]:
        """The CSV's rows a block at a time, as arrow parses them."""
        # Arrow cannot split a quoted field longer than its block; such a file is read again with
        # larger blocks, skipping the rows already given out (they parse the same either way).
        block, given = CSV_BLOCK_BYTES, 0
        while True:
            seen = 0
            try:
                reader = pacsv.open_csv(
                    self.path.arrow(),
                    # One thread: blocks are taken one at a time, and a parser thread per core
                    # would only race the run's own loop for the CPU.
                    read_options=pacsv.ReadOptions(block_size=block, encoding=self.encoding,
                                                   use_threads=False),
                    parse_options=_parse_options(self.delimiter),
                    convert_options=pacsv.ConvertOptions(
                        column_types={name: pa.string() for name in self.schema.names},
                        strings_can_be_null=False,
                    ),
                )
                for batch in reader:
                    if seen < given:
                        skip = min(batch.num_rows, given - seen)
                        seen += skip
                        batch = batch.slice(skip)
                    seen += batch.num_rows
                    given += batch.num_rows
                    yield batch
                return
            except pa.ArrowInvalid as exc:
                if not _straddles(exc) or block >= CSV_MAX_BLOCK_BYTES:
                    raise
                block *= 4

    def _parquet_batches(self, rows: int, columns: Sequence[str] | None = None
                         ) -> Iterator[pa.RecordBatch]:
        """The Parquet rows in batches of at most `rows` rows and about BATCH_BYTES, each checked
        to be UTF-8 where it is text."""
        # pre_buffer off and a buffer_size: each column chunk is read a page at a time. Otherwise
        # pyarrow reads whole column chunks of the row group first: a million-row file written by
        # pandas in one row group would be in memory at once.
        parquet = pq.ParquetFile(self.path.arrow(), buffer_size=PARQUET_BUFFER, pre_buffer=False)
        size = _batch_rows(parquet.metadata, rows, columns)
        start = 0
        for batch in parquet.iter_batches(batch_size=size, columns=columns):
            _check_utf8(self.path, batch, start)
            start += batch.num_rows
            yield batch

    def count_rows(self) -> int:
        """Rows in the input (Parquet: from the footer; CSV: one fast streaming pass)."""
        if self.header_only:
            return 0
        if self.rows is not None:
            return self.rows
        if self.format == "parquet":
            return int(pq.ParquetFile(self.path.arrow()).metadata.num_rows)
        try:
            return sum(block.num_rows for block in self._csv_blocks())
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(
                f"cannot read {self.path}: {_explain(exc, self.path, self.delimiter, self.encoding)}"
            ) from None

    def check_text(self, columns: Sequence[str]) -> None:
        """Read `columns` through once so bad text fails the run before anything is sent.

        A CSV is decoded whole by `count_rows` already; a Parquet is checked here, reading only
        the columns the requests are made of.
        """
        if self.format != "parquet" or not columns:
            return
        try:
            for _ in self._parquet_batches(1 << 16, list(columns)):
                pass
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"cannot read {self.path}: {exc}") from None


def open_input(where: Path | str, encoding: str = "utf8") -> InputTable:
    """Open an input (a path or an `s3://` URL) by its content (Parquet magic bytes) and suffix;
    check its header."""
    path = open_location(where)
    kind = path.kind()
    if kind == "missing":
        raise InputError(f"input {path} does not exist")
    if kind == "dir":
        raise InputError(f"input {path} is a directory; give a .csv, .parquet or .jsonl file")
    try:
        with path.open_binary() as f:
            head = f.read(4)
    except OSError as exc:
        raise InputError(f"cannot read input {path}: {exc.strerror or exc}") from None
    suffix = path.suffix
    if not head and suffix != ".jsonl":  # a JSONL of no lines is a valid input of 0 requests
        raise InputError(f"input {path} is empty (0 bytes); a CSV needs at least a header line")
    if head == PARQUET_MAGIC:
        try:
            schema = pq.ParquetFile(path.arrow()).schema_arrow
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"input {path} is not a readable Parquet file: {exc}") from None
        table = InputTable(path, "parquet", schema)
    elif suffix == ".parquet":
        raise InputError(
            f"input {path} is named .parquet but is not a Parquet file; "
            "if it is CSV, rename it to .csv"
        )
    elif suffix == ".jsonl":
        found = jsonl.scan(str(path), path.open_binary)
        table = InputTable(path, "jsonl", jsonl.SCHEMA, rows=found.rows,
                           first_without_model=found.first_without_model)
    elif suffix in CSV_SUFFIXES:
        delimiter = CSV_SUFFIXES[suffix]
        schema, header_only = _csv_schema(path, delimiter, encoding)
        table = InputTable(path, "csv", schema, delimiter, encoding, header_only)
    else:
        raise InputError(
            f"input {path}: unknown format '{suffix or '(no suffix)'}'; "
            "use .csv, .tsv, .parquet or .jsonl (batch requests)"
        )
    duplicates = [name for name, n in Counter(table.schema.names).items() if n > 1]
    if duplicates:
        raise InputError(
            f"input {path} has duplicate column names: {', '.join(duplicates)}; rename them"
        )
    return table


def _rebatched(blocks: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Blocks cut and joined into batches of `rows` rows, or fewer where that is BATCH_BYTES."""
    pending: list[pa.RecordBatch] = []
    count, size = 0, 0.0
    for block in blocks:
        per_row = block.nbytes / max(block.num_rows, 1)
        at = 0
        while at < block.num_rows:
            room = min(rows - count, max(1, int((BATCH_BYTES - size) / per_row)))
            piece = block.slice(at, room)
            at += piece.num_rows
            pending.append(piece)
            count += piece.num_rows
            size += piece.num_rows * per_row
            if count >= rows or size >= BATCH_BYTES:
                yield _joined(pending)
                pending, count, size = [], 0, 0.0
    if pending:
        yield _joined(pending)


def _joined(pieces: list[pa.RecordBatch]) -> pa.RecordBatch:
    """One batch of the pieces' rows (copied: the blocks they were cut from are let go)."""
    if len(pieces) == 1:
        return pieces[0]
    return pa.Table.from_batches(pieces).combine_chunks().to_batches()[0]


def _batch_rows(meta: pq.FileMetaData, rows: int, columns: Sequence[str] | None) -> int:
    """Rows per batch: at most `rows`, and about BATCH_BYTES of `columns` (None: all) by the
    uncompressed sizes the footer records for them; a power of two, whose buffers the allocator
    reuses from batch to batch (2,900-row batches left it holding 50 MiB more by the end of a
    million rows than 2,048-row ones)."""
    if not meta.num_rows:
        return rows
    wanted = None if columns is None else set(columns)
    size = 0
    for group in range(meta.num_row_groups):
        chunks = meta.row_group(group)
        for i in range(chunks.num_columns):
            chunk = chunks.column(i)
            if wanted is None or chunk.path_in_schema.split(".")[0] in wanted:
                size += chunk.total_uncompressed_size
    fits = min(rows, int(BATCH_BYTES * meta.num_rows / size)) if size else rows
    return 1 << (fits.bit_length() - 1) if fits > 1 else 1


def _parse_options(delimiter: str) -> pacsv.ParseOptions:
    return pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)


def _csv_schema(path: Location, delimiter: str, encoding: str) -> tuple[pa.Schema, bool]:
    """The header's column names, every column read as text so no row is re-typed by guesswork."""
    header_only, block = False, 1 << 16
    while True:
        try:
            reader = pacsv.open_csv(
                path.arrow(),
                read_options=pacsv.ReadOptions(block_size=block, encoding=encoding),
                parse_options=_parse_options(delimiter),
                convert_options=pacsv.ConvertOptions(auto_dict_encode=False),
            )
            names = reader.schema.names
            reader.close()
            break
        except (pa.ArrowInvalid, OSError) as exc:
            if _straddles(exc) and block < CSV_MAX_BLOCK_BYTES:
                block *= 4
                continue
            if "Empty CSV file" not in str(exc):
                raise InputError(
                    f"cannot read {path} as CSV: {_explain(exc, path, delimiter, encoding)}"
                ) from None
            # Arrow needs a line end to see a header; a lone header without one is 0 rows.
            names = _lone_header(path, delimiter, encoding)
            header_only = True
            break
    # A byte-order mark read through a non-UTF-8 codec must not stick to the first name.
    if names and names[0].startswith("\ufeff"):
        names[0] = names[0][1:]
    return pa.schema([pa.field(name, pa.string()) for name in names]), header_only


def _straddles(exc: BaseException) -> bool:
    return "straddl" in str(exc)


def _lone_header(path: Location, delimiter: str, encoding: str) -> list[str]:
    rows = [row for row in _python_rows(path, delimiter, encoding) if row[1]]
    if not rows:
        raise InputError(f"input {path} has no header line (only blank lines)")
    if len(rows) > 1:  # not the case arrow refused for: let its message stand
        raise InputError(f"cannot read {path} as CSV: it has no line ends arrow can split on")
    return rows[0][1]


def _python_rows(path: Location, delimiter: str, encoding: str) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of each record, by Python's csv module: slow, for diagnosis."""
    codec = "utf-8-sig" if _is_utf8(encoding) else encoding
    csv.field_size_limit(sys.maxsize)
    with path.open_text(codec) as f:
        reader = csv.reader(f, delimiter=delimiter, strict=False)
        line = 1
        for fields in reader:
            yield line, fields
            line = reader.line_num + 1


def _is_utf8(encoding: str) -> bool:
    try:
        return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")
    except LookupError:
        return False


def _explain(exc: BaseException, path: Location, delimiter: str, encoding: str) -> str:
    """Arrow's message, made specific: the line of bad bytes or of a row with the wrong width."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, OSError) and not isinstance(exc, pa.ArrowException):
        return exc.strerror or text
    lowered = text.lower()
    if "utf8" in lowered or "utf-8" in lowered or "decode" in lowered:
        where = _first_bad_byte(path, encoding) if _is_utf8(encoding) else None
        if where is not None:
            line, offset = where
            return f"not valid UTF-8 at line {line} (byte {offset}); {ENCODING_HINT}"
        return f"{text}; {ENCODING_HINT}"
    if "expected" in lowered and "columns" in lowered:
        found = _ragged_row(path, delimiter, encoding)
        if found is not None:
            line, expected, got, spans_lines = found
            hint = (f"a quote opened on line {line} may never be closed" if spans_lines
                    else f"quote fields that contain '{delimiter}' or line breaks")
            return f"line {line}: expected {expected} fields like the header, got {got}; {hint}"
    return text


def _first_bad_byte(path: Location, encoding: str) -> tuple[int, int] | None:
    """(line, byte offset) of the first byte that is not UTF-8, or None if all is well."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 1
    with path.open_binary() as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                return lines + chunk.count(b"\n", 0, max(0, exc.start)), offset + max(0, exc.start)
            offset += len(chunk)
            lines += chunk.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return lines, offset
    return None


def _ragged_row(path: Location, delimiter: str, encoding: str) -> tuple[int, int, int, bool] | None:
    """(line, expected, got, spans lines) of the first record whose width differs the header's."""
    width = None
    try:
        for line, fields in _python_rows(path, delimiter, encoding):
            if not fields:
                continue  # blank lines are skipped, as arrow skips them
            if width is None:
                width = len(fields)
            elif len(fields) != width:
                return line, width, len(fields), any("\n" in f for f in fields)
    except (UnicodeDecodeError, csv.Error, OSError):
        return None
    return None


def _check_utf8(path: Location, batch: pa.RecordBatch, start: int) -> None:
    """Refuse a Parquet batch whose string columns hold bytes that are not UTF-8."""
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        try:
            column.validate(full=True)
        except pa.ArrowInvalid:
            binary = pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary()
            for i, value in enumerate(column.view(binary).to_pylist()):
                try:
                    if value is not None:
                        value.decode("utf-8")
                except UnicodeDecodeError:
                    raise InputError(
                        f"input {path}: column '{name}' row {start + i + 1} is not valid UTF-8 "
                        "text; fix or drop that row"
                    ) from None
            raise InputError(f"input {path}: column '{name}' is not valid text") from None
