"""The policy node's /diagnostics status as its readers see it (evaluation, soak, bench-node, tests).

Once a second the node publishes one DiagnosticStatus named by its fully qualified name: level
and message (ERROR with the last fault, WARN with why it is not acting, OK "acting"), and string
values: configuration (backend, model, state, mode, ...), latency percentiles in ms ("" before the
first inference), counters (frames_received, actions_published, errors, ...) and the last error,
skip reason and rejection.
"""
from __future__ import annotations

from dataclasses import dataclass

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

from openvla_ros.diagnostic_values import decode, find_status


@dataclass(frozen=True)
class PolicyReport:
    level: bytes  # DiagnosticStatus.OK | WARN | ERROR
    message: str
    values: dict[str, str]

    @classmethod
    def from_status(cls, status: DiagnosticStatus) -> PolicyReport:
        return cls(status.level, status.message, decode(status))

    @property
    def error(self) -> bool:
        return self.level == DiagnosticStatus.ERROR

    def count(self, name: str) -> int | None:
        """A counter's value; None when the status does not carry it as a number."""
        text = self.values.get(name, "")
        return int(text) if text.isdigit() else None

    def milliseconds(self, name: str) -> float | None:
        """A latency value in ms; None before the node measured one."""
        text = self.values.get(name, "")
        return float(text) if text else None


def policy_report(msg: DiagnosticArray, node_name: str) -> PolicyReport | None:
    """The report of the policy node `node_name` (fully qualified, e.g. /policy_node) in `msg`."""
    status = find_status(msg, node_name)
    return PolicyReport.from_status(status) if status is not None else None
