"""`openvla-ros check DIR`: every model file in DIR checked, each problem reported by file name.

An export or OM directory (manifest.json) is checked against the manifest's records: presence,
size and SHA-256 of every graph and processor file (a progress bar for large files). A checkpoint
(config.json) is checked from its files: JSON files parse, safetensors headers and sizes agree,
and shards hold exactly the tensors `model.safetensors.index.json` assigns them. Exit status 1
when anything is wrong.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from openvla_ros.model_files import ModelFileError, read_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", type=Path, help="an export, OM or checkpoint directory")
    parser.add_argument("--sizes-only", action="store_true",
                        help="skip the SHA-256 of every file (instant; finds truncation, not corruption)")


def run(args: argparse.Namespace) -> int:
    directory: Path = args.directory
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory")
    if (directory / "manifest.json").is_file():
        problems = _check_export(directory, verify_hashes=not args.sizes_only)
    elif (directory / "config.json").is_file():
        problems = _check_checkpoint(directory)
    else:
        raise FileNotFoundError(f"{directory}: neither manifest.json (an export or OM directory) nor config.json "
                                "(a checkpoint)")
    for problem in problems:
        print(f"  PROBLEM  {problem}")
    count = f"{len(problems)} problem{'' if len(problems) == 1 else 's'}" if problems else "no problems"
    print(f"{directory}: {count}")
    return 1 if problems else 0


def _ok(directory: Path, name: str, how: str, label: str = "ok") -> None:
    print(f"  {label:8s} {name} ({(directory / name).stat().st_size} bytes, {how})")


def _check_export(directory: Path, verify_hashes: bool) -> list[Exception]:
    from openvla_ros.runtime.export_files import SUFFIX_BACKENDS, check_export_files
    from openvla_ros.runtime.manifest import Manifest

    try:
        manifest = Manifest.load(directory)
    except ModelFileError as exc:
        return [exc]
    # Check the graphs of whichever backend's files are here (both if both are); .onnx if none are.
    suffixes = [s for s in SUFFIX_BACKENDS if any(manifest.graph_path(g, s).is_file() for g in manifest.graph_names)]
    problems: list[Exception] = []
    for suffix in suffixes or [".onnx"]:
        print(f"{directory}: {SUFFIX_BACKENDS[suffix]} graphs ({suffix}), "
              f"{'size + SHA-256' if verify_hashes else 'sizes'} against manifest.json")

        def report(name: str) -> None:
            if name in manifest.files:
                _ok(directory, name, "size + sha256 ok" if verify_hashes else "size ok")
            else:
                _ok(directory, name, "present; the manifest records no size or checksum for it", "unchecked")

        problems += check_export_files(manifest, suffix, verify_hashes=verify_hashes, progress=True,
                                       on_checked=report).problems
    return problems


def _check_checkpoint(directory: Path) -> list[Exception]:
    from openvla_ros.checkpoint import find_weight_files, weight_file_problems
    from openvla_ros.safetensors_check import CHECKPOINT_REMEDY

    print(f"{directory}: checkpoint (JSON files parse; safetensors headers, sizes and shard index agree)")
    problems: list[Exception] = []
    for path in sorted(directory.glob("*.json")):
        try:
            read_json(path, CHECKPOINT_REMEDY)
            _ok(directory, path.name, "valid JSON")
        except ModelFileError as exc:
            problems.append(exc)
    try:
        files = find_weight_files(directory, allow_pickle=True)
    except (ModelFileError, FileNotFoundError) as exc:
        return problems + [exc]
    for path in files:
        if path.suffix != ".safetensors":
            print(f"  skipped  {path.name} (pickle weights are not checked)")
    return problems + weight_file_problems(directory, files, on_checked=lambda path, header: _ok(
        directory, path.name, f"safetensors, {len(header.tensors)} tensors, the size its header gives"))
