"""The export-friendly shared LLM graph (prefill and decode in one graph, two sequence gears)
against transformers' LlamaForCausalLM: same logits, tokens and KV cache in torch and after ONNX
export in ONNX Runtime, padding and unwritten cache slots never read, and the graph checker
rejecting what ATC would not take."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from openvla_ros.export.llama_graphs import LlmGraph
from openvla_ros.export.onnx_graph import check_graph, export_module

PATCHES, TEXT, STEPS, HIDDEN = 8, 6, 4, 64
LENGTH = 1 + PATCHES + TEXT
CAPACITY = LENGTH + STEPS
GEARS = (LENGTH, 1)
LLM_INPUTS = ["input_ids", "patch_embeds", "attention_mask", "position_ids", "past_kv"]
SEQUENCE_INPUTS = ["input_ids", "attention_mask", "position_ids"]
OUTPUTS = ["logits", "next_token", "present_kv"]
PROMPT = [1, 17, 99, 4, 250]  # BOS + 4 text tokens
PAD = 0


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=320, hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def patches() -> torch.Tensor:
    return torch.randn(1, PATCHES, HIDDEN, generator=torch.Generator().manual_seed(1))


def _prefill_inputs(patches, pad_id: int = PAD):
    """The prefill gear's (input_ids, patch_embeds, attention_mask, position_ids) and n real positions:
    BOS, pad ids where the patches go, the text, pads."""
    ids = torch.full((1, LENGTH), pad_id, dtype=torch.long)
    ids[0, 0] = PROMPT[0]
    ids[0, 1 + PATCHES: PATCHES + len(PROMPT)] = torch.tensor(PROMPT[1:])
    n = PATCHES + len(PROMPT)
    mask = torch.zeros(1, LENGTH, dtype=torch.long)
    mask[0, :n] = 1
    return (ids, patches, mask, torch.arange(LENGTH)[None]), n


def _kv(dtype=torch.float32, fill: float = float("nan")) -> torch.Tensor:
    """A fresh cache buffer: NaN, as device memory nobody wrote may hold."""
    return torch.full((2, 2, 1, 2, CAPACITY, HIDDEN // 4), fill, dtype=dtype)


@pytest.fixture(scope="module")
def reference(llama, patches):
    """HF forward on the unpadded multimodal sequence, then HF greedy decode with its own cache."""
    ids = torch.tensor([PROMPT])
    emb = llama.model.embed_tokens
    with torch.no_grad():
        seq = torch.cat((emb(ids[:, :1]), patches, emb(ids[:, 1:])), dim=1)
        out = llama(inputs_embeds=seq, use_cache=True)
        logits, tokens = [out.logits[0, -1]], [int(out.logits[0, -1].argmax())]
        cache = out.past_key_values
        for _ in range(STEPS - 1):
            out = llama(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits.append(out.logits[0, -1])
            tokens.append(int(out.logits[0, -1].argmax()))
    keys = torch.stack([layer.keys[0] for layer in cache.layers])  # [layers, kv_heads, T, D]
    values = torch.stack([layer.values[0] for layer in cache.layers])
    return {"logits": torch.stack(logits).numpy(), "tokens": tokens, "keys": keys.numpy(), "values": values.numpy()}


def _greedy(llm, inputs, n, kv):
    """Run the LLM graph (a torch module or an ORT wrapper) the way the runtime does: the prefill
    gear, then decode steps at gear 1 feeding next_token and present_kv back."""
    ids, patches, mask, positions = inputs
    logits, token, kv = llm(ids, patches, mask, positions, kv)
    as_array = torch.tensor if isinstance(token, torch.Tensor) else np.array
    all_logits, tokens = [np.asarray(logits)[0]], [int(np.asarray(token).reshape(-1)[0])]
    for step in range(STEPS - 1):
        logits, token, kv = llm(token, patches, as_array([[1]]), as_array([[n + step]]), kv)
        all_logits.append(np.asarray(logits)[0])
        tokens.append(int(np.asarray(token).reshape(-1)[0]))
    return np.stack(all_logits), tokens, np.asarray(kv)


def _assert_matches_reference(logits, tokens, kv, n, reference, atol):
    assert tokens == reference["tokens"]
    np.testing.assert_allclose(logits, reference["logits"], atol=atol, rtol=0)
    filled = n + STEPS - 1
    np.testing.assert_allclose(kv[:, 0, 0, :, :filled], reference["keys"], atol=atol, rtol=0)
    np.testing.assert_allclose(kv[:, 1, 0, :, :filled], reference["values"], atol=atol, rtol=0)


def test_torch_graph_matches_transformers(llama, patches, reference):
    inputs, n = _prefill_inputs(patches)
    with torch.no_grad():
        logits, tokens, kv = _greedy(LlmGraph(llama, PATCHES, CAPACITY), inputs, n, _kv())
    _assert_matches_reference(logits, tokens, kv, n, reference, atol=1e-5)


def _export_llm(llama, patches, path: Path, dtype=torch.float32) -> None:
    inputs, _ = _prefill_inputs(patches.to(dtype))
    export_module(LlmGraph(llama, PATCHES, CAPACITY), (*inputs, _kv(dtype, 0.0)), path, LLM_INPUTS, OUTPUTS,
                  sequence_inputs=SEQUENCE_INPUTS)


@pytest.fixture(scope="module")
def onnx_graph(llama, patches, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("llama_onnx") / "vla_llm.onnx"
    _export_llm(llama, patches, path)
    return path


def _ort(path: Path, names: list[str]):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda *args: session.run(None, {k: np.asarray(v) for k, v in zip(names, args)})


def test_onnx_graph_has_one_sequence_axis_and_is_atc_compatible(onnx_graph):
    report = check_graph(onnx_graph, GEARS)
    kv_shape = (2, 2, 1, 2, CAPACITY, HIDDEN // 4)
    # inputs recorded at the largest gear; the sequence axis is the only dynamic one
    assert [(s.name, s.shape, s.dtype) for s in report.inputs] == [
        ("input_ids", (1, LENGTH), "int64"), ("patch_embeds", (1, PATCHES, HIDDEN), "float32"),
        ("attention_mask", (1, LENGTH), "int64"), ("position_ids", (1, LENGTH), "int64"),
        ("past_kv", kv_shape, "float32")]
    assert report.sequence_inputs == tuple(SEQUENCE_INPUTS)
    assert [(s.name, s.shape) for s in report.outputs] == [("logits", (1, 320)), ("next_token", (1, 1)),
                                                           ("present_kv", kv_shape)]
    assert report.opset == 14
    assert not {"Trilu", "ScatterND", "Pow", "Shape", "ConstantOfShape"} & set(report.op_types)
    # RMSNorm as sum / N, the recipe's op choice for the 310P (no ReduceMean)
    assert "ReduceSum" in report.op_types and "ReduceMean" not in report.op_types
    with pytest.raises(ValueError, match="no shape gears were given"):
        check_graph(onnx_graph)


def test_onnx_graph_matches_transformers(llama, patches, reference, onnx_graph):
    inputs, n = _prefill_inputs(patches)
    logits, tokens, kv = _greedy(_ort(onnx_graph, LLM_INPUTS), [t.numpy() for t in inputs], n, _kv().numpy())
    _assert_matches_reference(logits, tokens, kv, n, reference, atol=1e-5)


def test_decode_gear_writes_only_its_slot(patches, onnx_graph):
    inputs, n = _prefill_inputs(patches)
    llm = _ort(onnx_graph, LLM_INPUTS)
    _, token, past = llm(*[t.numpy() for t in inputs], _kv(fill=0.0).numpy())
    _, _, present = llm(token, inputs[1].numpy(), np.array([[1]]), np.array([[n]]), past)
    others = np.arange(CAPACITY) != n
    assert np.array_equal(present[:, :, :, :, others], past[:, :, :, :, others])
    assert not np.array_equal(present[:, :, :, :, n], past[:, :, :, :, n])


def test_padding_and_unwritten_slots_are_never_read(patches, reference, onnx_graph):
    """Other ids in the patch and padding slots, and garbage in every cache slot at or past the
    write position, leave logits and tokens unchanged: patch slots take the patch embeddings,
    prefill masks padded keys, and a decode step at position p reads slots < p and its own K/V."""
    inputs, n = _prefill_inputs(patches, pad_id=311)
    llm = _ort(onnx_graph, LLM_INPUTS)
    rng = np.random.default_rng(0)

    def poisoned(ids, patch_embeds, mask, positions, kv):
        kv = kv.copy()
        start = int(np.asarray(positions)[0, 0])
        kv[:, :, :, :, start:] = rng.normal(0, 1e3, kv[:, :, :, :, start:].shape)
        return llm(ids, patch_embeds, mask, positions, kv)

    logits, tokens, kv = _greedy(poisoned, [t.numpy() for t in inputs], n, _kv().numpy())
    _assert_matches_reference(logits, tokens, kv, n, reference, atol=1e-5)


def test_fp16_graph_stays_close_to_fp32(llama, patches, reference, tmp_path):
    half = LlamaForCausalLM(llama.config).eval()
    half.load_state_dict(llama.state_dict())
    half = half.half()
    _export_llm(half, patches, tmp_path / "llm.onnx", torch.float16)
    report = check_graph(tmp_path / "llm.onnx", GEARS)
    assert {s.name: s.dtype for s in report.inputs}["patch_embeds"] == "float16"
    inputs, n = _prefill_inputs(patches.half())
    logits, tokens, _ = _greedy(_ort(tmp_path / "llm.onnx", LLM_INPUTS), [t.numpy() for t in inputs], n,
                                _kv(torch.float16).numpy())
    assert logits.dtype == np.float16
    np.testing.assert_allclose(logits.astype(np.float32), reference["logits"], atol=2e-2, rtol=0)


class _Triu(torch.nn.Module):
    def forward(self, x):
        return torch.triu(x)


class _Sum(torch.nn.Module):
    def forward(self, x):
        return x.sum(-1)


def test_checker_rejects_ops_atc_lacks(tmp_path):
    export_module(_Triu(), (torch.ones(4, 4),), tmp_path / "triu.onnx", ["x"], ["y"])
    with pytest.raises(ValueError, match="Trilu"):
        check_graph(tmp_path / "triu.onnx")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter, called directly here
def test_checker_rejects_dynamic_axes(tmp_path):
    path = tmp_path / "dynamic.onnx"
    torch.onnx.export(_Sum(), (torch.ones(2, 3),), str(path), dynamo=False, opset_version=14,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}})
    with pytest.raises(ValueError, match="non-static dim"):
        check_graph(path)


class _SdpaBlock(torch.nn.Module):
    """torch's SDPA symbolic computes its scale from Shape(query): the folding pass must remove it."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(32, 96)

    def forward(self, x):
        q, k, v = self.qkv(x).reshape(1, 10, 3, 2, 16).permute(2, 0, 3, 1, 4).unbind(0)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, 10, 32)


