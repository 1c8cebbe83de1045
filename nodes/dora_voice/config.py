"""One config style for every node: a frozen dataclass whose fields each name their env var.

A node declares its settings once::

    @dataclass(frozen=True)
    class VadConfig:
        min_silence_ms: int = env_field("VAD_MIN_SILENCE_MS", 400, parse_int(min_value=0), "silence that ends a turn")

and builds it with ``load_config(VadConfig)`` (from ``os.environ``) or ``load_config(VadConfig, {...})`` in tests.
Parsing is strict, as in pipecat's ``utils/env.py``: a bad value raises :class:`ConfigError` naming the variable
and what was expected. The node contracts (``contracts.py``) read the env var names back from the dataclass, so the
YAMLs are checked against the same list the node actually reads.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """An environment variable holds a value its node cannot use. The message names the variable."""


Parser = Callable[[str], Any]


def parse_bool(raw: str) -> bool:
    """Parse ``true/false/1/0/yes/no/on/off`` (any case). Raises ``ValueError`` otherwise."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected true or false")


def parse_int(*, min_value: int | None = None, max_value: int | None = None) -> Parser:
    """Return a parser for an integer within ``[min_value, max_value]``."""

    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError("expected an integer") from None
        _check_range(value, min_value, max_value)
        return value

    return parse


def parse_float(*, min_value: float | None = None, max_value: float | None = None) -> Parser:
    """Return a parser for a finite float within ``[min_value, max_value]``."""

    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError("expected a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("expected a finite number")
        _check_range(value, min_value, max_value)
        return value

    return parse


def parse_choice(*choices: str) -> Parser:
    """Return a parser accepting one of ``choices`` (case-insensitive), returned lower-case."""

    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value

    return parse


def parse_str(raw: str) -> str:
    """Any string, stripped."""
    return raw.strip()


def parse_optional_path(raw: str) -> Path | None:
    """A filesystem path, or ``None`` for an empty value. Existence is checked by the node that opens it."""
    raw = raw.strip()
    return Path(raw).expanduser() if raw else None


def _check_range(value: float, lo: float | None, hi: float | None) -> None:
    if lo is not None and value < lo:
        raise ValueError(f"must be >= {lo}")
    if hi is not None and value > hi:
        raise ValueError(f"must be <= {hi}")


def env_field(env: str, default: Any, parser: Parser, help: str) -> Any:
    """A dataclass field read from the environment variable ``env``.

    Args:
        env: environment variable name (e.g. ``TTS_MAX_SEGMENT_LENGTH``).
        default: value when the variable is unset or empty.
        parser: turns the raw string into the value; raises ``ValueError`` with what it expected.
        help: one line for ``--help`` and the README; say the unit.
    """
    return dataclasses.field(default=default, metadata={"env": env, "parser": parser, "help": help})


def env_vars(cls: type) -> dict[str, tuple[Any, str]]:
    """Map every env var a config class reads to ``(default, help)``."""
    return {f.metadata["env"]: (f.default, f.metadata["help"]) for f in dataclasses.fields(cls) if "env" in f.metadata}


def load_config(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
    """Build a config dataclass from ``environ`` (default ``os.environ``).

    Raises:
        ConfigError: a variable is set to a value its parser rejects; the message names the variable, the value
            and what was expected. Cross-field checks in the class's ``__post_init__`` raise it too.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        name = f.metadata.get("env")
        if name is None:
            continue
        raw = environ.get(name)
        if raw is None or raw.strip() == "":
            continue
        try:
            values[f.name] = f.metadata["parser"](raw)
        except ValueError as exc:
            raise ConfigError(f"{name}={raw!r}: {exc}") from None
    return cls(**values)
