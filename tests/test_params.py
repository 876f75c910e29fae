"""Every request parameter of the seeds reaches the provider exactly as given (flags and job file)."""

from __future__ import annotations

from pathlib import Path

from batchrun.sim import expected_answer

from .helpers import read_output, run_cli, write_csv

PARAMS = {"temperature": 0.7, "max_tokens": 5, "top_p": 0.9, "frequency_penalty": -1.5,
          "presence_penalty": 1.25, "stop": ["###", "\nEND", "STOP", "Q:"], "seed": 1234}


def _rows(tmp: Path) -> Path:
    return write_csv(tmp / "in.csv", [
        {"id": 1, "product": "Lumen desk lamp", "review": "The dimmer flickers, otherwise fine."},
        {"id": 2, "product": "Vela skillet", "review": 'Heavy, but "worth every gram".'},
    ])


def _check_bodies(server, system: str) -> None:
    bodies = list(server.simulator.last_bodies)
    assert len(bodies) == 2
    for body in bodies:
        sent = {k: body.get(k) for k in PARAMS}
        assert sent == PARAMS
        assert type(body["temperature"]) is float and type(body["max_tokens"]) is int
        assert type(body["seed"]) is int
        assert body["model"] == "sim-1"
        assert body["messages"][0] == {"role": "system", "content": system}
        assert body["messages"][1]["role"] == "user"
    users = sorted(b["messages"][1]["content"] for b in bodies)
    assert users == ["Review of Lumen desk lamp: The dimmer flickers, otherwise fine.",
                     'Review of Vela skillet: Heavy, but "worth every gram".']


def _check_output(out: Path, system: str) -> None:
    rows = read_output(out)
    for row in rows:
        messages = [{"role": "system", "content": system},
                    {"role": "user", "content": f"Review of {row['product']}: {row['review']}"}]
        content, finish = expected_answer(messages, PARAMS["max_tokens"])
        # max_tokens as sent: the simulator cut every answer at 5 words.
        assert (row["response"], row["finish_reason"], row["completion_tokens"]) == (
            content, "length", 5)
        assert finish == "length"


def test_every_parameter_from_flags_is_sent_as_given(tmp_path: Path, sim) -> None:
    server = sim()
    src = _rows(tmp_path)
    out = tmp_path / "out.parquet"
    system = "You label reviews: praise, complaint, mixed or neutral."
    stops = [a for s in PARAMS["stop"] for a in ("--stop", s)]
    result = run_cli(
        "run", "--input", src, "--output", out, "--base-url", server.base_url, "--model", "sim-1",
        "--template", "Review of {product}: {review}", "--system", system,
        "--temperature", 0.7, "--max-tokens", 5, "--top-p", 0.9, "--frequency-penalty", -1.5,
        "--presence-penalty", 1.25, *stops, "--seed", 1234, "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    _check_bodies(server, system)
    _check_output(out, system)


def test_every_parameter_from_a_job_file_is_sent_as_given(tmp_path: Path, sim) -> None:
    server = sim()
    _rows(tmp_path)
    system = "You label reviews."
    job = tmp_path / "job.toml"
    job.write_text(
        '[input]\npath = "in.csv"\ntemplate = "Review of {product}: {review}"\n'
        f'system = "{system}"\n'
        '[output]\npath = "out.parquet"\n'
        f'[provider]\nbase_url = "{server.base_url}"\n'
        '[request]\nmodel = "sim-1"\ntemperature = 0.7\nmax_tokens = 5\ntop_p = 0.9\n'
        'frequency_penalty = -1.5\npresence_penalty = 1.25\n'
        'stop = ["###", "\\nEND", "STOP", "Q:"]\nseed = 1234\n',
        encoding="utf-8",
    )
    result = run_cli("run", job, "--no-progress")
    assert result.returncode == 0, result.stderr
    _check_bodies(server, system)
    _check_output(tmp_path / "out.parquet", system)


def test_flags_win_over_the_job_file_and_unset_parameters_are_not_sent(tmp_path: Path, sim) -> None:
    server = sim()
    _rows(tmp_path)
    job = tmp_path / "job.toml"
    job.write_text(
        '[input]\npath = "in.csv"\ntemplate = "{review}"\n'
        f'[provider]\nbase_url = "{server.base_url}"\n'
        '[request]\nmodel = "sim-1"\ntemperature = 0.7\nmax_tokens = 5\n',
        encoding="utf-8",
    )
    result = run_cli("run", job, "--temperature", 0, "--max-tokens", 200, "--no-progress")
    assert result.returncode == 0, result.stderr
    for body in server.simulator.last_bodies:
        assert body["temperature"] == 0 and body["max_tokens"] == 200
        assert set(body) == {"model", "messages", "temperature", "max_tokens"}
        assert [m["role"] for m in body["messages"]] == ["user"]
    rows = read_output(tmp_path / "in.out.parquet")
    assert {r["finish_reason"] for r in rows} == {"stop"}


def test_a_single_stop_and_boundary_values_are_accepted_and_sent(tmp_path: Path, sim) -> None:
    server = sim()
    src = _rows(tmp_path)
    result = run_cli(
        "run", "--input", src, "--output", tmp_path / "out.parquet", "--base-url", server.base_url,
        "--model", "sim-1", "--template", "{review}", "--temperature", 2, "--top-p", 1,
        "--frequency-penalty", -2, "--presence-penalty", 2, "--max-tokens", 1, "--stop", "\n\n",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    for body in server.simulator.last_bodies:
        assert (body["temperature"], body["top_p"], body["frequency_penalty"],
                body["presence_penalty"], body["max_tokens"], body["stop"]) == (2, 1, -2, 2, 1,
                                                                               ["\n\n"])
    rows = read_output(tmp_path / "out.parquet")
    assert [r["completion_tokens"] for r in rows] == [1, 1]
