"""The LIBERO simulator as a plain Python environment (no ROS, no torch)."""
