"""ROS 2 nodes of openvla_ros."""
