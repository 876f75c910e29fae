"""The command line: the only module that imports click; BatchrunError becomes an exit code here."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from batchrun.errors import BatchrunError, UsageError
from batchrun.settings.config import SETTINGS
from batchrun.settings.setting import Setting


def _option(spec: Setting) -> Callable[[Any], Any]:
    """The click option of one declared setting (`batchrun.settings.config.RunConfig`)."""
    assert spec.flag is not None
    # None when not given, so build_config can tell a flag from a job file's value.
    extra: dict[str, Any] = {"default": None}
    if spec.value is bool and "/" not in spec.flag:
        extra["flag_value"] = spec.flag_value
    elif spec.choices:
        extra["type"] = click.Choice(list(spec.choices))
    elif spec.value in (int, float):
        extra["type"] = spec.value
    if spec.multiple:
        extra.update(multiple=True, default=())
    return click.option(spec.flag, spec.name, metavar=spec.metavar, help=spec.flag_help, **extra)


RUN_OPTIONS: list[Callable[[Any], Any]] = [_option(s) for s in SETTINGS if s.flag is not None]


def run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Attach every `run` option (shared with `plan`)."""
    for option in reversed(RUN_OPTIONS):
        func = option(func)
    return click.argument("job", required=False, type=click.Path(path_type=Path))(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batchrun")
def cli() -> None:
    """Run a table of prompts through an OpenAI-compatible chat-completions API."""


@cli.command()
@run_options
def run(job: Path | None, **options: Any) -> None:
    """Send every row of the input and write OUTPUT (resumes an interrupted run)."""
    from batchrun.api import run as run_job
    from batchrun.settings.config import build_config

    config = build_config(job, options)
    _setup_logging(config.log_format, _log_level(job, options, config))
    try:
        summary = run_job(config)
    except BatchrunError as stop:
        # The summary is the command's report, on stdout however the run ended (and stderr
        # stays pure JSON with --log-format json); the one line of why follows on stderr.
        if stop.summary is not None:
            click.echo(stop.summary.render())
        raise
    click.echo(summary.render())
    sys.exit(summary.exit_code)


@cli.command()
@run_options
@click.option("--format", "plan_format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Print the plan for people, or as one JSON object.")
def plan(job: Path | None, plan_format: str, **options: Any) -> None:
    """Dry run: rows to send, a sample request, token, cost and time estimates. Sends nothing."""
    from batchrun.errors import MissingKey
    from batchrun.settings.config import build_config
    from batchrun.settings.keys import check_transport, resolve_key
    from batchrun.views.plan import make_plan, plan_json, render_plan

    config = build_config(job, options)
    key, needed = None, None
    if config.endpoints:  # what a run refuses with several endpoints, the plan refuses too
        from batchrun.backends import choose_backend

        choose_backend(config)
    else:  # with several, the plan looks up each endpoint's key itself
        try:
            key = resolve_key(config)
        except MissingKey as missing:  # look before you pay: the plan says which key a run needs
            needed = missing.message
        check_transport(config, key)
    made = make_plan(config, key, needed)
    if plan_format == "json":
        import orjson

        click.echo(orjson.dumps(plan_json(made, config)).decode())
    else:
        click.echo(render_plan(made, config))


@cli.command()
@click.argument("output")  # a path or an s3:// URL: click.Path would fold its "//"
@click.option("--format", "status_format", type=click.Choice(["text", "json"]), default="text",
              help="json: one JSON object for scripts, per-endpoint totals included.")
def status(output: str, status_format: str) -> None:
    """Progress and usage of a finished, running or interrupted run."""
    from batchrun.views.status import describe

    click.echo(describe(output, as_json=status_format == "json"))


@cli.command()
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--html", "html", type=click.Path(path_type=Path, dir_okay=False), metavar="PATH",
              help="Where to write the page (default: OUTPUT with .report.html).")
def report(output: Path, html: Path | None) -> None:
    """A self-contained HTML report of a finished, stopped or running run."""
    from batchrun.views.report import build_report

    click.echo(build_report(output).save(html))


@cli.command()
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--api-key-env", metavar="NAME",
              help="Name of the environment variable holding the API key (default: as the run).")
@click.option("--api-key-file", metavar="PATH", type=click.Path(path_type=Path),
              help="File holding the API key.")
def cancel(output: Path, api_key_env: str | None, api_key_file: Path | None) -> None:
    """Cancel OUTPUT's live Batch API batches; what they finished is kept, the rest is pending."""
    from batchrun.backends.batch_cancel import cancel_batches

    click.echo(cancel_batches(output, api_key_env, api_key_file))


@cli.command()
@click.argument("output")  # a path or an s3:// URL: click.Path would fold its "//"
@click.option("--to", "to", type=click.Path(path_type=Path, dir_okay=False), metavar="PATH",
              help="Where to write it (default: OUTPUT with .partial before its suffix).")
