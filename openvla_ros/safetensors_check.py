"""Safetensors files checked from their headers alone: kind, size, and agreement with the shard index.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON (tensor name ->
dtype, shape, data_offsets), then the tensor bytes, which the offsets must cover exactly. So the
header alone tells whether a file is safetensors at all and how many bytes it must have: a
truncated copy is found with one small read, before the safetensors library reports "invalid
UTF-8 in header" or "incomplete metadata" without naming the file. A sharded checkpoint's
`model.safetensors.index.json` maps every tensor to its shard; each shard must hold exactly the
tensors the index gives it.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from openvla_ros.model_files import InvalidModelFile, MissingModelFile, ModelFileError, read_json

# The safetensors library refuses headers over 100 MB; a larger length field means the first bytes
# are not a safetensors header (overwritten, or another format).
MAX_HEADER_BYTES = 100_000_000
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
CHECKPOINT_REMEDY = "re-copy (or re-download) the checkpoint"


@dataclass(frozen=True)
class SafetensorsHeader:
    """The tensors a safetensors file declares."""

    tensors: dict[str, tuple[str, tuple[int, ...], int, int]]  # name -> (dtype, shape, begin, end)
    data_start: int  # file offset of the data the offsets count from (8 + header length)


def read_header(path: Path, remedy: str = CHECKPOINT_REMEDY) -> SafetensorsHeader:
    """Parse and check `path`'s header and size; an `InvalidModelFile` naming the file if they are wrong."""
    if not path.is_file():
        raise MissingModelFile(path, "missing", remedy)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InvalidModelFile(path, f"not safetensors: {size} bytes, shorter than the 8-byte header length",
                                   remedy)
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES:
            raise InvalidModelFile(path, f"not safetensors: its header length field reads {length} bytes "
                                         "(its first bytes are overwritten, or it is another format)", remedy)
        if 8 + length > size:
            raise InvalidModelFile(path, f"truncated: its header alone needs {8 + length} bytes, got {size}", remedy)
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelFile(path, f"not safetensors: its header is not valid JSON ({exc})", remedy) from exc
    if not isinstance(header, dict):
        raise InvalidModelFile(path, "not safetensors: its header is not a JSON object", remedy)
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = str(entry["dtype"]), tuple(int(d) for d in entry["shape"])
            begin, end = (int(v) for v in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidModelFile(path, f"not safetensors: header entry {name!r} is malformed ({entry!r})",
                                   remedy) from exc
        itemsize = DTYPE_BYTES.get(dtype)
        if begin < 0 or end < begin or (itemsize is not None and end - begin != math.prod(shape) * itemsize):
            raise InvalidModelFile(path, f"damaged header: tensor {name!r} ({dtype} {list(shape)}) has data offsets "
                                         f"[{begin}, {end}]", remedy)
        tensors[name] = (dtype, shape, begin, end)
    expected = 8 + length + max((end for *_, end in tensors.values()), default=0)
    if size != expected:
        kind = "truncated" if size < expected else "too large"
        raise InvalidModelFile(path, f"{kind}: expected {expected} bytes (from its header), got {size}", remedy)
    return SafetensorsHeader(tensors=tensors, data_start=8 + length)


def check_safetensors(files: list[Path], index_path: Path | None = None, remedy: str = CHECKPOINT_REMEDY,
                      on_checked: Callable[[Path, SafetensorsHeader], None] | None = None) -> list[ModelFileError]:
    """Problems of safetensors weight files (headers and sizes), and of their shard index if given;
    `on_checked(path, header)` for every file found sound."""
    problems: list[ModelFileError] = []
    headers: dict[str, SafetensorsHeader] = {}
    for path in files:
        try:
            headers[path.name] = read_header(path, remedy)
        except ModelFileError as exc:
            problems.append(exc)
            continue
        if on_checked is not None:
            on_checked(path, headers[path.name])
    if index_path is not None:
        problems += _index_problems(index_path, headers, remedy)
    return problems


def _index_problems(index_path: Path, headers: dict[str, SafetensorsHeader], remedy: str) -> list[ModelFileError]:
    index = read_json(index_path, remedy)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        return [InvalidModelFile(index_path, "no weight_map", remedy)]
    problems: list[ModelFileError] = []
    assigned: dict[str, set[str]] = {}
    for tensor, shard in weight_map.items():
        assigned.setdefault(str(shard), set()).add(str(tensor))
    for shard, names in assigned.items():
        header = headers.get(shard)
        if header is None:  # missing or unreadable: reported on its own
            continue
        lacking = sorted(names - set(header.tensors))
        if lacking:
            problems.append(InvalidModelFile(index_path.parent / shard,
                                             f"lacks {len(lacking)} tensors that {index_path.name} assigns to it "
                                             f"(e.g. {lacking[0]!r}): a shard from another checkpoint", remedy))
        extra = sorted(set(header.tensors) - names)
        if extra:
            problems.append(InvalidModelFile(index_path.parent / shard,
                                             f"holds {len(extra)} tensors that {index_path.name} does not assign "
                                             f"to it (e.g. {extra[0]!r}): a shard from another checkpoint", remedy))
    return problems
