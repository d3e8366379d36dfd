"""`evaluate`: run a LIBERO suite's episodes through the ROS topics on N bridge + policy pairs.

The episode plan follows OpenVLA's LIBERO protocol: for every chosen task, episodes 0..E-1 start
from the task's fixed initial states 0..E-1 (E = 50 in the paper), with the suite's max steps.
Pair i lives in ROS domain `domain_id_base + i`, so pairs never see each other's topics and the
work spreads over cores (or, with the nodes started elsewhere, machines) through DDS alone.
Workers take the next episode from one shared queue; the results are the same whatever the
number of workers, because every episode is fully determined by (task, initial state).
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from openvla_ros.evaluation.memory import node_rss_mb, worker_memory
from openvla_ros.evaluation.node_pair import MAX_DOMAIN_ID, NodePair, PairConfig
from openvla_ros.evaluation.plots import plot_latency_histogram, plot_success_per_task
from openvla_ros.evaluation.results import LATENCY_PLOT, SUCCESS_PLOT, EpisodeResult, summarize, write_results

INIT_STATES_PER_TASK = 50  # every LIBERO task ships 50 fixed initial states
VIDEO_DIR = "videos"
LOG_DIR = "logs"


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
    camera_size: int = 256
    center_crop_scale: float = 1.0
    max_steps: int = 0  # 0: the suite's OpenVLA default
    domain_id_base: int = 1
    record_video: bool = True

    def validate(self) -> "EvalConfig":
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
        if not Path(self.model_dir).is_dir():
            raise FileNotFoundError(f"model directory not found: {self.model_dir}")
        return self


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
    `config.out`; returns the summary (results.json content). RuntimeError if a pair failed (the
    episodes finished before the failure are still written)."""
    config.validate()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs: queue.Queue[Job] = queue.Queue()
    plan = plan_episodes(config.tasks, config.episodes_per_task)
    for job in plan:
        jobs.put(job)
    workers = min(config.workers, len(plan))
    results: list[EpisodeResult] = []
    memory: list[dict] = []  # per worker: its nodes' peak RSS
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    progress = _Progress(len(plan), show_progress)
    started, started_at = time.monotonic(), datetime.now(timezone.utc).isoformat(timespec="seconds")

    def work(index: int) -> None:
        pair_config = PairConfig(
            backend=config.backend, model_dir=Path(config.model_dir).resolve(), domain_id=config.domain_id_base + index,
            log_dir=out / LOG_DIR, unnorm_key=config.unnorm_key, camera_size=config.camera_size,
            center_crop_scale=config.center_crop_scale, record_video=config.record_video,
            video_dir=(out / VIDEO_DIR).resolve())
        try:
            with NodePair(pair_config) as pair:
                while not stop.is_set():
                    try:
                        job = jobs.get_nowait()
                    except queue.Empty:
                        break
                    record = pair.run_episode(config.suite, job.task_id, job.init_state_id, config.max_steps)
                    rss = node_rss_mb(pair)
                    result = EpisodeResult(
                        task_suite=config.suite, task_id=job.task_id, init_state_id=job.init_state_id,
                        instruction=record.values["instruction"], success=record.success, steps=record.steps,
                        max_steps=int(record.values["max_steps"]),
                        actions_rejected=int(record.values["actions_rejected"]), wall_s=record.wall_s,
                        latency_ms=record.latencies_ms,
                        video=str(record.video.relative_to(out.resolve())) if record.video else None,
                        worker=index, domain_id=pair_config.domain_id, **rss)
                    with lock:
                        results.append(result)
                    progress.episode_done(result)
                peaks = worker_memory(pair, index)  # before the nodes stop: their peak RSS so far
                with lock:
                    memory.append(peaks)
        except Exception as exc:  # one failed pair stops the run; its logs are in the message
            with lock:
                errors.append(f"worker {index} (ROS domain {pair_config.domain_id}): {exc}")
            stop.set()

    threads = [threading.Thread(target=work, args=(i,), name=f"eval-worker-{i}") for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    progress.close()

    run = {"suite": config.suite, "tasks": list(config.tasks), "episodes_per_task": config.episodes_per_task,
           "backend": config.backend, "model_dir": str(config.model_dir), "unnorm_key": config.unnorm_key,
           "workers": workers, "domain_ids": [config.domain_id_base + i for i in range(workers)],
           "camera_size": config.camera_size, "center_crop_scale": config.center_crop_scale,
           "max_steps": config.max_steps, "started_at": started_at,
           "wall_s": round(time.monotonic() - started, 1), "complete": not errors and len(results) == len(plan),
           "memory": {"workers": sorted(memory, key=lambda m: m["worker"]),
                      "total_peak_rss_mb": round(sum(m["total_peak_rss_mb"] for m in memory), 1)}}
    summary = summarize(results, run)
    write_results(out, summary)
    plot_success_per_task(summary["per_task"], config.suite, out / SUCCESS_PLOT)
    plot_latency_histogram([v for ep in results for v in ep.latency_ms], out / LATENCY_PLOT)
    if errors:
        raise RuntimeError(f"{len(errors)} worker(s) failed after {len(results)}/{len(plan)} episodes "
                           f"(partial results in {out}):\n" + "\n".join(errors))
    return summary
