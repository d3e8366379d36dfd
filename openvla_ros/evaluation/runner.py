"""`evaluate`: run a LIBERO suite's episodes through the ROS topics on N bridge + policy pairs.

The episode plan follows OpenVLA's LIBERO protocol: for every chosen task, episodes 0..E-1 start
from the task's fixed initial states 0..E-1 (E = 50 in the paper), with the suite's max steps.
Pair i lives in ROS domain `domain_id_base + i`, so pairs never see each other's topics and the
work spreads over cores (or, with the nodes started elsewhere, machines) through DDS alone.
Workers take the next episode from one shared queue; the results are the same whatever the
number of workers, because every episode is fully determined by (task, initial state).
"""
from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from openvla_ros.evaluation.memory import node_rss_mb, worker_memory
from openvla_ros.evaluation.node_pair import MAX_DOMAIN_ID, NodePair, PairConfig
from openvla_ros.evaluation.plots import plot_latency_histogram, plot_success_per_task
from openvla_ros.evaluation.protocol import (INIT_STATES_PER_TASK, PROTOCOLS, effective_unnorm_key,
                                             is_official_unnorm_key, protocol_drift, protocol_settings)
from openvla_ros.evaluation.results import (LATENCY_PLOT, RESULTS_JSON, SUCCESS_PLOT, EpisodeResult, summarize,
                                            write_results)
from openvla_ros.evaluation.versions import software_versions

VIDEO_DIR = "videos"
LOG_DIR = "logs"
# EvalConfig's settings that default to the protocol's value
PROTOCOL_DEFAULTED = ("camera_size", "center_crop_scale", "num_steps_wait", "image_preprocess", "reset_rng")


@dataclass(frozen=True)
class Job:
    task_id: int
    init_state_id: int


