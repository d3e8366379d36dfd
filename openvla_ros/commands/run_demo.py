"""`openvla-ros run-demo`: the demo model in closed loop with the LIBERO bridge (both as ROS nodes
in their own processes), switching instructions; writes demo.mp4, frame.png, report.json/.md."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from openvla_ros.policy import BACKENDS

    parser.add_argument("--model-dir", type=Path, required=True,
                        help="make-demo output directory (its onnx/ or checkpoint/ is chosen by --backend), "
                             "or a model directory for --backend")
    parser.add_argument("--out", type=Path, required=True, help="output directory (created)")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime", help="(default: %(default)s)")
    parser.add_argument("--task-suite", default="libero_object", help="LIBERO scene (default: %(default)s)")
    parser.add_argument("--task-id", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--init-state-id", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--motion-steps", type=int, default=12,
                        help="steps per 'move the gripper ...' (default: %(default)s)")
    parser.add_argument("--gripper-steps", type=int, default=10, help="steps per open/close (default: %(default)s)")
    parser.add_argument("--domain-id", type=int, default=None,
                        help="ROS domain of the nodes (default: $ROS_DOMAIN_ID or 0, so `ros2 topic echo` sees them)")


def run(args: argparse.Namespace) -> int:
    from openvla_ros.demo.closed_loop import default_schedule
    from openvla_ros.demo.run import DemoRun, run_demo

    if args.motion_steps < 1 or args.gripper_steps < 1:
        raise ValueError("--motion-steps and --gripper-steps must be >= 1")
    domain = args.domain_id if args.domain_id is not None else int(os.environ.get("ROS_DOMAIN_ID", "0") or 0)
    report = run_demo(DemoRun(model_dir=args.model_dir, out=args.out, backend=args.backend, task_suite=args.task_suite,
                              task_id=args.task_id, init_state_id=args.init_state_id, domain_id=domain,
                              schedule=default_schedule(args.motion_steps, args.gripper_steps)))
    for seg in report["segments"]:
        dx, dy, dz = (100.0 * v for v in seg["displacement_m"])
        print(f"{seg['instruction']:<28} {seg['steps']:3d} steps  dx {dx:+6.1f} cm  dy {dy:+6.1f} cm  dz {dz:+6.1f} cm"
              f"  on target {seg['on_target']}/{seg['steps']}")
    print(f"wrote {args.out / 'demo.mp4'}, frame.png, report.json, report.md")
    return 0
