"""Read: open a CSV or Parquet input and stream it as record batches, never whole."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .errors import InputError

BATCH_ROWS = 2048
CSV_BLOCK_BYTES = 1 << 20
PARQUET_MAGIC = b"PAR1"
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t", ".txt": ","}


@dataclass(frozen=True)
class InputTable:
    """An input file whose batches can be read (again) in order; columns are known up front."""

    path: Path
    format: str  # "csv" or "parquet"
    schema: pa.Schema
    delimiter: str = ","
    encoding: str = "utf8"

    @property
    def columns(self) -> list[str]:
        """Column names in input order."""
        return list(self.schema.names)

    def batches(self, rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """The rows in input order, `rows` at a time (a little fewer or more for CSV blocks)."""
        try:
            if self.format == "parquet":
                yield from pq.ParquetFile(self.path).iter_batches(batch_size=rows)
                return
            reader = pacsv.open_csv(
                self.path,
                read_options=self._read_options(),
                parse_options=pacsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in self.schema.names},
                    strings_can_be_null=False,
                ),
            )
            for batch in reader:
                for start in range(0, batch.num_rows, rows):
                    yield batch.slice(start, rows)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"cannot read {self.path}: {_arrow_message(exc)}") from None

    def count_rows(self) -> int:
        """Rows in the input (Parquet: from the footer; CSV: one fast streaming pass)."""
        if self.format == "parquet":
            return pq.ParquetFile(self.path).metadata.num_rows
        return sum(batch.num_rows for batch in self.batches(1 << 20))

    def _read_options(self) -> pacsv.ReadOptions:
        return pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, encoding=self.encoding)


def open_input(path: Path, encoding: str = "utf8") -> InputTable:
    """Open an input by its content (Parquet magic bytes) and suffix; check its header."""
    if not path.exists():
        raise InputError(f"input {path} does not exist")
    if path.is_dir():
        raise InputError(f"input {path} is a directory; give a .csv or .parquet file")
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise InputError(f"cannot read input {path}: {exc.strerror}") from None
    suffix = path.suffix.lower()
    if head == PARQUET_MAGIC:
        try:
            schema = pq.ParquetFile(path).schema_arrow
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"input {path} is not a readable Parquet file: {exc}") from None
        table = InputTable(path, "parquet", schema)
    elif suffix == ".parquet":
        raise InputError(
            f"input {path} is named .parquet but is not a Parquet file; "
            "if it is CSV, rename it to .csv"
        )
    elif suffix in CSV_SUFFIXES:
        if not head:
            raise InputError(f"input {path} is empty (0 bytes); a CSV needs at least a header line")
        table = InputTable(
            path, "csv", _csv_schema(path, CSV_SUFFIXES[suffix], encoding), CSV_SUFFIXES[suffix],
            encoding,
        )
    else:
        raise InputError(
            f"input {path}: unknown format '{suffix or '(no suffix)'}'; use .csv, .tsv or .parquet"
        )
    duplicates = [name for name, n in Counter(table.schema.names).items() if n > 1]
    if duplicates:
        raise InputError(
            f"input {path} has duplicate column names: {', '.join(duplicates)}; rename them"
        )
    return table


def _csv_schema(path: Path, delimiter: str, encoding: str) -> pa.Schema:
    """The header's column names, every column read as text so no row is re-typed by guesswork."""
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=1 << 16, encoding=encoding),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(auto_dict_encode=False),
        )
        names = reader.schema.names
        reader.close()
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"cannot read {path} as CSV: {_arrow_message(exc)}") from None
    return pa.schema([pa.field(name, pa.string()) for name in names])


def _arrow_message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "invalid UTF8" in text or "UTF-8" in text or "utf8" in text.lower():
        return f"{text} (the file is not UTF-8; pass --encoding, e.g. --encoding latin-1)"
    return text
