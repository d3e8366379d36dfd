"""OpenVLA input processing without torch: images -> pixel_values, instructions -> prompt token ids.

`ImageProcessor` reproduces the official `PrismaticImageProcessor` (`resize-naive`) bit for bit:
per backbone a Pillow resize (torchvision's `resize` on a PIL image is exactly that), a center
crop, uint8 -> float32 / 255 and `(x - mean) / std` in float32; the backbones' results are stacked
on channels. `PromptTokenizer` builds the official prompt and tokenizes it with the checkpoint's
fast tokenizer. Both load from a directory holding only the processor files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from openvla_ros.input_checks import ImageRejected, check_instruction_text

PREPROCESSOR_CONFIG = "preprocessor_config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"
# A LIBERO task's language: what bench, bench-node and verify ask for when given no instruction.
DEFAULT_INSTRUCTION = "pick up the black bowl and place it on the plate"
# SentencePiece's word-start marker; official predict_action ends every prompt with this token.
SPACE_TOKEN = "\u2581"


def validate_image(image: np.ndarray) -> None:
    """Raise ImageRejected (a ValueError) unless `image` is a non-empty uint8 HxWx3 RGB array."""
    if not isinstance(image, np.ndarray):
        raise ImageRejected(f"image must be a numpy array (uint8 HxWx3 RGB), got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageRejected(f"image dtype is {image.dtype}; expected uint8 HxWx3 RGB")
    if image.ndim != 3:
        raise ImageRejected(f"image has shape {image.shape} ({image.ndim}-D); expected 3-D uint8 HxWx3 RGB")
    if image.shape[2] != 3:
        raise ImageRejected(f"image has {image.shape[2]} channels (shape {image.shape}); expected 3 (RGB)")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageRejected(f"image is empty (shape {image.shape}); expected H, W >= 1")


def validate_instruction(instruction: str) -> str:
    """Raise InstructionRejected (a ValueError) unless `instruction` is visible text without control
    characters; returns it unchanged."""
    return check_instruction_text(instruction)


def center_crop(image: np.ndarray, area_scale: float) -> np.ndarray:
    """Crop the centred region holding `area_scale` of the area and resize it back to HxW.

    This is the test-time crop of OpenVLA's LIBERO evaluation (models trained with random crops,
    e.g. area 0.9), with its numerics: the image as float32 in [0, 1] (uint8 / 255), the box
    `[o, o, o + s, o + s]` with `s = sqrt(area_scale)` and `o = (1 - s) / 2` in normalized
    coordinates, bilinear sampling as `tf.image.crop_and_resize` does it (corner-aligned: output
    row i samples input row `y1 (H - 1) + i (y2 - y1) (H - 1) / (h - 1)`), all in float32, then
    back to uint8 as `tf.image.convert_image_dtype(..., saturate=True)` does (`x * 255.5`,
    clipped, truncated). The official evaluation feeds 224x224 images and crops back to 224x224;
    other sizes are cropped back to their own size. The model's processor then resizes as usual.
    """
    validate_image(image)
    if not 0.0 < area_scale <= 1.0:
        raise ValueError(f"center crop area_scale is {area_scale}; expected 0 < area_scale <= 1")
    if area_scale == 1.0:
        return image
    side = np.sqrt(np.float32(area_scale))
    offset = (np.float32(1.0) - side) / np.float32(2.0)
    pixels = image.astype(np.float32) * np.float32(1.0 / 255.0)
    rows = _crop_sample_points(offset, offset + side, image.shape[0])
    cols = _crop_sample_points(offset, offset + side, image.shape[1])
    top, bottom, row_lerp = _bilinear_neighbours(rows)
    left, right, col_lerp = _bilinear_neighbours(cols)
    col_lerp = col_lerp[None, :, None]
    upper = pixels[top][:, left] + (pixels[top][:, right] - pixels[top][:, left]) * col_lerp
    lower = pixels[bottom][:, left] + (pixels[bottom][:, right] - pixels[bottom][:, left]) * col_lerp
    sampled = upper + (lower - upper) * row_lerp[:, None, None]
    scaled = np.clip(sampled, np.float32(0.0), np.float32(1.0)) * np.float32(255.5)
    return np.clip(scaled, 0.0, 255.0).astype(np.uint8)


def _crop_sample_points(start: np.float32, end: np.float32, size: int) -> np.ndarray:
    """Input coordinates (float32) of the `size` output samples between normalized start and end."""
    last = np.float32(size - 1)
    if size == 1:
        return np.array([np.float32(0.5) * (start + end) * last], np.float32)
    step = (end - start) * last / last  # (y2 - y1) (H - 1) / (h - 1) with h = H
    return (start * last + np.arange(size, dtype=np.float32) * step).astype(np.float32)


def _bilinear_neighbours(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    low = np.floor(points)
    return low.astype(np.int64), np.ceil(points).astype(np.int64), (points - low).astype(np.float32)


@dataclass(frozen=True)
class BackboneTransform:
    """The official per-backbone transform: resize, center crop, to float, normalize."""

    resize_hw: tuple[int, int]
    resample: int  # PIL resampling filter (torchvision's interpolation code is the same number)
    crop_hw: tuple[int, int]
    mean: np.ndarray  # float32 [3]
    std: np.ndarray  # float32 [3]

    def resize(self, image: Image.Image) -> np.ndarray:
        """uint8 HxWx3 pixels resized to `resize_hw` with the backbone's filter."""
        return np.asarray(image.resize((self.resize_hw[1], self.resize_hw[0]), resample=self.resample))

    def crop_and_normalize(self, pixels: np.ndarray) -> np.ndarray:
        """Resized uint8 HxWx3 pixels -> float32 [3, crop_h, crop_w]."""
        height, width = pixels.shape[:2]
        crop_h, crop_w = self.crop_hw
        if crop_h > height or crop_w > width:
            raise ValueError(f"crop {self.crop_hw} is larger than the resized image {(height, width)}")
        # torchvision's center_crop rounds the offsets this way.
        top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
        pixels = pixels[top:top + crop_h, left:left + crop_w]
        lut = self.normalized_values
        return np.stack([lut[channel].take(pixels[:, :, channel]) for channel in range(3)])

    @cached_property
    def normalized_values(self) -> np.ndarray:
        """float32 [3, 256]: ToTensor + Normalize of every uint8 value per channel, computed with the
        same float32 operations (so a table lookup gives bit-identical pixel values, ~10x faster)."""
        values = np.arange(256, dtype=np.float32)[None, :] / np.float32(255.0)
        return (values - self.mean[:, None]) / self.std[:, None]


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    values = [int(s) for s in size]
    return (values[0], values[0]) if len(values) == 1 else (values[-2], values[-1])


