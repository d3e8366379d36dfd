"""LIBERO evaluation through the ROS topics: bridge + policy node pairs (one ROS domain each),
episode orchestration, results (JSON, Markdown) and plots."""
