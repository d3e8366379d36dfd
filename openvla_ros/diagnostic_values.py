"""DiagnosticStatus key/values <-> a dict of strings: the one encoding of every status this package
publishes (the policy node's /diagnostics and ~/timing, the bridge's episode_status). Each status
has its typed decoder beside its encoder: `sim.episode.EpisodeStatus`, `nodes.timing.timing_values`,
`nodes.policy_diagnostics.PolicyReport`."""
from __future__ import annotations

from collections.abc import Mapping

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue


def encode(values: Mapping[str, str]) -> list[KeyValue]:
    return [KeyValue(key=key, value=value) for key, value in values.items()]


def decode(status: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def find_status(msg: DiagnosticArray, name: str) -> DiagnosticStatus | None:
    """The status named `name` in `msg` (a node's fully qualified name on /diagnostics), or None."""
    for status in msg.status:
        if status.name == name:
            return status
    return None
