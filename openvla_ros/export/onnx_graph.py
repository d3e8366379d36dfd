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
from openvla_ros.runtime.manifest import SEQUENCE_AXIS, TensorSpec

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
    sequence_inputs: tuple[str, ...] = ()  # inputs whose axis 1 is the dynamic sequence axis


def export_module(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int = OPSET,
    sequence_inputs: Sequence[str] = (),
) -> None:
    """Export `module(*args)` to `path` with folded shape arithmetic; the weights of graphs above
    `EXTERNAL_DATA_THRESHOLD` go to one side file `<path>.data`. `sequence_inputs` get one dynamic
    axis, axis 1, named `SEQUENCE_AXIS` (the shared LLM graph's shape gears); every other dim is
    static.

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
                dynamic_axes={name: {1: SEQUENCE_AXIS} for name in sequence_inputs} or None,
            )
        model = fold_static_shapes(onnx.load(str(traced)))
        if sequence_inputs:
            _declare_outputs_static(model, int(args[list(input_names).index(sequence_inputs[0])].shape[1]))
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


def _static_dims(value: onnx.ValueInfoProto, where: str, gear: int | None = None) -> tuple[int, ...]:
    """The dims of `value`; with `gear`, the sequence axis symbol counts as that value."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        raise ValueError(f"{where}: {value.name!r} has no inferred shape")
    dims = []
    for dim in tensor.shape.dim:
        if gear is not None and dim.dim_param == SEQUENCE_AXIS:
            dims.append(gear)
            continue
        if not dim.HasField("dim_value") or dim.dim_value < 0:
            raise ValueError(f"{where}: {value.name!r} has a non-static dim ({dim.dim_param or 'unknown'})")
        dims.append(int(dim.dim_value))
    return tuple(dims)


def _spec(value: onnx.ValueInfoProto, where: str, gear: int | None = None) -> TensorSpec:
    dims = _static_dims(value, where, gear)
    tensor = value.type.tensor_type
    if tensor.elem_type not in _ELEM_TO_NUMPY:
        raise ValueError(f"{where}: {value.name!r} has unsupported element type {tensor.elem_type}")
    return TensorSpec(value.name, dims, _ELEM_TO_NUMPY[tensor.elem_type])


def _sequence_inputs(model: onnx.ModelProto) -> tuple[str, ...]:
    return tuple(v.name for v in model.graph.input
                 if any(d.dim_param == SEQUENCE_AXIS for d in v.type.tensor_type.shape.dim))


def _at_gear(model: onnx.ModelProto, gear: int) -> onnx.ModelProto:
    """A copy of `model`'s structure (no weights) with the sequence axis fixed to `gear`, as ATC
    compiles each gear: a static graph per gear."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == SEQUENCE_AXIS:
                dim.Clear()
                dim.dim_value = gear
    return fixed


def _declare_outputs_static(model: onnx.ModelProto, gear: int) -> None:
    """The exporter declares outputs computed through the dynamic axis with symbolic dims even
    where they do not depend on it (logits, the KV cache); declare them as inferred at `gear`
    (check_graph then requires the same shapes at every gear)."""
    at_gear = onnx.shape_inference.infer_shapes(_at_gear(model, gear), strict_mode=True)
    inferred = {v.name: v for v in at_gear.graph.output}
    for output in model.graph.output:
        output.type.CopyFrom(inferred[output.name].type)


def check_graph(path: Path, sequence_gears: Sequence[int] = ()) -> GraphReport:
    """Validate an exported graph (see module docstring); ValueError naming the first problem.

    With `sequence_gears` the graph's inputs may carry the one dynamic axis `SEQUENCE_AXIS`
    (axis 1); shape inference must then leave every dim static at each gear, as ATC's
    `--dynamic_dims` needs (it compiles one static graph per gear and refuses intermediate
    dynamic shapes), and the outputs must not depend on the gear."""
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset > MAX_OPSET:
        raise ValueError(f"{path.name}: opset {opset} > {MAX_OPSET}")
    foreign = sorted({n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")}
                     | {n.op_type for n in model.graph.node} - ATC_OPS)
    if foreign:
        raise ValueError(f"{path.name}: ops outside the ATC-supported set: {foreign}")
    sequence_inputs = _sequence_inputs(model)
    if sequence_inputs and not sequence_gears:
        raise ValueError(f"{path.name}: inputs {list(sequence_inputs)} have a non-static dim ({SEQUENCE_AXIS}) "
                         f"but no shape gears were given")
    for gear in sequence_gears or (None,):
        where = f"{path.name} (inferred{'' if gear is None else f' at sequence gear {gear}'})"
        inferred = onnx.shape_inference.infer_shapes(model if gear is None else _at_gear(model, gear),
                                                     strict_mode=True)
        for value in list(inferred.graph.value_info) + list(inferred.graph.output):
            _static_dims(value, where)
        for value, declared in zip(inferred.graph.output, model.graph.output):
            if _static_dims(value, where) != _static_dims(declared, path.name):
                raise ValueError(f"{where}: output {value.name!r} is {list(_static_dims(value, where))}, "
                                 f"declared {list(_static_dims(declared, path.name))}: "
                                 "outputs must not depend on the gear")
    largest = max(sequence_gears) if sequence_gears else None
    return GraphReport(
        inputs=tuple(_spec(v, path.name, largest) for v in model.graph.input),
        outputs=tuple(_spec(v, path.name) for v in model.graph.output),
        op_types=tuple(sorted({n.op_type for n in model.graph.node})),
        opset=opset,
        nbytes=path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + ".data")),
        sequence_inputs=sequence_inputs,
    )
