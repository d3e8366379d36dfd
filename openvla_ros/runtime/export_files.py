"""The files of an export (`.onnx`) or OM (`.om`) directory checked against its manifest before any
runtime opens them: so a missing, truncated or corrupted file, or a directory for the other
backend, is one line naming the file, and for OM folders this happens before pyACL is touched.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from openvla_ros.model_files import InvalidModelFile, ModelFileError, check_records, record_files
from openvla_ros.runtime.manifest import MANIFEST_FILE, MANIFEST_REMEDY, Manifest

# graph file suffix -> the backend that runs it
SUFFIX_BACKENDS = {".onnx": "onnxruntime", ".om": "om"}
OM_REMEDY = "re-copy the OM directory, or convert the export again (`openvla-ros convert-om`)"
# Every ONNX file starts with its ir_version field (protobuf field 1, varint): tag byte 0x08.
ONNX_FIRST_BYTE = b"\x08"


@dataclass
class ExportCheck:
    """The outcome of checking an export directory for one graph suffix."""

    problems: list[ModelFileError] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)  # present, but no size/hash in the manifest


def expected_files(manifest: Manifest, suffix: str) -> list[str]:
    """The files a backend running `suffix` graphs reads: graphs, their recorded side files, processor files."""
    graphs = [manifest.graph_path(name, suffix).name for name in manifest.graph_names]
    sidecars = sorted(name for name in manifest.files if any(name.startswith(g + ".") for g in graphs))
    return graphs + sidecars + list(manifest.processor_files)


def check_export_files(manifest: Manifest, suffix: str, verify_hashes: bool = False, progress: bool = False,
                       on_checked: Callable[[str], None] | None = None) -> ExportCheck:
    """Problems of the directory's files for a backend running `suffix` graphs (see module docstring)."""
    if suffix not in SUFFIX_BACKENDS:
        raise ValueError(f"graph suffix {suffix!r}; expected one of {sorted(SUFFIX_BACKENDS)}")
    result = ExportCheck()
    mismatch = _other_backend(manifest, suffix)
    if mismatch is not None:
        result.problems.append(mismatch)
        return result
    remedy = OM_REMEDY if suffix == ".om" else MANIFEST_REMEDY
    names = expected_files(manifest, suffix)

    def checked(name: str) -> None:
        if name not in manifest.files:
            result.unrecorded.append(name)
        if on_checked is not None:
            on_checked(name)

    result.problems = check_records(manifest.directory, manifest.files, names, remedy, verify_hashes,
                                    progress=progress, on_checked=checked)
    if suffix == ".onnx":
        bad = set(map(str, (p.path for p in result.problems)))
        for name in manifest.graph_names:
            path = manifest.graph_path(name, suffix)
            if str(path) not in bad and path.is_file():
                with open(path, "rb") as f:
                    first = f.read(1)
                if first != ONNX_FIRST_BYTE:
                    result.problems.append(InvalidModelFile(
                        path, f"not ONNX: it starts with byte 0x{first.hex() or '(none, empty file)'}, an ONNX model "
                              f"with 0x{ONNX_FIRST_BYTE.hex()}", remedy))
    return result


def _other_backend(manifest: Manifest, suffix: str) -> InvalidModelFile | None:
    """A directory holding only the other backend's graphs: the manifest is for that backend."""
    other = next(s for s in SUFFIX_BACKENDS if s != suffix)
    present = [name for name in manifest.graph_names if manifest.graph_path(name, suffix).is_file()]
    others = [name for name in manifest.graph_names if manifest.graph_path(name, other).is_file()]
    if present or not others:
        return None
    backend, other_backend = SUFFIX_BACKENDS[suffix], SUFFIX_BACKENDS[other]
    todo = ("convert it with `openvla-ros convert-om`, or load it with the onnxruntime backend" if suffix == ".om"
            else "load it with the om backend, or use the ONNX export it was converted from")
    return InvalidModelFile(manifest.directory / MANIFEST_FILE,
                            f"manifest for another backend: this directory holds {other} graphs for the "
                            f"{other_backend} backend, not the {suffix} graphs the {backend} backend runs", todo)


def record_om_files(directory: Path, progress: bool = False) -> Manifest:
    """Rewrite the manifest that the conversion copied next to the `.om` files so that its file
    records describe this directory (the `.om` graphs and processor files, not the ONNX ones)."""
    manifest = Manifest.load(directory)
    names = [manifest.graph_path(name, ".om").name for name in manifest.graph_names] + list(manifest.processor_files)
    recorded = replace(manifest, files=record_files(manifest.directory, names, progress=progress))
    recorded.write()
    return recorded
