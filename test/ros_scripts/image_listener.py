"""Waits for one sensor_msgs/Image and prints its fields as JSON on stdout."""
import json
import sys
import time

import rclpy
from sensor_msgs.msg import Image

rclpy.init()
node = rclpy.create_node("image_listener")
received = []
node.create_subscription(Image, "dds_check/image", received.append, 10)
deadline = time.monotonic() + float(sys.argv[1])
while not received and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.1)
if received:
    m = received[0]
    print(json.dumps({"height": m.height, "width": m.width, "encoding": m.encoding,
                      "step": m.step, "data": list(bytes(m.data)), "frame_id": m.header.frame_id}))
node.destroy_node()
rclpy.shutdown()
sys.exit(0 if received else 1)
