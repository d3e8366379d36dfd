"""Verification pieces without torch: the fixed cases, the per-output difference, the pass
thresholds and the report summary, shared by `verify` against the torch reference
(`openvla_ros.export.verify`) and `verify --om` against ONNX Runtime (`verify_om_against_onnx`,
which a robot with CANN but no torch can run: .om outputs against the ONNX export's, graph by graph
and as token agreement)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from openvla_ros.processing import DEFAULT_INSTRUCTION

DECODE_PREFIX = "vla_llm.decode."  # captured outputs of the decode steps (pipeline.DECODE_STAGE)
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


def output_diff(value: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    delta = np.abs(value.astype(np.float64) - reference.astype(np.float64))
    return {"max_abs_diff": float(delta.max()) if delta.size else 0.0,
            "mean_abs_diff": float(delta.mean()) if delta.size else 0.0}


def case_result(case: VerifyCase, got, want, diffs: dict) -> dict:
    """One case of a report: `got`/`want` are the candidate's and the reference's Predictions."""
    agree = sum(a == b for a, b in zip(got.action_token_ids, want.action_token_ids))
    return {
        "case": case.name,
        "instruction": case.instruction,
        "prompt_ids_match": got.prompt_ids == want.prompt_ids,
        "reference_tokens": want.action_token_ids,
        "onnx_tokens": got.action_token_ids,
        "tokens_match": got.action_token_ids == want.action_token_ids,
        "token_agreement": agree / len(want.action_token_ids),
        "action_max_abs_diff": float(np.max(np.abs(got.action - want.action))),
        "graph_diffs": diffs,
    }


def graph_diffs(expected: dict[str, np.ndarray], captured: dict[str, np.ndarray], tokens_match: bool,
                per_output: dict[str, list[dict]]) -> dict[str, dict]:
    """Each expected graph output against the captured one, also appended to `per_output`; decoder
    outputs only when the token sequences agree (otherwise the decoders were fed different tokens)."""
    diffs = {}
    for key, want in expected.items():
        if key.startswith(DECODE_PREFIX) and not tokens_match:
            continue
        diffs[key] = output_diff(captured[key], want)
        per_output.setdefault(key, []).append(diffs[key])
    return diffs


def verdict(results: list[dict], per_output: dict[str, list[dict]], dtype: str, min_token_agreement: float,
            action_atol: float) -> dict:
    """The report fields computed from the cases: per-graph worst differences, token agreement, the
    criteria and whether they are met (agreement and identical prompts; fp32 also the actions)."""
    total = sum(len(r["reference_tokens"]) for r in results)
    agreement = sum(r["token_agreement"] * len(r["reference_tokens"]) for r in results) / total
    max_action = max(r["action_max_abs_diff"] for r in results)
    passed = agreement >= min_token_agreement and all(r["prompt_ids_match"] for r in results)
    if dtype == "fp32":
        passed = passed and max_action <= action_atol
    return {
        "graphs": {key: {"max_abs_diff": max(d["max_abs_diff"] for d in ds),
                         "mean_abs_diff": float(np.mean([d["mean_abs_diff"] for d in ds]))}
                   for key, ds in per_output.items()},
        "token_agreement": agreement,
        "sequences_matching": sum(r["tokens_match"] for r in results),
        "cases_total": len(results),
        "max_action_abs_diff": max_action,
        "criteria": {"min_token_agreement": min_token_agreement,
                     "action_atol": action_atol if dtype == "fp32" else None},
        "passed": passed,
    }


def verify_om_against_onnx(om_dir: str | Path, onnx_dir: str | Path, cases: Sequence[VerifyCase] | None = None,
                           unnorm_key: str | None = None, min_token_agreement: float | None = None,
                           action_atol: float = 1e-5, device_id: int = 0) -> dict:
    """The `.om` pipeline against the ONNX Runtime pipeline of the export it was converted from, on
    the same inputs: every graph output compared (decoder outputs only where the token sequences
    agree, since otherwise the decoders were fed different tokens), token agreement, JSON report.
    Passing: token agreement >= `min_token_agreement` (1.0 for fp32 exports, 0.9 for fp16: the NPU
    and the CPU round fp16 differently) and identical prompts; for fp32 also actions within
    `action_atol`."""
    from openvla_ros.runtime import load_runtime_policy

    cases = list(cases) if cases is not None else default_cases()
    reference = load_runtime_policy("onnxruntime", onnx_dir, unnorm_key=unnorm_key)
    try:
        candidate = load_runtime_policy("om", om_dir, unnorm_key=reference.unnorm_key, device_id=device_id)
    except BaseException:
        reference.close()
        raise
    dtype = reference.manifest.dtype
    if candidate.manifest.dtype != dtype:
        reference.close()
        candidate.close()
        raise ValueError(f"{om_dir} was converted from a {candidate.manifest.dtype} export, {onnx_dir} is {dtype}")
    if min_token_agreement is None:
        min_token_agreement = DEFAULT_MIN_AGREEMENT[dtype]
    results, per_output = [], {}
    try:
        for case in cases:
            want, expected = reference.predict_detailed(case.image, case.instruction, capture=True)
            got, generation = candidate.predict_detailed(case.image, case.instruction, capture=True)
            diffs = graph_diffs(expected.captured, generation.captured,
                                got.action_token_ids == want.action_token_ids, per_output)
            results.append(case_result(case, got, want, diffs))
    finally:
        candidate.close()
        reference.close()
    return {
        "reference": f"onnxruntime:{onnx_dir}",
        "candidate": f"om:{om_dir}",
        "dtype": dtype,
        "unnorm_key": reference.unnorm_key,
        **verdict(results, per_output, dtype, min_token_agreement, action_atol),
        "cases": results,
    }
