"""The transport floor: what any rclpy node pays to receive a camera frame and answer with an action.

`openvla-ros bench-node` measures this node with the same harness as the policy node, so the
policy node's overhead can be read against what rclpy + Fast DDS cost on the same machine. It
never computes an action: each frame is converted and validated exactly as the policy node does
(`image_to_rgb`), then answered at once, inside the subscription callback, with an action message
of the same type and size as the policy node's (labels of a 7-D end-effector action, all values
zero) and the same `~/timing` marks (backend_ms 0). Because it publishes zeros on `action`, it is
not an installed executable: bench-node starts it (python -m) in a namespace of its own.
"""
from __future__ import annotations

import time

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from openvla_ros.actions import POSE_LABELS
from openvla_ros.nodes.image_conversion import image_to_rgb
from openvla_ros.nodes.policy_params import PARAMS
from openvla_ros.nodes.shutdown import run_node
from openvla_ros.nodes.timing import timing_message
from openvla_ros.qos import RELIABLE, SENSOR_DATA

MAX_IMAGE_PIXELS = PARAMS["max_image_pixels"].default  # the policy node's default limit


class TransportFloorNode(Node):
    def __init__(self) -> None:
        super().__init__("transport_floor")
        self._action_pub = self.create_publisher(JointTrajectory, "action", RELIABLE)
        self._timing_pub = self.create_publisher(DiagnosticArray, "~/timing", RELIABLE)
        self.create_subscription(Image, "image", self._on_image, SENSOR_DATA)

    def _on_image(self, msg: Image) -> None:
        received_unix_ns = time.time_ns()
        try:
            image_to_rgb(msg, MAX_IMAGE_PIXELS)
        except ValueError as exc:
            self.get_logger().warning(f"rejected image: {exc}")
            return
        converted_unix_ns = time.time_ns()
        action = JointTrajectory(header=msg.header, joint_names=list(POSE_LABELS),
                                 points=[JointTrajectoryPoint(positions=[0.0] * len(POSE_LABELS))])
        self._action_pub.publish(action)
        published_unix_ns = time.time_ns()
        self._timing_pub.publish(timing_message(
            msg.header, self.get_fully_qualified_name(), backend_ms=0.0, frame_received_unix_ns=received_unix_ns,
            inference_start_unix_ns=converted_unix_ns, action_published_unix_ns=published_unix_ns))


def main(args: list[str] | None = None) -> None:
    run_node(args, "transport_floor_node", TransportFloorNode, SingleThreadedExecutor)


if __name__ == "__main__":
    main()
