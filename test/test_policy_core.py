"""The policy node's ROS-free core in-process, without DDS: scheduling (latest frame, ~/step
requests, rate gate), stamp checks, inference and clipping on the real ONNX Runtime backend,
counters, and backend faults injected into the real graph runtime (raise, hang).

Every action is checked against the same model's own `predict` on the same image, never against
numbers written here.
"""
from __future__ import annotations

import logging
import queue
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from openvla_ros.node_process import wait_until
from openvla_ros.nodes import policy_params
from openvla_ros.policy import load_policy
from openvla_ros.policy_core.core import (ACTIVE, ERROR, INACTIVE, OK, UNCONFIGURED, WARN, Outcome, PolicyCore,
                                          QueuedStep)
from openvla_ros.policy_core.schedule import Schedule
from openvla_ros.runtime.manifest import Manifest
from openvla_ros.runtime.onnxruntime_backend import OnnxRuntimeGraphs
from openvla_ros.runtime.policy import RuntimePolicy

sys.path.insert(0, str(Path(__file__).parent / "ros_scripts"))
from fault_injecting_policy_node import FAULTY_GRAPH, FaultInjectingGraphs  # noqa: E402

INSTRUCTION = "pick up the black bowl"
WAIT_S = 120.0  # a bound for a failing test on a loaded machine, not a timing assertion


