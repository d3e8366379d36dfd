"""`RuntimePolicy`: the Policy protocol over an exported directory and a `GraphRuntime` (no torch).

Image preprocessing, prompt tokenization and action decoding are the same torch-free modules the
torch reference uses, loaded from the processor files copied next to the manifest; the
graphs run through the shared `GraphPipeline`.
"""
from __future__ import annotations

import time

import numpy as np

from openvla_ros.actions import ActionDecoder
from openvla_ros.input_checks import check_prompt_fits
from openvla_ros.policy_protocol import Prediction
from openvla_ros.processing import ImageProcessor, PromptTokenizer
from openvla_ros.runtime.manifest import Manifest
from openvla_ros.runtime.pipeline import DECODE_STAGE, PREFILL_STAGE, GenerationResult, GraphPipeline
from openvla_ros.runtime.session import GraphRuntime


class RuntimePolicy:
    """OpenVLA on exported graphs; `last_generation` keeps the last action's timings and transfers."""

    def __init__(self, manifest: Manifest, runtime: GraphRuntime, unnorm_key: str | None = None) -> None:
        self.backend = runtime.backend
        self.model_name = manifest.model_name
        self.manifest = manifest
        tokens = manifest.action_tokens
        self._actions = ActionDecoder(manifest.norm_stats, tokens.text_vocab_size, tokens.pad_to_multiple_of,
                                      tokens.n_action_bins)
        self.unnorm_key = self._actions.select_key(unnorm_key)
        self.action_dim = self._actions.action_dim(self.unnorm_key)
        if self.action_dim > manifest.layout.action_dim:
            raise ValueError(f"norm stats {self.unnorm_key!r} need {self.action_dim} action tokens; "
                             f"this export's KV cache holds {manifest.layout.action_dim}")
        self._images = ImageProcessor.from_pretrained(manifest.directory)
        self._prompts = PromptTokenizer.from_pretrained(manifest.directory)
        self._pipeline = GraphPipeline(runtime, manifest)
        self.last_generation: GenerationResult | None = None

    @property
    def kv_buffer_names(self) -> tuple[str, ...]:
        return self._pipeline.kv_buffer_names

    def predict(self, image: np.ndarray, instruction: str) -> Prediction:
        return self.predict_detailed(image, instruction)[0]

    def check_instruction(self, instruction: str) -> None:
        check_prompt_fits(len(self._prompts.encode(instruction)) - 1, self.manifest.layout.max_text_tokens)

    def prepare(self, image: np.ndarray, instruction: str) -> tuple[np.ndarray, list[int]]:
        """Model inputs: pixel values [1, C, H, W] float32 and the prompt token ids."""
        return self._images.preprocess(image), list(self._prompts.encode(instruction))

    def predict_detailed(self, image: np.ndarray, instruction: str,
                         capture: bool = False) -> tuple[Prediction, GenerationResult]:
        """`predict`, also returning the pipeline result (with every graph output if `capture`)."""
        t0 = time.perf_counter()
        pixel_values, prompt_ids = self.prepare(image, instruction)
        t1 = time.perf_counter()
        generation = self._pipeline.generate(pixel_values, prompt_ids, self.action_dim, capture=capture)
        t2 = time.perf_counter()
        action, normalized = self._actions.decode(generation.token_ids, self.unnorm_key)
        t3 = time.perf_counter()
        self.last_generation = generation
        stages = generation.stage_ms
        timings = {
            "preprocess": (t1 - t0) * 1e3,
            "vision": stages["upload"] + stages["vision_backbone"] + stages["projector"],
            "prefill": stages[PREFILL_STAGE],
            "decode": stages.get(DECODE_STAGE, 0.0),
            "postprocess": (t3 - t2) * 1e3,
            **stages,
            "total": (t3 - t0) * 1e3,
        }
        prediction = Prediction(
            action=np.asarray(action, dtype=np.float64),
            normalized_action=np.asarray(normalized, dtype=np.float64),
            action_token_ids=list(generation.token_ids),
            prompt_ids=list(prompt_ids),
            unnorm_key=self.unnorm_key,
            timings_ms=timings,
        )
        return prediction, generation

    def close(self) -> None:
        self._pipeline.close()
