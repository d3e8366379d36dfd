"""Fold shape arithmetic left in a traced ONNX graph into constants.

The TorchScript exporter folds most shape computations, but some symbolics compute from the
runtime shape anyway (e.g. `scaled_dot_product_attention` derives its scale from `Shape` of the
query). With static input shapes every such value is known at export time: `Shape` of a tensor
whose inferred shape is static becomes a constant, and any small node whose inputs are all
constants is evaluated with ONNX's reference evaluator. Dead nodes are then dropped. The result
has no `Shape` ops and none of the dynamic-shape plumbing ATC handles poorly.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

# Only shape-sized values are evaluated here; weights were already folded by the exporter.
MAX_FOLD_ELEMENTS = 4096


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    shapes = {}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    return shapes


def _constant_node(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))


def fold_static_shapes(model: onnx.ModelProto, base_dir: str = "") -> onnx.ModelProto:
    """Return `model` with static `Shape` ops and the constant arithmetic on them folded;
    `base_dir` is where weights stored as external data live.

    Repeated until nothing changes: a shape computed by unfolded arithmetic (a `Reshape` to a
    computed shape) is only known to shape inference once that arithmetic is folded."""
    while True:
        before = len(model.graph.node)
        model = _fold_once(model, base_dir)
        if len(model.graph.node) == before:
            return model


def _fold_once(model: onnx.ModelProto, base_dir: str) -> onnx.ModelProto:
    shapes = _static_shapes(model)
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    known: dict[str, np.ndarray] = {
        init.name: numpy_helper.to_array(init, base_dir=base_dir) for init in model.graph.initializer
        if np.prod(init.dims, dtype=np.int64) <= MAX_FOLD_ELEMENTS
    }
    nodes = []
    for node in model.graph.node:
        value = None
        if node.op_type == "Constant":
            value = numpy_helper.to_array(node.attribute[0].t) if node.attribute[0].name == "value" else None
            if value is not None and value.size <= MAX_FOLD_ELEMENTS:
                known[node.output[0]] = value
            nodes.append(node)
            continue
        if node.op_type == "Shape" and node.input[0] in shapes and not node.attribute:
            value = np.array(shapes[node.input[0]], dtype=np.int64)
        elif len(node.output) == 1 and node.input and all(i in known for i in node.input if i):
            inputs = {i: known[i] for i in node.input if i}
            value = ReferenceEvaluator(node, opsets={"": opset}).run(None, inputs)[0]
            if value.size > MAX_FOLD_ELEMENTS:
                value = None
        if value is None:
            nodes.append(node)
        else:
            known[node.output[0]] = value
            nodes.append(_constant_node(node.output[0], value))
    graph_outputs = {o.name for o in model.graph.output}
    while True:  # drop nodes nothing reads (the inputs of folded nodes)
        used = graph_outputs | {i for n in nodes for i in n.input}
        alive = [n for n in nodes if any(o in used for o in n.output)]
        if len(alive) == len(nodes):
            break
        nodes = alive
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    kept = [init for init in model.graph.initializer if init.name in used or init.name in graph_outputs]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model
