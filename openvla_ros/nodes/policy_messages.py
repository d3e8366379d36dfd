"""The policy node's messages, built from the core's outcomes and status (see policy_node.py's
topic list)."""
from __future__ import annotations

from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import TwistStamped
from std_msgs.msg import Float64, Header
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from openvla_ros.diagnostic_values import encode
from openvla_ros.policy_core.core import ERROR, OK, WARN, Status

LEVELS = {OK: DiagnosticStatus.OK, WARN: DiagnosticStatus.WARN, ERROR: DiagnosticStatus.ERROR}


def stamp_msg(nanoseconds: int) -> Time:
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def action_msg(header: Header, labels: tuple[str, ...], action: list[float], period_s: float) -> JointTrajectory:
    """One point: the action, time_from_start = one control period."""
    msg = JointTrajectory(header=header, joint_names=list(labels))
    msg.points = [JointTrajectoryPoint(positions=action, time_from_start=Duration(
        sec=int(period_s), nanosec=int(period_s % 1 * 1e9)))]
    return msg


def twist_msg(header: Header, action: list[float]) -> TwistStamped:
    """A pose action's x y z / roll pitch yaw deltas as linear / angular."""
    twist = TwistStamped(header=header)
    (twist.twist.linear.x, twist.twist.linear.y, twist.twist.linear.z,
     twist.twist.angular.x, twist.twist.angular.y, twist.twist.angular.z) = action[:6]
    return twist


def gripper_msg(action: list[float]) -> Float64:
    return Float64(data=float(action[6]))


def diagnostics_msg(status: Status, name: str, hardware_id: str, stamp: Time) -> DiagnosticArray:
    return DiagnosticArray(header=Header(stamp=stamp), status=[DiagnosticStatus(
        level=LEVELS[status.level], name=name, message=status.message, hardware_id=hardware_id,
        values=encode(status.values))])
