"""Start ROS 2 nodes of this package as child processes, the way `ros2 run` would.

Used where the ROS 2 `launch` package is not installed (venv installs, CI, `eval-libero`,
`make demo`): parameters go through a generated `--params-file`, names through `--ros-args -r`,
so the node sees exactly what a launch file would give it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import yaml

# console-script name -> module with main(), so a venv without installed scripts works too.
NODE_MODULES = {
    "policy_node": "openvla_ros.nodes.policy_node",
    "libero_bridge": "openvla_ros.nodes.libero_bridge",
    "transport_floor_node": "openvla_ros.nodes.transport_floor_node",  # bench-node only; not installed
}


def write_params_file(node_name: str, params: Mapping[str, Any], directory: Path) -> Path:
    """Write a ROS 2 parameters YAML for `node_name` (matched by any namespace)."""
    path = Path(directory) / f"{node_name}.params.yaml"
    plain = {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": plain}}, sort_keys=True))
    return path


class NodeProcess:
    """One node in its own process; stops it with SIGINT (clean shutdown), then SIGKILL."""

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
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "NodeProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "NodeProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