def make_image(seed: int, height: int = 96, width: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


class Harness:
    """A PolicyCore with the real clock, collecting what it publishes and asks for."""

    def __init__(self, loader, **params) -> None:
        values = {name: spec.default for name, spec in policy_params.PARAMS.items()}
        values.update(backend="onnxruntime", **params)
        self.outcomes: queue.Queue[Outcome] = queue.Queue()
        self.queued_steps: queue.Queue[QueuedStep] = queue.Queue()  # what the action queue pops (OFT)
        self.deactivation_requests = 0
        self.core = PolicyCore(values, time.time_ns, publish=self.outcomes.put,
                               request_deactivation=self._request_deactivation,
                               log=logging.getLogger("test_policy_core"), publish_step=self.queued_steps.put)
        self.loader = loader

    def _request_deactivation(self) -> None:
        self.deactivation_requests += 1

    def start(self) -> None:
        assert self.core.configure(self.loader), self.core.status().values["last_error"]
        self.core.activate()
        self.core.offer_instruction(INSTRUCTION)

    def offer(self, image: np.ndarray, stamp_ns: int | None = None) -> None:
        self.core.offer_frame(time.time_ns() if stamp_ns is None else stamp_ns, lambda max_pixels: image,
                              time.time_ns())

    def step(self) -> str | None:
        """One ~/step: None when the action was published, else why not."""
        done: queue.Queue = queue.Queue()
        refusal = self.core.request_step(done.put)
        return refusal if refusal is not None else done.get(timeout=WAIT_S)

    def counts(self) -> dict[str, str]:
        return self.core.status().values

    def close(self) -> None:
        self.core.stop()
        self.core.release()


@pytest.fixture(scope="module")
def reference(tiny_onnx_export):
    """The same model loaded separately: what the core's actions must equal."""
    policy = load_policy("onnxruntime", tiny_onnx_export)
    yield policy
    policy.close()


@pytest.fixture
def harness(tiny_onnx_export):
    h = Harness(load_policy, model_dir=str(tiny_onnx_export), mode="trigger")
    yield h
    h.close()


# ---- schedule (no model) -----------------------------------------------------------------------
def test_schedule_latest_frame_wins_and_steps_come_first():
    schedule, image = Schedule(), np.zeros((2, 2, 3), np.uint8)
    assert schedule.next_job(continuous=True, rate_hz=10.0, now=0.0) == (None, None)  # nothing to do
    assert not schedule.frames.put(image, 1, 0)
    assert schedule.frames.put(image, 2, 0)  # replaced the first, never acted on
    job, wait = schedule.next_job(continuous=True, rate_hz=10.0, now=100.0)
    assert wait is None and job.frame.stamp_ns == 2 and job.step is None
    assert schedule.next_job(continuous=True, rate_hz=10.0, now=100.0) == (None, None)  # acted on already
    assert not schedule.frames.put(image, 3, 0)
    job, wait = schedule.next_job(continuous=True, rate_hz=10.0, now=100.04)
    assert job is None and wait == pytest.approx(0.06)  # the rate gate: one start per 0.1 s
    finished = []
    schedule.add_step(finished.append)
    job, _ = schedule.next_job(continuous=False, rate_hz=10.0, now=100.04)  # a step does not wait for the gate
    assert job.frame.stamp_ns == 3 and job.step is not None
    job.step(None)
    job, _ = schedule.next_job(continuous=True, rate_hz=10.0, now=100.2)
    assert job is None  # the step took frame 3
    schedule.add_step(finished.append)
    schedule.frames.clear()
    job, _ = schedule.next_job(continuous=False, rate_hz=10.0, now=100.2)
    assert job.frame is None  # a step with no frame still runs; the core says why nothing was published
    schedule.add_step(finished.append)
    schedule.fail_steps("node is inactive")
    assert finished == [None, "node is inactive"]


# ---- inference on the real backend ---------------------------------------------------------------
def test_step_publishes_the_model_s_action_for_the_latest_frame(harness, reference):
    harness.start()
    assert harness.core.state == ACTIVE
    stamp = time.time_ns()
    harness.offer(make_image(1), stamp - 10**6)
    harness.offer(make_image(2), stamp)  # latest frame wins
    assert harness.step() is None
    outcome = harness.outcomes.get_nowait()
    expected = reference.predict(make_image(2), INSTRUCTION).action
    np.testing.assert_array_equal(outcome.action, expected)
    assert outcome.frame.stamp_ns == stamp and outcome.labels == ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
    assert outcome.inferred.backend_ms > 0 and "total" in outcome.inferred.stages_ms
    status = harness.counts()
    assert (status["frames_received"], status["frames_replaced"], status["actions_published"]) == ("2", "1", "1")
    assert harness.core.status().level == OK


def test_continuous_mode_acts_once_per_new_frame(tiny_onnx_export, reference):
    h = Harness(load_policy, model_dir=str(tiny_onnx_export), mode="continuous", max_rate_hz=1000.0)
    try:
        h.start()
        for seed in (3, 4):
            h.offer(make_image(seed))
            outcome = h.outcomes.get(timeout=WAIT_S)
            np.testing.assert_array_equal(outcome.action, reference.predict(make_image(seed), INSTRUCTION).action)
        assert h.core.request_step(lambda failure: None) == "mode is continuous; ~/step needs mode trigger"
        assert h.outcomes.empty() and h.counts()["actions_published"] == "2"
    finally:
        h.close()


def test_action_limits_clip_and_are_checked_against_the_model(harness, reference):
    harness.start()
    expected = reference.predict(make_image(5), INSTRUCTION).action
    limits = np.stack([expected - 0.5, expected - 0.25], axis=1)  # every dimension is clipped to its max
    with pytest.raises(ValueError, match="expected 2 x 7 = 14 values"):
        harness.core.check_action_limits([0.0, 1.0])
    harness.core.check_action_limits(limits.ravel().tolist())
    harness.core.apply_parameters({"action_limits": limits.ravel().tolist()})
    harness.offer(make_image(5))
    assert harness.step() is None
    np.testing.assert_array_equal(harness.outcomes.get_nowait().action, limits[:, 1])
    assert harness.counts()["actions_clipped"] == "1"


# ---- input rejections apart from faults ---------------------------------------------------------
def test_zero_future_and_stale_stamps_are_rejected_and_counted(harness):
    harness.start()
    harness.offer(make_image(6), stamp_ns=0)
    harness.offer(make_image(6), stamp_ns=time.time_ns() + 10**15)  # 10^6 s ahead
    status = harness.counts()
    assert (status["frames_rejected"], status["frames_zero_stamp"], status["frames_future_stamp"]) == ("2", "1", "1")
    assert "max_future_stamp_s" in status["last_rejection"]
    assert harness.step() == "no image received since activation or reset"
    harness.offer(make_image(6), stamp_ns=time.time_ns() - 10 * 10**9)  # accepted on receipt, stale at inference
    failure = harness.step()
    assert failure.startswith("stale frame: stamp is") and "max_image_age_s is 0.5" in failure
    status = harness.counts()
    assert (status["frames_stale"], status["skipped"], status["errors"], status["consecutive_errors"]) == \
        ("1", "2", "0", "0")
    assert harness.outcomes.empty() and harness.core.status().level == WARN


def test_a_rejected_instruction_unsets_the_current_one(harness):
    harness.start()
    harness.offer(make_image(7))
    harness.core.offer_instruction("pick up\x00 the bowl")
    failure = harness.step()
    assert failure.startswith("no instruction set: the last one was rejected: instruction has control character")
    assert harness.counts()["instructions_rejected"] == "1" and harness.counts()["errors"] == "0"
    harness.core.offer_instruction(INSTRUCTION)
    assert harness.step() is None


def test_steps_are_refused_when_inactive_and_fail_on_deactivation(harness):
    assert harness.core.state == UNCONFIGURED
    assert harness.core.request_step(lambda failure: None) == "node is not active"
    harness.start()
    harness.core.apply_parameters({"enabled": False})
    assert harness.step() == "disabled"
    harness.core.deactivate()
    assert harness.core.state == INACTIVE and harness.step() == "node is not active"
    harness.core.release()
    assert harness.core.state == UNCONFIGURED and harness.counts()["model"] == ""


def test_configure_failures_leave_the_core_unconfigured_with_the_reason(tmp_path, tiny_onnx_export):
    h = Harness(load_policy, model_dir=str(tmp_path / "missing"))
    try:
        assert not h.core.configure(load_policy) and h.core.state == UNCONFIGURED
        status = h.core.status()
        assert status.level == ERROR and status.message.startswith("configure failed: FileNotFoundError")
        h.core.apply_parameters({"model_dir": str(tiny_onnx_export), "action_limits": [0.0, 1.0]})
        assert not h.core.configure(load_policy)
        assert "action_limits has 2 values; expected 2 x 7 = 14" in h.core.status().message
    finally:
        h.close()


# ---- backend faults ----------------------------------------------------------------------------
@pytest.fixture
def faulty(tiny_onnx_export, tmp_path):
    """A core over the real runtime policy whose decoder graph run raises or hangs on request."""
    faults = tmp_path / "faults"
    faults.mkdir()

    def loader(backend, model_dir, unnorm_key=None, verify_checksums=False):
        return RuntimePolicy(Manifest.load(model_dir), FaultInjectingGraphs(OnnxRuntimeGraphs(), faults),
                             unnorm_key=unnorm_key)

    h = Harness(loader, model_dir=str(tiny_onnx_export), mode="trigger", max_consecutive_errors=2)
    h.start()
    yield h, faults
    for name in ("raise", "hang"):
        (faults / name).unlink(missing_ok=True)
    h.close()


def test_backend_exceptions_count_and_ask_for_deactivation(faulty):
    h, faults = faulty
    h.offer(make_image(8))
    (faults / "raise").touch()
    assert h.step() == f"error: RuntimeError: injected backend fault in {FAULTY_GRAPH}"
    assert h.deactivation_requests == 0 and h.counts()["consecutive_errors"] == "1"
    assert h.step().startswith("error: RuntimeError")
    assert h.deactivation_requests == 1 and h.core.status().level == ERROR
    # It acts no more until the node's deactivation (a transition on its executor) has run.
    assert h.core.deactivation_pending and h.step() == "node is not active"
    (faults / "raise").unlink()
    h.core.deactivate()
    assert not h.core.deactivation_pending and h.counts()["errors"] == "2"
    h.core.activate()
    h.offer(make_image(8))
    assert h.step() is None and h.counts()["consecutive_errors"] == "0"


def test_a_hung_backend_times_out_serves_on_and_discards_the_late_result(faulty):
    h, faults = faulty
    # Frames stay fresh for the whole test: staleness is not what it is about.
    h.core.apply_parameters({"inference_timeout_s": 0.5, "max_consecutive_errors": 5, "max_image_age_s": 3600.0})
    h.offer(make_image(9))
    (faults / "hang").touch()
    assert "inference_timeout_s = 0.5 s" in h.step()  # answered at the timeout, the backend still hung
    assert wait_until(lambda: (faults / "hung").exists(), WAIT_S) and h.core.inference_running()
    busy = h.step()
    assert "still running an earlier inference that timed out" in busy
    h.core.apply_parameters({"inference_timeout_s": 60.0})  # the next inference may take its time
    h.core.release()  # the policy is closed once the hung call returns, never under it
    assert h.core.configure(h.loader)
    h.core.activate()
    (faults / "hang").unlink()
    assert wait_until(lambda: h.counts()["late_results_discarded"] == "1", WAIT_S)
    status = h.counts()
    assert status["late_results_discarded"] == "1" and status["inference_timeouts"] == "1"
    assert h.outcomes.empty()  # the late result was never published
    h.offer(make_image(9))
    assert h.step() is None and h.counts()["consecutive_errors"] == "0"
