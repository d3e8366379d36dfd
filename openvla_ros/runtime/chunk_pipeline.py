"""The backend-independent OpenVLA-OFT graph pipeline: per image vision -> projector, the prompt
embedding, the proprio projector, one bidirectional pass and the action head, over any `GraphRuntime`.

Buffer plan (allocated once, reused for every chunk):
- written from the host per chunk: `pixel_values` (once per image, into the one input buffer),
  `input_ids`, `attention_mask`, `position_ids` (the static `PassLayout`) and `proprio`;
- graph-to-graph tensors stay in runtime memory: each image's patch features go through the
  projector into its own `patch_embeds_<i>` buffer, which the pass reads with the token and
  proprio embeddings; the pass's action hidden states feed the head;
- read back per chunk: only `normalized_actions` (chunk x action_dim values).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from openvla_ros.oft import PassLayout, layout_pass
from openvla_ros.runtime.manifest import Manifest, TensorSpec
from openvla_ros.runtime.session import DeviceBuffer, GraphRuntime, TransferTotals


@dataclass
class ChunkResult:
    """Normalized actions of one pass, per-graph wall times and the host<->runtime traffic."""

    normalized_actions: np.ndarray  # [chunk, action_dim]
    stage_ms: dict[str, float]
    transfers: TransferTotals
    captured: dict[str, np.ndarray] = field(default_factory=dict)  # graph outputs (capture=True)


class ChunkPipeline:
    """Runs the graphs of one OFT export on one `GraphRuntime` (see module docstring)."""

    def __init__(self, runtime: GraphRuntime, manifest: Manifest) -> None:
        if manifest.family != "oft":
            raise ValueError(f"{manifest.directory} is an {manifest.family!r} export; "
                             "the chunk pipeline runs OFT exports")
        self.runtime = runtime
        self.manifest = manifest
        self.layout = PassLayout(manifest.layout.num_patches, manifest.chunk_layout, manifest.layout.max_text_tokens)
        for name in manifest.graph_names:
            runtime.load_graph(manifest.graphs[name], manifest.graph_path(name, runtime.graph_suffix))
        g = manifest.graphs
        llm = g["oft_llm"]
        self._image_inputs = [f"patch_embeds_{i}" for i in range(self.layout.chunk_layout.num_images)]
        embeds = g["projector"].output("patch_embeds")
        for name in self._image_inputs:
            if _renamed(llm.input(name), "patch_embeds") != embeds:
                raise ValueError(f"oft_llm input {name!r} does not match the projector's output {embeds}")
        alloc = runtime.allocate
        self._buffers: dict[str, DeviceBuffer] = {
            "pixel_values": alloc(g["vision_backbone"].input("pixel_values")),
            "patch_features": alloc(g["vision_backbone"].output("patch_features")),
            "input_ids": alloc(g["embedding"].input("input_ids")),
            "token_embeds": alloc(g["embedding"].output("token_embeds")),
            "attention_mask": alloc(llm.input("attention_mask")),
            "position_ids": alloc(llm.input("position_ids")),
            "action_hidden": alloc(llm.output("action_hidden")),
            "normalized_actions": alloc(g["action_head"].output("normalized_actions")),
        }
        for name in self._image_inputs:
            self._buffers[name] = alloc(llm.input(name))
        if self.layout.chunk_layout.uses_proprio:
            self._buffers["proprio"] = alloc(g["proprio_projector"].input("proprio"))
            self._buffers["proprio_embeds"] = alloc(g["proprio_projector"].output("proprio_embeds"))

    def run(self, pixel_values: Sequence[np.ndarray], prompt_ids: Sequence[int], proprio: np.ndarray | None,
            capture: bool = False) -> ChunkResult:
        """One chunk: per-image pixel values [1, C, H, W], prompt ids (BOS .. space token), normalized proprio."""
        chunk_layout = self.layout.chunk_layout
        if len(pixel_values) != chunk_layout.num_images:
            raise ValueError(f"got {len(pixel_values)} images; this export takes {chunk_layout.num_images}")
        if chunk_layout.uses_proprio != (proprio is not None):
            raise ValueError(f"this export {'needs' if chunk_layout.uses_proprio else 'takes no'} proprio")
        rt, b = self.runtime, self._buffers
        inputs = layout_pass(prompt_ids, self.layout, self.manifest.pad_token_id)
        start = rt.transfers.totals()
        stage_ms: dict[str, float] = {}
        captured: dict[str, np.ndarray] = {}

        def timed(graph: str, bound_inputs: dict, bound_outputs: dict) -> None:
            rt.run_timed(graph, bound_inputs, bound_outputs, stage_ms)

        t0 = time.perf_counter()
        rt.write(b["input_ids"], inputs.input_ids)
        rt.write(b["attention_mask"], inputs.attention_mask)
        rt.write(b["position_ids"], inputs.position_ids)
        if proprio is not None:
            rt.write(b["proprio"], np.asarray(proprio)[None])
        stage_ms["upload"] = (time.perf_counter() - t0) * 1e3
        for index, (name, pixels) in enumerate(zip(self._image_inputs, pixel_values)):
            t0 = time.perf_counter()
            rt.write(b["pixel_values"], pixels)
            stage_ms["upload"] += (time.perf_counter() - t0) * 1e3
            timed("vision_backbone", {"pixel_values": b["pixel_values"]}, {"patch_features": b["patch_features"]})
            timed("projector", {"patch_features": b["patch_features"]}, {"patch_embeds": b[name]})
            if capture:
                captured[f"vision_backbone.patch_features_{index}"] = rt.read(b["patch_features"])
                captured[f"projector.{name}"] = rt.read(b[name])
        timed("embedding", {"input_ids": b["input_ids"]}, {"token_embeds": b["token_embeds"]})
        pass_inputs = {"token_embeds": b["token_embeds"], "attention_mask": b["attention_mask"],
                       "position_ids": b["position_ids"], **{name: b[name] for name in self._image_inputs}}
        if proprio is not None:
            timed("proprio_projector", {"proprio": b["proprio"]}, {"proprio_embeds": b["proprio_embeds"]})
            pass_inputs["proprio_embeds"] = b["proprio_embeds"]
        timed("oft_llm", pass_inputs, {"action_hidden": b["action_hidden"]})
        timed("action_head", {"action_hidden": b["action_hidden"]}, {"normalized_actions": b["normalized_actions"]})
        if capture:
            for key in ("token_embeds", "action_hidden") + (("proprio_embeds",) if proprio is not None else ()):
                captured[key] = rt.read(b[key])
        normalized = rt.read(b["normalized_actions"])[0]
        return ChunkResult(normalized, stage_ms, rt.transfers.totals().minus(start), captured)

    def close(self) -> None:
        self.runtime.close()


def _renamed(spec: TensorSpec, name: str) -> TensorSpec:
    return TensorSpec(name=name, shape=spec.shape, dtype=spec.dtype)
