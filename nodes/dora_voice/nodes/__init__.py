"""dora nodes: each module is a thin adapter (``main``) over a pure core class that tests drive without dora."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from dora_voice.config import ConfigError, env_vars, load_config
from dora_voice.logs import setup_logging

if TYPE_CHECKING:
    from dora_voice.contracts import NodeContract


def describe_env(config_cls: type) -> str:
    """The ``--help`` epilog listing the env vars a node reads, with defaults and units."""
    lines = ["environment variables (set them in the dataflow YAML's env: or the shell):"]
    for name, (default, help_text) in env_vars(config_cls).items():
        shown = "" if default is None else default
        lines.append(f"  {name:<32} {help_text} (default: {shown!s})")
    return "\n".join(lines)


def node_cli(contract: "NodeContract", doc: str | None, argv: list[str] | None = None, *,
             list_devices: bool = False) -> tuple[Any, argparse.Namespace]:
    """The common start of every node's ``main()``: ``--help`` (listing the env vars), logging, config.

    Args:
        contract: the node's contract (its ``path`` is the program name, its ``config`` the settings class).
        doc: the node module's docstring; its first paragraph is the ``--help`` description.
        argv: arguments (``None``: ``sys.argv``; dora passes none).
        list_devices: add ``--list-devices`` (print the audio devices and exit).

    Returns:
        ``(config, args)``.

    Raises:
        SystemExit: 0 after ``--help`` / ``--list-devices``; 2 on a bad setting, after printing a message that
            names the variable.
    """
    parser = argparse.ArgumentParser(prog=contract.path, description=(doc or "").split("\n\n")[0],
                                     epilog=describe_env(contract.config),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if list_devices:
        parser.add_argument("--list-devices", action="store_true", help="print the audio devices and exit")
    args = parser.parse_args(argv)
    setup_logging()
    if getattr(args, "list_devices", False):
        from dora_voice import audio

        try:
            print(audio.describe_devices())
        except audio.AudioDeviceError as exc:
            raise SystemExit(f"{contract.path}: {exc}") from None
        raise SystemExit(0)
    try:
        return load_config(contract.config), args
    except ConfigError as exc:
        print(f"{contract.path}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
