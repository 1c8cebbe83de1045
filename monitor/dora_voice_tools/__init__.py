"""dora-voice tools: what a user runs from a terminal on top of the nodes and the monitor.

Imports run one way: ``dora_voice_tools`` -> ``dora_voice_monitor`` -> ``dora_voice`` (the nodes); nothing below
imports anything above it (``tests/test_layout.py`` checks it).

    * :mod:`.launcher`: run a dataflow YAML with ``dora run`` and collect what it produced.
    * :mod:`.cli`: ``dora-voice run | live | devices``.
    * :mod:`.bench`: ``dora-voice-bench`` (plans, running, reporting).
    * :mod:`.resources`: the data shipped inside the package (dataflow YAMLs, recordings, bench scenarios), so a
      wheel install works without the source checkout.
    * :mod:`.contracts`: every node's contract, the monitor's included (for YAML checks).
"""
