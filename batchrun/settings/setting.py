"""One run setting, declared once on its RunConfig field: flag, job-file key, check, docs line.

    temperature: float | None = setting(
        None, "request", float, flag="--temperature", check=in_range(0, 2), shapes="body",
        help="Sampling temperature, 0 to 2.")

The command line builds its click options from these declarations (`batchrun.cli`), the job-file
loader its sections and keys, the docs their tables (`batchrun.settings.reference`), and the
resume key and fingerprints their list of the settings that shape a request. Nothing here knows
click: a declaration is plain data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Literal

from batchrun.errors import UsageError

Check = Callable[[Any], str | None]  # a complaint ("must be ..."), or None when the value is fine
# How a setting takes part in a request's identity (the resume key, the batch fingerprint):
# the endpoint it goes to, the messages it renders, or a parameter of its body.
Shapes = Literal["endpoint", "prompt", "body"]
NUM = (int, float)  # a TOML number: `rpm = 100` is as good as `rpm = 100.0`
_ACCEPTS: dict[type, tuple[type, ...]] = {float: NUM, int: (int,), str: (str,), bool: (bool,)}
_META = "batchrun.settings"  # the key of a field's metadata that holds its settings


@dataclass(frozen=True)
class Setting:
    """One setting: where it is given (flag, job file), what it accepts, how it is documented."""

    section: str  # the job file's [section]
    value: type  # float, int, str or bool: the flag's type and what the job file accepts
    help: str  # the --help line; "{default}" stands for the default
    flag: str | None = None  # "--rpm", "--dedup/--no-dedup"; None: set in the job file only
    name: str = ""  # the RunConfig field it sets (filled in from the field)
    key: str = ""  # its key in the section ("" until filled in: the name)
    metavar: str | None = None  # the flag's value in --help (default: click's, e.g. FLOAT)
    choices: tuple[str, ...] = ()  # the only values allowed
    multiple: bool = False  # the flag may be repeated (--stop)
    flag_value: bool = True  # what a flag of a bool sets: False for --no-progress
    accepts: tuple[type, ...] = ()  # the job file's types, when more than `value`'s
    check: Check | None = None
    path: bool = False  # a path: relative to the job file's folder when set there
    shapes: Shapes | None = None  # part of a request's identity, and how
    doc: str = ""  # the docs' description, when it says more than `help`
    default: Any = None  # filled in from the field
    shown_default: str | None = None  # the docs' Default cell, when the value alone misleads

    @property
    def types(self) -> tuple[type, ...]:
        """The types a job file may give."""
        return self.accepts or _ACCEPTS[self.value]

    @property
    def flag_help(self) -> str:
        """The --help line, with its default written in."""
        return self.help.replace("{default}", show(self.default))

    @property
    def description(self) -> str:
        """What the docs say it does (their tables give the default a column of its own)."""
        text = self.doc or self.help.replace(" (default {default})", "")
        return text.replace("{default}", show(self.default))

    def complaint(self, value: Any) -> str | None:
        """What is wrong with a value of the right type, or None."""
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}"
        return self.check(value) if self.check is not None else None


def setting(default: Any, section: str, value: type, **declared: Any) -> Any:
    """A RunConfig field that is a setting (a `dataclasses.field` carrying its declaration).

    Typed Any as `dataclasses.field` is: the field's annotation gives its type.
    """
    spec = Setting(section, value, default=default, **declared)
    return field(default=default, metadata={_META: (spec,)})


def declaration(section: str, value: type, **declared: Any) -> dict[str, tuple[Setting, ...]]:
    """The metadata of a setting without a default: `field(metadata=declaration(...))`, which
    type checkers read as a required field, as they would not read a helper's return value."""
    return {_META: (Setting(section, value, **declared),)}


def settings_field(*specs: Setting, default: Any = None) -> Any:
    """A RunConfig field built from several job-file settings (a price from two numbers)."""
    return field(default=default, metadata={_META: specs})


def declared(cls: type) -> Iterator[Setting]:
    """Every setting declared on a dataclass's fields, in field order, with name and key filled."""
    for f in fields(cls):
        for spec in f.metadata.get(_META, ()):
            name = spec.name or f.name
            default = f.default if f.default is not MISSING and name == f.name else spec.default
            yield replace(spec, name=name, key=spec.key or name, default=default)


def show(value: Any) -> str:
    """A default as the help and the docs write it: 50,000; 120; prompt."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,g}" if isinstance(value, float) else f"{value:,}"


def checked(spec: Setting, value: Any, where: str) -> Any:
    """`value` if `spec` accepts it; else UsageError: "{where} must be ... (got ...)"."""
    if isinstance(value, bool) and bool not in spec.types:
        raise UsageError(f"{where} must be {_type_names(spec.types)}, not a boolean")
    if not isinstance(value, spec.types):
        raise UsageError(f"{where} must be {_type_names(spec.types)}, not {type(value).__name__}")
    # Command-line bytes that are not UTF-8 arrive as lone surrogates; no request can carry them.
    texts = [value] if isinstance(value, str) else value if isinstance(value, list | tuple) else []
    for text in texts:
        if isinstance(text, str) and not _is_utf8(text):
            raise UsageError(f"{where} holds bytes that are not valid UTF-8 text; check the value "
                             "and the shell's locale (LANG)")
    complaint = spec.complaint(value)
    if complaint:
        raise UsageError(f"{where} {complaint} (got {_shown(value)})")
    return value


def _shown(value: Any) -> str:
    """A value as a person typed it: a repeated flag's values listed, not a Python tuple."""
    if isinstance(value, list | tuple):
        return f"{len(value)}: " + ", ".join(repr(v) for v in value)
    return repr(value)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _type_names(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    names.update({list: "a list", tuple: "a list", dict: "a table"})
    return " or ".join(dict.fromkeys(names[t] for t in types))
