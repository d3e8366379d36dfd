"""`run_soak`: the closed loop (LIBERO bridge + policy node, ONNX Runtime) for minutes or for a
number of episodes in one pair of processes, recording how both processes hold up.

Every `sample_interval_s` it records, for the bridge and the policy node, RSS, peak RSS, open
fds and threads (from /proc), and the policy's counters from /diagnostics (frames received,
actions published, errors, inference latency). After every episode it records the episode's
outcome and both RSS values; each episode starts as soon as the previous one is done (a
`~/reset`), from the task's initial states in turn.

Acceptance (README, issue 13 / 17): RSS of each process grows by at most `max_growth` from the
end of the warm-up episodes to the end (the mean of the last three episodes), zero node errors, no
episode lost (every reset made one finished episode, numbered without gaps).
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

from openvla_ros.evaluation.memory import node_rss_mb, pair_stats
from openvla_ros.evaluation.node_pair import BRIDGE, POLICY, NodePair, PairConfig
from openvla_ros.nodes.policy_diagnostics import PolicyReport, policy_report
from openvla_ros.process_stats import growth_after

SOAK_JSON = "soak.json"
SOAK_PLOT = "soak.png"
INIT_STATES = 50  # every LIBERO task ships 50 fixed initial states
POLICY_COUNTERS = ("frames_received", "frames_stale", "frames_rejected", "actions_published", "skipped", "errors")


@dataclass(frozen=True)
class SoakConfig:
    model_dir: Path
    out: Path
    domain_id: int
    mode: str = "realtime"
    minutes: float = 0.0  # stop after this long (0: no time limit) ...
    episodes: int = 0  # ... or after this many episodes (0: no limit); at least one must be set
    # but not before this many episodes (a loaded machine runs fewer per minute; the acceptance
    # needs some after the warm-up)
    min_episodes: int = 0
    backend: str = "onnxruntime"
    unnorm_key: str = ""
    task_suite: str = "libero_object"
    task_id: int = 0
    max_steps: int = 300
    camera_size: int = 128
    control_rate_hz: float = 10.0
    sample_interval_s: float = 5.0
    warmup_episodes: int = 5
    max_growth: float = 0.05

    def validate(self) -> "SoakConfig":
        if self.minutes <= 0 and self.episodes <= 0:
            raise ValueError("a soak needs a length: minutes > 0 or episodes > 0")
        if self.minutes < 0 or self.episodes < 0 or self.min_episodes < 0:
            raise ValueError(f"minutes, episodes and min_episodes must be >= 0, got {self.minutes}, "
                             f"{self.episodes} and {self.min_episodes}")
        if self.warmup_episodes < 1:
            raise ValueError(f"warmup_episodes must be >= 1, got {self.warmup_episodes}")
        if self.sample_interval_s <= 0:
            raise ValueError(f"sample_interval_s must be > 0, got {self.sample_interval_s}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if not Path(self.model_dir).is_dir():
            raise FileNotFoundError(f"model directory not found: {self.model_dir}")
        return self


class _PolicyDiagnostics:
    """The policy node's latest /diagnostics values, kept by the driver's executor thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._report = PolicyReport(DiagnosticStatus.OK, "", {})  # none received yet

    def on_message(self, msg: DiagnosticArray) -> None:
        report = policy_report(msg, f"/{POLICY}")
        if report is not None:
            with self._lock:
                self._report = report

    def snapshot(self) -> dict:
        with self._lock:
            report = self._report
        snapshot: dict = {key: report.count(key) for key in POLICY_COUNTERS if report.count(key) is not None}
        for key in ("inference_latency_p50_ms", "inference_latency_p95_ms"):
            snapshot[key] = report.milliseconds(key)
        snapshot["state"] = report.values.get("state")
        return snapshot


def _sample(pair: NodePair, started: float, episodes_done: int, diagnostics: _PolicyDiagnostics) -> dict:
    return {"t_s": round(time.monotonic() - started, 2), "episodes_done": episodes_done,
            **{name: stats.to_json() if stats else None for name, stats in pair_stats(pair).items()},
            "policy_diagnostics": diagnostics.snapshot()}


def run_soak(config: SoakConfig) -> dict:
    """Run the soak, write soak.json and soak.png into `config.out`; returns the JSON content.
    A failure of the pair (a node exiting, an episode not finishing) ends the run early and is
    recorded as an error and a lost episode, not raised."""
    config.validate()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    pair_config = PairConfig(
        backend=config.backend, model_dir=Path(config.model_dir).resolve(), domain_id=config.domain_id,
        log_dir=out / "logs", unnorm_key=config.unnorm_key, bridge_mode=config.mode,
        bridge_overrides={"camera_size": config.camera_size, "control_rate_hz": config.control_rate_hz})
    diagnostics = _PolicyDiagnostics()
    samples: list[dict] = []
    episodes: list[dict] = []
    failures: list[str] = []
    stop_sampling = threading.Event()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")

    with NodePair(pair_config) as pair:
        pair.node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.on_message, 10)
        started = time.monotonic()

        def sample_loop() -> None:
            while True:
                samples.append(_sample(pair, started, len(episodes), diagnostics))
                if stop_sampling.wait(config.sample_interval_s):
                    return

        sampler = threading.Thread(target=sample_loop, name="soak-sampler", daemon=True)
        sampler.start()
        deadline = started + 60.0 * config.minutes if config.minutes > 0 else None
        try:
            while not _finished(config, len(episodes), deadline):
                episodes.append(_run_one(pair, config, len(episodes)))
        except RuntimeError as exc:  # a node died or an episode stalled: on record, not raised
            failures.append(str(exc))
        finally:
            stop_sampling.set()
            sampler.join()
            # The last word on peaks and counters, before the processes stop.
            samples.append(_sample(pair, started, len(episodes), diagnostics))

    summary = summarize(config, samples, episodes, failures, started_at)
    (out / SOAK_JSON).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot_soak(summary, out / SOAK_PLOT)
    return summary


