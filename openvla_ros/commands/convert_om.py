"""`openvla-ros convert-om`: run `scripts/convert_onnx_to_om.sh` (the one place the ATC commands
live) on an export directory; arguments are passed through unchanged. Afterwards the copied
manifest gets the size and SHA-256 of the `.om` files and processor files."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

SCRIPT = "convert_onnx_to_om.sh"


def _installed_share_dirs() -> list[Path]:
    """share/openvla_ros of this install: the ament index's answer on a ROS 2 machine (colcon puts
    it under the workspace's install/), else the venv prefix a wheel installs data files into."""
    dirs = [Path(sys.prefix) / "share" / "openvla_ros"]
    try:
        from ament_index_python.packages import get_package_share_directory

        return [Path(get_package_share_directory("openvla_ros"))] + dirs
    except (ImportError, LookupError, OSError):  # no ROS 2, package not in the index, no AMENT_PREFIX_PATH
        return dirs


def script_path() -> Path:
    """The conversion script in a source checkout, or where a wheel/colcon install puts it."""
    candidates = [Path(__file__).resolve().parents[2] / "scripts" / SCRIPT]
    candidates += [share / "scripts" / SCRIPT for share in _installed_share_dirs()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{SCRIPT} not found in {[str(c) for c in candidates]}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", required=True, type=Path, help="directory written by `openvla-ros export`")
    parser.add_argument("--out", required=True, type=Path, help="directory for the .om files + manifest")
    parser.add_argument("--soc-version", default="Ascend310P3", help="ATC --soc_version (default: %(default)s)")
    parser.add_argument("--precision", action="append", default=[], metavar="GRAPH=MODE",
                        help="ATC --precision_mode_v2 for one graph (default: origin for vla_prefill "
                             "and vla_decoder, fp16 for the others); repeatable")
    parser.add_argument("--log", default="error", help="ATC log level (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="print the ATC commands instead of running them")


def run(args: argparse.Namespace) -> int:
    command = ["bash", str(script_path()), "--onnx", str(args.onnx), "--out", str(args.out),
               "--soc-version", args.soc_version, "--log", args.log]
    for spec in args.precision:
        command += ["--precision", spec]
    if args.dry_run:
        command.append("--dry-run")
    returncode = subprocess.run(command, check=False).returncode
    if returncode == 0 and not args.dry_run:
        from openvla_ros.runtime.export_files import record_om_files

        record_om_files(args.out, progress=True)
        print(f"[convert-om] recorded the size and SHA-256 of every file in {args.out / 'manifest.json'}",
              file=sys.stderr)
    return returncode