@dataclass(frozen=True)
class EvalConfig:
    suite: str
    tasks: tuple[int, ...]
    episodes_per_task: int
    backend: str
    model_dir: Path
    out: Path
    unnorm_key: str = ""
    workers: int = 1
    # The settings the protocol fixes; None: the protocol's value (evaluation/protocol.py), filled
    # in by validate(). The nodes' own defaults (policy_params, BridgeConfig) do not apply here.
    camera_size: int | None = None
    center_crop_scale: float | None = None
    max_steps: int = 0  # 0: the suite's OpenVLA default
    num_steps_wait: int | None = None
    image_preprocess: str | None = None
    reset_rng: str | None = None
    domain_id_base: int = 1
    record_video: bool = True
    protocol: str = "openvla"
    allow_protocol_drift: bool = False
    resume: bool = False  # skip the episodes already recorded in out/results.json
    model_family: str = "openvla"  # "oft": OpenVLA-OFT (two cameras, robot state, action chunks)

    def validate(self) -> EvalConfig:
        """This config with the protocol's value for every setting left at None; ValueError (or
        the model check's error) for a bad setting."""
        task_count = suite_task_count(self.suite)
        bad = [t for t in self.tasks if not 0 <= t < task_count]
        if not self.tasks or bad:
            raise ValueError(f"tasks {list(self.tasks)} invalid for {self.suite}: expected ids in 0..{task_count - 1}")
        if not 1 <= self.episodes_per_task <= INIT_STATES_PER_TASK:
            raise ValueError(f"episodes_per_task must be in 1..{INIT_STATES_PER_TASK} (one per initial state), "
                             f"got {self.episodes_per_task}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not 0 <= self.domain_id_base or self.domain_id_base + self.workers - 1 > MAX_DOMAIN_ID:
            raise ValueError(f"ROS domains {self.domain_id_base}..{self.domain_id_base + self.workers - 1} are "
                             f"out of range 0..{MAX_DOMAIN_ID}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0 (0 = suite default), got {self.max_steps}")
        if self.model_family not in PROTOCOLS:
            raise ValueError(f"model_family must be one of {PROTOCOLS}, got {self.model_family!r}")
        protocol = protocol_settings(self.protocol, self.suite, task_count)
        config = replace(self, **{name: protocol[name] for name in PROTOCOL_DEFAULTED if getattr(self, name) is None})
        config.pair_config(0).validate()  # the nodes' parameters against their declarations, the model
        return config

    def pair_config(self, worker: int) -> PairConfig:
        """Worker `worker`'s bridge + policy pair, in ROS domain domain_id_base + worker."""
        out = Path(self.out)
        return PairConfig(
            backend=self.backend, model_dir=Path(self.model_dir).resolve(), domain_id=self.domain_id_base + worker,
            log_dir=out / LOG_DIR, unnorm_key=self.unnorm_key,
            policy_overrides={"center_crop_scale": self.center_crop_scale},
            bridge_overrides={"camera_size": self.camera_size, "image_preprocess": self.image_preprocess,
                              "num_steps_wait": self.num_steps_wait, "reset_rng": self.reset_rng},
            record_video=self.record_video, video_dir=(out / VIDEO_DIR).resolve(), model_family=self.model_family)

    def settings(self) -> dict:
        """This run's value of every setting the protocol fixes (of a validated config)."""
        from openvla_ros.sim.libero_env import MAX_STEPS

        return {"tasks": sorted(self.tasks), "episodes_per_task": self.episodes_per_task,
                "camera_size": self.camera_size, "num_steps_wait": self.num_steps_wait,
                "max_steps": self.max_steps or MAX_STEPS[self.suite], "center_crop_scale": self.center_crop_scale,
                "image_preprocess": self.image_preprocess,
                "unnorm_key": effective_unnorm_key(self.unnorm_key, Path(self.model_dir)),
                "reset_rng": self.reset_rng, "seed": 0,  # the bridge's env seed; eval-libero does not change it
                "model_family": self.model_family}

    def drift(self) -> list[dict]:
        """Settings that differ from the protocol; ProtocolDriftError if that is not allowed."""
        protocol = protocol_settings(self.protocol, self.suite, suite_task_count(self.suite))
        settings = self.settings()
        drift = protocol_drift(protocol, settings)
        if drift and is_official_unnorm_key(settings["unnorm_key"]) and not self.allow_protocol_drift:
            listed = "; ".join(f"{d['setting']} {d['run']} (protocol: {d['protocol']})" for d in drift)
            raise ProtocolDriftError(
                f"norm-stats key {settings['unnorm_key']!r} is an official OpenVLA LIBERO fine-tune's, but these "
                f"settings differ from the {self.protocol!r} protocol: {listed}. Use the protocol's values, or "
                f"pass --allow-protocol-drift to run anyway (the drift is then written into the results).")
        return drift


class ProtocolDriftError(ValueError):
    """An official fine-tune evaluated with settings other than its published protocol's."""


def suite_task_count(suite: str) -> int:
    """Number of tasks of an evaluation suite (those the simulator wrapper has max steps for)."""
    from openvla_ros.sim.libero_env import MAX_STEPS

    if suite not in MAX_STEPS:
        raise ValueError(f"unknown LIBERO suite {suite!r}; expected one of {sorted(MAX_STEPS)}")
    from libero.libero import benchmark

    return benchmark.get_benchmark_dict()[suite]().n_tasks


def parse_tasks(text: str, task_count: int) -> tuple[int, ...]:
    """"all", or ids and ranges: "0", "0,3,7", "0-4,9"."""
    if text.strip() == "all":
        return tuple(range(task_count))
    tasks: list[int] = []
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            tasks.extend(range(int(first), int(last or first) + 1))
    except ValueError:
        raise ValueError(f"--tasks {text!r}: expected 'all' or task ids and ranges like '0,3,5-7'") from None
    if not tasks:
        raise ValueError(f"--tasks {text!r} names no task")
    return tuple(dict.fromkeys(tasks))


def plan_episodes(tasks: tuple[int, ...], episodes_per_task: int) -> list[Job]:
    return [Job(task, init) for task in tasks for init in range(episodes_per_task)]


class _Progress:
    """tqdm over episodes (ETA from the finished ones), updated from the worker threads."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit="episode", disable=not enabled, dynamic_ncols=True)
        self._lock = threading.Lock()
        self._successes = 0

    def episode_done(self, result: EpisodeResult) -> None:
        with self._lock:
            self._successes += int(result.success)
            self._bar.update(1)
            self._bar.set_postfix(success=f"{self._successes}/{self._bar.n}",
                                  last=f"task {result.task_id} init {result.init_state_id} "
                                       f"{'ok' if result.success else 'fail'} {result.steps} steps")

    def close(self) -> None:
        self._bar.close()


def evaluate(config: EvalConfig, show_progress: bool = True) -> dict:
    """Run every planned episode, write results.json, results.md, the plots, videos/ and logs/ into
    `config.out`; returns the summary (results.json content). results.json is rewritten after every
    episode, so an interrupted run can go on with `resume`. ProtocolDriftError before anything runs
    if an official fine-tune would run off-protocol; RuntimeError if a pair failed (the episodes
    finished before the failure are still written)."""
    config = config.validate()
    drift = config.drift()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_episodes(config.tasks, config.episodes_per_task)
    results: list[EpisodeResult] = recorded_episodes(config) if config.resume else []
    done = {(r.task_id, r.init_state_id) for r in results}
    jobs: queue.Queue[Job] = queue.Queue()
    for job in plan:
        if (job.task_id, job.init_state_id) not in done:
            jobs.put(job)
    workers = max(1, min(config.workers, jobs.qsize()))
    memory: list[dict] = []  # per worker: its nodes' peak RSS
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    progress = _Progress(jobs.qsize(), show_progress)
    pairs: list[NodePair] = []

    def cancel_all() -> None:
        """End the run now: every pair's nodes are stopped, so every worker fails at its next check."""
        stop.set()
        with lock:
            running = list(pairs)
        for pair in running:
            pair.stop_nodes()
    started, started_at = time.monotonic(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    run = {"suite": config.suite, "tasks": list(config.tasks), "episodes_per_task": config.episodes_per_task,
           "backend": config.backend, "model_dir": str(config.model_dir), "unnorm_key": config.unnorm_key,
           "model_family": config.model_family, "workers": workers,
           "domain_ids": [config.domain_id_base + i for i in range(workers)],
           "camera_size": config.camera_size, "center_crop_scale": config.center_crop_scale,
           "max_steps": config.max_steps, "num_steps_wait": config.num_steps_wait,
           "image_preprocess": config.image_preprocess, "reset_rng": config.reset_rng, "protocol": config.protocol,
           "protocol_settings": config.settings(), "protocol_drift": drift,
           "resumed_episodes": len(results), "software": software_versions(config.backend),
           "started_at": started_at}

    def write(complete: bool) -> dict:
        summary = summarize(results, {**run, "wall_s": round(time.monotonic() - started, 1), "complete": complete,
                                      "memory": {"workers": sorted(memory, key=lambda m: m["worker"]),
                                                 "total_peak_rss_mb": round(sum(m["total_peak_rss_mb"]
                                                                                for m in memory), 1)}})
        write_results(out, summary)
        return summary

    def work(index: int) -> None:
        pair_config = config.pair_config(index)
        try:
            pair = NodePair(pair_config)
            with lock:
                pairs.append(pair)
            if stop.is_set():  # checked after joining `pairs`: cancel_all sets it before reading them
                return
            with pair:
                while not stop.is_set():
                    try:
                        job = jobs.get_nowait()
                    except queue.Empty:
                        break
                    record = pair.run_episode(config.suite, job.task_id, job.init_state_id, config.max_steps)
                    rss = node_rss_mb(pair)
                    result = EpisodeResult(
                        task_suite=config.suite, task_id=job.task_id, init_state_id=job.init_state_id,
                        instruction=record.status.instruction, success=record.success, steps=record.steps,
                        max_steps=record.status.max_steps,
                        actions_rejected=record.status.actions_rejected, wall_s=record.wall_s,
                        latency_ms=record.latencies_ms,
                        video=str(record.video.relative_to(out.resolve())) if record.video else None,
                        worker=index, domain_id=pair_config.domain_id, **rss)
                    with lock:
                        results.append(result)
                        write(complete=False)
                    progress.episode_done(result)
                peaks = worker_memory(pair, index)  # before the nodes stop: their peak RSS so far
                with lock:
                    memory.append(peaks)
        except Exception as exc:  # one failed pair stops the run; its logs are in the message
            with lock:
                if stop.is_set():
                    return  # cancelled because of another failure, or Ctrl-C: not a failure of its own
                errors.append(f"worker {index} (ROS domain {pair_config.domain_id}): {exc}")
            cancel_all()

    threads = [threading.Thread(target=work, args=(i,), name=f"eval-worker-{i}")
               for i in range(workers if not jobs.empty() else 0)]
    try:
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            for thread in threads:
                thread.join(timeout=0.5)  # a timed join, so Ctrl-C / SIGTERM reach this thread
    except BaseException:
        cancel_all()
        for thread in threads:
            if thread.ident is not None:
                thread.join()
        raise
    finally:
        progress.close()

    summary = write(complete=not errors and len(results) == len(plan))
    plot_success_per_task(summary["per_task"], config.suite, out / SUCCESS_PLOT)
    plot_latency_histogram([v for ep in results for v in ep.latency_ms], out / LATENCY_PLOT)
    if errors:
        raise RuntimeError(f"{len(errors)} worker(s) failed after {len(results)}/{len(plan)} episodes "
                           f"(partial results in {out}; --resume goes on from there):\n" + "\n".join(errors))
    return summary


# What must be the same for episodes of an earlier run to count in this one.
RESUME_KEYS = ("suite", "backend", "model_dir", "unnorm_key", "protocol_settings")


def recorded_episodes(config: EvalConfig) -> list[EpisodeResult]:
    """The episodes results.json in `config.out` holds that this run plans; [] without results.json.
    ValueError if that run's settings differ from this one's (mixing them would be meaningless)."""
    path = Path(config.out) / RESULTS_JSON
    if not path.is_file():
        return []
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        previous = recorded["run"]
        episodes = [EpisodeResult.from_json(raw) for raw in recorded["episodes"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a results.json this command wrote ({exc}); cannot resume from it") from None
    current = {"suite": config.suite, "backend": config.backend, "model_dir": str(config.model_dir),
               "unnorm_key": config.unnorm_key, "protocol_settings": config.settings()}
    differ = [key for key in RESUME_KEYS if _comparable(key, previous.get(key)) != _comparable(key, current[key])]
    if differ:
        raise ValueError(f"{path} was written with other settings ({', '.join(differ)}: "
                         + "; ".join(f"{previous.get(k)} there, {current[k]} now" for k in differ)
                         + "); use another --out, or the same settings to resume")
    planned = {(job.task_id, job.init_state_id) for job in plan_episodes(config.tasks, config.episodes_per_task)}
    return [ep for ep in episodes if (ep.task_id, ep.init_state_id) in planned]


def _comparable(key: str, value):
    # The task list and episode count may grow between runs: a resumed run adds episodes.
    if key == "protocol_settings" and isinstance(value, dict):
        # results.json written before model_family was recorded: those runs were all OpenVLA's
        grown = ("tasks", "episodes_per_task")
        return {"model_family": "openvla", **{k: v for k, v in value.items() if k not in grown}}
    return value
