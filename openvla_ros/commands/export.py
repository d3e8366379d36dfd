"""`openvla-ros export`: a checkpoint -> five static-shape ONNX graphs + manifest.json (needs torch)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from openvla_ros.export import DEFAULT_MAX_TEXT_TOKENS
    from openvla_ros.runtime.manifest import DTYPES

    parser.add_argument("--checkpoint", required=True, type=Path, help="Hugging Face-format OpenVLA checkpoint")
    parser.add_argument("--out", required=True, type=Path, help="output directory (created)")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="graph float type (default: %(default)s)")
    parser.add_argument("--max-text-tokens", type=int, default=DEFAULT_MAX_TEXT_TOKENS,
                        help="prompt tokens after BOS the static layout holds; L = 1 + patches + N "
                             "(default: %(default)s, L = 297 for 256 patches; 31 gives the reference's 288)")


def run(args: argparse.Namespace) -> int:
    from openvla_ros.export import export_onnx

    export_onnx(args.checkpoint, args.out, dtype=args.dtype, max_text_tokens=args.max_text_tokens)
    return 0
