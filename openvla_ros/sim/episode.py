"""Episode bookkeeping shared by the bridge node and evaluation: step count, success, the end
condition, the key/value summary the bridge publishes as its episode status (`Episode.values`) and
that summary decoded for its readers (`EpisodeStatus`)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class Episode:
    episode: int
    task_suite: str
    task_id: int
    init_state_id: int
    max_steps: int
    instruction: str
    step: int = 0
    success: bool = False
    actions_rejected: int = 0
    # lockstep: seconds from publishing a frame to receiving the action computed from it
    action_latencies_s: list[float] = field(default_factory=list)
    # the latest step's latency; None when that step had no action of its own (an action chunk's
    # points after the first), so a status says one latency per action received
    step_latency_s: float | None = None

    @property
    def done(self) -> bool:
        return self.success or self.step >= self.max_steps

    @property
    def outcome(self) -> str:
        """"success" | "max_steps" once done, else "running"."""
        if self.success:
            return "success"
        return "max_steps" if self.step >= self.max_steps else "running"

    def record_step(self, success: bool, action_latency_s: float | None = None) -> None:
        if self.done:
            raise RuntimeError(f"episode {self.episode} is over ({self.outcome}); reset before stepping")
        self.step += 1
        self.success = success
        self.step_latency_s = action_latency_s
        if action_latency_s is not None:
            self.action_latencies_s.append(action_latency_s)

    def values(self) -> dict[str, str]:
        latencies = self.action_latencies_s
        return {
            "episode": str(self.episode),
            "task_suite": self.task_suite,
            "task_id": str(self.task_id),
            "init_state_id": str(self.init_state_id),
            "step": str(self.step),
            "max_steps": str(self.max_steps),
            "success": str(self.success).lower(),
            "done": str(self.done).lower(),
            "instruction": self.instruction,
            "actions_rejected": str(self.actions_rejected),
            # milliseconds; "" for a step without an action of its own (realtime, a chunk's later points)
            "action_latency_ms": f"{1000.0 * self.step_latency_s:.3f}" if self.step_latency_s is not None else "",
            "action_latency_ms_mean": f"{1000.0 * sum(latencies) / len(latencies):.3f}" if latencies else "",
        }


@dataclass(frozen=True)
class EpisodeStatus:
    """An episode status as its readers see it: `Episode.values()` decoded."""

    episode: int
    task_suite: str
    task_id: int
    init_state_id: int
    step: int
    max_steps: int
    success: bool
    done: bool
    instruction: str
    actions_rejected: int
    action_latency_ms: float | None  # None for a step without a latency of its own
    action_latency_ms_mean: float | None

    @classmethod
    def from_values(cls, values: Mapping[str, str]) -> EpisodeStatus:
        """ValueError naming the key when a value is missing or not what `Episode.values` writes."""
        def text(key: str) -> str:
            if key not in values:
                raise ValueError(f"episode status has no {key!r} value; keys: {sorted(values)}")
            return values[key]

        def number(key: str, kind: type):
            value = text(key)
            try:
                return kind(value)
            except ValueError:
                raise ValueError(f"episode status {key}={value!r}: expected {kind.__name__}") from None

        def flag(key: str) -> bool:
            if text(key) not in ("true", "false"):
                raise ValueError(f"episode status {key}={values[key]!r}: expected true or false")
            return values[key] == "true"

        def milliseconds(key: str) -> float | None:
            return number(key, float) if text(key) else None

        return cls(episode=number("episode", int), task_suite=text("task_suite"), task_id=number("task_id", int),
                   init_state_id=number("init_state_id", int), step=number("step", int),
                   max_steps=number("max_steps", int), success=flag("success"), done=flag("done"),
                   instruction=text("instruction"), actions_rejected=number("actions_rejected", int),
                   action_latency_ms=milliseconds("action_latency_ms"),
                   action_latency_ms_mean=milliseconds("action_latency_ms_mean"))
