"""Every node's contract, the monitor's included: what the dataflow YAMLs are checked against.

The nodes package cannot list the monitor (imports run one way: the monitor depends on the nodes), so the tools
package, which sits on top of both, joins them.
"""

from __future__ import annotations

from dora_voice.contracts import NodeContract
from dora_voice.contracts import all_contracts as node_contracts

from dora_voice_monitor.node import CONTRACT as MONITOR_CONTRACT


def all_contracts() -> dict[str, NodeContract]:
    """Console-script path -> contract, for every node a dataflow YAML may name (``dora_voice`` nodes and the
    ``dora-voice-monitor`` node)."""
    return {**node_contracts(), MONITOR_CONTRACT.path: MONITOR_CONTRACT}
