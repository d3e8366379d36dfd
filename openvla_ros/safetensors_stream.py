"""Safetensors written and read one tensor at a time (needs torch).

The safetensors library's `save_file` turns every tensor into bytes before writing, and `safe_open`
maps the whole file: both make a process hold (or count as resident) the whole checkpoint. At the
real 7B widths that is tens of GB. `write_safetensors` writes the header from the tensor specs and
then each tensor as it is produced; `CheckpointTensors` reads one named tensor with a plain file
read (no mapping, so only the tensors a caller keeps count towards its memory) and converts it to
the dtype asked for right away.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Callable, Iterable

import torch

from openvla_ros.checkpoint import find_weight_files, weight_file_problems
from openvla_ros.model_files import raise_first
from openvla_ros.safetensors_check import SafetensorsHeader

TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool}
SAFETENSORS_DTYPES = {v: k for k, v in TORCH_DTYPES.items()}


def write_safetensors(path: Path, specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                      produce: Callable[[], Iterable[tuple[str, torch.Tensor]]],
                      metadata: dict[str, str] | None = None) -> None:
    """Write `path` from `specs` (name -> dtype, shape, in file order) and `produce()`, which must
    yield exactly those tensors in that order; only one tensor is in memory at a time."""
    header: dict = {"__metadata__": dict(metadata or {})}
    offset = 0
    for name, (dtype, shape) in specs.items():
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the format pads the header with spaces to 8-byte alignment
    order = iter(specs.items())
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, tensor in produce():
            expected_name, (dtype, shape) = next(order, (None, (None, None)))
            if name != expected_name or tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"produced {name!r} {tensor.dtype} {tuple(tensor.shape)}; expected "
                                 f"{expected_name!r} {dtype} {shape} next")
            f.write(tensor.contiguous().view(-1).view(torch.uint8).numpy())
    if next(order, None) is not None:
        raise ValueError(f"{path}: fewer tensors produced than its header declares")


class CheckpointTensors:
    """The tensors of a safetensors checkpoint, read one at a time by name."""

    def __init__(self, checkpoint_dir: str | Path) -> None:
        self._where: dict[str, tuple[Path, str, tuple[int, ...], int, int]] = {}

        def index(path: Path, header: SafetensorsHeader) -> None:
            for name, (dtype, shape, begin, end) in header.tensors.items():
                self._where[name] = (path, dtype, shape, header.data_start + begin, end - begin)

        files = find_weight_files(checkpoint_dir)
        raise_first(weight_file_problems(checkpoint_dir, files, on_checked=index), checkpoint_dir)

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name][2]

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Tensor `name`, converted to `dtype` when given (one transient copy of this tensor only)."""
        path, stored, shape, start, nbytes = self._where[name]
        if stored not in TORCH_DTYPES:
            raise ValueError(f"{path.name}: tensor {name!r} has dtype {stored}, which the exporter does not read")
        tensor = torch.empty(shape, dtype=TORCH_DTYPES[stored])
        with open(path, "rb") as f:
            f.seek(start)
            if nbytes and f.readinto(tensor.view(-1).view(torch.uint8).numpy()) != nbytes:
                raise ValueError(f"{path.name}: tensor {name!r} is cut short")
        return tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)