class ImageProcessor:
    """uint8 HxWx3 RGB image -> float32 pixel_values [1, 3 * n_backbones, H, W]."""

    def __init__(self, transforms: list[BackboneTransform]) -> None:
        if not transforms:
            raise ValueError("an image processor needs at least one backbone transform")
        self.transforms = transforms

    @classmethod
    def from_config(cls, config: dict) -> ImageProcessor:
        strategy = config.get("image_resize_strategy", "resize-naive")
        if strategy != "resize-naive" or config.get("tvf_do_letterbox"):
            raise ValueError(f"image_resize_strategy {strategy!r} is not supported; expected 'resize-naive'")
        if "tvf_resize_params" in config:
            resizes = config["tvf_resize_params"]
            crops = config.get("tvf_crop_params") or [{"output_size": r["size"]} for r in resizes]
            normalizes = config["tvf_normalize_params"]
            transforms = [
                BackboneTransform(
                    resize_hw=_pair(r["size"]),
                    resample=int(r.get("interpolation", Image.Resampling.BICUBIC)),
                    crop_hw=_pair(c["output_size"]),
                    mean=np.asarray(n["mean"], dtype=np.float32),
                    std=np.asarray(n["std"], dtype=np.float32),
                )
                for r, c, n in zip(resizes, crops, normalizes, strict=True)
            ]
        elif "input_sizes" in config:
            interpolations = config.get("interpolations") or ["bicubic"] * len(config["input_sizes"])
            transforms = [
                BackboneTransform(
                    resize_hw=_pair(size), resample=_resample_from_name(interp), crop_hw=_pair(size),
                    mean=np.asarray(mean, dtype=np.float32), std=np.asarray(std, dtype=np.float32),
                )
                for size, interp, mean, std in zip(config["input_sizes"], interpolations, config["means"],
                                                   config["stds"], strict=True)
            ]
        else:
            raise ValueError("preprocessor config has neither tvf_resize_params nor input_sizes")
        return cls(transforms)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ImageProcessor:
        path = Path(directory) / PREPROCESSOR_CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"no {PREPROCESSOR_CONFIG} in {directory}")
        with open(path, encoding="utf-8") as f:
            return cls.from_config(json.load(f))

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.transforms[0].crop_hw

    @property
    def channels(self) -> int:
        return 3 * len(self.transforms)

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        validate_image(image)
        pil = Image.fromarray(np.ascontiguousarray(image), mode="RGB")
        # Fused backbones (DINOv2 + SigLIP) usually resize alike: resize once per distinct filter
        # and size (3.7 ms per bicubic resize of a 640x480 frame here), then crop and normalize each.
        resized: dict[tuple[tuple[int, int], int], np.ndarray] = {}
        planes = []
        for transform in self.transforms:
            key = (transform.resize_hw, transform.resample)
            if key not in resized:
                resized[key] = transform.resize(pil)
            planes.append(transform.crop_and_normalize(resized[key]))
        return np.concatenate(planes, axis=0)[None]


