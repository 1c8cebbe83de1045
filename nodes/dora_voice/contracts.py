"""Each node's contract, declared in one place: inputs, outputs and the env vars it reads.

Like dora-hub's ``node-hub/*/dora-node.yml``. Each node module defines ``CONTRACT``; :func:`all_contracts` collects
the nodes of this package. The monitor node declares its own (``dora_voice_monitor.node.CONTRACT``; this package
never imports the monitor), and ``dora_voice_tools.contracts.all_contracts`` joins both for the checks of every
dataflow YAML (paths, input ids, sources, queue policy, env keys) in ``tests/test_dataflows.py``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from dora_voice.config import env_vars

NODE_MODULES = ("mic", "room", "aec", "vad", "asr", "llm", "tts", "speaker", "text_input")


@dataclass(frozen=True)
class NodeContract:
    """What a node accepts and produces.

    Attributes:
        path: the console script (the YAML ``path:``).
        inputs: input id -> what it carries.
        outputs: output ids it may send (a YAML may wire a subset; ``timing`` is optional everywhere).
        config: the frozen config dataclass whose ``env_field``s are the env vars the node reads.
        extra_config: further config dataclasses the node may read (the TTS: one per engine, read when selected).
        extra_env: env vars read outside the config classes (e.g. by the model resolver), name -> help.
    """

    path: str
    inputs: dict[str, str]
    outputs: tuple[str, ...]
    config: type
    extra_config: tuple[type, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def configs(self) -> tuple[type, ...]:
        """``config`` and then every ``extra_config``."""
        return (self.config, *self.extra_config)

    def env(self) -> dict[str, Any]:
        """Every env var the node reads -> default."""
        names = {name: default for cls in self.configs for name, (default, _help) in env_vars(cls).items()}
        names.update({name: None for name in self.extra_env})
        names.setdefault("LOG_LEVEL", "INFO")
        return names


def all_contracts() -> dict[str, NodeContract]:
    """Console-script path -> contract, for every node of this package (the monitor's is not among them)."""
    contracts: dict[str, NodeContract] = {}
    for name in NODE_MODULES:
        module = importlib.import_module(f"dora_voice.nodes.{name}")
        contracts[module.CONTRACT.path] = module.CONTRACT
    return contracts
