"""Weights of a traced graph written one tensor at a time, straight from the torch module.

The graph is traced with `export_params=False` and no constant folding, so torch serializes no
weight: the module's parameters and buffers appear as graph inputs named by their state-dict
keys. `stream_weights` then does what the exporter's constant folding did for weights (e.g.
`Transpose` of a Linear weight feeding a `MatMul`, `Identity` where torch deduplicated equal
tensors): every node computed from weights alone is evaluated here, one value at a time, and
each value the remaining graph reads becomes an initializer whose bytes go to an external data
file. Memory on top of the module's own weights is one tensor, never a serialized model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper
from onnx.reference import ReferenceEvaluator


def _opset(model: onnx.ModelProto) -> int:
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def stream_weights(model: onnx.ModelProto, module: torch.nn.Module, data_path: Path) -> int:
    """Turn `model`'s weight inputs (and what is computed from weights alone) into initializers
    stored in `data_path` (referenced by its file name); returns the bytes written."""
    graph = model.graph
    sources = {name: t for name, t in module.state_dict(keep_vars=True).items()}
    weight_inputs = [i.name for i in graph.input if i.name in sources]
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    derived = set(weight_inputs)
    producers: dict[str, onnx.NodeProto] = {}
    alias: dict[str, str] = {}  # Identity of a weight: the weight itself (torch's deduplication)
    folded = set()
    for index, node in enumerate(graph.node):
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant" or not any(i in derived for i in inputs):
            continue
        if not all(i in derived or i in constants for i in inputs):
            continue
        folded.add(index)
        derived.update(node.output)
        if node.op_type == "Identity":
            alias[node.output[0]] = alias.get(node.input[0], node.input[0])
        else:
            producers.update((out, node) for out in node.output)
    kept = [n for i, n in enumerate(graph.node) if i not in folded]
    for node in kept:
        for position, name in enumerate(node.input):
            if name in alias:
                node.input[position] = alias[name]
    graph_outputs = {o.name for o in graph.output}
    for output in graph.output:
        if output.name in derived:
            raise ValueError(f"graph output {output.name!r} depends on weights only; nothing to export")
    read = {i for n in kept for i in n.input}
    # Constants that only weights read were folded with them.
    kept = [n for n in kept if n.op_type != "Constant" or n.output[0] in read or n.output[0] in graph_outputs]
    needed = [name for name in dict.fromkeys([*weight_inputs, *producers]) if name in read]
    opset = _opset(model)
    initializers = []
    written = 0
    with open(data_path, "wb") as data:
        for name in needed:
            value = np.ascontiguousarray(_evaluate(name, sources, producers, constants, opset))
            tensor = onnx.TensorProto(name=name, dims=value.shape,
                                      data_type=helper.np_dtype_to_tensor_dtype(value.dtype))
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, entry in (("location", data_path.name), ("offset", written), ("length", value.nbytes)):
                tensor.external_data.add(key=key, value=str(entry))
            data.write(value.data)
            written += value.nbytes
            initializers.append(tensor)
            del value
    del graph.node[:]
    graph.node.extend(kept)
    remaining = [i for i in graph.input if i.name not in sources]
    del graph.input[:]
    graph.input.extend(remaining)
    graph.initializer.extend(initializers)
    return written


def _evaluate(name: str, sources: dict, producers: dict, constants: dict, opset: int) -> np.ndarray:
    """The value of `name`: a weight as stored, or its producing node run on its (recursively
    evaluated) inputs with ONNX's reference evaluator."""
    if name in sources:
        return sources[name].detach().cpu().numpy()
    node = constants[name] if name in constants else producers[name]
    inputs = {i: _evaluate(i, sources, producers, constants, opset) for i in node.input if i}
    outputs = ReferenceEvaluator(node, opsets={"": opset}).run(None, inputs)
    return outputs[list(node.output).index(name)]
