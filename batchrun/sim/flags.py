"""The values of `batchrun simulate`'s repeatable flags, read into SimConfig's terms.

Each reader raises ValueError with a message naming the flag, the bad part and the form expected;
the command line turns it into one line and exit 2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from batchrun.sim.config import Account

# --key-env NAME:rpm=..,tpm=..: the option's name -> (Account field, type)
_KEY_OPTIONS: dict[str, tuple[str, type]] = {
    "rpm": ("rpm", int), "tpm": ("tpm", int), "concurrency": ("max_concurrency", int),
    "window": ("window_s", float), "shape": ("limit_shape", str), "credits": ("credits", float),
}
KEY_FORM = "NAME[:rpm=N,tpm=N,concurrency=N,window=S,shape=sliding|fixed|bucket,credits=USD]"


def account(spec: str, environ: Mapping[str, str] | None = None) -> Account:
    """An Account from `--key-env NAME[:option=value,...]`: the key is NAME's value in the
    environment (a key is never a flag value: flags show in `ps`)."""
    name, _, options = spec.partition(":")
    environ = os.environ if environ is None else environ
    key = environ.get(name, "")
    if not name or not key:
        raise ValueError(f"--key-env {name or spec!r}: that environment variable is not set "
                         f"(expected {KEY_FORM})")
    values: dict[str, object] = {}
    for part in filter(None, options.split(",")):
        option, _, value = part.partition("=")
        field, kind = _KEY_OPTIONS.get(option.strip(), ("", str))
        if not field or not value:
            raise ValueError(f"--key-env {name}: {part!r} is not one of "
                             f"{', '.join(_KEY_OPTIONS)} with a value (expected {KEY_FORM})")
        try:
            values[field] = kind(value.strip())
        except ValueError:
            raise ValueError(f"--key-env {name}: {option}={value!r} is not a number") from None
    try:
        return Account(key, **values)  # type: ignore[arg-type]  # checked by _KEY_OPTIONS
    except ValueError as exc:
        raise ValueError(f"--key-env {name}: {exc}") from None


def contexts(specs: tuple[str, ...]) -> dict[str, int] | None:
    """`--context MODEL=N` (repeatable) as {model: tokens}; None when not given."""
    out: dict[str, int] = {}
    for spec in specs:
        model, _, tokens = spec.rpartition("=")
        if not model or not tokens.strip().isdigit() or int(tokens) < 1:
            raise ValueError(f"--context {spec!r}: expected MODEL=N with N tokens >= 1")
        out[model] = int(tokens)
    return out or None


def prices(specs: tuple[str, ...]) -> dict[str, tuple[float, float, float]] | None:
    """`--price MODEL=IN,CACHED,OUT` (USD per million tokens, repeatable); None when not given."""
    out: dict[str, tuple[float, float, float]] = {}
    for spec in specs:
        model, _, amounts = spec.rpartition("=")
        try:
            parsed = tuple(float(a) for a in amounts.split(","))
        except ValueError:
            parsed = ()
        if not model or len(parsed) != 3 or min(parsed) < 0:
            raise ValueError(f"--price {spec!r}: expected MODEL=IN,CACHED,OUT in USD per million "
                             "input, cached input and output tokens")
        out[model] = (parsed[0], parsed[1], parsed[2])
    return out or None
