"""dora nodes: each module is a thin adapter (``main``) over a pure core class that tests drive without dora.

Every node's ``main()`` has the same shape: :func:`node_cli` (``--help``, logging, settings), load what the core
needs (models, files, devices), build the core, then ``runtime.run_node(dora.Node(), core)``.

Exit status of every node (and the convention :func:`fatal` applies):

    0  the event stream ended and the node finished (also after ``--help`` / ``--list-devices``).
    2  the node could not start: a bad setting, a missing or unreadable file or model, an audio device that
       cannot be opened. One line on stderr, ``<node>: <what is wrong>``, names the variable, file or device and
       the fix; ``dora run`` prints it and stops the dataflow.
    1  the node crashed while running (an uncaught exception: Python's own status, with its traceback).
"""

from __future__ import annotations

import os

# numpy's OpenBLAS keeps a helper thread per core that busy-waits after each call big enough to be split: measured
# here, one 80x201 @ 201x800 product (the log-mel filter bank of an 8 s Whisper or Smart Turn window) every 50 ms kept
# that thread spinning a whole core, on the two-core machine where the ASR, the end-of-turn model and the LLM share
# the cores at the end of a turn. The nodes' products are small: one thread computes them as fast (8 s of log-mel
# features: 7.5 ms on two threads, 9.9 ms on one). Set before numpy is first imported (OpenBLAS reads it when it
# loads); an explicit OPENBLAS_NUM_THREADS wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from typing import TYPE_CHECKING, Any, NoReturn  # noqa: E402

from dora_voice.config import ConfigError, env_vars, load_config  # noqa: E402
from dora_voice.logs import setup_logging  # noqa: E402

if TYPE_CHECKING:
    from dora_voice.contracts import NodeContract


EXIT_OK = 0
"""The event stream ended and the node finished."""
EXIT_CRASHED = 1
"""An uncaught exception while running (Python's own exit status)."""
EXIT_CANNOT_START = 2
"""A bad setting, file, model or device at start-up (see :func:`fatal`)."""


def fatal(node: str, message: str) -> NoReturn:
    """Stop a node that cannot start: write ``<node>: <message>`` to stderr and exit with
    :data:`EXIT_CANNOT_START`.

    Args:
        node: the console script (``CONTRACT.path``), e.g. ``dora-voice-asr``.
        message: what is wrong and how to fix it, naming the variable, file or device.

    Raises:
        SystemExit: always, with code :data:`EXIT_CANNOT_START`.
    """
    sys.stderr.write(f"{node}: {message}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_CANNOT_START)


def describe_env(*config_classes: type) -> str:
    """The ``--help`` epilog listing the env vars a node reads (every class given, in order), with defaults and
    units."""
    lines = ["environment variables (set them in the dataflow YAML's env: or the shell):"]
    for config_cls in config_classes:
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
        SystemExit: 0 after ``--help`` / ``--list-devices``; :func:`fatal` (2) on a bad setting or when the audio
            devices cannot be listed, with a message that names the variable.
    """
    parser = argparse.ArgumentParser(prog=contract.path, description=(doc or "").split("\n\n")[0],
                                     epilog=describe_env(*contract.configs),
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
            fatal(contract.path, str(exc))
        raise SystemExit(EXIT_OK)
    try:
        return load_config(contract.config), args
    except ConfigError as exc:
        fatal(contract.path, str(exc))
