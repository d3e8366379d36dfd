"""Compare an ONNX export against the torch reference on fixed inputs, graph by graph.

For each case (an all-zeros image and seeded random images, with a fixed instruction) the torch
reference policy gives the action tokens and actions, and the reference model's modules give each
graph's expected outputs: vision features, projector output, token embeddings, prefill logits and
KV cache (HF `LlamaForCausalLM` on the unpadded sequence), and the decoder logits per step and
final KV cache (HF greedy decode with its own cache). The ONNX pipeline runs with `capture=True`
and every captured output is compared (max / mean abs diff; KV caches on the filled slots only;
decoder outputs only for cases whose token sequences agree, since otherwise the two decoders
were fed different tokens).
Without an `unnorm_key` the norm stats with the most action dims are used. Passing means: token agreement >= `min_token_agreement` (1.0 by default for fp32 exports) and,
for fp32, actions within `action_atol` (1e-5) of the reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from openvla_ros.runtime.manifest import Manifest
from openvla_ros.runtime.pipeline import layout_prompt

DEFAULT_INSTRUCTION = "pick up the black bowl and place it on the plate"
DEFAULT_MIN_AGREEMENT = {"fp32": 1.0, "fp16": 0.9}


@dataclass(frozen=True)
class VerifyCase:
    name: str
    image: np.ndarray  # uint8 HxWx3
    instruction: str


def default_cases(random_images: int = 2, seed: int = 0, instruction: str = DEFAULT_INSTRUCTION) -> list[VerifyCase]:
    """The all-zeros 224x224 image plus `random_images` seeded uniform-noise images of other sizes."""
    rng = np.random.default_rng(seed)
    cases = [VerifyCase("zeros_224", np.zeros((224, 224, 3), np.uint8), instruction)]
    sizes = [(224, 224), (256, 256), (480, 640)]
    for i in range(random_images):
        h, w = sizes[i % len(sizes)]
        cases.append(VerifyCase(f"random_{i}_{h}x{w}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8), instruction))
    return cases


def _diff(onnx_value: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    delta = np.abs(onnx_value.astype(np.float64) - reference.astype(np.float64))
    return {"max_abs_diff": float(delta.max()), "mean_abs_diff": float(delta.mean())}


def _reference_outputs(model, pixel_values: np.ndarray, prompt_ids: list[int], tokens: list[int],
                       manifest) -> dict[str, np.ndarray]:
    """What each graph should output, from the torch reference model's modules (float32)."""
    lm = model.language_model
    prompt = layout_prompt(prompt_ids, manifest)
    with torch.no_grad():
        features = model.vision_backbone(torch.from_numpy(pixel_values))
        patches = model.projector(features)
        padded = lm.model.embed_tokens(torch.from_numpy(prompt.input_ids))
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
        "embedding.token_embeds": padded.numpy(),
        "vla_prefill.logits": prefill_logits.numpy(),
        "vla_prefill.present_kv": prefill_kv,
        "vla_decoder.logits": torch.stack(step_logits).numpy() if step_logits else np.zeros((0,)),
        "vla_decoder.present_kv": _kv_array(cache),
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
) -> dict:
    """Run both pipelines on `cases` (default: `default_cases()`); returns the JSON report."""
    from openvla_ros.model.torch_policy import TorchPolicy
    from openvla_ros.runtime import load_runtime_policy

    cases = list(cases) if cases is not None else default_cases()
    if unnorm_key is None:
        unnorm_key = _longest_key(Manifest.load(onnx_dir))
    reference = TorchPolicy.load(checkpoint_dir, unnorm_key=unnorm_key)
    runtime = load_runtime_policy("onnxruntime", onnx_dir, unnorm_key=reference.unnorm_key)
    manifest = runtime.manifest
    if min_token_agreement is None:
        min_token_agreement = DEFAULT_MIN_AGREEMENT[manifest.dtype]
    try:
        results, per_output = [], {}
        for case in cases:
            ref = reference.predict(case.image, case.instruction)
            got, generation = runtime.predict_detailed(case.image, case.instruction, capture=True)
            pixel_values, _ = runtime.prepare(case.image, case.instruction)
            expected = _reference_outputs(reference.model, pixel_values, ref.prompt_ids, ref.action_token_ids, manifest)
            filled = {"vla_prefill.present_kv": expected["vla_prefill.present_kv"].shape[4],
                      "vla_decoder.present_kv": expected["vla_decoder.present_kv"].shape[4]}
            diffs = {}
            for key, want in expected.items():
                have = generation.captured[key]
                if key in filled:
                    have = have[:, :, :, :, : filled[key]]
                if key.startswith("vla_decoder.") and got.action_token_ids != ref.action_token_ids:
                    continue  # the decoders were fed different tokens: nothing comparable
                diffs[key] = _diff(have, want)
                per_output.setdefault(key, []).append(diffs[key])
            agree = sum(a == b for a, b in zip(got.action_token_ids, ref.action_token_ids))
            results.append({
                "case": case.name,
                "instruction": case.instruction,
                "prompt_ids_match": got.prompt_ids == ref.prompt_ids,
                "reference_tokens": ref.action_token_ids,
                "onnx_tokens": got.action_token_ids,
                "tokens_match": got.action_token_ids == ref.action_token_ids,
                "token_agreement": agree / len(ref.action_token_ids),
                "action_max_abs_diff": float(np.max(np.abs(got.action - ref.action))),
                "graph_diffs": diffs,
            })
    finally:
        runtime.close()
        reference.close()
    total = sum(len(r["reference_tokens"]) for r in results)
    agreement = sum(r["token_agreement"] * len(r["reference_tokens"]) for r in results) / total
    max_action = max(r["action_max_abs_diff"] for r in results)
    passed = agreement >= min_token_agreement and all(r["prompt_ids_match"] for r in results)
    if manifest.dtype == "fp32":
        passed = passed and max_action <= action_atol
    return {
        "checkpoint": str(checkpoint_dir),
        "onnx": str(onnx_dir),
        "dtype": manifest.dtype,
        "unnorm_key": reference.unnorm_key,
        "graphs": {key: {"max_abs_diff": max(d["max_abs_diff"] for d in ds),
                         "mean_abs_diff": float(np.mean([d["mean_abs_diff"] for d in ds]))}
                   for key, ds in per_output.items()},
        "token_agreement": agreement,
        "sequences_matching": sum(r["tokens_match"] for r in results),
        "cases_total": len(results),
        "max_action_abs_diff": max_action,
        "criteria": {"min_token_agreement": min_token_agreement,
                     "action_atol": action_atol if manifest.dtype == "fp32" else None},
        "passed": passed,
        "cases": results,
    }
