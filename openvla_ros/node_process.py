"""Start ROS 2 nodes of this package as child processes, the way `ros2 run` would.

Used where the ROS 2 `launch` package is not installed (venv installs, CI, `eval-libero`,
`make demo`): parameters go through a generated `--params-file`, names through `--ros-args -r`,
so the node sees exactly what a launch file would give it.

No node outlives the process that started it, whatever way that process ends:
- each node runs in its own process group (its own session), so a stop reaches the programs the
  node started too, and a Ctrl-C in the terminal reaches only the command, which stops its nodes
  in order;
- `stop()` sends SIGINT (the node's clean shutdown), then SIGTERM, then SIGKILL to the whole group,
  each after a bounded wait; `stop_all()` does that for every node still running, and runs at
  interpreter exit;
- every node holds the read end of a pipe whose only write end is in this process: when this
  process dies, even by SIGKILL, the node reads end-of-file and shuts itself down
  (openvla_ros.nodes.shutdown);
- every node carries RUN_ID_ENV in its environment (inherited by its own children), so a test or
  an operator can find every process of one run in /proc.
"""
from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import yaml

# console-script name -> module with main(), so a venv without installed scripts works too.
NODE_MODULES = {
    "policy_node": "openvla_ros.nodes.policy_node",
    "libero_bridge": "openvla_ros.nodes.libero_bridge",
    "transport_floor_node": "openvla_ros.nodes.transport_floor_node",  # bench-node only; not installed
}
RUN_ID_ENV = "OPENVLA_ROS_RUN_ID"  # marker of every node process one command (or test run) started
PARENT_FD_ENV = "OPENVLA_ROS_PARENT_FD"  # a node's end of the pipe that closes when its starter dies
INTERRUPT_WAIT_S = 10.0  # after SIGINT: a node's own shutdown is bounded by 5 s (nodes/shutdown.py)
TERMINATE_WAIT_S = 5.0  # after SIGTERM, before SIGKILL
KILL_WAIT_S = 30.0  # after SIGKILL (only a process stuck in the kernel takes longer)

_live: set["NodeProcess"] = set()
_live_lock = threading.Lock()
_parent_pipe: tuple[int, int] | None = None


def run_id() -> str:
    """This run's marker value: inherited from the environment (a test or script that started this
    command chose it), else made up once per process."""
    return os.environ.setdefault(RUN_ID_ENV, f"{os.getpid()}-{time.time_ns()}")


def _parent_pipe_read_fd() -> int:
    """The read end handed to every node; the write end never leaves this process (os.pipe's fds
    are not inherited by exec'd programs, and nodes get only the read end)."""
    global _parent_pipe
    with _live_lock:
        if _parent_pipe is None:
            _parent_pipe = os.pipe()
        return _parent_pipe[0]


