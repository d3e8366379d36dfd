"""The test-side name of the probe node (talks to nodes in other processes over DDS)."""
from openvla_ros.probe import Probe
from openvla_ros.qos import LATCHED, RELIABLE

__all__ = ["LATCHED", "RELIABLE", "Probe"]
