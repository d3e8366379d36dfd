"""`openvla-ros verify`: an exported pipeline against a reference on fixed inputs, graph by graph
(OpenVLA exports: action tokens and actions; OpenVLA-OFT exports: the action chunks); prints a
summary, writes a JSON report and exits 1 when the export does not reproduce the reference.

- `--checkpoint CKPT --onnx DIR`: the ONNX Runtime pipeline against the torch reference;
- `--om DIR --onnx ONNX_DIR`: the .om pipeline (pyACL, on the NPU) against the ONNX Runtime pipeline
  of the export it was converted from (no torch needed: what a robot runs on first contact);
- `--om DIR --checkpoint CKPT`: the .om pipeline against the torch reference."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, help="the checkpoint that was exported (torch reference)")
    parser.add_argument("--onnx", type=Path, help="directory written by `openvla-ros export`")
    parser.add_argument("--om", type=Path, help="directory written by `openvla-ros convert-om` (verified on the NPU)")
    parser.add_argument("--device-id", type=int, default=0, help="NPU device for --om (default: %(default)s)")
    parser.add_argument("--unnorm-key", help="norm stats key (default: the one with the most action dims)")
    parser.add_argument("--random-images", type=int, default=2, help="seeded random images besides the zeros image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--instruction", help="instruction for every case (default: a fixed LIBERO-style one)")
    parser.add_argument("--min-token-agreement", type=float,
                        help="pass threshold on the fraction of equal action tokens (default 1.0 fp32, 0.9 fp16)")
    parser.add_argument("--report", type=Path,
                        help="JSON report path (default: verify_report.json in the --om, else the --onnx directory)")


def _report(args: argparse.Namespace, cases: list) -> tuple[dict, Path, str]:
    """(report, the verified directory, what it was compared against)."""
    if args.om is not None and args.onnx is not None:
        from openvla_ros.runtime.verify_runtimes import verify_om_against_onnx

        report = verify_om_against_onnx(args.om, args.onnx, cases, unnorm_key=args.unnorm_key,
                                        min_token_agreement=args.min_token_agreement, device_id=args.device_id)
        return report, args.om, f"ONNX Runtime on {args.onnx}"
    if args.checkpoint is None or (args.om is None) == (args.onnx is None):
        raise ValueError("give --checkpoint CKPT with --onnx DIR or --om DIR, or --om DIR with --onnx DIR")
    from openvla_ros.export.verify import verify_export

    verified, backend = (args.om, "om") if args.om is not None else (args.onnx, "onnxruntime")
    report = verify_export(args.checkpoint, verified, cases, unnorm_key=args.unnorm_key,
                           min_token_agreement=args.min_token_agreement, backend=backend)
    return report, verified, f"the torch reference {args.checkpoint}"


def run(args: argparse.Namespace) -> int:
    from openvla_ros.processing import DEFAULT_INSTRUCTION
    from openvla_ros.runtime.manifest import Manifest
    from openvla_ros.runtime.verify_runtimes import default_cases

    if args.random_images < 0:
        raise ValueError(f"--random-images must be >= 0, got {args.random_images}")
    cases = default_cases(args.random_images, args.seed, args.instruction or DEFAULT_INSTRUCTION)
    if args.om is None and args.onnx is not None and Manifest.load(args.onnx).family == "oft":
        if args.checkpoint is None:
            raise ValueError("an OpenVLA-OFT export is verified against its checkpoint: give --checkpoint CKPT")
        from openvla_ros.export.verify_oft import verify_oft_export

        return _report_oft(args, verify_oft_export(args.checkpoint, args.onnx, cases, unnorm_key=args.unnorm_key,
                                                   seed=args.seed))
    report, verified, reference = _report(args, cases)
    print(f"verify {verified} ({report['dtype']}) against {reference}, unnorm_key {report['unnorm_key']}")
    for key, diff in report["graphs"].items():
        print(f"  {key:32s} max abs diff {diff['max_abs_diff']:.3e}  mean abs diff {diff['mean_abs_diff']:.3e}")
    for case in report["cases"]:
        status = "match" if case["tokens_match"] else "MISMATCH"
        print(f"  {case['case']:24s} tokens {status} ({case['token_agreement']:.0%}), "
              f"action max abs diff {case['action_max_abs_diff']:.3e}")
    print(f"  token agreement {report['token_agreement']:.1%}, {report['sequences_matching']}/{report['cases_total']} "
          f"sequences identical -> {'PASS' if report['passed'] else 'FAIL'}")
    return _write_report(report, args.report or verified / "verify_report.json")


def _report_oft(args: argparse.Namespace, report: dict) -> int:
    layout = report["chunk_layout"]
    print(f"verify OpenVLA-OFT {args.onnx} ({report['dtype']}) against {args.checkpoint}, unnorm_key "
          f"{report['unnorm_key']}, chunk {layout['chunk']} x {layout['action_dim']}")
    for key, diff in report["graphs"].items():
        print(f"  {key:32s} max abs diff {diff['max_abs_diff']:.3e}  mean abs diff {diff['mean_abs_diff']:.3e}")
    for case in report["cases"]:
        prompt = "prompt ids match" if case["prompt_ids_match"] else "prompt ids DIFFER"
        print(f"  {case['case']:24s} {prompt}, chunk max abs diff {case['action_max_abs_diff']:.3e}")
    print(f"  max action abs diff {report['max_action_abs_diff']:.3e} -> {'PASS' if report['passed'] else 'FAIL'}")
    return _write_report(report, args.report or args.onnx / "verify_report.json")


def _write_report(report: dict, path: Path) -> int:
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"  report: {path}")
    return 0 if report["passed"] else 1
