"""OpenVLA-OFT without torch: checkpoint detection, the chunk layout, proprio and action (un)normalization.

An OFT checkpoint is an OpenVLA Hugging Face folder plus `action_head--<step>_checkpoint.pt`
(and, when trained with proprio, `proprio_projector--<step>_checkpoint.pt`) beside it. One
forward pass reads the prompt (ending with the 29871 space token), `chunk x action_dim`
placeholder tokens (id 1, embeddings zeroed) and a stop token (id 2) with bidirectional attention;
an L1-regression head maps the action positions' last hidden states to a chunk of normalized
actions. Everything here is shared by the torch reference and the torch-free runtimes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from openvla_ros.processing import ImageProcessor, PromptTokenizer

ACTION_HEAD = "action_head"
PROPRIO_PROJECTOR = "proprio_projector"
# Components of OFT variants this project does not run: FiLM (ALOHA) ships a LoRA-merged vision
# backbone with FiLM layers, diffusion heads ship a noisy-action projector.
UNSUPPORTED_COMPONENTS = {
    "vision_backbone": "a FiLM checkpoint (language-modulated vision backbone, OFT+ ALOHA); FiLM is not supported",
    "noisy_action_projector": "a diffusion-head checkpoint; only the L1-regression head is supported",
}
COMPONENT_FILE = re.compile(r"^(?P<component>[a-z_]+)--(?P<step>\d+)_checkpoint\.pt$")
PLACEHOLDER_TOKEN_ID = 1
STOP_TOKEN_ID = 2
NORMALIZATIONS = ("bounds_q99", "bounds")
# The official constants per robot platform (prismatic/vla/constants.py), chosen there from the
# command line; here from the platform named in the norm-stats key. Only the chunk length and the
# normalization type are needed: action and proprio dims come from the weights.
PLATFORMS: dict[str, tuple[int, str]] = {"libero": (8, "bounds_q99"), "aloha": (25, "bounds"),
                                         "bridge": (5, "bounds_q99")}
# OFT's normalization adds this to the range (both for proprio and for actions).
RANGE_EPS = 1e-8


@dataclass(frozen=True)
class OFTFiles:
    """The OFT component files found beside a Hugging Face checkpoint."""

    action_head: Path
    proprio_projector: Path | None


def find_oft_files(checkpoint_dir: str | Path) -> OFTFiles | None:
    """The OFT components in `checkpoint_dir`, or None for a plain OpenVLA checkpoint.

    ValueError for a FiLM or diffusion checkpoint, or for more than one file of a component.
    """
    root = Path(checkpoint_dir)
    found: dict[str, list[Path]] = {}
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        match = COMPONENT_FILE.match(path.name)
        if match:
            found.setdefault(match.group("component"), []).append(path)
    for component, why in UNSUPPORTED_COMPONENTS.items():
        if component in found:
            raise ValueError(f"{root} holds {found[component][0].name}: {why}")
    for component, paths in found.items():
        if len(paths) > 1:
            raise ValueError(f"{root} holds {len(paths)} {component} checkpoints "
                             f"({', '.join(p.name for p in paths)}); expected exactly one")
    if ACTION_HEAD not in found:
        if PROPRIO_PROJECTOR in found:
            raise ValueError(f"{root} holds {found[PROPRIO_PROJECTOR][0].name} but no "
                             f"{ACTION_HEAD}--<step>_checkpoint.pt; an OFT checkpoint needs its action head")
        return None
    projector = found.get(PROPRIO_PROJECTOR)
    return OFTFiles(found[ACTION_HEAD][0], projector[0] if projector else None)


def platform_defaults(unnorm_key: str) -> tuple[int | None, str]:
    """(chunk, normalization) of the robot platform named in `unnorm_key`; chunk None when unknown."""
    key = unnorm_key.lower()
    for platform, (chunk, normalization) in PLATFORMS.items():
        if platform in key:
            return chunk, normalization
    return None, "bounds_q99"


@dataclass(frozen=True)
class ChunkLayout:
    """What one OFT forward pass is shaped by: the constants of the checkpoint and the inputs chosen."""

    chunk: int  # actions per forward pass
    action_dim: int
    proprio_dim: int  # 0 when the model takes no proprio
    num_images: int
    normalization: str = "bounds_q99"

    def __post_init__(self) -> None:
        if self.chunk < 1 or self.action_dim < 1 or self.num_images < 1 or self.proprio_dim < 0:
            raise ValueError(f"invalid OFT layout {self}: chunk, action_dim and num_images must be >= 1")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"OFT normalization {self.normalization!r}; expected one of {NORMALIZATIONS}")

    @property
    def num_action_tokens(self) -> int:
        return self.chunk * self.action_dim

    @property
    def uses_proprio(self) -> bool:
        return self.proprio_dim > 0

    def to_json(self) -> dict[str, Any]:
        return {"chunk": self.chunk, "action_dim": self.action_dim, "proprio_dim": self.proprio_dim,
                "num_images": self.num_images, "normalization": self.normalization}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChunkLayout:
        return cls(chunk=int(data["chunk"]), action_dim=int(data["action_dim"]),
                   proprio_dim=int(data["proprio_dim"]), num_images=int(data["num_images"]),
                   normalization=str(data.get("normalization", "bounds_q99")))


def resolve_chunk(chunk: int | None, unnorm_key: str) -> tuple[int, str]:
    """The chunk length (given, or the platform's) and the normalization type for `unnorm_key`."""
    default_chunk, normalization = platform_defaults(unnorm_key)
    chunk = chunk if chunk is not None else default_chunk
    if chunk is None:
        raise ValueError(f"the chunk length is not in an OFT checkpoint's weights and norm stats {unnorm_key!r} "
                         f"name none of the platforms {sorted(PLATFORMS)}; pass chunk (--chunk)")
    if chunk < 1:
        raise ValueError(f"chunk is {chunk}; expected >= 1")
    return int(chunk), normalization


def oft_input_ids(prompt_ids: Sequence[int], layout: ChunkLayout, space_token_id: int) -> list[int]:
    """Prompt ids (ending with the space token, as OFT's predict_action makes sure), placeholders, stop."""
    ids = [int(t) for t in prompt_ids]
    if not ids or ids[-1] != space_token_id:
        ids.append(space_token_id)
    return ids + [PLACEHOLDER_TOKEN_ID] * layout.num_action_tokens + [STOP_TOKEN_ID]


def _bounds(stats: dict[str, Any], normalization: str, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    low_key, high_key = ("q01", "q99") if normalization == "bounds_q99" else ("min", "max")
    if low_key not in stats or high_key not in stats:
        raise ValueError(f"{what} norm stats lack {low_key}/{high_key} ({normalization} normalization)")
    low = np.asarray(stats[low_key], dtype=np.float64)
    high = np.asarray(stats[high_key], dtype=np.float64)
    mask = np.asarray(stats.get("mask", np.ones_like(low, dtype=bool)), dtype=bool)
    if low.ndim != 1 or low.shape != high.shape or low.shape != mask.shape:
        raise ValueError(f"{what} norm stats: {low_key} {low.shape}, {high_key} {high.shape} and mask "
                         f"{mask.shape} must be 1-D of the same length")
    return low, high, mask


@dataclass(frozen=True)
class ChunkNormalizer:
    """One norm-stats entry's proprio normalization and action unnormalization (float64, as OFT's numpy)."""

    unnorm_key: str
    layout: ChunkLayout
    action_bounds: tuple[np.ndarray, np.ndarray, np.ndarray]
    proprio_bounds: tuple[np.ndarray, np.ndarray, np.ndarray] | None

    @classmethod
    def from_norm_stats(cls, norm_stats: dict[str, Any], unnorm_key: str, layout: ChunkLayout) -> ChunkNormalizer:
        if unnorm_key not in norm_stats:
            raise ValueError(f"unnorm_key {unnorm_key!r} is not in the checkpoint's norm stats; "
                             f"available keys: {sorted(norm_stats)}")
        entry = norm_stats[unnorm_key]

        def bounds(part: str, dim: int, consumer: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            if part not in entry:
                raise ValueError(f"norm stats {unnorm_key!r} have no {part!r} entry, which {consumer} needs")
            found = _bounds(entry[part], layout.normalization, f"{unnorm_key!r} {part}")
            if found[0].shape[0] != dim:
                raise ValueError(f"norm stats {unnorm_key!r} have {found[0].shape[0]} {part} dims; "
                                 f"{consumer} has {dim}")
            return found

        action = bounds("action", layout.action_dim, "the action head")
        proprio = bounds("proprio", layout.proprio_dim, "the proprio projector") if layout.uses_proprio else None
        return cls(unnorm_key, layout, action, proprio)

    def normalize_proprio(self, state: Sequence[float] | np.ndarray) -> np.ndarray:
        """Robot state -> float64 [proprio_dim] in [-1, 1]; ValueError for a wrong length or non-finite values."""
        if self.proprio_bounds is None:
            raise ValueError("this model takes no proprio state")
        values = np.asarray(state, dtype=np.float64)
        low, high, mask = self.proprio_bounds
        if values.shape != low.shape:
            raise ValueError(f"state has shape {values.shape}; expected {low.shape[0]} values "
                             f"(the proprio layout the model was trained on)")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"state has non-finite values: {values.tolist()}")
        scaled = 2.0 * (values - low) / (high - low + RANGE_EPS) - 1.0
        return np.clip(np.where(mask, scaled, values), -1.0, 1.0)

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        """Normalized actions [chunk, action_dim] -> float64 actions; masked-out dims pass through."""
        low, high, mask = self.action_bounds
        normalized = np.asarray(normalized)
        return np.where(mask, 0.5 * (normalized + 1.0) * (high - low + RANGE_EPS) + low, normalized)


@dataclass(frozen=True)
class ChunkPrediction:
    """One OFT forward pass: a chunk of unnormalized actions."""

    actions: np.ndarray  # float64 [chunk, action_dim]
    normalized_actions: np.ndarray  # [chunk, action_dim], as the head produced them
    prompt_ids: list[int]  # the prompt ids, ending with the space token (before placeholders and stop)
    normalized_proprio: np.ndarray | None
    unnorm_key: str
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def action(self) -> np.ndarray:
        """The chunk's first action."""
        return self.actions[0]

    def to_json(self) -> dict:
        return {
            "actions": self.actions.tolist(),
            "normalized_actions": np.asarray(self.normalized_actions, dtype=np.float64).tolist(),
            "prompt_ids": [int(t) for t in self.prompt_ids],
            "normalized_proprio": None if self.normalized_proprio is None else self.normalized_proprio.tolist(),
            "unnorm_key": self.unnorm_key,
            "timings_ms": {k: float(v) for k, v in self.timings_ms.items()},
        }


@dataclass(frozen=True)
class PreparedInputs:
    pixel_values: list[np.ndarray]  # per image: float32 [1, 3 * backbones, H, W]
    prompt_ids: list[int]  # BOS ... space token
    proprio: np.ndarray | None  # float64 [proprio_dim] in [-1, 1]


class ChunkInputs:
    """Images + instruction + robot state -> OFT model inputs, the same for every backend."""

    def __init__(self, images: ImageProcessor, prompts: PromptTokenizer, normalizer: ChunkNormalizer) -> None:
        self.images = images
        self.prompts = prompts
        self.normalizer = normalizer
        self.layout = normalizer.layout

    @classmethod
    def from_directory(cls, directory: str | Path, normalizer: ChunkNormalizer) -> ChunkInputs:
        """From the processor files of a checkpoint or an export directory."""
        return cls(ImageProcessor.from_pretrained(directory), PromptTokenizer.from_pretrained(directory), normalizer)

    def prepare(self, images: Sequence[np.ndarray], instruction: str,
                state: Sequence[float] | np.ndarray | None) -> PreparedInputs:
        """`images`: uint8 HxWx3 RGB, the third-person image first; ValueError on bad input."""
        if len(images) != self.layout.num_images:
            raise ValueError(f"got {len(images)} images; this OFT model takes {self.layout.num_images} "
                             "(the third-person image first, then the wrist image(s))")
        pixel_values = [self.images.preprocess(image) for image in images]
        prompt_ids = self.prompts.encode(instruction)  # ends with the space token, as OFT's prompts do
        if self.layout.uses_proprio:
            if state is None:
                raise ValueError(f"this OFT model takes the robot state ({self.layout.proprio_dim} values)")
            proprio = self.normalizer.normalize_proprio(state)
        elif state is not None:
            raise ValueError("this OFT model takes no robot state (it has no proprio projector)")
        else:
            proprio = None
        return PreparedInputs(pixel_values, prompt_ids, proprio)

    def prediction(self, prepared: PreparedInputs, normalized: np.ndarray,
                   timings_ms: dict[str, float]) -> ChunkPrediction:
        """The chunk for `normalized` actions [chunk, action_dim], unnormalized."""
        return ChunkPrediction(
            actions=np.asarray(self.normalizer.unnormalize(normalized), dtype=np.float64),
            normalized_actions=normalized,
            prompt_ids=list(prepared.prompt_ids),
            normalized_proprio=prepared.proprio,
            unnorm_key=self.normalizer.unnorm_key,
            timings_ms=timings_ms,
        )


@dataclass(frozen=True)
class PassLayout:
    """The static sequence of an exported OFT pass: [BOS, image patches, proprio, text padded to
    `max_text_tokens`, placeholders, stop]. Text padding sits in the middle, masked out as keys, and
    the positions of the real tokens run on without gaps, so the placeholders and the stop token
    have fixed slots while the pass computes what the unpadded sequence gives."""

    patches_per_image: int
    chunk_layout: ChunkLayout
    max_text_tokens: int  # text tokens after BOS, the trailing space token included

    @property
    def patch_tokens(self) -> int:
        return self.patches_per_image * self.chunk_layout.num_images + int(self.chunk_layout.uses_proprio)

    @property
    def text_start(self) -> int:
        return 1 + self.patch_tokens

    @property
    def placeholder_start(self) -> int:
        return self.text_start + self.max_text_tokens

    @property
    def length(self) -> int:
        return self.placeholder_start + self.chunk_layout.num_action_tokens + 1


@dataclass(frozen=True)
class PassInputs:
    input_ids: np.ndarray  # int64 [1, 1 + max_text_tokens]: BOS + prompt text, right-padded
    attention_mask: np.ndarray  # int64 [1, L]
    position_ids: np.ndarray  # int64 [1, L]


def layout_pass(prompt_ids: Sequence[int], layout: PassLayout, pad_token_id: int) -> PassInputs:
    """Place `prompt_ids` (BOS first, ending with the space token) in the static pass layout."""
    ids = [int(t) for t in prompt_ids]
    text = len(ids) - 1
    if text < 1:
        raise ValueError("prompt_ids needs BOS and at least one text token")
    if text > layout.max_text_tokens:
        raise ValueError(f"prompt has {text} text tokens after BOS but this export holds at most "
                         f"{layout.max_text_tokens}; shorten the instruction or re-export with "
                         f"--max-text-tokens {text}")
    input_ids = np.full((1, 1 + layout.max_text_tokens), pad_token_id, dtype=np.int64)
    input_ids[0, :len(ids)] = ids
    real = np.ones(layout.length, dtype=bool)
    real[layout.text_start + text:layout.placeholder_start] = False
    positions = np.zeros(layout.length, dtype=np.int64)
    positions[real] = np.arange(int(real.sum()))
    return PassInputs(input_ids, real.astype(np.int64)[None], positions[None])
