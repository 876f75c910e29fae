"""The Ray engine with s3:// inputs and outputs: the real CLI joining the session's Ray, against
the simulator and moto's S3 server on loopback (the `s3` fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.sim import expected_answer

from .helpers import S3, clean_env, prompts_csv, refused, run_cli
from .test_jsonl_input import _user
from .test_ray import ray_run

pytestmark = pytest.mark.ray


def test_a_ray_run_reads_and_writes_s3_and_resumes(tmp_path: Path, sim, s3: S3,
                                                   ray_address: str) -> None:
    server = sim(latency=0.01)
    src = s3.put("in/reviews.csv", prompts_csv(tmp_path / "reviews.csv", 40))
    out = s3.url("out/answers.parquet")
    result = ray_run(src, out, server.base_url, ray_address, env=clean_env())
    assert result.returncode == 0, result.stderr
    assert "40 rows: 40 ok, 0 error" in result.stdout
    assert f"output    {out}" in result.stdout
    assert s3.keys() == ["in/reviews.csv", "out/answers.parquet", "out/answers.usage.parquet"]
    table = s3.table("out/answers.parquet")
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [str(i) for i in range(40)]
    assert [r["status"] for r in rows] == ["ok"] * 40
    for row in rows:
        assert row["response"] == expected_answer(_user(row["prompt"]))[0]
    assert json.loads(table.schema.metadata[b"batchrun"])["rows"] == {
        "total": 40, "ok": 40, "error": 0}
    usage = s3.table("out/answers.usage.parquet").to_pylist()
    assert sum(u["requests"] for u in usage) == 40
    assert sum(u["total_tokens"] for u in usage) == server.stats.billed_total_tokens
    assert server.stats.requests == 40 and set(server.stats.billed_by_prompt.values()) == {1}
    # The journal and lock are in the URL's local state folder, as for the local engine; the
    # workers committed to it through the ledger actor, so `status` and a resume read it.
    assert s3.state_files(out) == ["answers.journal.lock", "answers.journal.sqlite"]
    status = run_cli("status", out, env=clean_env())
    assert status.returncode == 0, status.stderr
    assert "40 answered, 0 failed, 0 left" in status.stdout
    again = ray_run(src, out, server.base_url, ray_address, env=clean_env())
    assert again.returncode == 0, again.stderr
    assert server.stats.requests == 40  # nothing sent again; the output is written again whole
    assert s3.table("out/answers.parquet").num_rows == 40
    # The same prompts and six more, now as Parquet: the cluster sends only the new six, into
    # the same state folder's journal, and the output has all 46 in input order.
    local = tmp_path / "reviews.parquet"
    pq.write_table(pa.table({"id": list(range(46)),
                             "prompt": [f"Summarize review number {i}." for i in range(46)]}), local)
    more = ray_run(s3.put("in/reviews.parquet", local), out, server.base_url, ray_address,
                   env=clean_env())
    assert more.returncode == 0, more.stderr
    assert server.stats.requests == 46 and set(server.stats.billed_by_prompt.values()) == {1}
    rows = s3.table("out/answers.parquet").to_pylist()
    assert [(r["id"], r["status"]) for r in rows] == [(i, "ok") for i in range(46)]


def test_output_folders_on_s3_are_refused_before_ray_is_joined(
        tmp_path: Path, sim, s3: S3, ray_address: str) -> None:
    # An output folder (a Parquet dataset written by Ray Data) is local only, and reads a local
    # input: either side on s3 is one line, exit 2, before Ray is joined or anything is written.
    server = sim()
    src = s3.put("in/reviews.csv", prompts_csv(tmp_path / "reviews.csv", 3))
    keys, files = s3.keys(), sorted(tmp_path.rglob("*"))
    cases = [(src, s3.url("out/answers"), "must end in .parquet"),
             (src, tmp_path / "lake" / "answers", "an output folder reads a local input")]
    for source, target, needle in cases:
        refused(ray_run(source, target, server.base_url, ray_address, env=clean_env()), needle)
    assert server.stats.requests == 0
    assert s3.keys() == keys
    assert sorted(tmp_path.rglob("*")) == files  # no folder, journal or lock made
