"""Locations: local paths and object-store URLs (`s3://bucket/key`), and the files beside an output.

The one home of the naming rules. Each output owns its state: the files beside `x.parquet` are
named after `x` (`x.usage.parquet`, the documented sidecar; `x.journal.sqlite`, `x.journal.lock`,
`x.report.html`), those beside any other output after its whole name (`x.jsonl.usage.parquet`,
`x.jsonl.journal.sqlite`, ...), so `x.parquet` and `x.jsonl` never share one. Older versions
named a `.jsonl` output's files as a Parquet output's (`former_sibling`); the journal module
finds and moves such a journal (journal.database.journal_path, OutputLock).

An `s3://` location is read and written through pyarrow's own S3 file system (no new
dependency), configured from the usual AWS variables: `AWS_ACCESS_KEY_ID` and friends or a
profile, `AWS_REGION`, and `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` for S3-compatible servers
(MinIO, R2, moto). A remote output keeps its journal, lock and staging file in a local state
folder (`home`), so resume and the overlap lock work as for a local output.

    source = open_location("s3://bucket/in.parquet")   # the Ray engine uses .filesystem, .path
    source.remote, source.filesystem, source.path
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, TypeGuard
from urllib.parse import urlsplit

from batchrun.errors import JobStopped, UsageError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

OUTPUT_SUFFIXES = (".parquet", ".jsonl")  # Parquet, or the batch output format
REQUESTS_SUFFIX = ".jsonl"  # an input in the batch input format
SCHEMES = ("s3",)
STATE_ENV = "BATCHRUN_STATE_DIR"
AWS_HINT = ("check the bucket and key, the AWS credentials (AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) and, for an S3-compatible server, "
            "AWS_ENDPOINT_URL")


def is_url(location: Path | str) -> TypeGuard[str]:
    """True for an object-store URL (`s3://...`); False for a local path."""
    return isinstance(location, str) and "://" in location


def is_requests(path: Path | str) -> bool:
    """True when an input is read as batch requests (`custom_id`, `method`, `url`, `body`)."""
    return str(path).lower().endswith(REQUESTS_SUFFIX)


def is_jsonl_output(path: Path | str) -> bool:
    """True when an output is written in the batch output format, one JSON line per row."""
    return str(path).endswith(".jsonl")


PARQUET_SUFFIX = ".parquet"


def output_stem(name: str) -> str:
    """What an output's siblings are named after: a Parquet output's name without `.parquet`
    (its sidecar keeps its documented name, `x.usage.parquet`), any other output's whole name
    (`x.jsonl`), so that no two outputs share a sibling."""
    return name.removesuffix(PARQUET_SUFFIX)


def sibling(output: Path, suffix: str) -> Path:
    """A file beside the output, named after it: `sibling(x.jsonl, ".usage.parquet")` is
    `x.jsonl.usage.parquet`, `sibling(x.parquet, ".usage.parquet")` is `x.usage.parquet`."""
    return output.with_name(output_stem(output.name) + suffix)


def former_sibling(output: Path, suffix: str) -> Path:
    """Where versions before each output owned its state put that file: named after the name
    without either format suffix, so `x.jsonl` shared `x.journal.sqlite` with `x.parquet`."""
    name = output.name
    stem = next((name.removesuffix(s) for s in OUTPUT_SUFFIXES if name.endswith(s)), name)
    return output.with_name(stem + suffix)


def usage_path(output: Path) -> Path:
    """The per-model usage totals beside the output (`x.usage.parquet`, `x.jsonl.usage.parquet`)."""
    return sibling(output, ".usage.parquet")


def usage_url(url: str) -> str:
    """The usage sidecar of a remote output, beside it in the same bucket (named as `usage_path`)."""
    head, _, name = url.rpartition("/")
    return f"{head}/{output_stem(name)}.usage.parquet"


def state_dir(url: str) -> Path:
    """The local folder of a remote output: `$BATCHRUN_STATE_DIR/<hash>`, else under
    `$XDG_STATE_HOME/batchrun` (default `~/.local/state/batchrun`); the hash is of the whole URL,
    so `x.parquet` and `x.jsonl` in one bucket have a folder each."""
    root = os.environ.get(STATE_ENV)
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        base = Path(xdg).expanduser() / "batchrun"
    return base / hashlib.sha256(url.encode()).hexdigest()[:16]


def home(output: Path | str) -> Path:
    """Where an output's file, journal and lock live on this machine: the path itself, or for a
    URL a file of the same name in its state folder (staged there, then uploaded)."""
    if not is_url(output):
        return Path(output)
    url = str(output)
    return state_dir(url) / url.rpartition("/")[2]


# --- object stores ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """A file to read or write: local, or an object in a store (filesystem + path inside it)."""

    text: str  # as the user gave it: a path or a URL
    filesystem: pafs.FileSystem | None  # None: the local disk, read by path
    path: str  # the path inside `filesystem` (bucket/key), or the local path

    @property
    def remote(self) -> bool:
        """True for an object-store location."""
        return self.filesystem is not None

    def __str__(self) -> str:
        return self.text

    @property
    def suffix(self) -> str:
        """The file name's suffix, lower case (`.csv`)."""
        return PurePosixPath(self.path).suffix.lower()

    def open_text(self, encoding: str) -> IO[str]:
        """A text stream of the whole file (universal newlines off, as the csv module wants)."""
        return io.TextIOWrapper(self.open_binary(), encoding=encoding, newline="")

    def arrow(self) -> Any:
        """What pyarrow readers take: the local path, or a random-access remote file."""
        if self.filesystem is None:
            return self.path
        return self._call("read", self.filesystem.open_input_file, self.path)

    def open_binary(self) -> IO[bytes]:
        """A binary stream of the whole file, read sequentially."""
        if self.filesystem is None:
            return open(self.path, "rb")  # noqa: SIM115 - the caller closes it
        stream = self._call("read", self.filesystem.open_input_stream, self.path)
        return stream  # type: ignore[no-any-return]

    def kind(self) -> str:
        """"file", "dir" or "missing"."""
        if self.filesystem is None:
            path = Path(self.path)
            return "dir" if path.is_dir() else "file" if path.exists() else "missing"
        import pyarrow.fs as pafs

        info = self._call("read", self.filesystem.get_file_info, self.path)
        return {pafs.FileType.File: "file", pafs.FileType.Directory: "dir"}.get(
            info.type, "missing")

    def _call(self, verb: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise UsageError(f"cannot {verb} {self.text}: {_first_line(exc)}; {AWS_HINT}") from None


def open_location(text: Path | str) -> Location:
    """A local path or an `s3://bucket/key` URL as a Location (one line, exit 2, if malformed)."""
    if not is_url(text):
        return Location(str(text), None, str(text))
    url = str(text)
    return Location(url, s3_filesystem(), check_url(url))


def check_url(url: str) -> str:
    """The `bucket/key` of an `s3://bucket/key` URL, or one line (exit 2) saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise UsageError(f"{url}: only s3:// URLs are supported (or a local path)")
    key = parts.path.lstrip("/")
    if not parts.netloc or not key or key.endswith("/"):
        raise UsageError(f"{url}: give a bucket and a key, as in s3://bucket/folder/file.parquet")
    return f"{parts.netloc}/{key}"


def s3_filesystem() -> pafs.S3FileSystem:
    """pyarrow's S3 file system from the AWS environment, endpoint and region set explicitly.

    pyarrow's constructor does not read AWS_ENDPOINT_URL itself; without passing it on, a run
    meant for a local S3-compatible server would go to AWS.
    """
    import pyarrow.fs as pafs

    options: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["endpoint_override"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    try:
        return pafs.S3FileSystem(**options)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot use S3: {_first_line(exc)}; {AWS_HINT}") from None


def check_writable(url: str) -> None:
    """Before anything is sent: the output's bucket exists and takes a write (a probe, deleted)."""
    location = open_location(url)
    assert location.filesystem is not None
    probe = f"{location.path}.batchrun-probe-{os.getpid()}"
    try:
        with location.filesystem.open_output_stream(probe) as stream:
            stream.write(b"")
        location.filesystem.delete_file(probe)
    except OSError as exc:
        raise UsageError(f"cannot write {url}: {_first_line(exc)}; {AWS_HINT}") from None


def publish(local: Path, url: str) -> None:
    """Upload a finished local file to `url` so a reader sees the old object or the whole new one.

    The upload goes to a temporary key and is then copied onto the final key in one server-side
    CopyObject: pyarrow's output stream completes a multipart upload with what it has when it is
    closed, even after a failure, so writing the final key directly could publish half a file.
    """
    import pyarrow.fs as pafs

    target = open_location(url)
    assert target.filesystem is not None
    temporary = f"{target.path}.batchrun-{os.getpid()}.tmp"
    try:
        pafs.copy_files(str(local), temporary, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=target.filesystem)
        target.filesystem.copy_file(temporary, target.path)
    except OSError as exc:  # after the run: its answers are in the journal, so exit 3, not 2
        raise JobStopped(f"cannot write {url}: {_first_line(exc)}; {AWS_HINT}; the answers are "
                         "kept: run the same command again to write it (nothing is sent again)"
                         ) from None
    finally:
        with contextlib.suppress(OSError):
            target.filesystem.delete_file(temporary)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
