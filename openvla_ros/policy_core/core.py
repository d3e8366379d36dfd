"""`PolicyCore`: the policy node's state, inputs, inference thread and counters, without ROS.

Threads: the caller's (the node's executor) hands in frames, instructions, ~/step requests,
parameter changes and lifecycle transitions, and never blocks on an inference; the core's
inference thread picks the next job (`schedule.Schedule`) and runs it. A watchdog
(nodes/backend_runner.py) answers a job still running after inference_timeout_s with a timeout
error and starts another inference thread, which serves on while the hung one waits for the
backend; so a hung backend never stalls the caller. What the core cannot do itself goes back through the three
callables it is given: `publish` (an `Outcome`, called with the core's lock held, so nothing is
published once `deactivate` has returned), `request_deactivation` (after max_consecutive_errors
backend faults; called on the inference thread, so it must only hand the request over: the core
acts no more until `deactivate`) and `log`.

Input apart from faults: a frame's stamp is checked on receipt against `clock_ns` (zero, or
ahead by more than max_future_stamp_s) and its age at inference start (max_image_age_s); an
instruction on receipt (text, length, the loaded model's prompt budget). What fails is rejected,
counted and logged, and never counts toward max_consecutive_errors; a rejected instruction unsets
the current one (it stops acting rather than carry on with an old task). Only backend faults count: an
exception from the backend, an inference past inference_timeout_s, a non-finite action.

A chunk policy (OpenVLA-OFT, one with `predict_chunk`) runs `infer_chunk` on a `Frame` paired at
inference start with the latest wrist image(s) and robot state (`extra_inputs.py`): each is checked
on receipt like a frame, and at inference start for its age and for being in sync with the frame
(sync_tolerance_s); what fails is a rejection. Its chunk (clipped per step) is published whole
(action_output chunk, and every ~/step), or in continuous mode with action_output queue pushed into
an `ActionQueue` that `tick` (the node's control-rate timer) pops one action from per call; an
inference then starts only when the queue asks for a new plan (after replan_every actions).
"""
from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from openvla_ros.action_queue import ActionQueue
from openvla_ros.actions import dimension_labels
from openvla_ros.input_checks import InputRejected, check_instruction_text
from openvla_ros.input_sync import InputsOutOfSync
from openvla_ros.model_files import ModelFileError
from openvla_ros.nodes.backend_runner import BackendBusy, BackendRunner, CallAbandoned, InferenceTimeout
from openvla_ros.nodes.latency_window import LatencyWindow
from openvla_ros.oft import ChunkLayout
from openvla_ros.policy_core.extra_inputs import LatestInputs, chunk_layout_of, stale_input
from openvla_ros.policy_core.limits import clip, parse_action_limits
from openvla_ros.policy_core.schedule import Frame, Job, Schedule, StepDone
from openvla_ros.policy_protocol import Policy
from openvla_ros.processing import center_crop
from openvla_ros.robot_state import StateRejected, state_vector
from openvla_ros.stamps import stamp_problem

UNCONFIGURED, INACTIVE, ACTIVE = "unconfigured", "inactive", "active"
OK, WARN, ERROR = "ok", "warn", "error"
WARN_PERIOD_S = 5.0  # each kind of warning is logged at most once per period
COUNTERS = ("frames_received", "frames_replaced", "frames_stale", "frames_rejected", "frames_zero_stamp",
            "frames_future_stamp", "instructions_rejected", "actions_published", "actions_clipped", "skipped",
            "errors", "inference_timeouts")
# A chunk policy's inputs and outputs besides (OpenVLA-OFT; reported for it only).
CHUNK_COUNTERS = ("wrist_images_received", "wrist_images_rejected", "wrist_images_zero_stamp",
                  "wrist_images_future_stamp", "wrist_images_stale", "states_received", "states_rejected",
                  "states_zero_stamp", "states_future_stamp", "states_stale", "inputs_out_of_sync", "chunks_queued",
                  "chunks_dropped_stale", "queue_ticks_empty")
STALE_COUNTERS = {"robot_state": "states_stale"}  # any other paired input is a wrist image


