"""`ros2` commands run from tests as a user types them: the ros2 script next to this Python (the
venv's) or on PATH (a ROS 2 install), this run's ROS domain (inherited).

Commands about a node run without the ros2 daemon (none outlives a test), so each one discovers
the graph itself within its --spin-time; on a loaded machine that can miss the node, and then the
command is repeated with a longer spin (a retry on "not found", not a time limit)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CLI_TIMEOUT_S = 120.0  # a guard against a hung command, not a speed requirement
SPIN_TIMES_S = (1, 2, 4, 8, 16)  # discovery time of each attempt


def ros2_executable() -> str:
    found = shutil.which("ros2", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        raise FileNotFoundError("no ros2 command next to this Python or on PATH")
    return found


def ros2(*args: str) -> subprocess.CompletedProcess:
    """Run `ros2 ARGS...` to its end; stdout and stderr as text."""
    return subprocess.run([ros2_executable(), *args], capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def ros2_on_node(verb: str, command: str, node: str, *args: str) -> subprocess.CompletedProcess:
    """`ros2 VERB COMMAND NODE ARGS...` (lifecycle get/set, param get/set), repeated while the
    command's own discovery has not seen the node yet."""
    for spin_time in SPIN_TIMES_S:
        result = ros2(verb, command, "--no-daemon", "--spin-time", str(spin_time), node, *args)
        if "not found" not in (result.stdout + result.stderr).lower():
            break
    return result


def lifecycle_state(node: str) -> str:
    """`ros2 lifecycle get NODE`'s answer, e.g. 'active [3]'."""
    result = ros2_on_node("lifecycle", "get", node)
    return result.stdout.strip() or result.stderr.strip()
