"""``dora-voice-bench``: :mod:`.plans` (scenarios.yaml, plan expansion, run environments), :mod:`.running`
(dataflow runs judged by their turns, RSS sampling), :mod:`.reporting` (medians, summary.json, tables) and
:mod:`.cli` (the command line and the plan runner).
"""
