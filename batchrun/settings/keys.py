"""Keys: where a run's API key comes from, and the rules that keep it from going astray.

    resolve_key(config)     the key of a run with one endpoint
    resolve_keys(config)    each endpoint's key, by endpoint name (`[[endpoints]]`, `--fallback-model`)

An endpoint's key is resolved for that endpoint only, by the same rules as a run's. When the
endpoints are on more than one host, a key that names no provider (BATCHRUN_API_KEY, and
OPENAI_API_KEY for a host no preset names) is not shared among them: each endpoint's key comes
from its `api_key_env` or its provider's own variable, so no key reaches another endpoint's host.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from batchrun.errors import MissingKey, UsageError
from batchrun.settings.config import RunConfig, is_loopback
from batchrun.settings.endpoints import Endpoint
from batchrun.settings.providers import DEFAULT_KEY_ENVS, FALLBACK_KEY_ENV, PRESETS, Preset


class Secret:
    """An API key that never shows itself in repr, str, logs or tracebacks.

    `source` says where it came from (a variable's name, or the key file), never what it is.
    """

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str = "given by the caller") -> None:
        self._value = value
        self.source = source

    def reveal(self) -> str:
        """The key itself, for the Authorization header only."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def resolve_key(config: RunConfig, environ: Mapping[str, str] = os.environ) -> Secret | None:
    """Find the API key: --api-key-file, else --api-key-env, else the variables of `key_names`.

    None for a local server that needs none; exit 2 (nothing sent) for a remote one.
    """
    if config.api_key_file is not None:
        return _read_key_file(config.api_key_file)
    names = key_names(config)
    key = _from_environment(names, environ)
    if key is None and not config.is_local:
        raise MissingKey(_missing(config, names, environ))
    return key  # None: never a key meant for someone else; a local server gets no header instead


def _from_environment(names: tuple[str, ...], environ: Mapping[str, str]) -> Secret | None:
    """The first of these variables that is set, checked; None if none is."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return _checked_key(value, name)
    return None


def resolve_keys(config: RunConfig, environ: Mapping[str, str] = os.environ,
                 ) -> dict[str, Secret | None]:
    """Each endpoint's key by endpoint name, each resolved for its endpoint alone and checked to
    travel safely (`endpoint_key`); empty for a run with one endpoint (`resolve_key`)."""
    return {endpoint.name: endpoint_key(config, endpoint, environ)
            for endpoint in config.endpoints}


def endpoint_key(config: RunConfig, endpoint: Endpoint,
                 environ: Mapping[str, str] = os.environ) -> Secret | None:
    """One endpoint's key (None: a local server needs none), and its transport checked.

    MissingKey or UsageError name the endpoint and the variable to set.
    """
    at = config.at(endpoint)
    try:
        if at.api_key_file is not None:  # --fallback-model's endpoints share the run's key file
            key: Secret | None = _read_key_file(at.api_key_file)
        else:
            names = endpoint_key_names(config, endpoint)
            key = _from_environment(names, environ)
            if key is None and not at.is_local:
                fix = ("or use --api-key-file" if config.fallback_models else
                       "or name another with api_key_env in its [[endpoints]] table")
                named = endpoint.api_key_env or _shares_keys(config)
                raise MissingKey(_missing(at, names, environ, fix) if named
                                 else _missing_alone(names))
        check_transport(at, key)
    except UsageError as error:
        raise type(error)(f"endpoint '{endpoint.name}': {error.message}") from None
    return key


def endpoint_key_names(config: RunConfig, endpoint: Endpoint) -> tuple[str, ...]:
    """The variables one endpoint's key may come from, in order (a key file aside): the run's
    rules when its endpoints share one host, else its api_key_env or its provider's own."""
    at = config.at(endpoint)
    if endpoint.api_key_env or _shares_keys(config):
        return key_names(at)
    preset = at.preset or _preset_of_host(at.base_url)
    return (preset.key_env,) if preset is not None and preset.key_env else ()


def _shares_keys(config: RunConfig) -> bool:
    """Endpoints on one host (as `--fallback-model`'s) may share a key that names no provider."""
    return len({urlsplit(e.base_url).netloc.lower() for e in config.endpoints}) <= 1


def _missing_alone(names: tuple[str, ...]) -> str:
    """No key for an endpoint of a pool on several hosts: name its variable."""
    if names:
        return (f"no API key: set {names[0]} in the environment, or name the variable that "
                "holds its key with api_key_env in its [[endpoints]] table")
    return ("no API key: name the variable that holds its key with api_key_env = \"NAME\" in its "
            "[[endpoints]] table (a key that names no provider is not shared by endpoints on "
            "different hosts)")


def key_names(config: RunConfig) -> tuple[str, ...]:
    """The variables the key may come from, in order: the one --api-key-env names, else
    BATCHRUN_API_KEY and the provider's own variable.

    The provider is the preset, or the one whose host --base-url names. OPENAI_API_KEY is
    OpenAI's own: it goes to OpenAI, or (as the OpenAI SDK sends it) to a host no preset names,
    never to another provider's preset.
    """
    if config.api_key_env:
        return (config.api_key_env,)
    preset = config.preset or _preset_of_host(config.base_url)
    own = preset.key_env if preset is not None else FALLBACK_KEY_ENV
    return tuple(dict.fromkeys(n for n in (*DEFAULT_KEY_ENVS, own) if n))


def _preset_of_host(base_url: str) -> Preset | None:
    """The remote preset whose host `base_url` names (local presets share 127.0.0.1)."""
    host = urlsplit(base_url).hostname
    for preset in PRESETS.values():
        if not preset.local and host and urlsplit(preset.base_url).hostname == host:
            return preset
    return None


def _missing(config: RunConfig, names: tuple[str, ...], environ: Mapping[str, str],
             fix: str = "or use --api-key-file") -> str:
    """One line for a remote run without a key: the variable to set, first."""
    wanted = " or ".join(reversed(names))  # the provider's own variable first
    line = f"no API key: set {wanted} in the environment ({fix})"
    preset = config.preset or _preset_of_host(config.base_url)
    if preset is not None and FALLBACK_KEY_ENV not in names and not config.api_key_env and (
            environ.get(FALLBACK_KEY_ENV, "").strip()):
        line += (f"; {FALLBACK_KEY_ENV} is set, but an OpenAI key is not sent to {preset.name} "
                 f"(pass --api-key-env {FALLBACK_KEY_ENV} if that key is really {preset.name}'s)")
    return line


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


def _checked_key(value: str, source: str) -> Secret:
    """A key goes into an HTTP header: printable ASCII without spaces (never echoed if not)."""
    if not all("!" <= c <= "~" for c in value):
        raise UsageError(
            f"the API key in {source} contains spaces, line breaks or non-ASCII characters; "
            "it must be the key alone"
        )
    return Secret(value, source)


def check_transport(config: RunConfig, key: Secret | None) -> None:
    """Refuse to send a key in clear text to a host that is not this machine."""
    if key is None or config.allow_insecure_http or is_loopback(config.base_url):
        return
    if urlsplit(config.base_url).scheme == "http":
        raise UsageError(
            f"refusing to send the API key over plain http to {urlsplit(config.base_url).hostname}; "
            "use https or pass --allow-insecure-http"
        )
