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
from openvla_ros.oft import ChunkInputs, ChunkNormalizer, ChunkPrediction, find_oft_files, oft_input_ids, resolve_chunk

DEFAULT_NUM_IMAGES = 2  # OFT's LIBERO configuration: the third-person image and the wrist image


class TorchOFTPolicy:
    backend = "torch"

    def __init__(self, model: OpenVLAOFT, inputs: ChunkInputs, model_name: str) -> None:
        self.model = model.eval()
        self.inputs = inputs
        self.layout = model.layout
        self.unnorm_key = inputs.normalizer.unnorm_key
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
        return cls(model, ChunkInputs.from_directory(model_dir, normalizer), model_name=model_dir.resolve().name)

    def check_instruction(self, instruction: str) -> None:
        """The text checks only: the reference model has no static prompt budget."""
        self.inputs.prompts.encode(instruction)

    @torch.inference_mode()
    def predict_chunk(self, images: Sequence[np.ndarray], instruction: str,
                      state: Sequence[float] | None = None) -> ChunkPrediction:
        """`images`: uint8 HxWx3 RGB, the third-person image first; `state`: the raw robot state."""
        t0 = time.perf_counter()
        prepared = self.inputs.prepare(images, instruction, state)
        input_ids = oft_input_ids(prepared.prompt_ids, self.layout, self.inputs.prompts.space_token_id)
        dtype = next(self.model.parameters()).dtype
        proprio = None if prepared.proprio is None else torch.from_numpy(prepared.proprio)[None].to(dtype)
        t1 = time.perf_counter()
        normalized = self.model(torch.from_numpy(np.concatenate(prepared.pixel_values, axis=1)).to(dtype),
                                torch.tensor([input_ids], dtype=torch.long), proprio)[0].float().numpy()
        t2 = time.perf_counter()
        prediction = self.inputs.prediction(prepared, normalized, {})
        t3 = time.perf_counter()
        prediction.timings_ms.update(preprocess=(t1 - t0) * 1e3, forward=(t2 - t1) * 1e3,
                                     postprocess=(t3 - t2) * 1e3, total=(t3 - t0) * 1e3)
        return prediction

    def close(self) -> None:
        """Nothing to release: the weights go with the object."""
