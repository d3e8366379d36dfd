"""`TorchOFTPolicy`: the OFT reference backend, images + instruction + robot state -> one action chunk."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from openvla_ros.actions import ActionDecoder
from openvla_ros.checkpoint import OpenVLAConfig
from openvla_ros.model.oft import OpenVLAOFT
from openvla_ros.model.torch_policy import DTYPES
from openvla_ros.oft import (
    ChunkNormalizer,
    ChunkPrediction,
    find_oft_files,
    oft_input_ids,
    resolve_chunk,
    validate_images,
)
from openvla_ros.processing import ImageProcessor, PromptTokenizer

DEFAULT_NUM_IMAGES = 2  # OFT's LIBERO configuration: the third-person image and the wrist image


class TorchOFTPolicy:
    backend = "torch"

    def __init__(self, model: OpenVLAOFT, images: ImageProcessor, prompts: PromptTokenizer,
                 normalizer: ChunkNormalizer, model_name: str) -> None:
        self.model = model.eval()
        self.images = images
        self.prompts = prompts
        self.normalizer = normalizer
        self.layout = model.layout
        self.unnorm_key = normalizer.unnorm_key
        self.action_dim = self.layout.action_dim
        self.model_name = model_name

    @classmethod
    def load(cls, model_dir: str | Path, unnorm_key: str | None = None, allow_pickle: bool = False,
             dtype: str = "float32", num_images: int = DEFAULT_NUM_IMAGES, use_proprio: bool | None = None,
             chunk: int | None = None) -> TorchOFTPolicy:
        """`chunk` None: the chunk length of the platform the norm-stats key names (LIBERO 8, ...)."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not supported; expected one of {sorted(DTYPES)}")
        model_dir = Path(model_dir)
        files = find_oft_files(model_dir)
        if files is None:
            raise ValueError(f"{model_dir} has no action_head--<step>_checkpoint.pt; not an OpenVLA-OFT checkpoint")
        config = OpenVLAConfig.load(model_dir)
        key = ActionDecoder.from_config(config).select_key(unnorm_key)
        chunk, normalization = resolve_chunk(chunk, key)
        model = OpenVLAOFT.from_pretrained(model_dir, files, chunk=chunk, num_images=num_images,
                                           normalization=normalization, use_proprio=use_proprio,
                                           allow_pickle=allow_pickle, dtype=DTYPES[dtype])
        normalizer = ChunkNormalizer.from_norm_stats(config.norm_stats, key, model.layout)
        return cls(model, ImageProcessor.from_pretrained(model_dir), PromptTokenizer.from_pretrained(model_dir),
                   normalizer, model_name=model_dir.resolve().name)

    def prepare(self, images: Sequence[np.ndarray], instruction: str,
                state: Sequence[float] | None) -> tuple[np.ndarray, list[int], np.ndarray | None]:
        """Model inputs: pixel values [1, C * num_images, H, W] float32, prompt ids, normalized proprio."""
        validate_images(images, self.layout)
        pixel_values = np.concatenate([self.images.preprocess(image) for image in images], axis=1)
        prompt_ids = self.prompts.encode(instruction)
        if self.layout.uses_proprio:
            if state is None:
                raise ValueError(f"this OFT model takes the robot state ({self.layout.proprio_dim} values)")
            proprio = self.normalizer.normalize_proprio(state)
        elif state is not None:
            raise ValueError("this OFT model takes no robot state (it has no proprio projector)")
        else:
            proprio = None
        return pixel_values, prompt_ids, proprio

    @torch.inference_mode()
    def predict_chunk(self, images: Sequence[np.ndarray], instruction: str,
                      state: Sequence[float] | None = None) -> ChunkPrediction:
        """`images`: uint8 HxWx3 RGB, the third-person image first; `state`: the raw robot state."""
        t0 = time.perf_counter()
        pixel_values, prompt_ids, proprio = self.prepare(images, instruction, state)
        input_ids = oft_input_ids(prompt_ids, self.layout, self.prompts.space_token_id)
        dtype = next(self.model.parameters()).dtype
        t1 = time.perf_counter()
        normalized = self.model(
            torch.from_numpy(pixel_values).to(dtype),
            torch.tensor([input_ids], dtype=torch.long),
            None if proprio is None else torch.from_numpy(proprio)[None].to(dtype),
        )[0].float().numpy()
        t2 = time.perf_counter()
        actions = self.normalizer.unnormalize(normalized)
        t3 = time.perf_counter()
        return ChunkPrediction(
            actions=np.asarray(actions, dtype=np.float64),
            normalized_actions=normalized,
            prompt_ids=list(prompt_ids),
            normalized_proprio=proprio,
            unnorm_key=self.unnorm_key,
            timings_ms={"preprocess": (t1 - t0) * 1e3, "forward": (t2 - t1) * 1e3,
                        "postprocess": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3},
        )

    def close(self) -> None:
        """Nothing to release: the weights go with the object."""
