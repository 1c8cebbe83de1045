"""dora nodes: each module is a thin adapter (``main``) over a pure core class that tests drive without dora."""

from __future__ import annotations

from dora_voice.config import env_vars


def describe_env(config_cls: type) -> str:
    """The ``--help`` epilog listing the env vars a node reads, with defaults and units."""
    lines = ["environment variables (set them in the dataflow YAML's env: or the shell):"]
    for name, (default, help_text) in env_vars(config_cls).items():
        shown = "" if default is None else default
        lines.append(f"  {name:<32} {help_text} (default: {shown!s})")
    return "\n".join(lines)
