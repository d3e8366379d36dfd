"""The QoS profiles of the package's topics, one home for both ends of each topic.

A publisher and its subscribers must agree (a reliable reader never matches a best-effort writer;
only a transient-local writer serves a late joiner), so every node, client and test takes its
profile from here.
"""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

# Camera frames into the policy node: only the latest frame matters, and a late one is replaced by
# the next, so best effort with depth 1 (ROS's sensor-data profile).
SENSOR_DATA = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT,
                         durability=DurabilityPolicy.VOLATILE)
# State a node started later must still see: the instruction, the bridge's episode status.
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Every message counts: actions (published and received: each one is validated and counted, so a
# burst must not be dropped by a short queue), the policy's ~/timing, a test client's default.
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
# The bridge's observations: reliable so lockstep never loses a frame; best-effort readers (the
# policy's SENSOR_DATA) still match.
FRAMES = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
# A reader of a LATCHED topic that must see every message, not only the last: the evaluation driver
# follows each per-step episode status (and its latency value) while it is busy elsewhere.
LATCHED_LOG = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