class Log(Protocol):
    """What the core logs through: rclpy's node logger, or a `logging.Logger`."""

    def info(self, message: str) -> Any: ...

    def warning(self, message: str) -> Any: ...

    def error(self, message: str) -> Any: ...


@dataclass(frozen=True)
class Inferred:
    """What `infer` returns for one job."""

    action: np.ndarray  # float64 [action_dim] (a chunk policy: [chunk, action_dim]), unnormalized, unclipped
    stages_ms: dict[str, float]  # the backend's own stage timings
    crop_ms: float
    backend_ms: float  # policy.predict's wall time


@dataclass(frozen=True)
class Outcome:
    """An action to publish, with what ~/timing reports about it."""

    frame: Frame
    action: np.ndarray  # float64 [action_dim] (a chunk: [chunk, action_dim]), after action_limits
    labels: tuple[str, ...]
    inferred: Inferred
    started_unix_ns: int  # wall clock when the inference was started
    queued: bool = False  # the chunk went into the action queue: only ~/timing reports it now


@dataclass(frozen=True)
class QueuedStep:
    """One action popped from the action queue: step `step` (1-based) of the chunk planned from
    the frame stamped `stamp_ns`."""

    action: np.ndarray  # float64 [action_dim], after action_limits
    step: int
    stamp_ns: int
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Status:
    """The node's diagnostics: a level (OK | WARN | ERROR), a message, key/values."""

    level: str
    message: str
    values: dict[str, str]


Infer = Callable[[Policy, Frame, str, float], Inferred]


def infer_action(policy: Policy, frame: Frame, instruction: str, crop_scale: float) -> Inferred:
    """One action from one image: crop, predict."""
    t0 = time.perf_counter()
    cropped = center_crop(frame.image, crop_scale) if crop_scale != 1.0 else frame.image
    t1 = time.perf_counter()
    prediction = policy.predict(cropped, instruction)
    t2 = time.perf_counter()
    return Inferred(np.asarray(prediction.action, dtype=np.float64), prediction.timings_ms,
                    crop_ms=(t1 - t0) * 1e3, backend_ms=(t2 - t1) * 1e3)


def infer_chunk(policy: Policy, frame: Frame, instruction: str, crop_scale: float) -> Inferred:
    """One chunk from the frame and its paired wrist image(s) and state: crop every image (as OFT's
    LIBERO evaluation crops each camera's), predict."""
    t0 = time.perf_counter()
    images = [frame.image, *(wrist.value for wrist in frame.wrist)]
    if crop_scale != 1.0:
        images = [center_crop(image, crop_scale) for image in images]
    t1 = time.perf_counter()
    prediction = policy.predict_chunk(images, instruction, None if frame.state is None else frame.state.value)
    t2 = time.perf_counter()
    return Inferred(np.asarray(prediction.actions, dtype=np.float64), prediction.timings_ms,
                    crop_ms=(t1 - t0) * 1e3, backend_ms=(t2 - t1) * 1e3)


class _Throttle:
    """True at most once per `period_s` for each key."""

    def __init__(self, period_s: float) -> None:
        self._period_s = period_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._period_s:
                return False
            self._last[key] = now
            return True


