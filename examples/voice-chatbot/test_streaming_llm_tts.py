#!/usr/bin/env python
"""Send test queries into the streaming pipeline and wait for each spoken answer to finish.

Two ways to run it:

* As the ``text-input`` node of ``test_streaming_pipeline.yml`` (``dora run`` starts it): queries come from
  ``TEXT_INPUT_QUERIES`` (``|``-separated), ``TEXT_INPUT_FILE``, or the arguments below, else the default set.
* By hand, as a dora dynamic node, into a running dataflow whose ``text-input`` node is declared
  ``path: dynamic``:  ``python test_streaming_llm_tts.py --dynamic "Tell me a joke." "And another one."``

Each query is sent after the previous answer has finished playing (the speaker's ``turn_done``).
"""

from __future__ import annotations

import argparse
import os
import uuid

DEFAULT_QUERIES = [
    "Hello! Can you hear me?",
    "Tell me three jokes about unicorns.",
    "What is the capital of France, and what is it famous for?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("queries", nargs="*", help="queries to send (default: TEXT_INPUT_* env, else a built-in set)")
    parser.add_argument("--dynamic", action="store_true", help="attach to a running dataflow as a dynamic node")
    parser.add_argument("--node-id", default="text-input", help="dynamic node id declared in the YAML")
    args = parser.parse_args()

    from dora import Node

    from dora_voice.config import ConfigError, load_config
    from dora_voice.logs import setup_logging
    from dora_voice.nodes import fatal
    from dora_voice.nodes.text_input import TextInputConfig, TextInputCore
    from dora_voice.runtime import declared_inputs, run_node

    setup_logging()
    config = load_config(TextInputConfig)
    queries = args.queries
    if not queries:
        try:
            queries = config.load_queries()
        except ConfigError:
            queries = DEFAULT_QUERIES
    try:
        node = Node(args.node_id) if args.dynamic else Node()
    except RuntimeError as exc:
        fatal("test_streaming_llm_tts.py", f"could not attach as dynamic node {args.node_id!r}: {exc}; start the "
              "dataflow first (dora up && dora start test_streaming_pipeline.yml) and declare "
              f"`- id: {args.node_id}` with `path: dynamic` in it")
    paced = "playback" in (declared_inputs(node) or {"playback"})
    session = config.session_id or os.environ.get("SESSION_ID") or uuid.uuid4().hex[:12]
    run_node(node, TextInputCore(queries, session, config.interval_s, paced))


if __name__ == "__main__":
    main()
