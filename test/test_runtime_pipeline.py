"""The shared graph pipeline over real ONNX Runtime on a tiny exported checkpoint: same action tokens
as the torch reference, the KV cache never crosses the runtime boundary (each decode step feeds
the previous step's output buffer back, bound not copied), and the runtime path imports no torch."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

import numpy as np
import pytest

from openvla_ros.policy import load_policy
from openvla_ros.runtime import load_runtime_policy
from openvla_ros.runtime.manifest import GRAPH_NAMES, Manifest
from openvla_ros.runtime.onnxruntime_backend import OnnxRuntimeGraphs
from openvla_ros.runtime.pipeline import GraphPipeline

INSTRUCTION = "put the bowl on the plate"


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [np.zeros((224, 224, 3), np.uint8), rng.integers(0, 256, (240, 320, 3), dtype=np.uint8),
            rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)]


def test_onnx_runtime_policy_matches_the_torch_reference(tiny_checkpoint, tiny_onnx_export):
    torch_policy = load_policy("torch", tiny_checkpoint)
    onnx_policy = load_policy("onnxruntime", tiny_onnx_export)
    try:
        assert onnx_policy.unnorm_key == torch_policy.unnorm_key
        assert onnx_policy.action_dim == torch_policy.action_dim
        for image in _images():
            want = torch_policy.predict(image, INSTRUCTION)
            got = onnx_policy.predict(image, INSTRUCTION)
            assert got.prompt_ids == want.prompt_ids
            assert got.action_token_ids == want.action_token_ids
            np.testing.assert_allclose(got.action, want.action, atol=1e-5, rtol=0)
            assert got.unnorm_key == want.unnorm_key
            assert {"preprocess", "vision", "prefill", "decode", "total"} <= set(got.timings_ms)
    finally:
        torch_policy.close()
        onnx_policy.close()


class RecordingOrt(OnnxRuntimeGraphs):
    """Real ONNX Runtime; additionally records which buffers each run bound and their addresses."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[tuple[str, dict, dict]] = []

    def _execute(self, spec, inputs, outputs):
        before = {name: b.handle.data_ptr() for name, b in outputs.items()}
        super()._execute(spec, inputs, outputs)
        assert {name: b.handle.data_ptr() for name, b in outputs.items()} == before, "ORT reallocated an output"
        self.runs.append((spec.name, dict(inputs), dict(outputs)))


def test_decode_steps_reuse_kv_buffers_and_copy_no_kv_bytes(tiny_onnx_export):
    manifest = Manifest.load(tiny_onnx_export)
    runtime = RecordingOrt()
    pipeline = GraphPipeline(runtime, manifest)
    steps = manifest.layout.action_dim
    prompt = [1] + list(range(600, 610))
    pixel_values = np.zeros((1, *manifest.image_shape), np.float32)
    result = pipeline.generate(pixel_values, prompt, num_tokens=steps)
    assert len(result.token_ids) == steps
    llm_runs = [r for r in runtime.runs if r[0] == "vla_llm"]
    # one graph: the prefill at gear L, then every decode step at gear 1
    gears = [inputs["input_ids"].spec.shape[1] for _, inputs, _ in llm_runs]
    assert gears == [manifest.layout.length] + [1] * (steps - 1)
    prefill, decode_runs = llm_runs[0], llm_runs[1:]
    previous_outputs = prefill[2]
    for step, (_, inputs, outputs) in enumerate(decode_runs):
        assert inputs["past_kv"] is previous_outputs["present_kv"], f"step {step}: KV input is not the last output"
        assert inputs["input_ids"] is previous_outputs["next_token"], f"step {step}: token input is not the last output"
        assert inputs["patch_embeds"] is prefill[1]["patch_embeds"]
        assert outputs["present_kv"] is not inputs["past_kv"]
        previous_outputs = outputs
    assert prefill[1]["past_kv"] is not prefill[2]["present_kv"]
    kv_bytes = manifest.graphs["vla_llm"].input("past_kv").shape
    assert np.prod(kv_bytes) > 0
    for step in result.decode_step_transfers:
        assert sum(step.bytes_of(name) for name in pipeline.kv_buffer_names) == 0
        assert step.to_runtime == {"cache_position": 8}  # the position in, the argmax token out: 16 bytes
        assert sum(step.to_host.values()) == 8
    # the whole action: inputs once, 8 bytes per token back, never logits or the cache
    assert set(result.transfers.to_runtime) == {"pixel_values", "input_ids", "attention_mask", "position_ids",
                                                "cache_position"}
    assert set(result.transfers.to_host) <= {"token_a", "token_b"}
    pipeline.close()


