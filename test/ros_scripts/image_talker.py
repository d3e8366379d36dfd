"""Publishes a known rgb8 sensor_msgs/Image until a listener has it or the time runs out."""
import sys
import time

import numpy as np
import rclpy
from sensor_msgs.msg import Image

rclpy.init()
node = rclpy.create_node("image_talker")
pub = node.create_publisher(Image, "dds_check/image", 10)
h, w = 4, 5
pixels = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
deadline = time.monotonic() + float(sys.argv[1])
seq = 0
while time.monotonic() < deadline:
    msg = Image(height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3)
    msg.header.frame_id = f"seq{seq}"
    msg.data = pixels.tobytes()
    pub.publish(msg)
    seq += 1
    rclpy.spin_once(node, timeout_sec=0.05)
node.destroy_node()
rclpy.shutdown()
