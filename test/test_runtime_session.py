"""The session seam on real ONNX Runtime: in-place outputs, exact transfer accounting, binding
validation; the OM adapter's missing-CANN error; manifest and prompt-layout validation."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from openvla_ros.export.onnx_graph import check_graph, export_module
from openvla_ros.runtime.manifest import ActionTokens, GraphSpec, Manifest, SequenceLayout, TensorSpec
from openvla_ros.runtime.onnxruntime_backend import OnnxRuntimeGraphs
from openvla_ros.runtime.pipeline import layout_prompt


class _SlotWrite(torch.nn.Module):
    """past [4, 3] float, value [1, 3], position int64 [1] -> past with row `position` replaced."""

    def forward(self, past, value, position):
        write = (torch.arange(4) == position).view(4, 1)
        return torch.where(write, value, past)


@pytest.fixture(scope="module")
def slot_graph(tmp_path_factory) -> tuple[GraphSpec, Path]:
    path = tmp_path_factory.mktemp("slot") / "slot.onnx"
    export_module(_SlotWrite(), (torch.zeros(4, 3), torch.ones(1, 3), torch.tensor([1])), path,
                  ["past", "value", "position"], ["present"])
    report = check_graph(path)
    return GraphSpec("slot", path.name, report.inputs, report.outputs), path


@pytest.fixture()
def runtime(slot_graph) -> OnnxRuntimeGraphs:
    spec, path = slot_graph
    rt = OnnxRuntimeGraphs()
    rt.load_graph(spec, path)
    return rt


def _buffers(rt, spec):
    return {t.name: rt.allocate(t) for t in spec.inputs}, rt.allocate(TensorSpec("out", (4, 3), "float32"))


def test_outputs_are_written_in_place_and_fed_back_without_copies(runtime, slot_graph):
    spec, _ = slot_graph
    inputs, out = _buffers(runtime, spec)
    runtime.write(inputs["past"], np.zeros((4, 3), np.float32))
    runtime.write(inputs["value"], np.full((1, 3), 7.0, np.float32))
    runtime.write(inputs["position"], np.array([2]))
    out_ptr = out.handle.data_ptr()
    runtime.run("slot", inputs, {"present": out})
    assert out.handle.data_ptr() == out_ptr  # ORT wrote into our buffer, it did not allocate a new one
    before = runtime.transfers.totals()
    # ping-pong: the output buffer becomes the next input, the old input the next output
    runtime.write(inputs["position"], np.array([0]))
    runtime.run("slot", {"past": out, "value": inputs["value"], "position": inputs["position"]},
                {"present": inputs["past"]})
    step = runtime.transfers.totals().minus(before)
    assert step.to_runtime == {"position": 8} and step.to_host == {}
    expected = np.zeros((4, 3), np.float32)
    expected[[0, 2]] = 7.0
    np.testing.assert_array_equal(runtime.read(inputs["past"]), expected)
    assert runtime.transfers.totals().to_host == {"past": 48}


def test_read_returns_a_copy_not_a_view(runtime, slot_graph):
    spec, _ = slot_graph
    inputs, _ = _buffers(runtime, spec)
    runtime.write(inputs["past"], np.ones((4, 3)))
    snapshot = runtime.read(inputs["past"])
    runtime.write(inputs["past"], np.zeros((4, 3)))
    assert snapshot.sum() == 12.0


def test_write_converts_dtype_and_rejects_wrong_shapes(runtime, slot_graph):
    spec, _ = slot_graph
    inputs, _ = _buffers(runtime, spec)
    runtime.write(inputs["past"], np.arange(12, dtype=np.float64).reshape(4, 3))
    assert runtime.read(inputs["past"]).dtype == np.float32
    with pytest.raises(ValueError, match=r"got shape \(3, 4\), expected \(4, 3\)"):
        runtime.write(inputs["past"], np.zeros((3, 4)))


def test_run_validates_bindings(runtime, slot_graph):
    spec, _ = slot_graph
    inputs, out = _buffers(runtime, spec)
    with pytest.raises(ValueError, match="expected exactly"):
        runtime.run("slot", {"past": inputs["past"]}, {"present": out})
    wrong = runtime.allocate(TensorSpec("wrong", (4, 4), "float32"))
    with pytest.raises(ValueError, match="graph expects float32\\[4, 3\\]"):
        runtime.run("slot", inputs, {"present": wrong})
    with pytest.raises(ValueError, match="both input and output"):
        runtime.run("slot", inputs, {"present": inputs["past"]})
    with pytest.raises(KeyError, match="not loaded"):
        runtime.run("missing", inputs, {"present": out})


def test_manifest_spec_must_match_the_graph_file(slot_graph):
    spec, path = slot_graph
    lying = GraphSpec("slot", path.name, (TensorSpec("past", (5, 3), "float32"),) + spec.inputs[1:], spec.outputs)
    with pytest.raises(ValueError, match="file declares inputs"):
        OnnxRuntimeGraphs().load_graph(lying, path)
    with pytest.raises(FileNotFoundError):
        OnnxRuntimeGraphs().load_graph(spec, path.with_name("nope.onnx"))


def test_provider_selection_errors():
    with pytest.raises(ValueError, match="unknown ONNX Runtime provider 'tpu'"):
        OnnxRuntimeGraphs(provider="tpu")
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider is not available"):
        OnnxRuntimeGraphs(provider="cuda")


@pytest.mark.skipif(importlib.util.find_spec("acl") is not None, reason="pyACL is installed here")
def test_om_backend_without_cann_says_what_to_install():
    from openvla_ros.runtime.om_backend import AclGraphs

    with pytest.raises(RuntimeError, match="CANN's pyACL"):
        AclGraphs()


def _manifest(directory: Path) -> Manifest:
    tensor = TensorSpec("x", (1, 2), "float32")
    graphs = {name: GraphSpec(name, f"{name}.onnx", (tensor,), (tensor,))
              for name in ("vision_backbone", "projector", "vla_llm")}
    return Manifest(directory=directory, model_name="m", dtype="fp32", opset=14,
                    layout=SequenceLayout(num_patches=4, max_text_tokens=3, action_dim=2),
                    image_shape=(6, 28, 28), bos_token_id=1, pad_token_id=9,
                    action_tokens=ActionTokens(40, 8, 16), graphs=graphs,
                    norm_stats={"k": {"action": {"q01": [0, 0], "q99": [1, 1]}}}, processor_files=("tokenizer.json",))


def test_manifest_round_trip_and_validation(tmp_path):
    manifest = _manifest(tmp_path)
    manifest.write()
    loaded = Manifest.load(tmp_path)
    assert loaded == manifest
    assert loaded.layout.length == 8 and loaded.layout.kv_capacity == 10
    data = json.loads((tmp_path / "manifest.json").read_text())
    del data["graphs"]["vla_llm"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"graphs \['vla_llm'\] missing"):
        Manifest.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="openvla-ros export"):
        Manifest.load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="static positive ints"):
        TensorSpec("x", (1, -1), "float32")


def test_prompt_layout_pads_right_and_rejects_long_prompts(tmp_path):
    manifest = _manifest(tmp_path)
    prompt = layout_prompt([1, 5, 6], manifest)
    # BOS, the pad id on the 4 patch positions (their embeddings come from the projector), text, pad
    assert prompt.input_ids.tolist() == [[1, 9, 9, 9, 9, 5, 6, 9]]
    assert prompt.num_real == 4 + 3
    assert prompt.attention_mask.tolist() == [[1] * 7 + [0]]
    assert prompt.position_ids.tolist() == [list(range(8))]
    with pytest.raises(ValueError, match="at most 3; .*--max-text-tokens 4"):
        layout_prompt([1, 2, 3, 4, 5], manifest)
    with pytest.raises(ValueError, match="empty"):
        layout_prompt([], manifest)