def test_capture_returns_every_graph_output(tiny_onnx_export):
    manifest = Manifest.load(tiny_onnx_export)
    pipeline = GraphPipeline(OnnxRuntimeGraphs(), manifest)
    result = pipeline.generate(np.zeros((1, *manifest.image_shape), np.float32), [1, 700, 701], num_tokens=3,
                               capture=True)
    assert result.captured["vla_llm.decode.logits"].shape == (2, manifest.graphs["vla_llm"].output("logits").shape[1])
    assert int(result.captured["vla_llm.prefill.logits"].argmax()) == result.token_ids[0]
    assert [int(row.argmax()) for row in result.captured["vla_llm.decode.logits"]] == result.token_ids[1:]
    # the KV caches as captured: the slots of the n = patches + 3 real positions, then + 2 decode steps
    n = manifest.layout.num_patches + 3
    assert result.captured["vla_llm.prefill.present_kv"].shape[4] == n
    assert result.captured["vla_llm.decode.present_kv"].shape[4] == n + 2
    with pytest.raises(ValueError, match="num_tokens=0"):
        pipeline.generate(np.zeros((1, *manifest.image_shape), np.float32), [1, 2], num_tokens=0)
    pipeline.close()


RUNTIME_ONLY = """
import sys, numpy as np
from openvla_ros.policy import load_policy
policy = load_policy("onnxruntime", sys.argv[1])
prediction = policy.predict(np.zeros((224, 224, 3), np.uint8), "open the drawer")
policy.close()
print(len(prediction.action_token_ids), "torch" in sys.modules)
"""


def test_runtime_path_never_imports_torch(tiny_onnx_export):
    proc = subprocess.run([sys.executable, "-c", RUNTIME_ONLY, str(tiny_onnx_export)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    count, torch_loaded = proc.stdout.split()
    assert int(count) > 0 and torch_loaded == "False"


def test_predict_cli_from_an_export_directory(tiny_onnx_export, tmp_path):
    from PIL import Image

    image = tmp_path / "frame.png"
    Image.fromarray(_images()[1]).save(image)
    proc = subprocess.run([sys.executable, "-m", "openvla_ros.cli", "predict", "--backend", "onnxruntime",
                           "--onnx", str(tiny_onnx_export), "--image", str(image), "--instruction", INSTRUCTION,
                           "--json"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert '"action_token_ids"' in proc.stdout


def test_runtime_policy_option_and_backend_errors(tiny_onnx_export):
    with pytest.raises(ValueError, match="not understood by the onnxruntime backend"):
        load_runtime_policy("onnxruntime", tiny_onnx_export, threads=2)
    with pytest.raises(ValueError, match="unknown runtime backend"):
        load_runtime_policy("tensorrt", tiny_onnx_export)
    with pytest.raises(ValueError, match="unknown-key|available"):
        load_runtime_policy("onnxruntime", tiny_onnx_export, unnorm_key="unknown-key")


@pytest.mark.skipif(importlib.util.find_spec("acl") is not None, reason="pyACL is installed here")
def test_om_backend_from_the_cli_explains_missing_cann(tiny_onnx_export, tmp_path):
    from PIL import Image

    image = tmp_path / "frame.png"
    Image.fromarray(_images()[0]).save(image)
    # An OM folder (its files are checked before pyACL is imported): the export with .om graphs.
    om_dir = shutil.copytree(tiny_onnx_export, tmp_path / "om", ignore=shutil.ignore_patterns("*.onnx"))
    for name in GRAPH_NAMES:
        (om_dir / f"{name}.om").write_bytes(b"stand-in om")
    with pytest.raises(RuntimeError, match="CANN's pyACL"):
        load_policy("om", om_dir)
    proc = subprocess.run([sys.executable, "-m", "openvla_ros.cli", "predict", "--backend", "om", "--om",
                           str(om_dir), "--image", str(image), "--instruction", INSTRUCTION],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "CANN's pyACL" in proc.stderr
