"""`export_oft_onnx`: an OpenVLA-OFT checkpoint -> static-shape ONNX graphs + manifest.json.

Graphs (D = dtype float, P = patches per image, H = LLM width, n = chunk x action_dim,
L = `PassLayout.length` = 1 + images x P (+1 proprio) + max_text_tokens + n + 1):
- vision_backbone:   pixel_values D[1, 6, h, w] -> patch_features D[1, P, Dv]   (run once per image)
- projector:         patch_features -> patch_embeds D[1, P, H]                  (run once per image)
- embedding:         input_ids int64[1, 1 + max_text_tokens] -> token_embeds D[1, 1 + max_text_tokens, H]
- proprio_projector: proprio D[1, proprio_dim] -> proprio_embeds D[1, 1, H]    (only with proprio)
- oft_llm:           token_embeds, patch_embeds_0 .. patch_embeds_{images-1}, [proprio_embeds],
                     attention_mask int64[1, L], position_ids int64[1, L] -> action_hidden D[1, n, H]
- action_head:       action_hidden -> normalized_actions D[1, chunk, action_dim]
No KV cache and no decode loop: one pass gives the whole chunk.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from openvla_ros.export.graph_files import (
    TORCH_DTYPES,
    Progress,
    check_export_arguments,
    copy_processor_files,
    record_produced_files,
    write_graphs,
)
from openvla_ros.export.llama_graphs import EmbeddingGraph
from openvla_ros.export.oft_graphs import BidirectionalPassGraph
from openvla_ros.export.onnx_graph import OPSET
from openvla_ros.oft import PassLayout, layout_pass, resolve_chunk
from openvla_ros.runtime.manifest import ActionTokens, Manifest, SequenceLayout, graph_names_of


class ProprioGraph(nn.Module):
    """The proprio projector with its output shaped as one patch: [1, proprio_dim] -> [1, 1, H]."""

    def __init__(self, projector: nn.Module) -> None:
        super().__init__()
        self.projector = projector

    def forward(self, proprio):
        return self.projector(proprio)[:, None]


def pass_input_names(layout: PassLayout) -> list[str]:
    """The oft_llm graph's inputs, in order."""
    names = ["token_embeds"] + [f"patch_embeds_{i}" for i in range(layout.chunk_layout.num_images)]
    if layout.chunk_layout.uses_proprio:
        names.append("proprio_embeds")
    return names + ["attention_mask", "position_ids"]


def export_oft_onnx(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    dtype: str = "fp32",
    max_text_tokens: int = 40,
    progress: Progress | None = print,
    num_images: int = 2,
    use_proprio: bool | None = None,
    chunk: int | None = None,
    unnorm_key: str | None = None,
) -> Path:
    """Export an OFT checkpoint into `out_dir`; `chunk` None: the platform's (from the norm-stats key)."""
    from openvla_ros.actions import ActionDecoder
    from openvla_ros.checkpoint import OpenVLAConfig
    from openvla_ros.model.oft import OpenVLAOFT
    from openvla_ros.oft import find_oft_files
    from openvla_ros.processing import ImageProcessor, PromptTokenizer

    check_export_arguments(dtype, max_text_tokens)
    say = progress or (lambda _msg: None)
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    files = find_oft_files(checkpoint_dir)
    if files is None:
        raise ValueError(f"{checkpoint_dir} has no action_head--<step>_checkpoint.pt; not an OpenVLA-OFT checkpoint")
    say(f"[export] loading OpenVLA-OFT {checkpoint_dir} ...")
    config = OpenVLAConfig.load(checkpoint_dir)
    key = ActionDecoder.from_config(config).select_key(unnorm_key)
    chunk, normalization = resolve_chunk(chunk, key)
    model = OpenVLAOFT.from_pretrained(checkpoint_dir, files, chunk=chunk, num_images=num_images,
                                       normalization=normalization, use_proprio=use_proprio,
                                       dtype=TORCH_DTYPES[dtype])
    images = ImageProcessor.from_pretrained(checkpoint_dir)
    prompts = PromptTokenizer.from_pretrained(checkpoint_dir)
    vla, chunk_layout = model.vla, model.layout
    float_type = TORCH_DTYPES[dtype]
    pixel_values = torch.zeros(1, images.channels, *images.input_hw, dtype=float_type)
    with torch.no_grad():
        patch_features = vla.vision_backbone(pixel_values)
        patch_embeds = vla.projector(patch_features)
    layout = PassLayout(int(patch_features.shape[1]), chunk_layout, max_text_tokens)
    example = layout_pass([prompts.bos_token_id or 0, prompts.space_token_id], layout, config.pad_token_id)
    input_ids = torch.from_numpy(example.input_ids)
    embedding = EmbeddingGraph(vla.language_model)
    proprio = torch.zeros(1, max(chunk_layout.proprio_dim, 1), dtype=float_type)
    graphs = {
        "vision_backbone": (vla.vision_backbone, (pixel_values,), ["pixel_values"], ["patch_features"]),
        "projector": (vla.projector, (patch_features,), ["patch_features"], ["patch_embeds"]),
        "embedding": (embedding, (input_ids,), ["input_ids"], ["token_embeds"]),
    }
    pass_args = [embedding(input_ids).detach()] + [patch_embeds] * chunk_layout.num_images
    if chunk_layout.uses_proprio:
        proprio_graph = ProprioGraph(model.proprio_projector)
        graphs["proprio_projector"] = (proprio_graph, (proprio,), ["proprio"], ["proprio_embeds"])
        pass_args.append(proprio_graph(proprio).detach())
    pass_args += [torch.from_numpy(example.attention_mask), torch.from_numpy(example.position_ids)]
    llm = BidirectionalPassGraph(vla.language_model, layout)
    graphs["oft_llm"] = (llm, tuple(pass_args), pass_input_names(layout), ["action_hidden"])
    with torch.no_grad():
        action_hidden = llm(*pass_args)
    graphs["action_head"] = (model.action_head, (action_hidden,), ["action_hidden"], ["normalized_actions"])
    names = graph_names_of("oft", chunk_layout)
    specs = write_graphs(((name, graphs[name]) for name in names), names, out_dir, say)
    copied = copy_processor_files(checkpoint_dir, out_dir)
    manifest = Manifest(
        directory=out_dir,
        model_name=checkpoint_dir.resolve().name,
        dtype=dtype,
        opset=OPSET,
        layout=SequenceLayout(num_patches=layout.patches_per_image, max_text_tokens=max_text_tokens,
                              action_dim=chunk_layout.action_dim),
        image_shape=tuple(pixel_values.shape[1:]),
        bos_token_id=prompts.bos_token_id,
        pad_token_id=int(config.pad_token_id),
        action_tokens=ActionTokens(text_vocab_size=config.text_vocab_size,
                                   pad_to_multiple_of=int(config.pad_to_multiple_of),
                                   n_action_bins=int(config.n_action_bins)),
        graphs=specs,
        norm_stats=config.norm_stats,
        processor_files=copied,
        extra={"export": {"torch": torch.__version__, "source": str(checkpoint_dir.resolve()),
                          "unnorm_key": key, "pass_length": layout.length}},
        files=record_produced_files(out_dir, names, copied, say, progress is not None),
        family="oft",
        chunk_layout=chunk_layout,
    )
    manifest.write()
    say(f"[export] wrote {len(names)} OpenVLA-OFT graphs and manifest.json to {out_dir} "
        f"(chunk {chunk_layout.chunk} x {chunk_layout.action_dim}, pass length {layout.length})")
    return out_dir
