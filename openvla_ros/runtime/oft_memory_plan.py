"""Device-memory plan of an OpenVLA-OFT export on the NPU, from config dims (no torch, no weights).

OFT's six graphs (openvla_ros/export/oft_exporter.py): the vision backbone and projector (run once
per camera, loaded once), the embedding, the proprio projector, ONE bidirectional LLM pass and the
action head. Unlike OpenVLA's layout there is no decoder, so the LLM weights are in memory once
and there is no KV cache; nor is there an lm_head (the head reads the last hidden states).

Weights: the vision and projector counts of openvla_ros/runtime/memory_plan.py; the pass holds the
Llama layers and the final norm; the proprio projector fc1 (P -> D) and fc2 (D -> D) with biases;
the L1-regression head an MLPResNet: LayerNorm(A D), fc1 (A D -> H), `head_blocks` blocks of
LayerNorm(H) + Linear(H, H), LayerNorm(H), fc2 (H -> A), all with biases (official: H = D,
2 blocks). Activations: the chunk pipeline's buffers (runtime/chunk_pipeline.py), each once, one
`patch_embeds_<i>` per camera. Not included, as for OpenVLA: ATC's per-model working memory and the
constant tables folded into the pass (rotary cos/sin, the placeholder and stop-token embeddings).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from openvla_ros.checkpoint import OpenVLAConfig
from openvla_ros.oft import ChunkLayout, PassLayout
from openvla_ros.runtime.memory_plan import DTYPE_BYTES, GB, INT64, GraphPlan, llm_dims, memory_plan

# The official OFT head: MLPResNet with 2 blocks, hidden width = the LLM width.
OFFICIAL_HEAD_BLOCKS = 2


@dataclass(frozen=True)
class OFTMemoryPlan:
    dtype: str
    chunk_layout: ChunkLayout
    pass_length: int
    graphs: tuple[GraphPlan, ...]
    pipeline_activation_bytes: int  # each pipeline buffer once

    @property
    def weight_bytes(self) -> int:
        return sum(g.weight_bytes for g in self.graphs)

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.pipeline_activation_bytes

    def to_json(self) -> dict:
        return {
            "model_family": "oft",
            "dtype": self.dtype,
            "pass_length": self.pass_length,
            "oft": self.chunk_layout.to_json(),
            "graphs": {g.name: {"weights": g.weight_bytes, "activations": g.activation_bytes, "kv": 0}
                       for g in self.graphs},
            "total": {"weights": self.weight_bytes, "activations": self.pipeline_activation_bytes, "kv": 0,
                      "all": self.total_bytes},
            "not_included": "ATC per-model working memory (acl.mdl.query_size on the card); folded constant tables",
        }


def oft_memory_plan(config: OpenVLAConfig, dtype: str, max_text_tokens: int, chunk_layout: ChunkLayout,
                    head_hidden_dim: int | None = None, head_blocks: int = OFFICIAL_HEAD_BLOCKS) -> OFTMemoryPlan:
    """The plan for the OFT model of `config` exported with `dtype`, `max_text_tokens` and
    `chunk_layout`; the head's hidden width defaults to the LLM width (the official head)."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype {dtype!r}; expected one of {sorted(DTYPE_BYTES)}")
    b = DTYPE_BYTES[dtype]
    d = llm_dims(config)[0]
    hidden = head_hidden_dim or d
    a, p, images = chunk_layout.action_dim, chunk_layout.proprio_dim, chunk_layout.num_images
    patches, dv = config.vision[0].num_patches, config.vision_dim
    length = PassLayout(patches, chunk_layout, max_text_tokens).length

    # The graphs OFT shares with OpenVLA weigh the same; its pass is OpenVLA's LLM without the
    # lm_head (a vocab x D matrix, the size of the embedding table).
    openvla = memory_plan(config, dtype, max_text_tokens, a)
    shared = {g.name: g.weight_bytes for g in openvla.graphs}
    vision_w, projector_w = shared["vision_backbone"], shared["projector"]
    embedding_w = openvla.embedding_weight_bytes  # OFT keeps the embedding as a graph of its own
    pass_w = openvla.llm_weight_bytes - embedding_w
    proprio_w = (p * d + d + d * d + d) * b
    head_w = (2 * a * d + a * d * hidden + hidden + head_blocks * (2 * hidden + hidden * hidden + hidden)
              + 2 * hidden + hidden * a + a) * b

    size = config.image_sizes[0]
    pixels = 3 * len(config.vision) * size * size * b  # one camera's pixel values (the buffer is reused)
    features = patches * dv * b
    patch_embeds = patches * d * b
    ids = (1 + max_text_tokens) * INT64
    token_embeds = (1 + max_text_tokens) * d * b
    mask_and_positions = 2 * length * INT64
    proprio, proprio_embeds = p * b, d * b
    action_hidden = chunk_layout.num_action_tokens * d * b
    actions = chunk_layout.chunk * a * b
    graphs = [
        GraphPlan("vision_backbone", vision_w, pixels + features, 0),
        GraphPlan("projector", projector_w, features + patch_embeds, 0),
        GraphPlan("embedding", embedding_w, ids + token_embeds, 0),
    ]
    if chunk_layout.uses_proprio:
        graphs.append(GraphPlan("proprio_projector", proprio_w, proprio + proprio_embeds, 0))
    pass_io = token_embeds + images * patch_embeds + mask_and_positions + action_hidden
    if chunk_layout.uses_proprio:
        pass_io += proprio_embeds
    graphs += [GraphPlan("oft_llm", pass_w, pass_io, 0),
               GraphPlan("action_head", head_w, action_hidden + actions, 0)]
    pipeline = (pixels + features + images * patch_embeds + ids + token_embeds + mask_and_positions + action_hidden
                + actions + (proprio + proprio_embeds if chunk_layout.uses_proprio else 0))
    return OFTMemoryPlan(dtype, chunk_layout, length, tuple(graphs), pipeline)


