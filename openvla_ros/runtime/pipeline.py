"""The backend-independent OpenVLA graph pipeline: vision -> projector -> LLM prefill -> greedy
decode, over any `GraphRuntime`. Prefill and decode run the one LLM graph (`vla_llm`) at its two
sequence gears (L and 1), so a device holds one copy of the LLM weights.

Buffer plan (allocated once per pipeline, reused for every action):
- inputs written from the host per action: `pixel_values`, and at the prefill gear `input_ids`
  (BOS, the pad id on the patch positions, the text, pads up to L), `attention_mask` (1 on the n
  real positions of the L-long multimodal sequence) and `position_ids` (0..L-1); per decode step
  `cache_position` (the step's position, 8 bytes). The decode gear's `step_mask` ([[1]]) is
  written once, when the pipeline is built;
- graph-to-graph tensors never leave the runtime: patch features -> projector -> `patch_embeds`,
  bound to every LLM run (the decode gear ignores it);
- two KV cache buffers and two token buffers used ping-pong: prefill reads KV buffer B (whatever
  it holds: the graph reads no slot a call has not written) and writes KV buffer A and token
  buffer A; decode step k reads (token as its `input_ids`, KV) from one side and writes the
  other, so each step's outputs are the next step's inputs without a copy. Only the next token
  id (8 bytes) is read back per step: 16 bytes cross the boundary per decode step.

Greedy decoding follows the reference: the first action token is the argmax of the prefill
logits at the last real position n-1; decode step k feeds the previous token at position n+k
and takes the argmax (over the full padded vocabulary) as the next token, as many tokens as the
chosen norm stats have action dims (the export's `action_dim` is the largest of them).
Padded prefill slots n..L-1 hold garbage K/V, but a decode step at position p reads only slots
< p (written by the prefill's real positions and earlier steps) and its own new K/V.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from openvla_ros.input_checks import check_prompt_fits
from openvla_ros.runtime.manifest import GRAPH_NAMES, Manifest, TensorSpec
from openvla_ros.runtime.session import DeviceBuffer, GraphRuntime, TransferTotals

LLM_GRAPH = "vla_llm"
KV_BUFFERS = ("kv_cache_a", "kv_cache_b")
TOKEN_BUFFERS = ("token_a", "token_b")
# Stage names of the LLM graph's two gears in `stage_ms` and the captured outputs.
PREFILL_STAGE, DECODE_STAGE = f"{LLM_GRAPH}.prefill", f"{LLM_GRAPH}.decode"


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

    input_ids: np.ndarray  # int64 [1, L]: BOS, pad ids on the patch positions, text, pad ids
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
    input_ids = np.full((1, layout.length), manifest.pad_token_id, dtype=np.int64)
    input_ids[0, 0] = ids[0]
    input_ids[0, 1 + layout.num_patches: layout.num_patches + len(ids)] = ids[1:]
    num_real = layout.num_patches + len(ids)
    attention_mask = np.zeros((1, layout.length), dtype=np.int64)
    attention_mask[0, :num_real] = 1
    position_ids = np.arange(layout.length, dtype=np.int64)[None, :]
    return PromptTensors(input_ids, attention_mask, position_ids, num_real)


class GraphPipeline:
    """Runs the graphs of one export on one `GraphRuntime` (see module docstring)."""

    def __init__(self, runtime: GraphRuntime, manifest: Manifest) -> None:
        self.runtime = runtime
        self.manifest = manifest
        for name in GRAPH_NAMES:
            runtime.load_graph(manifest.graphs[name], manifest.graph_path(name, runtime.graph_suffix))
        g = manifest.graphs
        vision, projector, llm = g["vision_backbone"], g["projector"], g[LLM_GRAPH]
        prefill, decode = llm.at_sequence(manifest.layout.length), llm.at_sequence(1)
        kv, token = llm.output("present_kv"), llm.output("next_token")
        if llm.input("past_kv") != _renamed(kv, "past_kv") or decode.input("input_ids") != _renamed(token, "input_ids"):
            raise ValueError(f"{LLM_GRAPH}'s past_kv/input_ids (decode gear) inputs do not match its "
                             f"present_kv/next_token outputs")
        alloc = runtime.allocate
        self._buffers: dict[str, DeviceBuffer] = {
            "pixel_values": alloc(vision.input("pixel_values")),
            "patch_features": alloc(vision.output("patch_features")),
            "patch_embeds": alloc(projector.output("patch_embeds")),
            "input_ids": alloc(prefill.input("input_ids")),
            "attention_mask": alloc(prefill.input("attention_mask")),
            "position_ids": alloc(prefill.input("position_ids")),
            "logits": alloc(llm.output("logits")),
            "step_mask": alloc(_renamed(decode.input("attention_mask"), "step_mask")),
            "cache_position": alloc(_renamed(decode.input("position_ids"), "cache_position")),
        }
        self._kv = tuple(alloc(_renamed(kv, name)) for name in KV_BUFFERS)
        self._tokens = tuple(alloc(_renamed(token, name)) for name in TOKEN_BUFFERS)
        runtime.write(self._buffers["step_mask"], np.ones((1, 1), dtype=np.int64))

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

        def llm(stage: str, token: DeviceBuffer, mask: DeviceBuffer, positions: DeviceBuffer, side: int) -> None:
            """One LLM run reading (token or prompt ids, KV) on `side` and writing the other side."""
            rt.run_timed(LLM_GRAPH,
                         {"input_ids": token, "patch_embeds": b["patch_embeds"], "attention_mask": mask,
                          "position_ids": positions, "past_kv": self._kv[side]},
                         {"logits": b["logits"], "next_token": self._tokens[1 - side],
                          "present_kv": self._kv[1 - side]}, stage_ms, stage)

        t0 = time.perf_counter()
        rt.write(b["pixel_values"], pixel_values)
        rt.write(b["input_ids"], prompt.input_ids)
        rt.write(b["attention_mask"], prompt.attention_mask)
        rt.write(b["position_ids"], prompt.position_ids)
        stage_ms["upload"] = (time.perf_counter() - t0) * 1e3

        rt.run_timed("vision_backbone", {"pixel_values": b["pixel_values"]},
                     {"patch_features": b["patch_features"]}, stage_ms)
        rt.run_timed("projector", {"patch_features": b["patch_features"]}, {"patch_embeds": b["patch_embeds"]},
                     stage_ms)
        # The prefill reads KV side 1 and writes side 0, like a decode step on side 1.
        llm(PREFILL_STAGE, b["input_ids"], b["attention_mask"], b["position_ids"], side=1)
        if capture:
            for key, buf in (("vision_backbone.patch_features", b["patch_features"]),
                             ("projector.patch_embeds", b["patch_embeds"]),
                             (f"{PREFILL_STAGE}.logits", b["logits"]),
                             (f"{PREFILL_STAGE}.present_kv", self._kv[0])):
                captured[key] = rt.read(buf)
            captured[f"{PREFILL_STAGE}.present_kv"] = _real_slots(captured[f"{PREFILL_STAGE}.present_kv"],
                                                                  prompt.num_real)

        token_ids = [self._read_token(self._tokens[0])]
        step_transfers: list[TransferTotals] = []
        decode_logits: list[np.ndarray] = []
        side = 0
        for step in range(num_tokens - 1):
            before = rt.transfers.totals()
            rt.write(b["cache_position"], np.array([[prompt.num_real + step]], dtype=np.int64))
            llm(DECODE_STAGE, self._tokens[side], b["step_mask"], b["cache_position"], side)
            side = 1 - side
            token_ids.append(self._read_token(self._tokens[side]))
            step_transfers.append(rt.transfers.totals().minus(before))
            if capture:
                decode_logits.append(rt.read(b["logits"])[0])
        if capture:
            captured[f"{DECODE_STAGE}.logits"] = np.stack(decode_logits) if decode_logits else np.zeros((0,))
            captured[f"{DECODE_STAGE}.present_kv"] = _real_slots(rt.read(self._kv[side]),
                                                                 prompt.num_real + num_tokens - 1)
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


def _real_slots(kv: np.ndarray, filled: int) -> np.ndarray:
    """The cache slots holding real positions: the others hold padding K/V or whatever the
    buffer held before (never read), which differs between runtimes and runs."""
    return kv[:, :, :, :, :filled]


def _renamed(spec: TensorSpec, name: str) -> TensorSpec:
    return TensorSpec(name=name, shape=spec.shape, dtype=spec.dtype)
