"""Device-memory plan of an export on the NPU, computed from the checkpoint's config dims (no torch,
no weights needed): per graph the weights it carries, its input/output buffers (activations the
pipeline allocates), and the KV cache buffers; in total for the export's layout, where one LLM
graph (`vla_llm`, two shape gears) serves prefill and decode, so the device holds one copy of the
LLM weights. For comparison, the total of the earlier layout (separate prefill and decoder graphs,
each with its own copy, plus an embedding graph) is reported too.

Parameter counts follow the clean-room model (checked against the exported graphs' weights in
test_memory_plan.py): each ViT runs its blocks up to the
second-to-last (the last block is not in the graph), LayerScale on DINOv2, qkv/proj/fc biases; the
fused projector fc1 (Dv -> 4 Dv), fc2 (-> D), fc3 (D -> D) with biases; Llama without biases.
Not included: ATC's per-model working memory, which only the converted model reports on the card
(`acl.mdl.query_size`); the small constant tables folded into the graphs (rotary cos/sin, index
vectors).
"""
from __future__ import annotations

from dataclasses import dataclass

from openvla_ros.checkpoint import OpenVLAConfig, ViTSpec
from openvla_ros.runtime.manifest import SequenceLayout

DTYPE_BYTES = {"fp16": 2, "fp32": 4}
INT64 = 8
GB = 10**9  # decimal, as card memory is quoted


@dataclass(frozen=True)
class GraphPlan:
    name: str
    weight_bytes: int
    activation_bytes: int  # the graph's input/output buffers, KV excluded
    kv_bytes: int  # KV buffers it reads or writes (the same two buffers for prefill and decoder)


@dataclass(frozen=True)
class MemoryPlan:
    dtype: str
    layout: SequenceLayout
    graphs: tuple[GraphPlan, ...]
    pipeline_activation_bytes: int  # each pipeline buffer once (graphs share them)
    kv_bytes: int  # the two ping-pong KV buffers
    llm_weight_bytes: int  # one copy of the LLM layers + final norm + lm_head
    embedding_weight_bytes: int  # the token embedding table (in vla_llm)

    @property
    def weight_bytes(self) -> int:
        return sum(g.weight_bytes for g in self.graphs)

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.pipeline_activation_bytes + self.kv_bytes

    @property
    def two_graph_total_bytes(self) -> int:
        """The total of the earlier layout: a second LLM copy in the decoder graph, and the
        embedding table in an embedding graph as well."""
        return self.total_bytes + self.llm_weight_bytes + self.embedding_weight_bytes

    def to_json(self) -> dict:
        return {
            "dtype": self.dtype,
            "sequence_length": self.layout.length,
            "kv_capacity": self.layout.kv_capacity,
            "graphs": {g.name: {"weights": g.weight_bytes, "activations": g.activation_bytes, "kv": g.kv_bytes}
                       for g in self.graphs},
            "total": {"weights": self.weight_bytes, "activations": self.pipeline_activation_bytes,
                      "kv": self.kv_bytes, "all": self.total_bytes},
            "llm_weight_copies": 1,
            "two_graph_layout_total": self.two_graph_total_bytes,
            "not_included": "ATC per-model working memory (acl.mdl.query_size on the card); folded constant tables",
        }


def _vit_params(spec: ViTSpec) -> int:
    d, h = spec.embed_dim, spec.mlp_hidden
    block = (2 * d) + (3 * d * d + 3 * d) + (d * d + d) + (2 * d) + (d * h + h) + (h * d + d)
    if spec.layer_scale:
        block += 2 * d
    embed = 3 * spec.patch_size**2 * d + d + spec.num_patches * d + spec.num_prefix_tokens * d
    return embed + (spec.depth - 1) * block


def llm_dims(config: OpenVLAConfig) -> tuple[int, int, int, int, int, int]:
    """(hidden size, intermediate size, layers, attention heads, KV heads, head dim) of the LLM."""
    text = config.text_config
    d = int(text["hidden_size"])
    heads = int(text.get("num_attention_heads", 32))
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or d // heads)
    ffn, layers = int(text.get("intermediate_size", 11008)), int(text.get("num_hidden_layers", 32))
    return d, ffn, layers, heads, kv_heads, head_dim