def export(output: str, to: Path | None) -> None:
    """Write what a stopped or running OUTPUT has so far; rows not answered yet are pending."""
    from batchrun.running.summary import count
    from batchrun.views.export import export as export_output

    target, rows = export_output(output, to)
    click.echo(f"{target}: {count(rows['total'], 'row')}: {rows['ok']:,} ok, {rows['error']:,} error, "
               f"{rows['pending']:,} pending (partial)")


@cli.group()
def cache() -> None:
    """The shared response cache (--cache PATH): what it holds, and keeping it small."""


@cache.command("stats")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
def cache_stats(path: Path) -> None:
    """How many answers the cache at PATH holds, their size, age and models."""
    from batchrun.views.cache import stats

    click.echo(stats(path))


@cache.command("prune")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--older-than", metavar="AGE",
              help="Drop answers no run has used for this long (30d, 12h, 90m, 45s).")
@click.option("--max-size", metavar="SIZE",
              help="Then drop the least recently used until the answers fit (500MB, 1GB).")
def cache_prune(path: Path, older_than: str | None, max_size: str | None) -> None:
    """Drop old or least recently used answers from the cache at PATH."""
    from batchrun.views.cache import prune

    click.echo(prune(path, older_than, max_size))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port (0: any free port).")
@click.option("--rpm", type=click.IntRange(1), help="Requests per minute enforced (429 beyond).")
@click.option("--tpm", type=click.IntRange(1),
              help="Tokens per minute enforced (prompt + max_tokens).")
@click.option("--window", "window_s", default=60.0, show_default=True,
              type=click.FloatRange(0, min_open=True),
              help="Window in seconds over which rpm/tpm are enforced (a bucket: what it holds).")
@click.option("--limit-shape", type=click.Choice(["sliding", "fixed", "bucket"]), default="sliding",
              show_default=True,
              help="Sliding windows, fixed back-to-back windows, or a continuously refilled bucket.")
@click.option("--rate-limit-headers/--no-rate-limit-headers", default=True, show_default=True,
              help="Send x-ratelimit-* headers; without them, as vLLM and LLMost.")
@click.option("--max-concurrency", type=click.IntRange(1),
              help="Requests served at once (429 beyond).")