def test_traced_shape_arithmetic_is_folded(tmp_path):
    torch.manual_seed(0)
    block, x = _SdpaBlock().eval(), torch.randn(1, 10, 32)
    export_module(block, (x,), tmp_path / "sdpa.onnx", ["x"], ["y"])
    report = check_graph(tmp_path / "sdpa.onnx")
    assert "Shape" not in report.op_types and "Softmax" in report.op_types
    (y,) = _ort(tmp_path / "sdpa.onnx", ["x"])(x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(y, block(x).numpy(), atol=1e-6, rtol=0)


def test_large_graphs_keep_weights_in_one_side_file(llama, patches, reference, tmp_path, monkeypatch):
    """Above the size threshold (64 MiB; lowered here) weights go to `<graph>.onnx.data`, which
    ONNX Runtime (and ATC) read from next to the graph."""
    import openvla_ros.export.onnx_graph as onnx_graph

    monkeypatch.setattr(onnx_graph, "EXTERNAL_DATA_THRESHOLD", 0)
    _export_llm(llama, patches, tmp_path / "vla_llm.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vla_llm.onnx", "vla_llm.onnx.data"]
    assert (tmp_path / "vla_llm.onnx.data").stat().st_size > (tmp_path / "vla_llm.onnx").stat().st_size
    report = check_graph(tmp_path / "vla_llm.onnx", GEARS)
    assert report.nbytes == sum(p.stat().st_size for p in tmp_path.iterdir())
    inputs, _ = _prefill_inputs(patches)
    logits, token, _ = _ort(tmp_path / "vla_llm.onnx", LLM_INPUTS)(*[t.numpy() for t in inputs], _kv().numpy())
    assert int(token[0, 0]) == reference["tokens"][0]
    np.testing.assert_allclose(logits[0], reference["logits"][0], atol=1e-5, rtol=0)
