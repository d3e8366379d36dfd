"""Peak memory of `openvla-ros export`, measured on a child process.

The export runs as `python -m openvla_ros.cli export ...` in its own process; `os.wait4` returns
that child's resource usage, whose `ru_maxrss` is the most it ever had resident (anonymous and
mapped file pages alike; Linux reports KiB). Dividing by the parameters the model uses (the
checkpoint's tensors less the heads the forward pass skips) gives bytes per parameter, the figure
that scales to the full 7B model. Memory, not time: the figure does not depend on machine load.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from openvla_ros.checkpoint import UNUSED_KEY_PREFIXES
from openvla_ros.safetensors_stream import CheckpointTensors


def model_parameters(checkpoint_dir: str | Path) -> int:
    """Number of checkpoint parameters the model uses, from the safetensors headers alone."""
    tensors = CheckpointTensors(checkpoint_dir)
    return sum(math.prod(tensors.shape(name)) for name in tensors.names() if not name.startswith(UNUSED_KEY_PREFIXES))


def measure_export_memory(checkpoint_dir: str | Path, dtype: str = "fp16", out_dir: str | Path | None = None,
                          extra_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """Export `checkpoint_dir` in a child process and report its peak RSS (JSON-ready dict).

    The graphs go to `out_dir`, or to a temporary directory removed afterwards. The child's
    progress lines go to this process's stderr. A failed export raises RuntimeError.
    """
    checkpoint_dir = Path(checkpoint_dir)
    parameters = model_parameters(checkpoint_dir)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as scratch:
        target = Path(out_dir) if out_dir is not None else Path(scratch) / "export"
        command = [sys.executable, "-m", "openvla_ros.cli", "export", "--checkpoint", str(checkpoint_dir),
                   "--out", str(target), "--dtype", dtype, *extra_args]
        start = time.monotonic()
        child = subprocess.Popen(command, stdout=2)  # progress to stderr (fd 2): stdout carries the JSON
        _pid, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait for it again
        seconds = time.monotonic() - start
        if child.returncode != 0:
            raise RuntimeError(f"export of {checkpoint_dir} exited with status {child.returncode}: {' '.join(command)}")
        graph_bytes = sum(p.stat().st_size for p in target.iterdir() if p.name.endswith((".onnx", ".onnx.data")))
    peak = int(usage.ru_maxrss) * 1024
    return {
        "checkpoint": str(checkpoint_dir.resolve()),
        "dtype": dtype,
        "parameters": parameters,
        "peak_rss_bytes": peak,
        "peak_rss_gb": round(peak / 1e9, 3),
        "bytes_per_parameter": round(peak / parameters, 3),
        "graph_bytes": graph_bytes,
        "export_seconds": round(seconds, 1),
        "cpu_count": os.cpu_count(),
    }