@click.option("--latency", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Seconds per answer.")
@click.option("--latency-jitter", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Uniform +/- jitter on the latency, in seconds.")
@click.option("--fail-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Share of requests answered 500/502/503.")
@click.option("--drop-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Share of connections dropped without an answer.")
@click.option("--hang-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Share of requests never answered.")
@click.option("--garbage-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Share of 200 answers with an unreadable body.")
@click.option("--stray-429-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Share of requests answered 429 at any pace (retry-after 1, no x-ratelimit-* headers).")
@click.option("--tokenizer-ratio", default=1.0, show_default=True,
              type=click.FloatRange(0, min_open=True),
              help="Count prompt tokens as this many times batchrun's estimate (usage, TPM, headers).")
@click.option("--batch-api/--no-batch-api", default=True, show_default=True,
              help="Serve the Batch API (/v1/files, /v1/batches); without it, 404 as most providers.")
@click.option("--batch-duration", "batch_duration_s", type=click.FloatRange(0),
              help="Seconds each batch spends in progress (default: 1,000 lines a second).")
@click.option("--api-key-env", metavar="NAME",
              help="Require the key held in this environment variable (401 otherwise).")
@click.option("--error-style", type=click.Choice(["openai", "llmost"]), default="openai",
              show_default=True, help="Shape of error bodies.")
@click.option("--key-env", "key_envs", multiple=True, metavar="NAME[:rpm=N,...]",
              help="Accept the key held in this environment variable, with limits and credits of "
                   "its own: rpm, tpm, concurrency, window, shape, credits (USD; 402 once spent). "
                   "Repeatable.")
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="Serve only these models; others get 404 model_not_found. Repeatable.")
@click.option("--context", "contexts", multiple=True, metavar="MODEL=N",
              help="A model's context length in tokens (prompt + max_tokens; default 128000). "
                   "Repeatable.")
@click.option("--prompt-cache", is_flag=True,
              help="Report cached tokens: the prefix the same key sent before, in 128-token blocks "
                   "(prompts of 1,024 tokens or more).")
@click.option("--cached-share", type=click.FloatRange(0, 1),
              help="Instead, report this share of every prompt as cached tokens.")
@click.option("--reasoning-model", "reasoning_models", multiple=True, metavar="NAME",
              help="A reasoning model: part of its completion tokens are reasoning tokens. Repeatable.")
@click.option("--reasoning-share", default=0.5, show_default=True,
              type=click.FloatRange(0, 1, max_open=True),
              help="The share of a reasoning model's completion tokens that are reasoning.")
@click.option("--price", "prices", multiple=True, metavar="MODEL=IN,CACHED,OUT",
              help="USD per million input, cached input and output tokens of a model (default: "
                   "batchrun's price table, cached at half). Repeatable.")
@click.option("--report-cost", is_flag=True,
              help="Report each answer's cost in usage.cost, as OpenRouter does.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the fault dice.")
def simulate(host: str, port: int, api_key_env: str | None, key_envs: tuple[str, ...],
             models: tuple[str, ...], contexts: tuple[str, ...], prices: tuple[str, ...],
             reasoning_models: tuple[str, ...], **options: Any) -> None:
    """Serve a local OpenAI-compatible simulator to rehearse a job for free."""
    from batchrun.sim import SimConfig, flags, serve

    key = os.environ.get(api_key_env, "") if api_key_env else None
    if api_key_env and not key:
        raise BatchrunError(f"--api-key-env {api_key_env}: that variable is not set")
    try:
        config = SimConfig(
            api_key=key or None, accounts=tuple(flags.account(spec) for spec in key_envs),
            models=models or None, context_lengths=flags.contexts(contexts),
            prices=flags.prices(prices), reasoning_models=reasoning_models, **options)
    except ValueError as exc:
        raise UsageError(f"simulate: {exc}") from None
    try:
        serve(config, host=host, port=port)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise UsageError(f"simulate: cannot listen on {host}:{port}: {reason}; "
                         "choose another --port (0 picks a free one) or --host") from None


def _setup_logging(log_format: str, level: str) -> None:
    from batchrun.views.logs import configure

    configure(log_format, level)


def _log_level(job: Path | None, options: dict[str, Any], config: Any) -> str:
    """JSON logs show the run's events (info) by default; a level given by flag or job file wins."""
    if config.log_format != "json" or options.get("log_level") is not None:
        return str(config.log_level)
    if job is not None:
        from batchrun.settings.config import load_job_file

        if "log_level" in load_job_file(job):
            return str(config.log_level)
    return "info"


def _json_requested(argv: list[str]) -> bool:
    """`--log-format json` on the command line: errors before the run starts are JSON too."""
    return "--log-format=json" in argv or any(
        a == "--log-format" and b == "json" for a, b in zip(argv, argv[1:], strict=False))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on `argv` (default: this process's arguments); return its exit code.

    Nothing leaves as SystemExit, so tests call this in their own process; `console` is the
    process's entry point around it.
    """
    args = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    try:
        # The program's name as click would find it, except when called with arguments in
        # another program's process (a test under pytest), where that name would be pytest's.
        _main(args, None if argv is None else "batchrun")
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        print(exit_.code, file=sys.stderr)  # sys.exit("message"): printed, exit 1, as Python does
        return 1
    return 0


def _main(args: list[str], prog_name: str | None) -> None:
    """Run click; turn BatchrunError into one line and its exit code (raised as SystemExit)."""
    from batchrun.views.logs import error_line

    json_requested = _json_requested(args)
    if json_requested:
        _setup_logging("json", "warning")

    def fail(message: str, code: int) -> None:
        click.echo(error_line(message, code), err=True)
        sys.exit(code)

    try:
        cli.main(args, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        fail("aborted", 130)
    except click.ClickException as exc:
        if json_requested:
            fail(exc.format_message(), exc.exit_code)
        exc.show()
        sys.exit(exc.exit_code)
    except BatchrunError as exc:
        fail(exc.message, exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as exc:  # a bug: one line, not a traceback; details at debug level
        logging.getLogger("batchrun").debug("internal error", exc_info=True)
        fail(f"internal error: {type(exc).__name__}: {exc}; rerun with --log-level debug and "
             "report it", 1)


def console() -> None:
    """The `batchrun` command and `python -m batchrun`: main(), then leave at once.

    Everything a command does is finished when main() returns (output renamed into place, journal
    closed, lock released), so the interpreter's teardown of pyarrow, numpy and the rest (~25 ms
    here, a tenth of a `status`) is skipped: streams and log handlers are flushed, then the
    process exits with main()'s code. Tests call main() itself.
    """
    if sys.platform == "linux":
        # Arrow's default allocator (mimalloc) keeps what the CSV reader and the Parquet writer
        # free in per-thread heaps; jemalloc returns it, so peak memory stays flat as rows grow
        # (benchmarks/memory.py: 100k/10k rows 1.35x -> 1.17x). A user's own setting wins. Set
        # here, not in main(): it is this process's allocator, chosen before pyarrow starts.
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`batchrun plan | head`): nothing to save
            pass
    os._exit(code)