class PolicyCore:
    def __init__(self, params: dict[str, Any], clock_ns: Callable[[], int], publish: Callable[[Outcome], None],
                 request_deactivation: Callable[[], None], log: Log,
                 publish_step: Callable[[QueuedStep], None] | None = None) -> None:
        """`params`: every declared parameter's value (nodes/policy_params.py); `clock_ns`: the
        node clock, which frame stamps are read against; `publish_step`: an action the queue
        popped (action_output queue), called with the core's lock held like `publish`."""
        self._cfg = dict(params)
        self._clock_ns, self._publish, self._request_deactivation = clock_ns, publish, request_deactivation
        self._publish_step = publish_step
        self._log = log
        self._infer: Infer = infer_action  # infer_chunk for a chunk policy (set on configure)
        self._throttle = _Throttle(WARN_PERIOD_S)
        self._cond = threading.Condition()
        # Held while taking the policy and starting a backend call, so release never closes the
        # policy in between; the backend runner defers a close until the running call returns.
        self._inference_lock = threading.Lock()
        self._state = UNCONFIGURED
        # Set when backend faults made it ask for a deactivation: it acts no more until the node's
        # transition (on the executor) has run.
        self._deactivation_pending = False
        self._policy: Policy | None = None
        self._labels: tuple[str, ...] = ()
        self._limits: np.ndarray | None = None
        self._layout: ChunkLayout | None = None  # a chunk policy's
        self._extras: LatestInputs | None = None  # a chunk policy's latest wrist image(s) and state
        self._queue: ActionQueue | None = None  # set while active with action_output queue
        self._schedule = Schedule()
        self._instruction: str | None = None
        self._instruction_rejection = ""  # why the last instruction was rejected, until a good one arrives
        self._stopping = False
        self._worker_waiting = False  # the inference thread is blocked waiting for a job
        self._counts: Counter[str] = Counter()
        self._inference_ms = LatencyWindow()
        self._callback_ms = LatencyWindow()
        self._instruction_ms = LatencyWindow(size=100)
        self._consecutive_errors = 0
        self._last_error = self._last_skip = self._last_rejection = ""
        self._backend = BackendRunner()
        self._worker = self._start_worker()

    # ---- lifecycle -------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """UNCONFIGURED | INACTIVE | ACTIVE."""
        return self._state

    @property
    def deactivation_pending(self) -> bool:
        """Backend faults asked for a deactivation that has not run yet."""
        return self._deactivation_pending

    def _acting_locked(self) -> bool:
        return self._state == ACTIVE and not self._deactivation_pending

    def configure(self, loader: Callable[..., Policy]) -> bool:
        """Load the policy with `loader(backend, model_dir, unnorm_key=, verify_checksums=)`; False
        (logged, and in diagnostics) when that or action_limits fails."""
        backend, model_dir = self._cfg["backend"], self._cfg["model_dir"]
        try:
            if not model_dir:
                raise ValueError("parameter model_dir is empty; set it to the model directory")
            policy = loader(backend, model_dir, unnorm_key=self._cfg["unnorm_key"] or None,
                            verify_checksums=self._cfg["verify_checksums"])
        except Exception as exc:  # any load failure leaves the core unconfigured with the reason
            # A damaged or missing model file is already one line naming the file and the remedy.
            return self._configure_failed(str(exc) if isinstance(exc, ModelFileError)
                                          else f"{type(exc).__name__}: {exc}")
        try:
            limits = parse_action_limits(self._cfg["action_limits"], policy.action_dim)
        except ValueError as exc:
            policy.close()
            return self._configure_failed(str(exc))
        layout = chunk_layout_of(policy)
        with self._cond:
            self._policy, self._limits, self._layout = policy, limits, layout
            self._extras = LatestInputs(layout) if layout is not None else None
            self._infer = infer_chunk if layout is not None else infer_action
            self._labels = tuple(dimension_labels(policy.action_dim))
            self._state = INACTIVE
            held = self._instruction
        if held is not None:  # received before this model was loaded: check it against the model now
            self._screen_instruction(held, policy)
        chunks = "" if layout is None else (f", chunks of {layout.chunk} from {layout.num_images} image(s)"
                                            f"{' and the robot state' if layout.uses_proprio else ''}")
        self._log.info(f"loaded {policy.model_name} ({backend}, {policy.action_dim}-D actions{chunks}, "
                       f"norm stats {policy.unnorm_key}) from {model_dir}")
        return True

    @property
    def chunk_layout(self) -> ChunkLayout | None:
        """The loaded chunk policy's layout (what inputs it takes); None for a one-action policy."""
        return self._layout

    @property
    def queues_actions(self) -> bool:
        """Whether activating acts through the action queue: a chunk policy, continuous mode,
        action_output queue."""
        return (self._layout is not None and self._cfg["mode"] == "continuous"
                and self._cfg["action_output"] == "queue")

    def _configure_failed(self, reason: str) -> bool:
        with self._cond:
            self._last_error = f"configure failed: {reason}"
        self._log.error(self._last_error)
        return False

    def activate(self) -> None:
        with self._cond:
            self._forget_inputs_locked()
            self._consecutive_errors = 0
            self._queue = self._new_queue_locked() if self.queues_actions else None
            self._state, self._deactivation_pending = ACTIVE, False
            self._cond.notify_all()
        queue = "" if self._queue is None else (f", action queue at {self._cfg['control_rate_hz']:g} Hz re-planning "
                                                f"every {self._queue.replan_every} actions")
        self._log.info(f"active, mode {self._cfg['mode']}{queue}")

    def _new_queue_locked(self) -> ActionQueue:
        replan_every = self._cfg["replan_every"] or self._layout.chunk
        horizon_s = replan_every / self._cfg["control_rate_hz"]
        if horizon_s > self._cfg["max_image_age_s"]:
            self._log.warning(f"action queue: {replan_every} actions at {self._cfg['control_rate_hz']:g} Hz take "
                              f"{horizon_s:.3f} s, longer than max_image_age_s ({self._cfg['max_image_age_s']:g} s): "
                              "each chunk is dropped as stale before it is executed to the end")
        return ActionQueue(replan_every, round(self._cfg["max_image_age_s"] * 1e9))

    def _forget_inputs_locked(self) -> None:
        self._schedule.frames.clear()
        if self._extras is not None:
            self._extras.clear()
        if self._queue is not None:
            self._queue.clear()

    def deactivate(self) -> None:
        """Stop acting; waiting ~/step requests fail. Nothing is published once this returns."""
        with self._cond:
            self._state, self._deactivation_pending = INACTIVE, False
            self._queue = None
            self._schedule.fail_steps("node is inactive")

    def release(self) -> None:
        """Release the policy (unconfigured); a call still running on it closes it when it returns."""
        with self._inference_lock:
            with self._cond:
                policy, self._policy = self._policy, None
                self._layout = self._extras = self._queue = None
                self._state = UNCONFIGURED
            if policy is not None:
                self._backend.close_when_idle(lambda: self._close_policy(policy))

    def _close_policy(self, policy: Policy) -> None:
        try:
            policy.close()
        except Exception as exc:  # nothing to recover; the node stays up and says what happened
            self._log.error(f"releasing the backend failed: {type(exc).__name__}: {exc}")

    def inference_running(self) -> bool:
        """A backend call is running (the inference lock only covers starting one)."""
        return self._backend.busy()

    def stop(self, timeout_s: float = 5.0) -> None:
        """End the inference thread (waiting ~/step requests fail) and the watchdog, waiting at most
        `timeout_s` in all for a running inference; one still running after that finishes on its
        daemon thread (release() then closes the backend when it returns)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._stopping = True
            self._schedule.fail_steps("node is shutting down")
            self._cond.notify_all()
        with self._cond:
            worker = self._worker
        worker.join(timeout=max(0.0, deadline - time.monotonic()))
        self._backend.stop(timeout=max(0.0, deadline - time.monotonic()))

    # ---- parameters ------------------------------------------------------------------------
    def parameter(self, name: str) -> Any:
        """A parameter's current value."""
        return self._cfg[name]

    def check_action_limits(self, values: list[float]) -> None:
        """ValueError unless `values` fit the loaded policy (any even count without one)."""
        policy = self._policy
        parse_action_limits(values, policy.action_dim if policy is not None else None)

    def apply_parameters(self, changes: dict[str, Any]) -> None:
        """Take checked parameter values; they apply from the next inference on."""
        with self._cond:
            self._cfg.update(changes)
            if "action_limits" in changes and self._policy is not None:
                self._limits = parse_action_limits(changes["action_limits"], self._policy.action_dim)
            self._cond.notify_all()

    # ---- inputs (never block on an inference) ----------------------------------------------
    def offer_frame(self, stamp_ns: int, convert: Callable[[int], np.ndarray], received_unix_ns: int) -> None:
        """A camera frame: stamp checked, `convert(max_image_pixels)` -> uint8 HxWx3 RGB (ValueError:
        rejected), stored as the latest frame."""
        start = time.perf_counter()
        image = self._checked_image("frames", "image", stamp_ns, convert)
        if image is None:
            return
        with self._cond:
            self._counts["frames_received"] += 1
            self._counts["frames_replaced"] += self._schedule.frames.put(image, stamp_ns, received_unix_ns)
            self._cond.notify_all()
            worker_woken = self._worker_waiting
        self._callback_ms.record((time.perf_counter() - start) * 1e3)
        if worker_woken:
            # Hand the GIL to the woken worker now: otherwise it waits for the executor's
            # bookkeeping after this callback, which delayed inference by ~0.6 ms on 2 cores.
            time.sleep(0)

    def offer_wrist(self, index: int, stamp_ns: int, convert: Callable[[int], np.ndarray]) -> None:
        """Wrist camera `index`'s image (chunk policies): checked like a frame, stored as its latest."""
        topic = "wrist image" if index == 0 else f"wrist image {index + 1}"
        image = self._checked_image("wrist_images", topic, stamp_ns, convert)
        if image is None:
            return
        with self._cond:
            if self._extras is not None and index < len(self._extras.wrist_topics):
                self._extras.put_wrist(index, image, stamp_ns)
                self._counts["wrist_images_received"] += 1

    def _checked_image(self, counter: str, what: str, stamp_ns: int,
                       convert: Callable[[int], np.ndarray]) -> np.ndarray | None:
        """A camera image (frame or wrist) with its stamp checked and converted; None once rejected."""
        problem = stamp_problem(stamp_ns, self._clock_ns(), self._cfg["max_future_stamp_s"])
        if problem is not None:
            kind, reason = problem
            self._reject_input(counter, what, reason, kind)
            return None
        try:
            return convert(self._cfg["max_image_pixels"])
        except ValueError as exc:
            self._reject_input(counter, what, str(exc))
            return None

    def offer_state(self, stamp_ns: int, names: list[str], positions: list[float]) -> None:
        """A robot state (chunk policies with proprio): names, values and stamp checked
        (robot_state.py), stored as the latest."""
        with self._cond:
            expected = None if self._extras is None else self._extras.state_names
        if expected is None:
            return  # no model loaded, or it takes no state
        try:
            values = state_vector(names, positions, stamp_ns, self._clock_ns(), self._cfg["max_future_stamp_s"],
                                  expected)
        except StateRejected as exc:
            self._reject_input("states", "robot state", str(exc), exc.problem if exc.problem in ("zero", "future")
                               else None)
            return
        with self._cond:
            if self._extras is not None:
                self._extras.put_state(values, stamp_ns)
                self._counts["states_received"] += 1

    def _reject_input(self, counter: str, what: str, reason: str, stamp_kind: str | None = None) -> None:
        """Count a rejected input (`<counter>_rejected`, and `<counter>_<zero|future>_stamp` for a
        bad stamp), remember and log (throttled) why."""
        with self._cond:
            self._counts[f"{counter}_rejected"] += 1
            if stamp_kind:
                self._counts[f"{counter}_{stamp_kind}_stamp"] += 1
            self._last_rejection = f"{what}: {reason}"
        self._warn(what, f"rejected {what}: {reason}")

    def offer_instruction(self, text: str) -> None:
        """A new instruction: set when it passes the checks, else rejected (and no instruction is set)."""
        start = time.perf_counter()
        with self._cond:
            policy = self._policy
        if self._screen_instruction(text, policy):
            with self._cond:
                self._instruction, self._instruction_rejection = text, ""
                if self._queue is not None:
                    self._queue.clear()  # a plan for the previous task
            self._log.info(f"instruction: {text!r}")
        self._instruction_ms.record((time.perf_counter() - start) * 1e3)

    def _screen_instruction(self, text: str, policy: Policy | None) -> bool:
        """Check `text` (against `policy`'s prompt budget when one is loaded); a failure is rejected."""
        try:
            # The length check comes first: it bounds the tokenizing cost of a huge message.
            check_instruction_text(text, self._cfg["max_instruction_chars"])
            if policy is not None:
                policy.check_instruction(text)
        except InputRejected as exc:
            self._reject_instruction(str(exc))
            return False
        except Exception as exc:  # a tokenizer failing on odd text is still that text's problem
            self._reject_instruction(f"could not be tokenized: {type(exc).__name__}: {exc}")
            return False
        return True

    def _reject_instruction(self, reason: str, if_current: str | None = None) -> None:
        """Count and log; unset the current instruction (only if it is still `if_current`, when given:
        a rejection found during an inference must not unset a newer instruction)."""
        with self._cond:
            self._counts["instructions_rejected"] += 1
            if if_current is None or self._instruction == if_current:
                self._instruction = None
                if self._queue is not None:
                    self._queue.clear()  # it stops acting rather than carry on with the old task
            self._instruction_rejection = reason
            self._last_rejection = f"instruction: {reason}"
        self._warn("instruction", f"rejected instruction (no instruction is set now): {reason}")

    def request_step(self, done: StepDone) -> str | None:
        """Queue one inference on the latest frame (trigger mode); `done` gets None once the action
        is published, or why not. Returns why the request is refused, or None."""
        with self._cond:
            if not self._acting_locked():
                return "node is not active"
            if self._cfg["mode"] != "trigger":
                return "mode is continuous; ~/step needs mode trigger"
            self._schedule.add_step(done)
            self._cond.notify_all()
        return None

    def reset(self) -> None:
        """Forget the pending frame (and a chunk policy's other inputs and queued actions) and the
        error state."""
        with self._cond:
            self._forget_inputs_locked()
            self._consecutive_errors = 0
            self._last_error = self._last_skip = ""

    # ---- inference thread ------------------------------------------------------------------
    def _start_worker(self) -> threading.Thread:
        worker = threading.Thread(target=self._work, name="policy_inference", daemon=True)
        worker.start()
        return worker

    def _work(self) -> None:
        while True:
            with self._cond:
                job = self._next_job_locked()
                if job is None:
                    return
            try:
                failure = self._act_on(job)
            except CallAbandoned:
                return  # it timed out: the watchdog answered its step and started the next thread
            if job.step is not None:
                job.step(failure)

    def _on_timeout(self, job: Job, timeout: InferenceTimeout) -> None:
        """On the watchdog thread: the running inference is past inference_timeout_s."""
        with self._cond:
            self._counts["inference_timeouts"] += 1
        failure = self._record_error(str(timeout))
        if job.step is not None:
            job.step(failure)
        with self._cond:
            if not self._stopping:  # the hung thread stays in the backend until it returns
                self._worker = self._start_worker()

    def _next_job_locked(self) -> Job | None:
        while not self._stopping:
            # With the action queue, a new frame is acted on only once the queue asks for a plan.
            continuous = (self._acting_locked() and self._cfg["mode"] == "continuous"
                          and (self._queue is None or self._queue.needs_plan))
            job, wait = self._schedule.next_job(continuous, self._cfg["max_rate_hz"], time.monotonic())
            if job is not None:
                return job
            self._worker_waiting = True
            try:
                self._cond.wait(wait)
            finally:
                self._worker_waiting = False
        return None

    def _act_on(self, job: Job) -> str | None:
        """Infer on the job's frame and publish; returns None, or why nothing was published.
        CallAbandoned when the inference timed out (then the watchdog has answered the job)."""
        frame = job.frame
        # The lock covers taking the policy and starting the call, so release cannot close the
        # policy in between; the call runs outside it, so a hung backend never blocks release.
        with self._inference_lock:
            with self._cond:
                skip = self._skip_reason_locked(frame)
                if skip is None and self._extras is not None:
                    frame, skip = self._paired_locked(frame)
                instruction, policy, limits, labels = self._instruction, self._policy, self._limits, self._labels
                infer = self._infer
                shape = (len(labels),) if self._layout is None else (self._layout.chunk, len(labels))
                crop_scale, timeout = self._cfg["center_crop_scale"], self._cfg["inference_timeout_s"]
            if skip:
                return skip
            started_unix_ns, t0 = time.time_ns(), time.perf_counter()
            try:
                call = self._backend.start(lambda: infer(policy, frame, instruction, crop_scale), timeout,
                                           on_timeout=lambda exc: self._on_timeout(job, exc))
            except BackendBusy as exc:
                return self._record_error(str(exc))
        try:
            inferred = self._backend.run(call)
        except CallAbandoned:
            raise
        except InputRejected as exc:  # the input's fault, not the backend's: never counts toward deactivation
            return self._record_rejection(exc, instruction)
        except Exception as exc:  # a backend failure must never take the node down
            return self._record_error(f"{type(exc).__name__}: {exc}")
        t2 = time.perf_counter()
        action = inferred.action
        if action.shape != shape or not np.all(np.isfinite(action)):
            return self._record_error(f"backend returned a non-finite or mis-shaped action {action.tolist()} "
                                      f"(expected shape {shape})")
        clipped = clip(action, limits)
        with self._cond:
            if self._stopping:
                return "node is shutting down"
            if not self._acting_locked() or not self._cfg["enabled"]:
                return "node was deactivated or disabled during the inference"
            queued = self._queue is not None  # (only in continuous mode: a ~/step is always answered in full)
            if queued:
                self._queue_chunk_locked(clipped, frame.stamp_ns)
            self._publish(Outcome(frame, clipped, labels, inferred, started_unix_ns, queued=queued))
            self._counts["actions_published"] += int(not queued)
            self._counts["actions_clipped"] += int(not np.array_equal(clipped, action))
            self._consecutive_errors = 0
            self._last_skip = ""
        self._inference_ms.record((t2 - t0) * 1e3)
        return None

    def _paired_locked(self, frame: Frame) -> tuple[Frame, str | None]:
        """A chunk policy's frame with its wrist image(s) and state, or why it cannot run (out of
        sync, missing, stale: rejections, counted)."""
        try:
            paired = self._extras.pair(frame, self._cfg["sync_tolerance_s"])
        except InputsOutOfSync as exc:
            self._counts["inputs_out_of_sync"] += 1
            return frame, self._skip_locked(str(exc), "sync", rejection=True)
        stale = stale_input(paired, self._clock_ns(), self._cfg["max_image_age_s"])
        if stale is None:
            return paired, None
        topic, age_s = stale
        self._counts[STALE_COUNTERS.get(topic, "wrist_images_stale")] += 1
        return frame, self._skip_locked(f"stale {topic}: stamp is {age_s:.3f} s old; max_image_age_s is "
                                        f"{self._cfg['max_image_age_s']}", "skip")

    def _skip_locked(self, reason: str, kind: str, rejection: bool = False) -> str:
        self._counts["skipped"] += 1
        self._last_skip = reason
        if rejection:
            self._last_rejection = f"{kind}: {reason}"
        self._warn(kind, f"no action: {reason}")
        return reason

    def _queue_chunk_locked(self, chunk: np.ndarray, stamp_ns: int) -> None:
        dropped = self._queue.dropped_stale
        if self._queue.push(chunk, stamp_ns, self._clock_ns()):
            self._counts["chunks_queued"] += 1
        self._counts["chunks_dropped_stale"] += self._queue.dropped_stale - dropped

    def tick(self) -> None:
        """One control tick of the action queue (action_output queue): the next action goes to
        `publish_step`, or none (counted as queue_ticks_empty) when the queue has none to execute:
        used up, dropped as stale (counted), not planned yet, or the node not acting."""
        with self._cond:
            queue = self._queue
            if queue is None or not self._acting_locked():
                return
            if not self._cfg["enabled"]:
                queue.clear()  # enabling again starts from a new plan, not from a chunk that aged meanwhile
                return
            dropped = queue.dropped_stale
            action = queue.pop(self._clock_ns())
            self._counts["chunks_dropped_stale"] += queue.dropped_stale - dropped
            if action is None:
                self._counts["queue_ticks_empty"] += 1
            else:
                self._publish_step(QueuedStep(action, queue.executed, queue.source_stamp_ns, self._labels))
                self._counts["actions_published"] += 1
            if queue.needs_plan:
                self._cond.notify_all()  # the inference thread waits for this to act on the next frame

    def _skip_reason_locked(self, frame: Frame | None) -> str | None:
        if not self._acting_locked():
            return "node is not active"
        if not self._cfg["enabled"]:
            return "disabled"
        if frame is None:
            reason = "no image received since activation or reset"
        elif self._instruction is None:
            reason = (f"no instruction set: the last one was rejected: {self._instruction_rejection}"
                      if self._instruction_rejection else "no instruction set (publish one on the instruction topic)")
        else:
            age_s = (self._clock_ns() - frame.stamp_ns) * 1e-9
            if age_s <= self._cfg["max_image_age_s"]:
                return None
            self._counts["frames_stale"] += 1
            reason = f"stale frame: stamp is {age_s:.3f} s old; max_image_age_s is {self._cfg['max_image_age_s']}"
        return self._skip_locked(reason, "skip")

    def _record_rejection(self, exc: InputRejected, instruction: str) -> str:
        if exc.kind == "instruction":
            self._reject_instruction(str(exc), if_current=instruction)
        else:
            self._reject_input("frames", "image", str(exc))
        reason = f"rejected {exc.kind}: {exc}"
        with self._cond:
            self._last_skip = reason
        return reason

    def _record_error(self, message: str) -> str:
        with self._cond:
            self._counts["errors"] += 1
            self._consecutive_errors += 1
            self._last_error = message
            give_up = self._consecutive_errors >= self._cfg["max_consecutive_errors"] and self._acting_locked()
            consecutive = self._consecutive_errors
            if give_up:
                self._deactivation_pending = True
                self._schedule.fail_steps("node is inactive")
        self._log.error(f"inference failed, nothing published: {message}")
        if give_up:
            self._log.error(f"{consecutive} consecutive errors: deactivating")
            self._request_deactivation()
        return f"error: {message}"

    def _warn(self, kind: str, message: str) -> None:
        if self._throttle.allow(kind):
            self._log.warning(message)

    # ---- diagnostics -----------------------------------------------------------------------
    def status(self) -> Status:
        with self._cond:
            counts, state, error, skip = dict(self._counts), self._state, self._last_error, self._last_skip
            consecutive, enabled, policy = self._consecutive_errors, self._cfg["enabled"], self._policy
            instruction, rejection, cfg = self._instruction, self._last_rejection, dict(self._cfg)
            counters = COUNTERS + (CHUNK_COUNTERS if self._layout is not None else ())
        inference, callback = self._inference_ms.percentiles(50, 95), self._callback_ms.percentiles(50, 99)
        instruction_ms = self._instruction_ms.percentiles(100)
        if consecutive or (state == UNCONFIGURED and error):
            level, message = ERROR, error
        elif state != ACTIVE or not enabled or skip:
            level, message = WARN, skip if state == ACTIVE and enabled else (state if enabled else "disabled")
        else:
            level, message = OK, "acting"
        values = {
            "backend": cfg["backend"], "model": policy.model_name if policy else "",
            "model_dir": cfg["model_dir"], "unnorm_key": policy.unnorm_key if policy else "",
            "state": state, "mode": cfg["mode"], "enabled": str(enabled),
            "inference_latency_p50_ms": f"{inference[0]:.3f}" if inference else "",
            "inference_latency_p95_ms": f"{inference[1]:.3f}" if inference else "",
            "image_callback_p50_ms": f"{callback[0]:.4f}" if callback else "",
            "image_callback_p99_ms": f"{callback[1]:.4f}" if callback else "",
            "instruction_callback_max_ms": f"{instruction_ms[0]:.4f}" if instruction_ms else "",
            "instruction": instruction or "",
            **{key: str(counts.get(key, 0)) for key in counters},
            "late_results_discarded": str(self._backend.late_results_discarded),
            "consecutive_errors": str(consecutive), "last_error": error, "last_skip_reason": skip,
            "last_rejection": rejection,
            "torch_imported": str("torch" in sys.modules),
        }
        return Status(level, message, values)
