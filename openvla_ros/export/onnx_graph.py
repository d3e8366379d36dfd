"""Write one torch module as a static-shape ONNX graph and check that ATC can take it.

Uses the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`): it emits the requested
opset (the dynamo exporter needs onnxscript and targets opset 18+), and with no `dynamic_axes`
every input and output shape is fixed by the example inputs; constant folding removes the shape
arithmetic. `check_graph` then enforces what the issue asks of every graph: `onnx.checker`
passes, opset <= 17, only static dims (shape inference must leave no symbolic or unknown dim),
and only ops from `ATC_OPS`, a conservative subset of ATC's ONNX operator support list
(notably no Trilu, ScatterND, LayerNormalization, control flow or dynamic-shape ops).
"""
from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import onnx
import torch

from openvla_ros.export.fold import fold_static_shapes
from openvla_ros.export.onnx_weights import stream_weights
from openvla_ros.runtime.manifest import TensorSpec

OPSET = 14  # what the reference Ascend conversion uses; ATC accepts opsets up to 17
MAX_OPSET = 17
# Graphs with more weight bytes than this keep them in one side file `<graph>.onnx.data` (a must
# above protobuf's 2 GiB limit): loading and checking such a graph then never reads its weights.
EXTERNAL_DATA_THRESHOLD = 64 << 20
INLINE_TENSOR_BYTES = 1024

ATC_OPS = frozenset({
    "Add", "And", "ArgMax", "Cast", "Concat", "Constant", "Conv", "Div", "Equal", "Erf", "Expand",
    "Gather", "Gemm", "Greater", "Identity", "Less", "MatMul", "Mul", "Neg", "Not", "Pow",
    "ReduceMean", "ReduceSum", "Reshape", "ScatterElements", "Sigmoid", "Slice", "Softmax", "Split", "Sqrt", "Squeeze",
    "Sub", "Tanh", "Transpose", "Unsqueeze", "Where", "Reciprocal",
    "Relu",  # OpenVLA-OFT's action head
})
_ELEM_TO_NUMPY = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                  onnx.TensorProto.INT64: "int64"}


@dataclass(frozen=True)
class GraphReport:
    """What `check_graph` found: declared I/O, the op types used and the file size."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    op_types: tuple[str, ...]
    opset: int
    nbytes: int


def export_module(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int = OPSET,
) -> None:
    """Export `module(*args)` to `path` with static shapes and folded shape arithmetic; the weights
    of graphs above `EXTERNAL_DATA_THRESHOLD` go to one side file `<path>.data`.

    Traced without weights (see export/onnx_weights.py), which are then streamed from `module` one
    tensor at a time: the export holds no serialized copy of a large graph's weights."""
    if opset > MAX_OPSET:
        raise ValueError(f"opset {opset} is above {MAX_OPSET}, the newest ATC accepts")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        traced = Path(scratch) / path.name
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter warns that it is deprecated in favour of dynamo, which
            # cannot produce opset <= 17 here; the warning is expected.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, str(traced), dynamo=False, opset_version=opset,
                input_names=list(input_names), output_names=list(output_names),
                export_params=False, do_constant_folding=False,
            )
        model = fold_static_shapes(onnx.load(str(traced)))
        data = Path(scratch) / (path.name + ".data")
        if stream_weights(model, module, data) > EXTERNAL_DATA_THRESHOLD:
            _inline_small_tensors(model, scratch)
            data.replace(path.parent / data.name)
        else:
            onnx.load_external_data_for_model(model, scratch)
    onnx.save_model(model, str(path))


def _inline_small_tensors(model: onnx.ModelProto, base_dir: str) -> None:
    """Keep tensors under 1 KiB in the graph itself (as onnx's own external-data save does)."""
    for tensor in model.graph.initializer:
        length = int(next(e.value for e in tensor.external_data if e.key == "length"))
        if length < INLINE_TENSOR_BYTES:
            onnx.external_data_helper.load_external_data_for_tensor(tensor, base_dir)
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT


def _static_dims(value: onnx.ValueInfoProto, where: str) -> tuple[int, ...]:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        raise ValueError(f"{where}: {value.name!r} has no inferred shape")
    dims = []
    for dim in tensor.shape.dim:
        if not dim.HasField("dim_value") or dim.dim_value < 0:
            raise ValueError(f"{where}: {value.name!r} has a non-static dim ({dim.dim_param or 'unknown'})")
        dims.append(int(dim.dim_value))
    return tuple(dims)


def _spec(value: onnx.ValueInfoProto, where: str) -> TensorSpec:
    dims = _static_dims(value, where)
    tensor = value.type.tensor_type
    if tensor.elem_type not in _ELEM_TO_NUMPY:
        raise ValueError(f"{where}: {value.name!r} has unsupported element type {tensor.elem_type}")
    return TensorSpec(value.name, dims, _ELEM_TO_NUMPY[tensor.elem_type])


def check_graph(path: Path) -> GraphReport:
    """Validate an exported graph (see module docstring); ValueError naming the first problem."""
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset > MAX_OPSET:
        raise ValueError(f"{path.name}: opset {opset} > {MAX_OPSET}")
    foreign = sorted({n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")}
                     | {n.op_type for n in model.graph.node} - ATC_OPS)
    if foreign:
        raise ValueError(f"{path.name}: ops outside the ATC-supported set: {foreign}")
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        _static_dims(value, f"{path.name} (inferred)")
    return GraphReport(
        inputs=tuple(_spec(v, path.name) for v in model.graph.input),
        outputs=tuple(_spec(v, path.name) for v in model.graph.output),
        op_types=tuple(sorted({n.op_type for n in model.graph.node})),
        opset=opset,
        nbytes=path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + ".data")),
    )
