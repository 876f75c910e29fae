"""Keys: where a run's API key comes from, and the rules that keep it from going astray."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from batchrun.errors import UsageError
from batchrun.settings.config import RunConfig, is_loopback
from batchrun.settings.providers import DEFAULT_KEY_ENVS, FALLBACK_KEY_ENV


class Secret:
    """An API key that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The key itself, for the Authorization header only."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def resolve_key(config: RunConfig, environ: Mapping[str, str] = os.environ) -> Secret | None:
    """Find the API key: --api-key-file, --api-key-env, BATCHRUN_API_KEY, the preset's, OPENAI_API_KEY."""
    if config.api_key_file is not None:
        return _read_key_file(config.api_key_file)
    if config.api_key_env:
        names: tuple[str, ...] = (config.api_key_env,)
    else:
        preset_env = config.preset.key_env if config.preset else None
        # dict.fromkeys: the openai preset's variable is also the fallback; name it once.
        names = tuple(dict.fromkeys(
            DEFAULT_KEY_ENVS + tuple(n for n in (preset_env, FALLBACK_KEY_ENV) if n)
        ))
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return _checked_key(value, f"the environment variable {name}")
    if config.is_local:
        return None
    where = " or ".join(names)
    raise UsageError(f"no API key: set {where} in the environment (or use --api-key-file)")


def _read_key_file(path: Path) -> Secret:
    try:
        info = path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(
                f"--api-key-file {path} can be read by other users; run: chmod 600 {path}"
            )
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise UsageError(f"--api-key-file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --api-key-file {path}: {type(exc).__name__}") from None
    if not value:
        raise UsageError(f"--api-key-file {path} is empty")
    return _checked_key(value, f"--api-key-file {path}")


def _checked_key(value: str, where: str) -> Secret:
    """A key goes into an HTTP header: printable ASCII without spaces (never echoed if not)."""
    if not all("!" <= c <= "~" for c in value):
        raise UsageError(
            f"the API key in {where} contains spaces, line breaks or non-ASCII characters; "
            "it must be the key alone"
        )
    return Secret(value)


def check_transport(config: RunConfig, key: Secret | None) -> None:
    """Refuse to send a key in clear text to a host that is not this machine."""
    if key is None or config.allow_insecure_http or is_loopback(config.base_url):
        return
    if urlsplit(config.base_url).scheme == "http":
        raise UsageError(
            f"refusing to send the API key over plain http to {urlsplit(config.base_url).hostname}; "
            "use https or pass --allow-insecure-http"
        )
