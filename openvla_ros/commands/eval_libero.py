"""`openvla-ros eval-libero`: evaluate a policy on a LIBERO suite through the ROS topics.

Every episode runs the LIBERO bridge and the policy node as separate processes in lockstep;
`--workers N` runs N such pairs in parallel, each in its own ROS domain. Writes results.json,
results.md (success per task and suite, 95 % Wilson intervals), success_per_task.png,
latency_hist.png, videos/ (one mp4 per episode) and logs/ (node logs) into --out.

The defaults are OpenVLA's published LIBERO protocol (`--protocol openvla`,
openvla_ros/evaluation/protocol.py); with `--model-family oft`, OpenVLA-OFT's (`--protocol oft`:
the same settings, two cameras, the robot state, action chunks executed point by point). With an
official fine-tune's norm-stats key (`libero_*_no_noops`) other settings are refused unless
`--allow-protocol-drift`; any drift is written into the results.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path



def add_arguments(parser: argparse.ArgumentParser) -> None:
    from openvla_ros.evaluation.protocol import PROTOCOLS
    from openvla_ros.policy import BACKENDS
    from openvla_ros.sim.bridge_config import IMAGE_PREPROCESS
    from openvla_ros.sim.libero_env import MAX_STEPS, RESET_RNG_MODES

    parser.add_argument("--suite", choices=sorted(MAX_STEPS), required=True, help="LIBERO task suite")
    parser.add_argument("--tasks", default="all", help="task ids: 'all' (default) or e.g. '0', '0,3', '0-4'")
    parser.add_argument("--model-family", choices=PROTOCOLS, default="openvla",
                        help="openvla: one camera, one action per step; oft: OpenVLA-OFT, agentview + wrist camera "
                             "and robot state in, an action chunk per step (default: %(default)s)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default=None,
                        help="the published evaluation protocol the defaults follow and drift is measured against "
                             "(default: the model family's)")
    parser.add_argument("--episodes-per-task", type=int, default=50,
                        help="episodes per task, from initial states 0..N-1 (protocol: 50)")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime", help="(default: %(default)s)")
    parser.add_argument("--model-dir", type=Path, required=True,
                        help="torch: HF-format checkpoint; onnxruntime/om: export directory")
    parser.add_argument("--unnorm-key", default="", help="norm stats key (default: the model's only one), "
                                                         "e.g. libero_object_no_noops for OpenVLA's LIBERO fine-tunes")
    # --center-crop-scale, --image-preprocess, --camera-size, --num-steps-wait, --reset-rng: left unset,
    # each is the protocol's value (evaluation/protocol.py).
    parser.add_argument("--center-crop-scale", type=float,
                        help="policy centre crop area fraction (protocol: 0.9, the fine-tunes' training augmentation)")
    parser.add_argument("--image-preprocess", choices=IMAGE_PREPROCESS,
                        help="openvla: the bridge publishes OpenVLA's 224 px policy image (JPEG round trip, Lanczos "
                             "resize; protocol); none: the rendered frame as it is")
    parser.add_argument("--workers", type=int, default=1,
                        help="bridge + policy pairs in parallel (default: %(default)s)")
    parser.add_argument("--domain-id-base", type=int, default=None,
                        help="ROS domain of worker 0; worker i uses base + i (default: $ROS_DOMAIN_ID + 1)")
    parser.add_argument("--camera-size", type=int, help="camera resolution (protocol: 256)")
    parser.add_argument("--max-steps", type=int, default=0, help="steps per episode (0 = the suite's protocol limit)")
    parser.add_argument("--num-steps-wait", type=int,
                        help="no-op steps after a reset before the first frame (protocol: 10)")
    parser.add_argument("--reset-rng", choices=RESET_RNG_MODES,
                        help="openvla: fixtures placed as in OpenVLA's evaluation (env seeded once per task, one reset "
                             "per earlier init state; protocol); reseed: seed before every reset (no replayed resets)")
    parser.add_argument("--allow-protocol-drift", action="store_true",
                        help="run an official fine-tune with settings other than the protocol's "
                             "(written into the results)")
    parser.add_argument("--resume", action="store_true",
                        help="skip the episodes already recorded in --out's results.json (same settings required)")
    parser.add_argument("--no-video", action="store_true", help="do not record a video per episode")
    parser.add_argument("--out", type=Path, required=True, help="output directory (created)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--memory-budget-mb", type=float, default=0.0,
                        help="exit 1 when the nodes' peak RSS, summed over workers, exceeds this (0 = no check)")


def run(args: argparse.Namespace) -> int:
    from openvla_ros.evaluation.runner import EvalConfig, evaluate, parse_tasks, suite_task_count

    base = args.domain_id_base
    if base is None:
        base = int(os.environ.get("ROS_DOMAIN_ID", "0") or 0) + 1
    config = EvalConfig(
        suite=args.suite, tasks=parse_tasks(args.tasks, suite_task_count(args.suite)),
        episodes_per_task=args.episodes_per_task, backend=args.backend, model_dir=args.model_dir, out=args.out,
        unnorm_key=args.unnorm_key, workers=args.workers, camera_size=args.camera_size,
        center_crop_scale=args.center_crop_scale, max_steps=args.max_steps, num_steps_wait=args.num_steps_wait,
        image_preprocess=args.image_preprocess, reset_rng=args.reset_rng, domain_id_base=base,
        record_video=not args.no_video, protocol=args.protocol or args.model_family,
        allow_protocol_drift=args.allow_protocol_drift, resume=args.resume, model_family=args.model_family)
    summary = evaluate(config, show_progress=not args.no_progress)
    for drift in summary["run"]["protocol_drift"]:
        print(f"protocol drift: {drift['setting']} {drift['run']} (protocol {config.protocol}: {drift['protocol']})")
    print(f"{args.suite}: {summary['successes_total']}/{summary['episodes_total']} episodes succeeded "
          f"({100.0 * summary['success_rate']:.1f}%) in {summary['run']['wall_s']:.0f} s; results in {args.out}")
    total = summary["run"]["memory"]["total_peak_rss_mb"]
    print(f"nodes' peak RSS over {summary['run']['workers']} worker(s): {total:.0f} MB")
    if args.memory_budget_mb and total > args.memory_budget_mb:
        print(f"over the memory budget of {args.memory_budget_mb:.0f} MB")
        return 1
    return 0
