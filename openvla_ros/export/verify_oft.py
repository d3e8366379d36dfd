"""Compare an OpenVLA-OFT export against the torch reference on fixed inputs, graph by graph.

Each case is a set of images (the verify case's image as the third-person view, the same image
flipped left-right as each further camera), the instruction, and a robot state inside the
norm-stats bounds. The reference model's modules give each graph's expected output: each image's
vision features and projected patches, the token and proprio embeddings and the action head's
hidden states (HF Llama with full attention on the unpadded sequence). Passing means the same
prompt ids and, for fp32 exports, every action within `action_atol` (1e-5) of the reference.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from openvla_ros.runtime.verify_runtimes import VerifyCase, default_cases
from openvla_ros.oft import PassLayout, layout_pass, oft_input_ids


def case_inputs(case: VerifyCase, num_images: int, state_bounds: tuple[np.ndarray, np.ndarray] | None,
                seed: int) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The images and robot state of one verify case."""
    images = [case.image] + [np.ascontiguousarray(case.image[:, ::-1]) for _ in range(num_images - 1)]
    if state_bounds is None:
        return images, None
    low, high = state_bounds
    return images, np.random.default_rng(seed).uniform(low, high)


def _diff(have: np.ndarray, want: np.ndarray) -> dict[str, float]:
    delta = np.abs(have.astype(np.float64) - want.astype(np.float64))
    return {"max_abs_diff": float(delta.max()), "mean_abs_diff": float(delta.mean())}


def _reference_outputs(reference, prepared, pad_token_id: int, layout: PassLayout) -> dict[str, np.ndarray]:
    model = reference.model
    vla = model.vla
    expected: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for index, pixels in enumerate(prepared.pixel_values):
            features = vla.vision_backbone(torch.from_numpy(pixels))
            expected[f"vision_backbone.patch_features_{index}"] = features.numpy()
            expected[f"projector.patch_embeds_{index}"] = vla.projector(features).numpy()
        padded = layout_pass(prepared.prompt_ids, layout, pad_token_id).input_ids
        expected["token_embeds"] = vla.language_model.model.embed_tokens(torch.from_numpy(padded)).numpy()
        proprio = None
        if prepared.proprio is not None:
            proprio = torch.from_numpy(prepared.proprio)[None].float()
            expected["proprio_embeds"] = model.proprio_projector(proprio)[:, None].numpy()
        ids = torch.tensor([oft_input_ids(prepared.prompt_ids, model.layout, reference.inputs.prompts.space_token_id)])
        pixels = torch.from_numpy(np.concatenate(prepared.pixel_values, axis=1))
        expected["action_hidden"] = model.action_hidden(pixels, ids, proprio).numpy()
    return expected


def verify_oft_export(checkpoint_dir: str | Path, onnx_dir: str | Path, cases: Sequence[VerifyCase] | None = None,
                      unnorm_key: str | None = None, action_atol: float = 1e-5, seed: int = 0) -> dict:
    """Run the torch reference and the ONNX Runtime chunk pipeline on `cases`; returns the JSON report."""
    from openvla_ros.model.torch_oft_policy import TorchOFTPolicy
    from openvla_ros.runtime import load_runtime_policy

    cases = list(cases) if cases is not None else default_cases()
    runtime = load_runtime_policy("onnxruntime", onnx_dir, unnorm_key=unnorm_key)
    manifest, chunk_layout = runtime.manifest, runtime.layout
    try:
        reference = TorchOFTPolicy.load(checkpoint_dir, unnorm_key=runtime.unnorm_key,
                                        num_images=chunk_layout.num_images, use_proprio=chunk_layout.uses_proprio,
                                        chunk=chunk_layout.chunk)
        pass_layout = runtime.pass_layout
        bounds = runtime.inputs.normalizer.proprio_bounds
        results, per_output = [], {}
        for index, case in enumerate(cases):
            images, state = case_inputs(case, chunk_layout.num_images, bounds[:2] if bounds else None, seed + index)
            want = reference.predict_chunk(images, case.instruction, state)
            got, result = runtime.predict_detailed(images, case.instruction, state, capture=True)
            prepared = reference.inputs.prepare(images, case.instruction, state)
            diffs = {}
            for key, value in _reference_outputs(reference, prepared, manifest.pad_token_id, pass_layout).items():
                diffs[key] = _diff(result.captured[key], value)
                per_output.setdefault(key, []).append(diffs[key])
            results.append({
                "case": case.name,
                "instruction": case.instruction,
                "prompt_ids_match": got.prompt_ids == want.prompt_ids,
                "action_max_abs_diff": float(np.max(np.abs(got.actions - want.actions))),
                "graph_diffs": diffs,
            })
    finally:
        runtime.close()
    max_action = max(r["action_max_abs_diff"] for r in results)
    passed = all(r["prompt_ids_match"] for r in results)
    if manifest.dtype == "fp32":
        passed = passed and max_action <= action_atol
    return {
        "checkpoint": str(checkpoint_dir),
        "onnx": str(onnx_dir),
        "model_family": "oft",
        "dtype": manifest.dtype,
        "unnorm_key": runtime.unnorm_key,
        "chunk_layout": chunk_layout.to_json(),
        "graphs": {key: {"max_abs_diff": max(d["max_abs_diff"] for d in ds),
                         "mean_abs_diff": float(np.mean([d["mean_abs_diff"] for d in ds]))}
                   for key, ds in per_output.items()},
        "cases_total": len(results),
        "max_action_abs_diff": max_action,
        "criteria": {"action_atol": action_atol if manifest.dtype == "fp32" else None},
        "passed": passed,
        "cases": results,
    }