def memory_plan(config: OpenVLAConfig, dtype: str, max_text_tokens: int, action_dim: int) -> MemoryPlan:
    """The plan for `config` exported with `dtype` and the given text length and action dim."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype {dtype!r}; expected one of {sorted(DTYPE_BYTES)}")
    b = DTYPE_BYTES[dtype]
    d, inter, layers, heads, kv_heads, head_dim = llm_dims(config)
    vocab = config.text_vocab_size
    patches = config.vision[0].num_patches
    layout = SequenceLayout(num_patches=patches, max_text_tokens=max_text_tokens, action_dim=action_dim)
    dv = config.vision_dim

    vision_w = sum(_vit_params(s) for s in config.vision) * b
    if config.use_fused_vision_backbone:
        hidden = 4 * dv
        projector_w = (dv * hidden + hidden + hidden * d + d + d * d + d) * b
    else:
        projector_w = (dv * d + d + d * d + d) * b
    embedding_w = vocab * d * b
    layer = d * heads * head_dim * 2 + d * kv_heads * head_dim * 2 + 3 * d * inter + 2 * d
    llm_w = (layers * layer + d + vocab * d) * b

    size = config.image_sizes[0]
    pixels = 3 * len(config.vision) * size * size * 4  # pixel_values stay float32 in every export
    features = patches * dv * b
    patch_embeds = patches * d * b
    prompt = 3 * layout.length * INT64  # input_ids, attention_mask, position_ids at the prefill gear
    logits = vocab * b
    token = INT64
    kv = layers * 2 * kv_heads * layout.kv_capacity * head_dim * b
    graphs = (
        GraphPlan("vision_backbone", vision_w, pixels + features, 0),
        GraphPlan("projector", projector_w, features + patch_embeds, 0),
        # one LLM graph for prefill and decode: it embeds its input ids itself, and reads one KV
        # buffer while writing the other
        GraphPlan("vla_llm", llm_w + embedding_w, prompt + patch_embeds + logits + token, 2 * kv),
    )
    # The pipeline's buffers, each once: pixels, features, patch embeds, the prefill gear's ids,
    # mask and positions, logits, the decode gear's mask and position, two token buffers (KV
    # separately).
    pipeline = pixels + features + patch_embeds + prompt + logits + 2 * INT64 + 2 * token
    return MemoryPlan(dtype, layout, graphs, pipeline, 2 * kv, llm_w, embedding_w)


def format_plan(plan: MemoryPlan, card_gb: float | None = None) -> str:
    """A table of the plan in GB."""
    def gb(n: int) -> str:
        return f"{n / GB:9.3f}"

    lines = [f"device-memory plan ({plan.dtype}, L = {plan.layout.length}, KV capacity {plan.layout.kv_capacity}), GB",
             f"{'graph':18s}{'weights':>9s}{'activ.':>9s}{'KV':>9s}"]
    for g in plan.graphs:
        lines.append(f"{g.name:18s}{gb(g.weight_bytes)}{gb(g.activation_bytes)}{gb(g.kv_bytes)}")
    lines.append(f"{'total':18s}{gb(plan.weight_bytes)}{gb(plan.pipeline_activation_bytes)}{gb(plan.kv_bytes)}"
                 f"  = {plan.total_bytes / GB:.2f} GB (one LLM weight copy: vla_llm serves prefill and decode)")
    lines.append(f"{'':18s}(the earlier two-graph layout, a copy in each: {plan.two_graph_total_bytes / GB:.2f} GB)")
    lines.append("not included: ATC's per-model working memory (acl.mdl.query_size on the card), folded constants")
    if card_gb is not None:
        verdict = "fits" if plan.total_bytes <= card_gb * GB else "does NOT fit"
        lines.append(f"card with {card_gb:g} GB: {verdict} ({(card_gb * GB - plan.total_bytes) / GB:.2f} GB left)")
    return "\n".join(lines)
