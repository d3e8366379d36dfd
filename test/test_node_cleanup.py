"""Commands that start nodes (eval-libero, run-demo) fail fast with the node's own reason and leave
no node process behind, whatever way they end: a failed configure, a node crashing mid-episode,
SIGINT, SIGTERM or SIGKILL sent to the command.

Every command runs with its own value of the run marker (RUN_ID_ENV), which every node process
it starts inherits; "nothing left behind" is a scan of /proc for that value. The model is the tiny
ONNX export (its actions are random: these tests are about processes, not about the task), and a
copy of it with one graph file damaged, which only loading can tell: the node's configure fails.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from openvla_ros.node_process import RUN_ID_ENV, wait_until

pytestmark = [pytest.mark.sim, pytest.mark.slow]

STARTUP_S = 300.0  # generous: a loaded machine imports LIBERO and creates its scene slowly
# Two domains next to the test's (run-demo in test_demo_sim.py uses the test domain + 1), shared by
# these tests one after another: each one checks that nothing of its run is left in them.
DOMAIN = int(os.environ["ROS_DOMAIN_ID"]) + 3


def process_environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone, or not ours to read
        return []


def marked_processes(marker: str) -> dict[int, str]:
    """pid -> command line of every live process that carries the run marker in its environment."""
    needle = f"{RUN_ID_ENV}={marker}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and needle in process_environ(int(entry.name)):
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return found


class Command:
    """`openvla-ros ARGS` in its own process, with a fresh run marker; output goes to files."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.marker = f"test-{uuid.uuid4().hex[:12]}"
        self.out = tmp_path / "out"
        self.stderr_path = tmp_path / "stderr.txt"
        with open(tmp_path / "stdout.txt", "wb") as stdout, open(self.stderr_path, "wb") as stderr:
            # SIGINT as a terminal gives it: a test runner started in the background (`cmd &` in a
            # script) ignores SIGINT, and Python keeps an ignored SIGINT ignored in its children.
            self.proc = subprocess.Popen([sys.executable, "-m", "openvla_ros.cli", *args, "--out", str(self.out)],
                                         stdout=stdout, stderr=stderr, env={**os.environ, RUN_ID_ENV: self.marker},
                                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.started = time.monotonic()

    def wait(self, timeout: float = 600.0) -> int:
        return self.proc.wait(timeout=timeout)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def log(self, node: str, domain: int) -> str:
        path = self.out / "logs" / f"{node}_domain{domain}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_episode(self, domain: int) -> None:
        """Until the bridge of `domain` has started its first episode (the policy is active by then)."""
        assert wait_until(lambda: "episode 1:" in self.log("libero_bridge", domain) or self.proc.poll() is not None,
                          STARTUP_S, interval=0.5)
        assert self.proc.poll() is None, f"the command ended before the episode:\n{self.stderr[-3000:]}"

    def node_pid(self, module: str, domain: int) -> int:
        for pid, cmdline in marked_processes(self.marker).items():
            if f"openvla_ros.nodes.{module}" in cmdline and f"ROS_DOMAIN_ID={domain}".encode() in process_environ(pid):
                return pid
        raise AssertionError(f"no {module} of domain {domain} among {marked_processes(self.marker)}")

    def leftovers(self) -> dict[int, str]:
        return marked_processes(self.marker)


@pytest.fixture(scope="module")
def damaged_export(tiny_onnx_export, tmp_path_factory) -> Path:
    """The tiny export with its vision graph overwritten, at its recorded size, by bytes that are no
    ONNX model: the size check before start passes, so it is the node's configure that fails."""
    path = tmp_path_factory.mktemp("damaged") / "export"
    shutil.copytree(tiny_onnx_export, path)
    graph = path / "vision_backbone.onnx"
    filler = b"this is not an ONNX model\n"
    size = graph.stat().st_size
    graph.write_bytes((filler * (size // len(filler) + 1))[:size])
    return path


def eval_args(model_dir: Path, domain: int, workers: int = 1) -> list[str]:
    return ["eval-libero", "--suite", "libero_object", "--tasks", "0", "--episodes-per-task", str(workers),
            "--backend", "onnxruntime", "--model-dir", str(model_dir), "--domain-id-base", str(domain),
            "--workers", str(workers), "--no-video", "--no-progress", "--max-steps", "400"]


def demo_args(model_dir: Path, domain: int, motion_steps: int = 3) -> list[str]:
    return ["run-demo", "--model-dir", str(model_dir), "--backend", "onnxruntime", "--domain-id", str(domain),
            "--motion-steps", str(motion_steps), "--gripper-steps", "3"]


def test_model_folder_without_manifest_fails_before_any_node_starts(tiny_checkpoint, tmp_path):
    """A checkpoint folder given to the onnxruntime backend: refused with the reason, nothing started."""
    domain = DOMAIN
    command = Command(tmp_path, *eval_args(tiny_checkpoint, domain))
    assert command.wait() == 2
    assert "manifest.json not found" in command.stderr and "use --backend torch" in command.stderr, command.stderr
    assert not (command.out / "logs").exists()  # no node was started, so none wrote a log
    assert command.leftovers() == {}


@pytest.mark.parametrize("which", ["eval-libero", "run-demo"])
def test_failed_configure_is_reported_at_once_with_the_nodes_message(which, damaged_export, tmp_path):
    domain = DOMAIN
    args = eval_args(damaged_export, domain) if which == "eval-libero" else demo_args(damaged_export, domain)
    command = Command(tmp_path, *args)
    rc = command.wait()
    elapsed = time.monotonic() - command.started
    print(f"{which}: failed configure reported after {elapsed:.1f} s")
    assert rc == 2, command.stderr[-3000:]
    # The wait ended on the node's own report (not on the 180 s start-up timeout), and the message is the node's.
    assert f"policy_node (domain {domain}) reported: configure failed: " in command.stderr, command.stderr[-3000:]
    assert "vision_backbone.onnx: not ONNX: it starts with byte 0x74" in command.stderr, command.stderr[-3000:]
    assert "vision_backbone.onnx" in command.stderr and "not active after" not in command.stderr
    assert command.leftovers() == {}
    for node in ("policy_node", "libero_bridge"):
        assert "shutdown complete" in command.log(node, domain), command.log(node, domain)


def test_a_node_crashing_mid_episode_ends_the_run_and_every_pair(tiny_onnx_export, tmp_path):
    """eval-libero with two workers: worker 0's policy node is killed mid-episode; the command fails
    naming it, and worker 1's pair (started or still starting) is stopped too."""
    domain = DOMAIN  # worker 1: DOMAIN + 1
    command = Command(tmp_path, *eval_args(tiny_onnx_export, domain, workers=2))
    command.wait_for_episode(domain)
    os.kill(command.node_pid("policy_node", domain), signal.SIGKILL)
    assert command.wait() == 2
    assert f"worker 0 (ROS domain {domain})" in command.stderr
    assert f"policy_node (domain {domain}) exited with code -9" in command.stderr, command.stderr[-3000:]
    assert "1 worker(s) failed" in command.stderr  # worker 1 was cancelled, not counted as a failure
    assert "episode 1 done" not in command.log("libero_bridge", domain)
    assert command.leftovers() == {}


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupting_the_command_stops_its_nodes_first(sig, code, tiny_onnx_export, tmp_path):
    """run-demo (nodes driven from the main thread) mid-episode: the nodes are stopped, cleanly,
    before the command exits, so nothing is left at the moment it has exited."""
    domain = DOMAIN
    command = Command(tmp_path, *demo_args(tiny_onnx_export, domain, motion_steps=100))
    command.wait_for_episode(domain)
    command.proc.send_signal(sig)
    assert command.wait() == code, command.stderr[-3000:]
    assert f"stopped by {sig.name}" in command.stderr
    assert command.leftovers() == {}
    assert "episode 1 done" not in command.log("libero_bridge", domain)
    for node in ("policy_node", "libero_bridge"):
        assert "shutdown complete" in command.log(node, domain), command.log(node, domain)


def test_sigterm_to_eval_libero_stops_the_workers_pairs(tiny_onnx_export, tmp_path):
    """eval-libero's nodes are driven from worker threads; SIGTERM reaches the main thread."""
    domain = DOMAIN
    command = Command(tmp_path, *eval_args(tiny_onnx_export, domain))
    command.wait_for_episode(domain)
    command.proc.send_signal(signal.SIGTERM)
    assert command.wait() == 143, command.stderr[-3000:]
    assert command.leftovers() == {}


def test_nodes_of_a_killed_command_shut_themselves_down(tiny_onnx_export, tmp_path):
    """SIGKILL leaves the command no chance to clean up: its nodes see their pipe from it close and
    stop by themselves, each logging why."""
    domain = DOMAIN
    command = Command(tmp_path, *demo_args(tiny_onnx_export, domain, motion_steps=100))
    command.wait_for_episode(domain)
    command.proc.kill()
    assert command.wait() == -signal.SIGKILL
    assert wait_until(lambda: command.leftovers() == {}, 60.0), command.leftovers()
    for node in ("policy_node", "libero_bridge"):
        log = command.log(node, domain)
        assert "the process that started this node is gone" in log and "shutdown complete" in log, log


def test_a_start_up_timeout_stops_both_nodes(tiny_onnx_export, tmp_path):
    """The start-up wait running out stops the nodes before the error leaves `start()` (a `with`
    block's exit would not run then). The policy node here never becomes active and reports no
    error: autostart is off, so nobody configures it, as if its configure hung."""
    from openvla_ros.evaluation.node_pair import POLICY, NodePair, PairConfig
    from openvla_ros.node_process import NodeProcess

    domain = DOMAIN - 1  # its own: the only test here that cannot tell its nodes from any others
    pair = NodePair(PairConfig(backend="onnxruntime", model_dir=tiny_onnx_export, domain_id=domain,
                               log_dir=tmp_path, unnorm_key="libero_demo", startup_timeout_s=20.0))
    pair.policy = NodeProcess(POLICY, name=POLICY, env={"ROS_DOMAIN_ID": str(domain)}, log_path=tmp_path / "policy.log",
                              params={"backend": "onnxruntime", "model_dir": str(tiny_onnx_export), "autostart": False})
    with pytest.raises(RuntimeError, match=f"{POLICY} not active after 20 s"):
        pair.start()
    for process in (pair.policy, pair.bridge):
        assert process.proc.returncode == 0, process.log_text()
        assert not Path(f"/proc/{process.pid}").exists()
        assert "shutdown complete" in process.log_text()
