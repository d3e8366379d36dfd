"""Compare an ONNX export against the torch reference on fixed inputs, graph by graph.

For each case (an all-zeros image and seeded random images, with a fixed instruction) the torch
reference policy gives the action tokens and actions, and the reference model's modules give each
graph's expected outputs: vision features, projector output, prefill logits and
KV cache (HF `LlamaForCausalLM` on the unpadded sequence), and the decoder logits per step and
final KV cache (HF greedy decode with its own cache). The ONNX pipeline runs with `capture=True`
and every captured output is compared (max / mean abs diff; KV caches on the slots of real positions, as captured;
decoder outputs only for cases whose token sequences agree, since otherwise the two decoders
were fed different tokens).
Without an `unnorm_key` the norm stats with the most action dims are used. Passing means: token
agreement >= `min_token_agreement` (1.0 by default for fp32 exports) and, for fp32, actions within
`action_atol` (1e-5) of the reference.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from openvla_ros.runtime.manifest import Manifest
from openvla_ros.runtime.pipeline import DECODE_STAGE, PREFILL_STAGE
from openvla_ros.runtime.verify_runtimes import (DEFAULT_MIN_AGREEMENT, VerifyCase, case_result, default_cases,
                                                 graph_diffs, verdict)


def _reference_outputs(model, pixel_values: np.ndarray, prompt_ids: list[int],
                       tokens: list[int]) -> dict[str, np.ndarray]:
    """What each graph should output, from the torch reference model's modules (float32)."""
    lm = model.language_model
    with torch.no_grad():
        features = model.vision_backbone(torch.from_numpy(pixel_values))
        patches = model.projector(features)
        ids = torch.tensor([prompt_ids])
        embeds = lm.model.embed_tokens(ids)
        sequence = torch.cat((embeds[:, :1], patches, embeds[:, 1:]), dim=1)
        out = lm(inputs_embeds=sequence, use_cache=True)
        prefill_logits, prefill_kv = out.logits[:, -1], _kv_array(out.past_key_values)
        cache, step_logits = out.past_key_values, []
        for token in tokens[:-1]:
            out = lm(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            step_logits.append(out.logits[0, -1])
    return {
        "vision_backbone.patch_features": features.numpy(),
        "projector.patch_embeds": patches.numpy(),
        f"{PREFILL_STAGE}.logits": prefill_logits.numpy(),
        f"{PREFILL_STAGE}.present_kv": prefill_kv,
        f"{DECODE_STAGE}.logits": torch.stack(step_logits).numpy() if step_logits else np.zeros((0,)),
        f"{DECODE_STAGE}.present_kv": _kv_array(cache),
    }


def _kv_array(cache) -> np.ndarray:
    """HF cache -> [layers, 2, 1, kv_heads, filled, head_dim], the export's layout."""
    return torch.stack([torch.stack((layer.keys, layer.values)) for layer in cache.layers]).numpy()


def _longest_key(manifest: Manifest) -> str:
    """The norm-stats key with the most action dims: it exercises the most decode steps."""
    stats = {k: v.get("action", v) for k, v in manifest.norm_stats.items()}
    return max(sorted(stats), key=lambda k: len(stats[k]["q01"]))


def verify_export(
    checkpoint_dir: str | Path,
    onnx_dir: str | Path,
    cases: Sequence[VerifyCase] | None = None,
    unnorm_key: str | None = None,
    min_token_agreement: float | None = None,
    action_atol: float = 1e-5,
    backend: str = "onnxruntime",
) -> dict:
    """Run both pipelines on `cases` (default: `default_cases()`); returns the JSON report.
    `backend` "om" verifies a convert-om directory (`onnx_dir`) on the NPU instead."""
    from openvla_ros.model.torch_policy import TorchPolicy
    from openvla_ros.runtime import load_runtime_policy

    cases = list(cases) if cases is not None else default_cases()
    if unnorm_key is None:
        unnorm_key = _longest_key(Manifest.load(onnx_dir))
    reference = TorchPolicy.load(checkpoint_dir, unnorm_key=unnorm_key)
    runtime = load_runtime_policy(backend, onnx_dir, unnorm_key=reference.unnorm_key)
    manifest = runtime.manifest
    if min_token_agreement is None:
        min_token_agreement = DEFAULT_MIN_AGREEMENT[manifest.dtype]
    try:
        results, per_output = [], {}
        for case in cases:
            ref = reference.predict(case.image, case.instruction)
            got, generation = runtime.predict_detailed(case.image, case.instruction, capture=True)
            pixel_values, _ = runtime.prepare(case.image, case.instruction)
            expected = _reference_outputs(reference.model, pixel_values, ref.prompt_ids, ref.action_token_ids)
            diffs = graph_diffs(expected, generation.captured, got.action_token_ids == ref.action_token_ids, per_output)
            results.append(case_result(case, got, ref, diffs))
    finally:
        runtime.close()
        reference.close()
    return {
        "checkpoint": str(checkpoint_dir),
        "onnx" if backend == "onnxruntime" else "om": str(onnx_dir),
        "dtype": manifest.dtype,
        "unnorm_key": reference.unnorm_key,
        **verdict(results, per_output, manifest.dtype, min_token_agreement, action_atol),
        "cases": results,
    }
