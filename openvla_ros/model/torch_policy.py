"""`TorchPolicy`: the reference backend, greedy decoding with the KV cache like official `generate`."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from openvla_ros.actions import ActionDecoder
from openvla_ros.checkpoint import OpenVLAConfig
from openvla_ros.model.openvla import OpenVLA
from openvla_ros.policy_protocol import Prediction
from openvla_ros.processing import ImageProcessor, PromptTokenizer


# Weight dtypes the reference backend runs in; float32 reproduces the official actions exactly,
# bfloat16 halves memory (the 7B model needs ~15 GiB instead of ~30 GiB).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TorchPolicy:
    backend = "torch"

    def __init__(self, model: OpenVLA, images: ImageProcessor, prompts: PromptTokenizer,
                 unnorm_key: str | None = None, model_name: str = "openvla") -> None:
        config = model.config
        self.model = model.eval()
        self.images = images
        self.prompts = prompts
        self.model_name = model_name
        self.actions = ActionDecoder.from_config(config)
        self.unnorm_key = self.actions.select_key(unnorm_key)
        self.action_dim = self.actions.action_dim(self.unnorm_key)

    @classmethod
    def load(cls, model_dir: str | Path, unnorm_key: str | None = None, allow_pickle: bool = False,
             dtype: str = "float32") -> TorchPolicy:
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not supported; expected one of {sorted(DTYPES)}")
        model_dir = Path(model_dir)
        # A wrong unnorm_key is reported before spending minutes loading a 7B model.
        ActionDecoder.from_config(OpenVLAConfig.load(model_dir)).select_key(unnorm_key)
        model = OpenVLA.from_pretrained(model_dir, allow_pickle=allow_pickle, dtype=DTYPES[dtype])
        return cls(model, ImageProcessor.from_pretrained(model_dir), PromptTokenizer.from_pretrained(model_dir),
                   unnorm_key=unnorm_key, model_name=model_dir.resolve().name)

    @torch.inference_mode()
    def generate(self, pixel_values: np.ndarray, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], dict]:
        """Greedy action tokens (argmax over every logit, padded vocab included) and stage timings (ms)."""
        lm = self.model.language_model
        dtype = next(self.model.parameters()).dtype
        t0 = time.perf_counter()
        patches = self.model.projector(self.model.vision_backbone(torch.from_numpy(pixel_values).to(dtype)))
        t1 = time.perf_counter()
        embeds = self.model.splice_patches(patches, torch.tensor([prompt_ids], dtype=torch.long))
        out = lm(inputs_embeds=embeds, use_cache=True)
        tokens = [int(out.logits[0, -1].argmax())]
        t2 = time.perf_counter()
        cache = out.past_key_values
        while len(tokens) < max_new_tokens:
            # Positions continue after the multimodal prefix; transformers derives them from the cache.
            out = lm(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            tokens.append(int(out.logits[0, -1].argmax()))
        t3 = time.perf_counter()
        return tokens, {"vision": (t1 - t0) * 1e3, "prefill": (t2 - t1) * 1e3, "decode": (t3 - t2) * 1e3}

    def check_instruction(self, instruction: str) -> None:
        """The text checks only: the reference model has no static prompt budget."""
        self.prompts.encode(instruction)

    def predict(self, image: np.ndarray, instruction: str) -> Prediction:
        t0 = time.perf_counter()
        pixel_values = self.images.preprocess(image)
        prompt_ids = self.prompts.encode(instruction)
        t1 = time.perf_counter()
        tokens, stages = self.generate(pixel_values, prompt_ids, self.action_dim)
        action, normalized = self.actions.decode(tokens, self.unnorm_key)
        t2 = time.perf_counter()
        return Prediction(
            action=action,
            normalized_action=normalized,
            action_token_ids=tokens,
            prompt_ids=prompt_ids,
            unnorm_key=self.unnorm_key,
            timings_ms={"preprocess": (t1 - t0) * 1e3, **stages, "total": (t2 - t0) * 1e3},
        )

    def close(self) -> None:
        """Nothing to release: the weights go with the object."""
