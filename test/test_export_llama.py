"""The export-friendly Llama prefill/decoder graphs against transformers' LlamaForCausalLM: same
logits, tokens and KV cache in torch and after ONNX export in ONNX Runtime, padding never read,
and the graph checker rejecting what ATC would not take."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from openvla_ros.export.llama_graphs import DecoderGraph, PrefillGraph
from openvla_ros.export.onnx_graph import check_graph, export_module

PATCHES, TEXT, STEPS, HIDDEN = 8, 6, 4, 64
LENGTH = 1 + PATCHES + TEXT
CAPACITY = LENGTH + STEPS
PREFILL_INPUTS = ["token_embeds", "patch_embeds", "attention_mask", "position_ids"]
DECODER_INPUTS = ["token", "cache_position", "past_kv"]
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


def _prefill_inputs(llama, patches, pad_value: float | None = None):
    ids = torch.full((1, 1 + TEXT), PAD, dtype=torch.long)
    ids[0, : len(PROMPT)] = torch.tensor(PROMPT)
    with torch.no_grad():
        token_embeds = llama.model.embed_tokens(ids)
    if pad_value is not None:  # garbage in the padded text slots must not change anything
        token_embeds[0, len(PROMPT):] = pad_value
    n = PATCHES + len(PROMPT)
    mask = torch.zeros(1, LENGTH, dtype=torch.long)
    mask[0, :n] = 1
    return (token_embeds, patches, mask, torch.arange(LENGTH)[None]), n


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


def _greedy(prefill, decoder, inputs, n):
    """Run prefill + decoder callables (torch modules or ORT wrappers) the way the runtime does."""
    logits, token, kv = prefill(*inputs)
    as_position = torch.tensor if isinstance(token, torch.Tensor) else np.array
    all_logits, tokens = [np.asarray(logits)[0]], [int(np.asarray(token).reshape(-1)[0])]
    for step in range(STEPS - 1):
        logits, token, kv = decoder(token, as_position([n + step]), kv)
        all_logits.append(np.asarray(logits)[0])
        tokens.append(int(np.asarray(token).reshape(-1)[0]))
    return np.stack(all_logits), tokens, np.asarray(kv)


def _assert_matches_reference(logits, tokens, kv, n, reference, atol):
    assert tokens == reference["tokens"]
    np.testing.assert_allclose(logits, reference["logits"], atol=atol, rtol=0)
    filled = n + STEPS - 1
    np.testing.assert_allclose(kv[:, 0, 0, :, :filled], reference["keys"], atol=atol, rtol=0)
    np.testing.assert_allclose(kv[:, 1, 0, :, :filled], reference["values"], atol=atol, rtol=0)


def test_torch_graphs_match_transformers(llama, patches, reference):
    inputs, n = _prefill_inputs(llama, patches)
    prefill, decoder = PrefillGraph(llama, LENGTH, CAPACITY), DecoderGraph(llama, CAPACITY)
    with torch.no_grad():
        logits, tokens, kv = _greedy(prefill, decoder, inputs, n)
    _assert_matches_reference(logits, tokens, kv, n, reference, atol=1e-5)


@pytest.fixture(scope="module")
def onnx_graphs(llama, patches, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("llama_onnx")
    _export_graphs(llama, *_prefill_inputs(llama, patches), out / "vla_prefill.onnx", out / "vla_decoder.onnx")
    return out


def _export_graphs(llama, inputs, n, prefill_path: Path, decoder_path: Path) -> None:
    """Export the prefill graph, and the decoder graph traced with the prefill's outputs."""
    prefill, decoder = PrefillGraph(llama, LENGTH, CAPACITY), DecoderGraph(llama, CAPACITY)
    with torch.no_grad():
        _, token, kv = prefill(*inputs)
    export_module(prefill, inputs, prefill_path, PREFILL_INPUTS, ["logits", "next_token", "present_kv"])
    export_module(decoder, (token, torch.tensor([n]), kv), decoder_path, DECODER_INPUTS,
                  ["logits", "next_token", "present_kv"])


def _ort(path: Path, names: list[str]):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda *args: session.run(None, {k: np.asarray(v) for k, v in zip(names, args)})


