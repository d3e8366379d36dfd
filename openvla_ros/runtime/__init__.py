"""Torch-free runtimes for exported OpenVLA graphs: ONNX Runtime and Ascend OM (pyACL).

Layers, top to bottom:
- `policy.RuntimePolicy`: the `Policy` protocol (preprocess -> pipeline -> action decoding);
  `chunk_policy.RuntimeChunkPolicy` for OpenVLA-OFT exports (images + state -> an action chunk);
- `chunk_pipeline.ChunkPipeline`: OFT's graphs, one bidirectional pass, no cache (every backend);
- `pipeline.GraphPipeline`: the graphs, buffer plan, greedy decode with the KV cache kept in
  runtime memory (shared by every backend);
- `session.GraphRuntime`: "run this graph with these buffers", implemented by
  `onnxruntime_backend.OnnxRuntimeGraphs` (OrtValues + IO binding) and `om_backend.AclGraphs`
  (device memory + acl.mdl.execute).
Backends and their dependencies are imported only when chosen.
"""
from __future__ import annotations

import logging
from pathlib import Path

from openvla_ros.model_files import raise_first

RUNTIME_BACKENDS = ("onnxruntime", "om")


def load_runtime_policy(backend: str, model_dir: str | Path, unnorm_key: str | None = None,
                        verify_checksums: bool = False, **options):
    """A `Policy` over an exported directory (`onnxruntime`: ONNX graphs; `om`: convert-om output).

    The directory's files are checked against the manifest's records before the runtime opens
    any of them: sizes always, SHA-256 too with `verify_checksums`; a problem is a one-line
    `ModelFileError` naming the file. Options: onnxruntime -> `provider` ("cpu" | "cuda" | "cann"),
    `device_id`, `intra_op_threads`; om -> `device_id`. Unknown options are a ValueError.
    """
    from openvla_ros.runtime.export_files import SUFFIX_BACKENDS, check_export_files
    from openvla_ros.runtime.manifest import Manifest
    from openvla_ros.runtime.policy import RuntimePolicy

    allowed = {"onnxruntime": {"provider", "device_id", "intra_op_threads"}, "om": {"device_id"}}
    if backend not in allowed:
        raise ValueError(f"unknown runtime backend {backend!r}; expected one of {RUNTIME_BACKENDS}")
    unknown = sorted(set(options) - allowed[backend])
    if unknown:
        raise ValueError(f"options {unknown} are not understood by the {backend} backend; "
                         f"expected some of {sorted(allowed[backend])}")
    manifest = Manifest.load(model_dir)
    suffix = next(s for s, b in SUFFIX_BACKENDS.items() if b == backend)
    check = check_export_files(manifest, suffix, verify_hashes=verify_checksums)
    raise_first(check.problems, model_dir)
    if check.unrecorded:
        # Exports made before file records existed still load; say what could not be checked.
        logging.getLogger(__name__).warning(
            "%s: no size or checksum recorded for %s (made before file records, or by the bare conversion "
            "script): only their presence was checked; re-export (or `openvla-ros convert-om`) to record them",
            manifest.directory / "manifest.json", ", ".join(check.unrecorded))
    if backend == "onnxruntime":
        from openvla_ros.runtime.onnxruntime_backend import OnnxRuntimeGraphs

        runtime = OnnxRuntimeGraphs(**options)
    else:
        from openvla_ros.runtime.om_backend import AclGraphs

        runtime = AclGraphs(**options)
    try:
        if manifest.family == "oft":
            from openvla_ros.runtime.chunk_policy import RuntimeChunkPolicy

            return RuntimeChunkPolicy(manifest, runtime, unnorm_key=unnorm_key)
        return RuntimePolicy(manifest, runtime, unnorm_key=unnorm_key)
    except BaseException:
        runtime.close()
        raise
