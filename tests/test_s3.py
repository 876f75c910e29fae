"""s3:// inputs and outputs: the real CLI against moto's S3 server on loopback (never AWS)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.sim import expected_answer

from .helpers import S3, clean_env, prompts_csv, refused, run_cli
from .test_jsonl_input import _line, _user, write_requests


def test_csv_in_and_parquet_out_on_s3_resume_and_status(tmp_path: Path, sim, s3: S3) -> None:
    server = sim()
    src = s3.put("in/reviews.csv", prompts_csv(tmp_path / "reviews.csv", 30))
    out = s3.url("out/answers.parquet")
    args = ["run", "--input", src, "--output", out, "--base-url", server.base_url,
            "--model", "sim-1", "--no-progress"]
    first = run_cli(*args, env=clean_env())
    assert first.returncode == 0, first.stderr
    assert f"output    {out}" in first.stdout
    assert f"usage     {s3.url('out/answers.usage.parquet')}" in first.stdout
    # The output and its sidecar are in the bucket; no temporary or probe key is left behind.
    assert s3.keys() == ["in/reviews.csv", "out/answers.parquet", "out/answers.usage.parquet"]
    table = s3.table("out/answers.parquet")
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [str(i) for i in range(30)]
    for row in rows:
        assert row["response"] == expected_answer(_user(row["prompt"]))[0]
    meta = json.loads(table.schema.metadata[b"batchrun"])
    assert meta["rows"] == {"total": 30, "ok": 30, "error": 0}
    # The journal and lock live in the local state folder of the URL; no staging copy is kept.
    assert s3.state_files(out) == ["answers.journal.lock", "answers.journal.sqlite"]
    status = run_cli("status", out, env=clean_env())
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"{out}: finished")
    assert "30 answered, 0 failed, 0 left" in status.stdout
    # A rerun resumes from that journal: nothing is sent, the output is written again whole.
    again = run_cli(*args, env=clean_env())
    assert again.returncode == 0, again.stderr
    assert server.stats.requests == 30
    assert s3.table("out/answers.parquet").num_rows == 30


def test_parquet_and_jsonl_inputs_from_s3_and_a_jsonl_output_to_s3(
    tmp_path: Path, sim, s3: S3
) -> None:
    server = sim()
    local = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": [f"Parquet prompt {i}." for i in range(5)]}), local)
    src = s3.put("in/prompts.parquet", local)
    result = run_cli("run", "--input", src, "--base-url", server.base_url, "--model", "sim-1",
                     "--no-progress", env=clean_env())
    assert result.returncode == 0, result.stderr
    # Without --output, the output goes beside the input, in the bucket.
    assert "in/prompts.out.parquet" in s3.keys()
    requests = write_requests(tmp_path / "requests.jsonl", [
        _line(f"c-{i}", {"model": "sim-1", "messages": _user(f"Batch prompt {i}.")})
        for i in range(6)])
    src = s3.put("in/requests.jsonl", requests)
    out = s3.url("out/answers.jsonl")
    result = run_cli("run", "--input", src, "--output", out, "--base-url", server.base_url,
                     "--no-progress", env=clean_env())
    assert result.returncode == 0, result.stderr
    lines = [json.loads(x) for x in s3.get("out/answers.jsonl").splitlines()]
    assert [x["custom_id"] for x in lines] == [f"c-{i}" for i in range(6)]
    assert lines[2]["response"]["body"]["choices"][0]["message"]["content"] == expected_answer(
        _user("Batch prompt 2."))[0]
    assert "out/answers.jsonl.usage.parquet" in s3.keys()


def test_missing_objects_buckets_and_malformed_urls_exit_2_and_send_nothing(
    tmp_path: Path, sim, s3: S3
) -> None:
    server = sim()
    src = s3.put("in/reviews.csv", prompts_csv(tmp_path / "reviews.csv", 3))
    base = ["--base-url", server.base_url, "--model", "sim-1", "--no-progress"]
    cases = [
        (["--input", s3.url("in/nope.csv")], ("input s3://batchrun-test/in/nope.csv does not exist",)),
        (["--input", "s3://no-such-bucket/in.csv"], ("s3://no-such-bucket/in.csv does not exist",)),
        (["--input", src, "--output", "s3://no-such-bucket/out.parquet"],
         ("cannot write s3://no-such-bucket/out.parquet", "AWS_ENDPOINT_URL")),
        (["--input", "s3://batchrun-test"], ("give a bucket and a key",)),
        (["--input", "gs://bucket/in.csv"], ("only s3:// URLs",)),
        (["--input", src, "--output", s3.url("out/answers.csv")], ("must end in .parquet",)),
    ]
    for args, needles in cases:
        refused(run_cli("run", *args, *base, env=clean_env()), *needles)
    assert server.stats.requests == 0
    assert s3.keys() == ["in/reviews.csv"]
    refused(run_cli("status", s3.url("out/never.parquet"), env=clean_env()), "no run found")


def test_publishing_replaces_the_object_whole_through_a_temporary_key(
    tmp_path: Path, s3: S3
) -> None:
    from batchrun.data.locations import publish

    url = s3.url("out/x.parquet")
    first, second = tmp_path / "first.parquet", tmp_path / "second.parquet"
    first.write_bytes(b"old" * 10)
    second.write_bytes(b"new" * 400_000)
    publish(first, url)
    publish(second, url)
    assert s3.get("out/x.parquet") == second.read_bytes()
    assert s3.keys() == ["out/x.parquet"]  # the temporary key is gone


def test_credentials_the_store_refuses_exit_2_with_one_line_and_send_nothing(
    tmp_path: Path, sim, s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto import settings

    server = sim()
    src = s3.put("in/reviews.csv", prompts_csv(tmp_path / "reviews.csv", 3))
    # From here on the server checks signatures, and knows no key: every request is refused.
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    result = run_cli("run", "--input", src, "--base-url", server.base_url, "--model", "sim-1",
                     "--no-progress", env=clean_env())
    line = refused(result, f"cannot read {src}", "AWS_ACCESS_KEY_ID")
    assert "testing" not in line.replace("batchrun-test", "")  # no key material echoed
    # A local input and an output the store refuses: the probe write finds it before any send.
    local = prompts_csv(tmp_path / "local.csv", 3)
    result = run_cli("run", "--input", local, "--output", s3.url("out/x.parquet"),
                     "--base-url", server.base_url, "--model", "sim-1", "--no-progress",
                     env=clean_env())
    refused(result, "cannot write s3://batchrun-test/out/x.parquet")
    assert server.stats.requests == 0
