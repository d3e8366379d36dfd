"""Fine-tuning an OpenVLA checkpoint on (frame, instruction) -> action-token targets, the way
OpenVLA fine-tunes: teacher forcing and cross-entropy on the action tokens only.

The training sequence has exactly the inference layout: BOS, the projected image patches, the rest
of the prompt (ending with the 29871 space token), then the target action tokens. Only the
hidden states that predict action tokens go through the LM head (the rest of the sequence would
be masked out of the loss anyway). Deterministic for a seed: seeded init of the data order,
deterministic torch kernels and a fixed thread count.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from openvla_ros.model import OpenVLA


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 250
    batch_size: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    threads: int = 1  # one thread: an oversubscribed OpenMP pool (other work on the cores) is many times slower


@dataclass(frozen=True)
class Example:
    """One training pair: a frame (index into the pixel array), its instruction's prompt and target."""

    frame: int
    instruction: str
    prompt_ids: tuple[int, ...]
    action_ids: tuple[int, ...]


@dataclass
class Batch:
    pixel_values: torch.Tensor  # [B, C, H, W]
    input_ids: torch.Tensor  # [B, T] prompt + action tokens, right-padded
    positions: torch.Tensor  # [B, A] sequence index whose hidden state predicts each action token
    targets: torch.Tensor  # [B, A] action token ids


def make_batch(model: OpenVLA, pixel_values: np.ndarray, examples: Sequence[Example]) -> Batch:
    """Right padding keeps every real token's position and (causally) its context unchanged."""
    num_patches = model.config.vision[0].num_patches
    lengths = [len(e.prompt_ids) + len(e.action_ids) for e in examples]
    input_ids = torch.full((len(examples), max(lengths)), model.config.pad_token_id, dtype=torch.long)
    positions, targets = [], []
    for row, example in enumerate(examples):
        tokens = list(example.prompt_ids) + list(example.action_ids)
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
        # Text token j sits at num_patches + j in the spliced sequence (BOS at 0, patches 1..P);
        # action k is text token len(prompt) + k and is predicted from the position before it.
        first = num_patches + len(example.prompt_ids) - 1
        positions.append(list(range(first, first + len(example.action_ids))))
        targets.append(list(example.action_ids))
    frames = torch.from_numpy(np.stack([pixel_values[e.frame] for e in examples]))
    return Batch(frames, input_ids, torch.tensor(positions), torch.tensor(targets))


def action_logits(model: OpenVLA, batch: Batch) -> torch.Tensor:
    """[B, A, V] logits of the positions that predict the action tokens."""
    embeds = model.multimodal_embeddings(batch.pixel_values, batch.input_ids)
    hidden = model.language_model.model(inputs_embeds=embeds).last_hidden_state
    picked = torch.gather(hidden, 1, batch.positions[..., None].expand(-1, -1, hidden.shape[-1]))
    return model.language_model.lm_head(picked)


def action_loss(model: OpenVLA, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy over the action tokens, [B, A] bool: argmax == target)."""
    logits = action_logits(model, batch)
    loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten())
    return loss, logits.argmax(-1) == batch.targets


@dataclass
class TrainResult:
    losses: list[float]
    seconds: float


def configure_determinism(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def train(
    model: OpenVLA,
    pixel_values: np.ndarray,
    examples: Sequence[Example],
    config: TrainConfig,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Full fine-tuning with AdamW; batches walk seeded permutations of `examples`."""
    if not examples:
        raise ValueError("no training examples")
    if config.steps < 1 or config.batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {config.steps} and {config.batch_size}")
    configure_determinism(config.seed, config.threads)
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    model.train()
    order: list[int] = []
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(config.steps):
        if len(order) < config.batch_size:
            order.extend(rng.permutation(len(examples)).tolist())
        chosen, order = order[: config.batch_size], order[config.batch_size:]
        loss, _ = action_loss(model, make_batch(model, pixel_values, [examples[i] for i in chosen]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if progress and (step % 25 == 0 or step == config.steps - 1):
            progress(f"[train] step {step + 1}/{config.steps} loss {losses[-1]:.4f} "
                     f"({time.perf_counter() - started:.0f} s)")
    model.eval()
    return TrainResult(losses, time.perf_counter() - started)


@torch.no_grad()
def exact_match(model: OpenVLA, pixel_values: np.ndarray, examples: Sequence[Example],
                batch_size: int = 32) -> dict[str, float]:
    """Per-instruction fraction of examples whose every action token is the argmax.

    All tokens right under teacher forcing is the same event as greedy decoding producing exactly
    the target, since each greedy step then sees the target prefix.
    """
    model.eval()
    hits: dict[str, list[bool]] = {}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        _, correct = action_loss(model, make_batch(model, pixel_values, chunk))
        for example, row in zip(chunk, correct.all(-1).tolist()):
            hits.setdefault(example.instruction, []).append(bool(row))
    return {instruction: sum(values) / len(values) for instruction, values in hits.items()}
