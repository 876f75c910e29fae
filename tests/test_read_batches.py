"""Reading in bounded memory: batches are bounded in bytes as well as rows, whatever the layout."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batchrun.data.read import BATCH_BYTES, BATCH_ROWS, open_input


def _rows(n: int, width: int) -> list[dict[str, str]]:
    return [{"id": str(i), "prompt": f"{i:08d} " + "x" * width} for i in range(n)]


def test_one_parquet_row_group_is_read_in_batches_of_rows_and_bytes(tmp_path: Path) -> None:
    short, long = _rows(5_000, 100), _rows(60, 100_000)
    for name, rows in (("short", short), ("long", long)):
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=len(rows))
        assert pq.ParquetFile(path).metadata.num_row_groups == 1
        batches = list(open_input(path).batches())
        assert [r for b in batches for r in b.to_pylist()] == rows
        sizes = {b.num_rows for b in batches[:-1]}
        if name == "short":  # 100-byte rows: the row limit binds
            assert sizes == {BATCH_ROWS}
        else:  # 100 kB rows: about a megabyte at a time, a power of two of rows
            assert sizes == {8} and max(b.nbytes for b in batches) <= 1.2 * BATCH_BYTES


def test_csv_blocks_are_joined_into_batches_and_long_rows_bound_them(tmp_path: Path) -> None:
    for name, rows in (("short", _rows(5_000, 100)), ("long", _rows(40, 200_000))):
        path = tmp_path / f"{name}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, ["id", "prompt"])
            writer.writeheader()
            writer.writerows(rows)
        table = open_input(path)
        batches = list(table.batches())
        assert [r for b in batches for r in b.to_pylist()] == rows
        assert table.count_rows() == len(rows)
        if name == "short":  # many small parse blocks make whole batches
            assert {b.num_rows for b in batches[:-1]} == {BATCH_ROWS}
        else:  # each 200 kB row is read on its own block; ~1 MB joined per batch
            assert max(b.nbytes for b in batches) <= BATCH_BYTES + 300_000
            assert 1 < len(batches) < len(rows)