def head_dims_of_export(export_dir: str | Path) -> tuple[int, int]:
    """(hidden width, blocks) of an OFT export's action head, from its ONNX initializers' names and
    shapes (`model.fc1.bias`, `model.mlp_resnet_blocks.<i>.ffn.1.bias`); no weights are read."""
    import onnx

    path = Path(export_dir) / "action_head.onnx"
    model = onnx.load(str(path), load_external_data=False)
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    if "model.fc1.bias" not in shapes:
        raise ValueError(f"{path}: no model.fc1.bias initializer; expected an exported L1-regression action head")
    blocks = sum(1 for name in shapes if name.startswith("model.mlp_resnet_blocks.") and name.endswith(".ffn.1.bias"))
    return shapes["model.fc1.bias"][0], blocks


def format_oft_plan(plan: OFTMemoryPlan, card_gb: float | None = None) -> str:
    """A table of the plan in GB."""
    def gb(n: int) -> str:
        return f"{n / GB:9.3f}"

    c = plan.chunk_layout
    lines = [f"device-memory plan, OpenVLA-OFT ({plan.dtype}, pass length {plan.pass_length}, {c.num_images} "
             f"images, chunk {c.chunk} x {c.action_dim}, proprio {c.proprio_dim}), GB",
             f"{'graph':18s}{'weights':>9s}{'activ.':>9s}"]
    for g in plan.graphs:
        lines.append(f"{g.name:18s}{gb(g.weight_bytes)}{gb(g.activation_bytes)}")
    lines.append(f"{'total':18s}{gb(plan.weight_bytes)}{gb(plan.pipeline_activation_bytes)}"
                 f"  = {plan.total_bytes / GB:.2f} GB (one LLM weight copy, no KV cache)")
    lines.append("not included: ATC's per-model working memory (acl.mdl.query_size on the card), folded constants")
    if card_gb is not None:
        fits = "fits" if plan.total_bytes <= card_gb * GB else "does NOT fit"
        lines.append(f"card with {card_gb:g} GB: it {fits}")
    return "\n".join(lines)
