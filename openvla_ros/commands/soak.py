"""`openvla-ros soak`: run the closed loop (LIBERO bridge + policy node, ONNX Runtime) for
--minutes or --episodes in one pair of processes and record RSS, fds, threads, frame and action
counts, latency and errors of both over time: soak.json and soak.png in --out. Exit code 1 when
the acceptance (RSS growth after warm-up <= --max-growth, zero node errors, no episode lost)
fails.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_MODEL = Path("models/demo/onnx")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from openvla_ros.sim.libero_env import MAX_STEPS

    parser.add_argument("--minutes", type=float, default=0.0, help="run this long (0: until --episodes)")
    parser.add_argument("--episodes", type=int, default=0, help="run this many episodes (0: until --minutes)")
    parser.add_argument("--min-episodes", type=int, default=0,
                        help="run at least this many episodes, however long it takes (default: %(default)s)")
    parser.add_argument("--mode", choices=("realtime", "lockstep"), default="realtime",
                        help="bridge mode (default: %(default)s)")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL,
                        help="ONNX export directory (default: %(default)s, the demo model)")
    parser.add_argument("--unnorm-key", default="", help="norm stats key (default: the model's only one)")
    parser.add_argument("--suite", choices=sorted(MAX_STEPS), default="libero_object", help="(default: %(default)s)")
    parser.add_argument("--task-id", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--max-steps", type=int, default=300, help="steps per episode (default: %(default)s)")
    parser.add_argument("--camera-size", type=int, default=128, help="camera resolution (default: %(default)s)")
    parser.add_argument("--control-rate-hz", type=float, default=10.0, help="realtime step rate (default: %(default)s)")
    parser.add_argument("--sample-interval-s", type=float, default=5.0, help="(default: %(default)s)")
    parser.add_argument("--warmup-episodes", type=int, default=5,
                        help="RSS growth is measured from the end of this episode (default: %(default)s)")
    parser.add_argument("--max-growth", type=float, default=0.05,
                        help="accepted RSS growth after warm-up, as a fraction (default: %(default)s)")
    parser.add_argument("--domain-id", type=int, default=None, help="ROS domain (default: $ROS_DOMAIN_ID + 1)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (created)")


def run(args: argparse.Namespace) -> int:
    from openvla_ros.evaluation.soak import SOAK_JSON, SOAK_PLOT, SoakConfig, run_soak

    domain_id = args.domain_id
    if domain_id is None:
        domain_id = int(os.environ.get("ROS_DOMAIN_ID", "0") or 0) + 1
    summary = run_soak(SoakConfig(
        model_dir=args.model_dir, out=args.out, domain_id=domain_id, mode=args.mode, minutes=args.minutes,
        episodes=args.episodes, min_episodes=args.min_episodes, unnorm_key=args.unnorm_key, task_suite=args.suite,
        task_id=args.task_id,
        max_steps=args.max_steps, camera_size=args.camera_size, control_rate_hz=args.control_rate_hz,
        sample_interval_s=args.sample_interval_s, warmup_episodes=args.warmup_episodes, max_growth=args.max_growth))
    verdict = summary["acceptance"]
    growth = ", ".join(f"{name} {g['rss_mb_after_warmup']} -> {g['rss_mb_max_after_warmup']} MB "
                       f"({_percent(g['growth'])})" for name, g in verdict["rss_growth_after_warmup"].items())
    print(f"soak ({args.mode}): {summary['episodes_done']} episodes, {summary['actions_total']} actions in "
          f"{summary['wall_s']:.0f} s; RSS after warm-up: {growth}; node errors {verdict['node_errors']}, "
          f"episodes lost {verdict['episodes_lost']}: {'passed' if verdict['passed'] else 'FAILED'} "
          f"({args.out / SOAK_JSON}, {args.out / SOAK_PLOT})")
    return 0 if verdict["passed"] else 1


def _percent(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{100.0 * ratio:+.1f}%"