def _finished(config: SoakConfig, done: int, deadline: float | None) -> bool:
    if done < config.min_episodes:
        return False
    return bool(config.episodes and done >= config.episodes) or bool(deadline and time.monotonic() >= deadline)


def _run_one(pair: NodePair, config: SoakConfig, index: int) -> dict:
    init_state_id = index % INIT_STATES
    record = pair.run_episode(config.task_suite, config.task_id, init_state_id, config.max_steps)
    return {"episode": record.status.episode, "init_state_id": init_state_id, "outcome": record.message,
            "steps": record.steps, "actions_rejected": record.status.actions_rejected,
            "wall_s": round(record.wall_s, 2),
            "action_latency_ms_mean": (round(sum(record.latencies_ms) / len(record.latencies_ms), 3)
                                       if record.latencies_ms else None),
            **node_rss_mb(pair)}


def summarize(config: SoakConfig, samples: list[dict], episodes: list[dict], failures: list[str],
              started_at: str) -> dict:
    """soak.json: settings, the acceptance verdict with its figures, every episode and sample."""
    numbers = [ep["episode"] for ep in episodes]
    # A failure ends the run inside an episode that then never finishes.
    lost = len(failures) + sum(1 for a, b in zip(numbers, numbers[1:]) if b != a + 1)
    final = samples[-1]["policy_diagnostics"] if samples else {}
    node_errors = final.get("errors", 0) + sum(ep["actions_rejected"] for ep in episodes) + len(failures)
    growth = {}
    for key in ("bridge_rss_mb", "policy_rss_mb"):
        values = [ep[key] for ep in episodes if ep[key] is not None]
        ratio = growth_after(values, config.warmup_episodes)
        growth[key.replace("_rss_mb", "")] = {
            "rss_mb_after_warmup": (values[config.warmup_episodes - 1] if len(values) >= config.warmup_episodes
                                    else None),
            "rss_mb_max_after_warmup": max(values[config.warmup_episodes:]) if ratio is not None else None,
            "growth": round(ratio, 4) if ratio is not None else None}
    growth_ok = all(g["growth"] is not None and g["growth"] <= config.max_growth for g in growth.values())
    return {
        "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
                     "started_at": started_at},
        "acceptance": {
            "passed": growth_ok and node_errors == 0 and lost == 0,
            "rss_growth_after_warmup": growth, "max_growth": config.max_growth,
            "node_errors": node_errors, "episodes_lost": lost, "failures": failures},
        "episodes_done": len(episodes),
        "actions_total": sum(ep["steps"] for ep in episodes),
        "wall_s": samples[-1]["t_s"] if samples else 0.0,
        "final_policy_diagnostics": final,
        "episodes": episodes,
        "samples": samples,
    }


def plot_soak(summary: dict, path: Path) -> Path:
    """Four panels over time: RSS, fds and threads, policy frames and actions, inference latency."""
    from openvla_ros.evaluation.plots import _pyplot

    plt = _pyplot()
    samples = summary["samples"]
    t_min = [s["t_s"] / 60.0 for s in samples]

    def series(process: str, key: str) -> list[float]:
        return [s[process][key] if s[process] else float("nan") for s in samples]

    def diag(key: str) -> list[float]:
        return [s["policy_diagnostics"].get(key) if s["policy_diagnostics"].get(key) is not None else float("nan")
                for s in samples]

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for process, color in ((BRIDGE, "tab:blue"), (POLICY, "tab:orange")):
        axes[0][0].plot(t_min, series(process, "rss_mb"), color=color, label=process)
        axes[0][1].plot(t_min, series(process, "fds"), color=color, label=f"{process} fds")
        axes[0][1].plot(t_min, series(process, "threads"), color=color, linestyle="--", label=f"{process} threads")
    axes[0][0].set_ylabel("RSS (MB)")
    axes[0][1].set_ylabel("count")
    axes[1][0].plot(t_min, diag("frames_received"), label="frames received")
    axes[1][0].plot(t_min, diag("actions_published"), label="actions published")
    axes[1][0].plot(t_min, diag("errors"), label="errors")
    axes[1][0].set_ylabel("policy node, cumulative")
    axes[1][1].plot(t_min, diag("inference_latency_p50_ms"), label="p50")
    axes[1][1].plot(t_min, diag("inference_latency_p95_ms"), label="p95")
    axes[1][1].set_ylabel("inference latency (ms)")
    for ax in axes.flat:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("minutes")
    verdict = summary["acceptance"]
    fig.suptitle(f"soak ({summary['settings']['mode']}): {summary['episodes_done']} episodes, "
                 f"{summary['actions_total']} actions, errors {verdict['node_errors']}, "
                 f"lost {verdict['episodes_lost']}, {'passed' if verdict['passed'] else 'FAILED'}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
