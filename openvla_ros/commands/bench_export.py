"""`openvla-ros bench-export`: peak memory of `export` on one checkpoint (JSON), e.g. a
`make-tiny --size 7b-widths --llm-layers 2` checkpoint; see openvla_ros/export/memory_bench.py."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from openvla_ros.runtime.manifest import DTYPES

    parser.add_argument("--checkpoint", required=True, type=Path, help="Hugging Face-format OpenVLA checkpoint")
    parser.add_argument("--dtype", choices=DTYPES, default="fp16", help="export dtype (default: %(default)s)")
    parser.add_argument("--export-dir", type=Path,
                        help="keep the exported graphs here (default: a temporary directory, removed)")
    parser.add_argument("--out", type=Path, help="also write the JSON report to this file")
    parser.add_argument("--max-bytes-per-parameter", type=float,
                        help="exit with status 1 when the peak exceeds this many bytes per parameter")


def run(args: argparse.Namespace) -> int:
    from openvla_ros.export.memory_bench import measure_export_memory

    report = measure_export_memory(args.checkpoint, dtype=args.dtype, out_dir=args.export_dir)
    limit = args.max_bytes_per_parameter
    if limit is not None:
        report["max_bytes_per_parameter"] = limit
        report["within_limit"] = report["bytes_per_parameter"] <= limit
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0 if report.get("within_limit", True) else 1
