"""`openvla-ros export`: a checkpoint -> static-shape ONNX graphs + manifest.json (needs torch); OpenVLA-OFT too."""
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
    oft = parser.add_argument_group("OpenVLA-OFT", "checkpoints with action_head--<step>_checkpoint.pt")
    oft.add_argument("--num-images", type=int, help="images per pass: third-person + wrist cameras (default 2)")
    oft.add_argument("--no-proprio", action="store_true", help="leave out the proprio projector the checkpoint has")
    oft.add_argument("--chunk", type=int, help="actions per chunk (default: the platform the norm-stats key names)")
    oft.add_argument("--unnorm-key", help="norm-stats key that names the platform (needed with several keys)")


def run(args: argparse.Namespace) -> int:
    from openvla_ros.export import export_onnx

    oft_options = {"num_images": args.num_images, "chunk": args.chunk, "unnorm_key": args.unnorm_key,
                   "use_proprio": False if args.no_proprio else None}
    export_onnx(args.checkpoint, args.out, dtype=args.dtype, max_text_tokens=args.max_text_tokens,
                **{k: v for k, v in oft_options.items() if v is not None})
    return 0
