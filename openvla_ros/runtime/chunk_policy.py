"""`RuntimeChunkPolicy`: OpenVLA-OFT over an exported directory and a `GraphRuntime` (no torch).

Inputs are prepared and actions unnormalized by the same torch-free `ChunkInputs` the torch
reference uses, loaded from the processor files next to the manifest; the graphs run through the
shared `ChunkPipeline`.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from openvla_ros.input_checks import check_prompt_fits
from openvla_ros.oft import ChunkInputs, ChunkNormalizer, ChunkPrediction
from openvla_ros.runtime.chunk_pipeline import ChunkPipeline, ChunkResult
from openvla_ros.runtime.manifest import Manifest
from openvla_ros.runtime.session import GraphRuntime


class RuntimeChunkPolicy:
    """OFT on exported graphs; `last_result` keeps the last chunk's stage timings and transfers."""

    def __init__(self, manifest: Manifest, runtime: GraphRuntime, unnorm_key: str | None = None) -> None:
        self.backend = runtime.backend
        self.model_name = manifest.model_name
        self.manifest = manifest
        self.layout = manifest.chunk_layout
        if unnorm_key is None:
            if len(manifest.norm_stats) != 1:
                raise ValueError(f"the export has {len(manifest.norm_stats)} norm-stats keys "
                                 f"{sorted(manifest.norm_stats)}; choose one with unnorm_key (--unnorm-key)")
            unnorm_key = next(iter(manifest.norm_stats))
        normalizer = ChunkNormalizer.from_norm_stats(manifest.norm_stats, unnorm_key, self.layout)
        self.inputs = ChunkInputs.from_directory(manifest.directory, normalizer)
        self.unnorm_key = unnorm_key
        self.action_dim = self.layout.action_dim
        self._pipeline = ChunkPipeline(runtime, manifest)
        self.last_result: ChunkResult | None = None

    @property
    def pass_layout(self):
        """The static sequence layout of the export's one pass (`oft.PassLayout`)."""
        return self._pipeline.layout

    def check_instruction(self, instruction: str) -> None:
        """InstructionRejected unless the instruction's prompt fits the export's static text budget."""
        check_prompt_fits(len(self.inputs.prompts.encode(instruction)) - 1, self.manifest.layout.max_text_tokens)

    def predict_chunk(self, images: Sequence[np.ndarray], instruction: str,
                      state: Sequence[float] | None = None) -> ChunkPrediction:
        return self.predict_detailed(images, instruction, state)[0]

    def predict_detailed(self, images: Sequence[np.ndarray], instruction: str, state: Sequence[float] | None = None,
                         capture: bool = False) -> tuple[ChunkPrediction, ChunkResult]:
        """`predict_chunk`, also returning the pipeline result (with graph outputs if `capture`)."""
        t0 = time.perf_counter()
        prepared = self.inputs.prepare(images, instruction, state)
        t1 = time.perf_counter()
        result = self._pipeline.run(prepared.pixel_values, prepared.prompt_ids, prepared.proprio, capture=capture)
        t2 = time.perf_counter()
        prediction = self.inputs.prediction(prepared, result.normalized_actions, {})
        t3 = time.perf_counter()
        prediction.timings_ms.update(preprocess=(t1 - t0) * 1e3, forward=(t2 - t1) * 1e3,
                                     postprocess=(t3 - t2) * 1e3, **result.stage_ms, total=(t3 - t0) * 1e3)
        self.last_result = result
        return prediction, result

    def close(self) -> None:
        self._pipeline.close()
