"""Logging set-up, called once per process from a node's or tool's ``main()``.

Library modules only do ``logger = logging.getLogger(__name__)``; they never configure logging or print.
Plain text to stderr (dora captures it into ``out/<uuid>/log_<node>.jsonl``): no colour, no emoji.
``LOG_LEVEL`` (DEBUG, INFO, WARNING, ERROR) sets the level; default INFO.
"""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"
_configured = False


def setup_logging(level: str | None = None) -> None:
    """Configure the root logger once; later calls do nothing.

    Args:
        level: a logging level name; defaults to ``$LOG_LEVEL`` or INFO. An unknown name falls back to INFO.
    """
    global _configured
    if _configured:
        return
    name = (level or os.environ.get("LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(level=getattr(logging, name, logging.INFO), format=_FORMAT, datefmt="%H:%M:%S",
                        stream=sys.stderr)
    for noisy in ("faster_whisper", "numba", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _configured = True
