"""Running a node process's executor until it is told to stop."""
from __future__ import annotations

from rclpy.executors import Executor, ExternalShutdownException


def spin_until_shutdown(executor: Executor) -> None:
    """Spin until Ctrl-C (SIGINT, what launch and NodeProcess send) or an rclpy shutdown from elsewhere.

    Both are the normal end of a node process, so neither is an error; the caller's cleanup runs after
    (run_node ignores further SIGINTs from then on: `ros2 launch` signals a node a second time).
    Call from the main thread.
    """
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
