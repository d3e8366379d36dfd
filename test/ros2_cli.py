"""`ros2` commands run from tests as a user types them: the ros2 script next to this Python (the
venv's) or on PATH (a ROS 2 install), this run's ROS domain (inherited).

Commands about a node run without the ros2 daemon (none outlives a test), so each one discovers
the graph itself within its --spin-time; on a loaded machine that can miss the node, and then the
command is repeated with a longer spin (a retry on "not found", not a time limit).

ros2cli waits for a node's services, and for their answers, without a time limit: one request or
answer lost between two DDS participants that are still discovering each other leaves the command
hanging. A command still running after CLI_TIMEOUT_S is therefore aborted with its Python stack
(faulthandler) in the error, so a hang always shows where it waited."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

CLI_TIMEOUT_S = 120.0  # a guard against a hung command, not a speed requirement
SPIN_TIMES_S = (1, 2, 4, 8, 16)  # discovery time of each attempt


def ros2_executable() -> str:
    found = shutil.which("ros2", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        raise FileNotFoundError("no ros2 command next to this Python or on PATH")
    return found


class CommandHung(RuntimeError):
    """A `ros2` command still running after CLI_TIMEOUT_S; the message holds its Python stack."""


def ros2(*args: str) -> subprocess.CompletedProcess:
    """Run `ros2 ARGS...` to its end; stdout and stderr as text. Raises CommandHung."""
    command = [ros2_executable(), *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONFAULTHANDLER": "1"}) as process:
        try:
            stdout, stderr = process.communicate(timeout=CLI_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack to stderr
            stdout, stderr = process.communicate()
            raise CommandHung(f"`ros2 {' '.join(args)}` still running after {CLI_TIMEOUT_S} s; "
                              f"stdout:\n{stdout}\nstderr (its stack):\n{stderr}") from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


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


def lifecycle_set(node: str, transition: str, state_before: str) -> subprocess.CompletedProcess:
    """`ros2 lifecycle set NODE TRANSITION` from `state_before` (e.g. 'active [3]'). A hung command
    is repeated once, with a warning carrying its stack, but only when the node still answers
    `ros2 lifecycle get` with `state_before`: the request never reached it and the node is fine.
    Any other state fails the caller, with the hung command's stack."""
    try:
        return ros2_on_node("lifecycle", "set", node, transition)
    except CommandHung as hung:
        state = lifecycle_state(node)
        if state != state_before:
            raise AssertionError(f"{transition}: the command hung and {node} is now {state!r}") from hung
        warnings.warn(f"{hung}\nrepeating it: {node} is still {state!r}", RuntimeWarning, stacklevel=2)
        return ros2_on_node("lifecycle", "set", node, transition)
