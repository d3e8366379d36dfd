"""Running a node process's executor until it is told to stop."""
from __future__ import annotations

import signal

from rclpy.executors import Executor, ExternalShutdownException


def spin_until_shutdown(executor: Executor) -> None:
    """Spin until Ctrl-C (SIGINT, what launch and NodeProcess send) or an rclpy shutdown from elsewhere.

    Both are the normal end of a node process, so neither is an error; the caller's cleanup runs after.
    Call from the main thread.
    """
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    # The stop has begun. A terminal's Ctrl-C signals the whole process group and `ros2 launch` then
    # signals the node again: that second SIGINT must not cut the caller's cleanup short with a
    # KeyboardInterrupt, which ends the process by SIGINT (exit code -2) instead of 0.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
