"""`openvla-ros dds-profile`: write the Fast DDS profile that lets camera frames over 512 KiB (e.g.
640x480 rgb8) travel through shared memory instead of fragmented UDP, and say how to apply it."""
from __future__ import annotations

import argparse
from pathlib import Path

from openvla_ros.dds_profile import PROFILE_ENV, write_large_frames_profile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="profile XML file to write")
    parser.add_argument("--max-message-mib", type=float, default=4.0,
                        help="largest sample in MiB; the shared-memory segment holds four (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    path = write_large_frames_profile(args.out, int(args.max_message_mib * (1 << 20)))
    print(f"wrote {path}; export {PROFILE_ENV}={path.resolve()} in the shells of the camera driver "
          "and the policy node (before they start)")
    return 0