def _resample_from_name(name: str) -> int:
    filters = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
               "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
    if name not in filters:
        raise ValueError(f"unsupported interpolation {name!r}; expected one of {sorted(filters)}")
    return int(filters[name])


def build_prompt(instruction: str) -> str:
    """The OpenVLA prompt for an instruction (lower-cased, as the official policy does)."""
    validate_instruction(instruction)
    return PROMPT_TEMPLATE.format(instruction=instruction.lower())


class PromptTokenizer:
    """Instruction -> prompt token ids, exactly as the official processor + predict_action produce them."""

    def __init__(self, tokenizer, bos_token_id: int | None, eos_token_id: int | None, space_token_id: int) -> None:
        self.tokenizer = tokenizer
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.space_token_id = space_token_id

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> PromptTokenizer:
        from tokenizers import Tokenizer

        directory = Path(directory)
        if not (directory / TOKENIZER_FILE).is_file():
            raise FileNotFoundError(f"no {TOKENIZER_FILE} in {directory}; a fast tokenizer file is required")
        tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        settings: dict = {}
        if (directory / TOKENIZER_CONFIG).is_file():
            with open(directory / TOKENIZER_CONFIG, encoding="utf-8") as f:
                settings = json.load(f)
        # Like transformers' LlamaTokenizerFast, BOS/EOS come from tokenizer_config, not from
        # whatever post-processor tokenizer.json happened to be saved with.
        bos = _token_id(tokenizer, settings.get("bos_token", "<s>")) if settings.get("add_bos_token", True) else None
        eos = _token_id(tokenizer, settings.get("eos_token", "</s>")) if settings.get("add_eos_token", False) else None
        space = tokenizer.token_to_id(SPACE_TOKEN)
        if space is None:
            raise ValueError(f"{directory / TOKENIZER_FILE} has no {SPACE_TOKEN!r} token, "
                             "which OpenVLA prompts end with")
        return cls(tokenizer, bos, eos, space)

    def encode(self, instruction: str) -> list[int]:
        ids = self.tokenizer.encode(build_prompt(instruction), add_special_tokens=False).ids
        ids = ([self.bos_token_id] if self.bos_token_id is not None else []) + list(ids)
        if self.eos_token_id is not None:
            ids.append(self.eos_token_id)
        if ids[-1] != self.space_token_id:
            ids.append(self.space_token_id)
        return ids


def _token_id(tokenizer, token) -> int:
    content = token["content"] if isinstance(token, dict) else str(token)
    token_id = tokenizer.token_to_id(content)
    if token_id is None:
        raise ValueError(f"special token {content!r} from tokenizer_config.json is not in the vocabulary")
    return token_id
