"""The test-side name of the probe node (talks to nodes in other processes over DDS)."""
from openvla_ros.nodes.probe import LATCHED, RELIABLE, Probe

__all__ = ["LATCHED", "RELIABLE", "Probe"]
