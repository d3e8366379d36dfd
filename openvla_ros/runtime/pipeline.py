"""The backend-independent OpenVLA graph pipeline: vision -> projector -> embedding -> prefill ->
greedy decode, over any `GraphRuntime`.

Buffer plan (allocated once per pipeline, reused for every action):
- inputs written from the host per action: `pixel_values`, `input_ids` (BOS + text, right-padded
  with the pad id to 1 + max_text_tokens), `attention_mask` (1 on the n real positions of the
  L-long multimodal sequence), `position_ids` (0..L-1), and per decode step `cache_position`
  (8 bytes);
- graph-to-graph tensors never leave the runtime: patch features -> projector -> prefill, token
  embeddings -> prefill;
- two KV cache buffers and two token buffers used ping-pong: prefill writes KV buffer A and token
  buffer A; decode step k reads (token, KV) from one side and writes the other, so each step's
  outputs are the next step's inputs without a copy. Only the next token id (8 bytes) is read
  back per step.

Greedy decoding follows the reference: the first action token is the argmax of the prefill
logits at the last real position n-1; decode step k feeds the previous token at position n+k-1
and takes the argmax (over the full padded vocabulary) as the next token, as many tokens as the
chosen norm stats have action dims (the export's `action_dim` is the largest of them).
Padded prefill slots n..L-1 hold garbage K/V, but the decoder at position p attends only to
slots < p and its own new K/V (which it then writes to slot p), so they are never read.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from openvla_ros.input_checks import check_prompt_fits
from openvla_ros.runtime.manifest import GRAPH_NAMES, Manifest, TensorSpec
from openvla_ros.runtime.session import DeviceBuffer, GraphRuntime, TransferTotals

KV_BUFFERS = ("kv_cache_a", "kv_cache_b")
TOKEN_BUFFERS = ("token_a", "token_b")


@dataclass
class GenerationResult:
    """Action token ids of one action, per-graph wall times and the host<->runtime traffic."""

    token_ids: list[int]
    stage_ms: dict[str, float]
    transfers: TransferTotals  # the whole action
    decode_step_transfers: list[TransferTotals]  # one entry per decoder run
    captured: dict[str, np.ndarray] = field(default_factory=dict)  # graph outputs (capture=True)


@dataclass(frozen=True)
class PromptTensors:
    """Host-side prompt inputs for the static layout."""

    input_ids: np.ndarray  # int64 [1, 1 + max_text_tokens]
    attention_mask: np.ndarray  # int64 [1, L]
    position_ids: np.ndarray  # int64 [1, L]
    num_real: int  # n: real positions in the multimodal sequence


def layout_prompt(prompt_ids: Sequence[int], manifest: Manifest) -> PromptTensors:
    """Pad `prompt_ids` (BOS first) into the manifest's static layout; InstructionRejected (a
    ValueError) if it does not fit."""
    layout = manifest.layout
    ids = [int(t) for t in prompt_ids]
    if not ids:
        raise ValueError("prompt_ids is empty; expected BOS followed by the instruction tokens")
    check_prompt_fits(len(ids) - 1, layout.max_text_tokens)
    input_ids = np.full((1, 1 + layout.max_text_tokens), manifest.pad_token_id, dtype=np.int64)
    input_ids[0, : len(ids)] = ids
    num_real = layout.num_patches + len(ids)
    attention_mask = np.zeros((1, layout.length), dtype=np.int64)
    attention_mask[0, :num_real] = 1
    position_ids = np.arange(layout.length, dtype=np.int64)[None, :]
    return PromptTensors(input_ids, attention_mask, position_ids, num_real)


class GraphPipeline:
    """Runs the five graphs of one export on one `GraphRuntime` (see module docstring)."""

    def __init__(self, runtime: GraphRuntime, manifest: Manifest) -> None:
        self.runtime = runtime
        self.manifest = manifest
        for name in GRAPH_NAMES:
            runtime.load_graph(manifest.graphs[name], manifest.graph_path(name, runtime.graph_suffix))
        g = manifest.graphs
        vision, projector, embedding = g["vision_backbone"], g["projector"], g["embedding"]
        prefill, decoder = g["vla_prefill"], g["vla_decoder"]
        kv = prefill.output("present_kv")
        token = prefill.output("next_token")
        if decoder.input("past_kv") != _renamed(kv, "past_kv") or decoder.input("token") != _renamed(token, "token"):
            raise ValueError("vla_decoder's past_kv/token inputs do not match vla_prefill's outputs")
        alloc = runtime.allocate
        self._buffers: dict[str, DeviceBuffer] = {
            "pixel_values": alloc(vision.input("pixel_values")),
            "patch_features": alloc(vision.output("patch_features")),
            "patch_embeds": alloc(projector.output("patch_embeds")),
            "input_ids": alloc(embedding.input("input_ids")),
            "token_embeds": alloc(embedding.output("token_embeds")),
            "attention_mask": alloc(prefill.input("attention_mask")),
            "position_ids": alloc(prefill.input("position_ids")),
            "prefill_logits": alloc(_renamed(prefill.output("logits"), "prefill_logits")),
            "cache_position": alloc(decoder.input("cache_position")),
            "decoder_logits": alloc(_renamed(decoder.output("logits"), "decoder_logits")),
        }
        self._kv = tuple(alloc(_renamed(kv, name)) for name in KV_BUFFERS)
        self._tokens = tuple(alloc(_renamed(token, name)) for name in TOKEN_BUFFERS)

    def generate(
        self, pixel_values: np.ndarray, prompt_ids: Sequence[int], num_tokens: int, capture: bool = False
    ) -> GenerationResult:
        """Greedy-decode `num_tokens` (the action dim of the chosen norm stats) for one image and
        prompt; `capture` also reads every graph output back (verification only)."""
        capacity = self.manifest.layout.action_dim
        if not 1 <= num_tokens <= capacity:
            raise ValueError(f"num_tokens={num_tokens}; this export decodes 1..{capacity} tokens")
        rt, b = self.runtime, self._buffers
        prompt = layout_prompt(prompt_ids, self.manifest)
        start = rt.transfers.totals()
        stage_ms: dict[str, float] = {}
        captured: dict[str, np.ndarray] = {}

        def timed(graph: str, inputs: dict, outputs: dict) -> None:
            rt.run_timed(graph, inputs, outputs, stage_ms)

        t0 = time.perf_counter()
        rt.write(b["pixel_values"], pixel_values)
        rt.write(b["input_ids"], prompt.input_ids)
        rt.write(b["attention_mask"], prompt.attention_mask)
        rt.write(b["position_ids"], prompt.position_ids)
        stage_ms["upload"] = (time.perf_counter() - t0) * 1e3

        timed("vision_backbone", {"pixel_values": b["pixel_values"]},
              {"patch_features": b["patch_features"]})
        timed("projector", {"patch_features": b["patch_features"]}, {"patch_embeds": b["patch_embeds"]})
        timed("embedding", {"input_ids": b["input_ids"]}, {"token_embeds": b["token_embeds"]})
        timed("vla_prefill",
              {"token_embeds": b["token_embeds"], "patch_embeds": b["patch_embeds"],
               "attention_mask": b["attention_mask"], "position_ids": b["position_ids"]},
              {"logits": b["prefill_logits"], "next_token": self._tokens[0], "present_kv": self._kv[0]})
        if capture:
            for key, buf in (("vision_backbone.patch_features", b["patch_features"]),
                             ("projector.patch_embeds", b["patch_embeds"]),
                             ("embedding.token_embeds", b["token_embeds"]),
                             ("vla_prefill.logits", b["prefill_logits"]),
                             ("vla_prefill.present_kv", self._kv[0])):
                captured[key] = rt.read(buf)

        token_ids = [self._read_token(self._tokens[0])]
        step_transfers: list[TransferTotals] = []
        decoder_logits: list[np.ndarray] = []
        side = 0
        for step in range(num_tokens - 1):
            before = rt.transfers.totals()
            rt.write(b["cache_position"], np.array([prompt.num_real + step], dtype=np.int64))
            timed("vla_decoder",
                  {"token": self._tokens[side], "cache_position": b["cache_position"], "past_kv": self._kv[side]},
                  {"logits": b["decoder_logits"], "next_token": self._tokens[1 - side],
                   "present_kv": self._kv[1 - side]})
            side = 1 - side
            token_ids.append(self._read_token(self._tokens[side]))
            step_transfers.append(rt.transfers.totals().minus(before))
            if capture:
                decoder_logits.append(rt.read(b["decoder_logits"])[0])
        if capture:
            captured["vla_decoder.logits"] = np.stack(decoder_logits) if decoder_logits else np.zeros((0,))
            captured["vla_decoder.present_kv"] = rt.read(self._kv[side])
        return GenerationResult(
            token_ids=token_ids,
            stage_ms=stage_ms,
            transfers=rt.transfers.totals().minus(start),
            decode_step_transfers=step_transfers,
            captured=captured,
        )

    def _read_token(self, buffer: DeviceBuffer) -> int:
        return int(self.runtime.read(buffer).reshape(-1)[0])

    @property
    def kv_buffer_names(self) -> tuple[str, ...]:
        return KV_BUFFERS

    def close(self) -> None:
        self.runtime.close()


def _renamed(spec: TensorSpec, name: str) -> TensorSpec:
    return TensorSpec(name=name, shape=spec.shape, dtype=spec.dtype)