def test_onnx_graphs_are_static_and_atc_compatible(onnx_graphs):
    prefill = check_graph(onnx_graphs / "vla_prefill.onnx")
    decoder = check_graph(onnx_graphs / "vla_decoder.onnx")
    kv_shape = (2, 2, 1, 2, CAPACITY, HIDDEN // 4)
    assert [(s.name, s.shape, s.dtype) for s in prefill.inputs] == [
        ("token_embeds", (1, 1 + TEXT, HIDDEN), "float32"), ("patch_embeds", (1, PATCHES, HIDDEN), "float32"),
        ("attention_mask", (1, LENGTH), "int64"), ("position_ids", (1, LENGTH), "int64")]
    assert [(s.name, s.shape) for s in prefill.outputs] == [("logits", (1, 320)), ("next_token", (1, 1)), ("present_kv", kv_shape)]
    assert [(s.name, s.shape) for s in decoder.inputs] == [("token", (1, 1)), ("cache_position", (1,)), ("past_kv", kv_shape)]
    for report in (prefill, decoder):
        assert report.opset == 14
        assert not {"Trilu", "ScatterND", "Pow", "Shape", "ConstantOfShape"} & set(report.op_types)
        # RMSNorm as sum / N, the recipe's op choice for the 310P (no ReduceMean)
        assert "ReduceSum" in report.op_types and "ReduceMean" not in report.op_types


def test_onnx_graphs_match_transformers(llama, patches, reference, onnx_graphs):
    inputs, n = _prefill_inputs(llama, patches)
    prefill = _ort(onnx_graphs / "vla_prefill.onnx", PREFILL_INPUTS)
    decoder = _ort(onnx_graphs / "vla_decoder.onnx", DECODER_INPUTS)
    logits, tokens, kv = _greedy(prefill, decoder, [t.numpy() for t in inputs], n)
    _assert_matches_reference(logits, tokens, kv, n, reference, atol=1e-5)


def test_decoder_writes_only_the_cache_position_slot(llama, patches, onnx_graphs):
    inputs, n = _prefill_inputs(llama, patches)
    _, token, past = _ort(onnx_graphs / "vla_prefill.onnx", PREFILL_INPUTS)(*[t.numpy() for t in inputs])
    _, _, present = _ort(onnx_graphs / "vla_decoder.onnx", DECODER_INPUTS)(token, np.array([n]), past)
    others = np.arange(CAPACITY) != n
    assert np.array_equal(present[:, :, :, :, others], past[:, :, :, :, others])
    assert not np.array_equal(present[:, :, :, :, n], past[:, :, :, :, n])


def test_padding_is_never_read(llama, patches, reference, onnx_graphs):
    """Garbage in padded prompt slots, and in every cache slot past the write position, leaves
    logits and tokens unchanged: prefill masks padded keys, and the decoder at position p attends
    to slots < p and its own new K/V only."""
    inputs, n = _prefill_inputs(llama, patches, pad_value=1e4)
    prefill = _ort(onnx_graphs / "vla_prefill.onnx", PREFILL_INPUTS)
    run_decoder = _ort(onnx_graphs / "vla_decoder.onnx", DECODER_INPUTS)
    rng = np.random.default_rng(0)

    def poisoned_decoder(token, position, kv):
        kv = kv.copy()
        kv[:, :, :, :, int(position[0]):] = rng.normal(0, 1e3, kv[:, :, :, :, int(position[0]):].shape)
        return run_decoder(token, position, kv)

    logits, tokens, kv = _greedy(prefill, poisoned_decoder, [t.numpy() for t in inputs], n)
    _assert_matches_reference(logits, tokens, kv, n, reference, atol=1e-5)


def test_fp16_graphs_stay_close_to_fp32(llama, patches, reference, tmp_path):
    half = LlamaForCausalLM(llama.config).eval()
    half.load_state_dict(llama.state_dict())
    half = half.half()
    inputs, n = _prefill_inputs(llama, patches)
    inputs = (inputs[0].half(), inputs[1].half(), inputs[2], inputs[3])
    _export_graphs(half, inputs, n, tmp_path / "p.onnx", tmp_path / "d.onnx")
    report = check_graph(tmp_path / "p.onnx")
    assert {s.name: s.dtype for s in report.inputs}["token_embeds"] == "float16"
    logits, tokens, _ = _greedy(
        _ort(tmp_path / "p.onnx", PREFILL_INPUTS),
        _ort(tmp_path / "d.onnx", DECODER_INPUTS),
        [t.numpy() for t in inputs], n,
    )
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
    inputs, n = _prefill_inputs(llama, patches)
    export_module(PrefillGraph(llama, LENGTH, CAPACITY), inputs, tmp_path / "vla_prefill.onnx", PREFILL_INPUTS,
                  ["logits", "next_token", "present_kv"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vla_prefill.onnx", "vla_prefill.onnx.data"]
    assert (tmp_path / "vla_prefill.onnx.data").stat().st_size > (tmp_path / "vla_prefill.onnx").stat().st_size
    report = check_graph(tmp_path / "vla_prefill.onnx")
    assert report.nbytes == sum(p.stat().st_size for p in tmp_path.iterdir())
    logits, token, _ = _ort(tmp_path / "vla_prefill.onnx", PREFILL_INPUTS)(*[t.numpy() for t in inputs])
    assert int(token[0, 0]) == reference["tokens"][0]
    np.testing.assert_allclose(logits[0], reference["logits"][0], atol=1e-5, rtol=0)