def write_params_file(node_name: str, params: Mapping[str, Any], directory: Path) -> Path:
    """Write a ROS 2 parameters YAML for `node_name` (matched by any namespace)."""
    path = Path(directory) / f"{node_name}.params.yaml"
    plain = {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": plain}}, sort_keys=True))
    return path


class NodeProcess:
    """One node in its own process group; `stop()` ends it and anything it started (see module doc)."""

    def __init__(
        self,
        executable: str,
        *,
        name: str | None = None,
        namespace: str | None = None,
        params: Mapping[str, Any] | None = None,
        remaps: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        if executable not in NODE_MODULES:
            raise ValueError(f"unknown node {executable!r}; expected one of {sorted(NODE_MODULES)}")
        self.executable = executable
        self.name = name or executable
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.log_path = Path(log_path) if log_path else self._workdir / "node.log"
        cmd = [sys.executable, "-m", NODE_MODULES[executable], "--ros-args", "-r", f"__node:={self.name}"]
        if namespace:
            cmd += ["-r", f"__ns:={namespace if namespace.startswith('/') else '/' + namespace}"]
        for src, dst in (remaps or {}).items():
            cmd += ["-r", f"{src}:={dst}"]
        if params:
            cmd += ["--params-file", str(write_params_file(self.name, params, self._workdir))]
        self.command = cmd
        self.env = {**os.environ, RUN_ID_ENV: run_id(), **(env or {})}
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._stop_lock = threading.Lock()

    def start(self) -> "NodeProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        parent_fd = _parent_pipe_read_fd()
        with _live_lock:
            self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                         env={**self.env, PARENT_FD_ENV: str(parent_fd)}, pass_fds=(parent_fd,),
                                         start_new_session=True)
            _live.add(self)
        return self

    @property
    def pid(self) -> int | None:
        """The node's process id, also its process group id."""
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_until(self, predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
        """`wait_until(predicate, timeout)` that ends at once, with RuntimeError (exit code and log
        tail), if the node exits first: a crashed node never costs a caller the whole timeout."""
        def done() -> bool:
            if predicate():
                return True
            if not self.running():
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode if self.proc else None}; "
                                   f"log {self.log_path}:\n{self.log_text()[-3000:]}")
            return False

        return wait_until(done, timeout, interval)

    def stop(self, timeout: float = INTERRUPT_WAIT_S, terminate_timeout: float = TERMINATE_WAIT_S) -> int | None:
        """SIGINT, then after `timeout` s SIGTERM, then after `terminate_timeout` s SIGKILL to the
        process group; returns the exit code (negative: the signal that ended it). Idempotent."""
        stop_processes([self], timeout, terminate_timeout)
        return self.proc.returncode if self.proc else None

    def _signal(self, sig: int) -> None:
        """SIGINT and SIGTERM go to the node, which stops what it started itself; SIGKILL to its group."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            if sig == signal.SIGKILL:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        except ProcessLookupError:
            pass

    def _exited_by(self, deadline: float) -> bool:
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            return False

    def _finish(self) -> None:
        """After the node has exited: end whatever is left in its group, close the log."""
        with self._stop_lock:
            if self.proc is not None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass  # the group is empty: nothing the node started outlived it
            if self._log is not None:
                self._log.close()
                self._log = None
            with _live_lock:
                _live.discard(self)

    def __enter__(self) -> "NodeProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_processes(processes: Iterable[NodeProcess], interrupt_s: float = INTERRUPT_WAIT_S,
                   terminate_s: float = TERMINATE_WAIT_S) -> None:
    """Stop several nodes together: SIGINT to all, wait up to `interrupt_s`; SIGTERM to those left,
    wait up to `terminate_s`; SIGKILL to the groups of those left. Then each group is swept."""
    processes = [p for p in processes if p.proc is not None]
    running = [p for p in processes if p.proc.poll() is None]
    for sig, wait_s in ((signal.SIGINT, interrupt_s), (signal.SIGTERM, terminate_s), (signal.SIGKILL, KILL_WAIT_S)):
        if not running:
            break
        for process in running:
            process._signal(sig)
        deadline = time.monotonic() + wait_s
        running = [p for p in running if not p._exited_by(deadline)]
    for process in processes:
        if process.proc.poll() is not None:
            process._finish()


def live_processes() -> list[NodeProcess]:
    """Nodes started by this process and not stopped yet."""
    with _live_lock:
        return list(_live)


def stop_all(interrupt_s: float = INTERRUPT_WAIT_S, terminate_s: float = TERMINATE_WAIT_S) -> None:
    """Stop every node this process started and has not stopped (from any thread)."""
    stop_processes(live_processes(), interrupt_s, terminate_s)


atexit.register(stop_all)


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: raised in the main thread, like KeyboardInterrupt for SIGINT."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@contextmanager
def termination_raises() -> Iterator[None]:
    """Within: SIGTERM and SIGHUP raise `Terminated` (by default they end Python without running any
    `finally`), so a command's cleanup stops its nodes on every exit path. Main thread only."""
    def raise_terminated(signum: int, frame) -> None:
        raise Terminated(signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; elsewhere Python's defaults stay
        return
    previous = {sig: signal.signal(sig, raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
