"""`export_onnx`: an OpenVLA checkpoint -> three ONNX graphs + manifest.json + processor files.

Graphs (I/O names as in the manifest; D = dtype float, L = 1 + patches + max_text_tokens,
C = L + largest action dim, KV = [layers, 2, 1, kv_heads, C, head_dim]):
- vision_backbone: pixel_values D[1, 6, H, W] -> patch_features D[1, P, Dv]
- projector:       patch_features -> patch_embeds D[1, P, hidden]
- vla_llm:         input_ids int64[1, S], patch_embeds, attention_mask int64[1, S], position_ids int64[1, S],
                   past_kv D KV -> logits D[1, V], next_token int64[1, 1], present_kv D KV
                   with S = L (prefill) or 1 (a decode step): the graph's one dynamic axis, two shape
                   gears, so prefill and decode share one copy of the LLM weights (see LlmGraph).
The vision graphs are static.
`max_text_tokens` defaults to 40 (L = 297 for 256 patches): the reference layout's 31 (L = 288) is
too short for the longest LIBERO prompts (libero_spatial 35, libero_10 37 text tokens with the
trailing 29871); pass 31 to reproduce the reference exactly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from openvla_ros.actions import ActionDecoder
from openvla_ros.export.graph_files import (
    TORCH_DTYPES,
    Progress,
    check_export_arguments,
    copy_processor_files,
    record_produced_files,
    write_graphs,
)
from openvla_ros.export.llama_graphs import LlmGraph
from openvla_ros.export.onnx_graph import OPSET
from openvla_ros.safetensors_stream import CheckpointTensors
from openvla_ros.sim.heap import release_free_heap
from openvla_ros.runtime.manifest import GRAPH_NAMES, ActionTokens, Manifest, SequenceLayout

DEFAULT_MAX_TEXT_TOKENS = 40
LLM_INPUTS = ("input_ids", "patch_embeds", "attention_mask", "position_ids", "past_kv")
LLM_SEQUENCE_INPUTS = ("input_ids", "attention_mask", "position_ids")  # axis 1 is S

def export_onnx(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    dtype: str = "fp32",
    max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS,
    progress: Progress | None = print,
    **oft_options,
) -> Path:
    """Export `checkpoint_dir` into `out_dir` (created); returns `out_dir`. See the module docstring.

    An OpenVLA-OFT checkpoint goes to `export_oft_onnx` with `oft_options` (num_images,
    use_proprio, chunk, unnorm_key).
    """
    from openvla_ros.checkpoint import OpenVLAConfig
    from openvla_ros.model import OpenVLA
    from openvla_ros.oft import find_oft_files
    from openvla_ros.processing import ImageProcessor, PromptTokenizer

    check_export_arguments(dtype, max_text_tokens)
    if find_oft_files(checkpoint_dir) is not None:
        from openvla_ros.export.oft_exporter import export_oft_onnx

        return export_oft_onnx(checkpoint_dir, out_dir, dtype=dtype, max_text_tokens=max_text_tokens,
                               progress=progress, **oft_options)
    given = sorted(k for k, v in oft_options.items() if v is not None)
    if given:
        raise ValueError(f"{checkpoint_dir} is an OpenVLA checkpoint; {given} apply to OpenVLA-OFT checkpoints only")
    say = progress or (lambda _msg: None)
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    say(f"[export] loading {checkpoint_dir} ...")
    config = OpenVLAConfig.load(checkpoint_dir)
    if not config.norm_stats:
        raise ValueError(f"{checkpoint_dir}/config.json has no norm_stats; cannot size the action decode")
    actions = ActionDecoder(config.norm_stats, config.text_vocab_size, config.pad_to_multiple_of, config.n_action_bins)
    action_dim = max(actions.action_dim(key) for key in config.norm_stats)  # the KV cache fits every key
    images = ImageProcessor.from_pretrained(checkpoint_dir)
    tensors = CheckpointTensors(checkpoint_dir)
    model = OpenVLA.skeleton(config, TORCH_DTYPES[dtype])
    model.check_official_shapes({name: tensors.shape(name) for name in tensors.names()})
    pixel_values = torch.zeros(1, images.channels, *images.input_hw, dtype=TORCH_DTYPES[dtype])
    layout = SequenceLayout(num_patches=config.vision[0].num_patches, max_text_tokens=max_text_tokens,
                            action_dim=action_dim)
    graphs = _graph_modules(model, tensors, TORCH_DTYPES[dtype], pixel_values, layout, config.pad_token_id)
    specs = write_graphs(graphs, GRAPH_NAMES, out_dir, say)
    copied = copy_processor_files(checkpoint_dir, out_dir)
    manifest = Manifest(
        directory=out_dir,
        model_name=checkpoint_dir.resolve().name,
        dtype=dtype,
        opset=OPSET,
        layout=layout,
        image_shape=tuple(pixel_values.shape[1:]),
        bos_token_id=PromptTokenizer.from_pretrained(checkpoint_dir).bos_token_id,
        pad_token_id=int(config.pad_token_id),
        action_tokens=ActionTokens(
            text_vocab_size=config.text_vocab_size,
            pad_to_multiple_of=int(config.pad_to_multiple_of),
            n_action_bins=int(config.n_action_bins),
        ),
        graphs=specs,
        norm_stats=config.norm_stats,
        processor_files=copied,
        extra={"export": {"torch": torch.__version__, "source": str(checkpoint_dir.resolve())}},
        files=record_produced_files(out_dir, GRAPH_NAMES, copied, say, progress is not None),
    )
    manifest.write()
    say(f"[export] wrote {len(GRAPH_NAMES)} graphs and manifest.json to {out_dir}")
    return out_dir


def _graph_modules(model: torch.nn.Module, tensors: CheckpointTensors, dtype: torch.dtype,
                   pixel_values: torch.Tensor, layout: SequenceLayout, pad_id: int) -> Iterator[tuple[str, tuple]]:
    """(graph name, (module, example args, input names, output names[, (sequence inputs, sequence
    gears)])) one graph at a time, with only the weights that graph reads loaded (in the export
    dtype): the vision backbone's, the projector's, then the language model's."""
    with torch.no_grad():
        model.load_weights(tensors, "vision_backbone.", dtype)
        patch_features = model.vision_backbone(pixel_values)
        if patch_features.shape[1] != layout.num_patches:
            raise ValueError(f"the vision backbone gives {patch_features.shape[1]} patches; config.json "
                             f"implies {layout.num_patches}")
        yield "vision_backbone", (model.vision_backbone, (pixel_values,), ["pixel_values"], ["patch_features"])
        model.release_weights("vision_backbone.")
        _return_freed_memory()
        model.load_weights(tensors, "projector.", dtype)
        patch_embeds = model.projector(patch_features)
        yield "projector", (model.projector, (patch_features,), ["patch_features"], ["patch_embeds"])
        model.release_weights("projector.")
        _return_freed_memory()
        model.load_weights(tensors, "language_model.", dtype)
        llm = LlmGraph(model.language_model, layout.num_patches, layout.kv_capacity)
        # Traced at the prefill gear; the decode gear (1) is the same graph with S = 1.
        input_ids = torch.full((1, layout.length), pad_id, dtype=torch.long)
        attention_mask = torch.ones(1, layout.length, dtype=torch.long)
        position_ids = torch.arange(layout.length)[None]
        past_kv = torch.zeros(llm.kv_shape(), dtype=patch_embeds.dtype)
        yield "vla_llm", (llm, (input_ids, patch_embeds, attention_mask, position_ids, past_kv),
                          list(LLM_INPUTS), ["logits", "next_token", "present_kv"],
                          (LLM_SEQUENCE_INPUTS, layout.sequence_gears))
        # The graph wrapper holds the language model's parameters too; drop it before releasing.
        del llm
        model.release_weights("language_model.")
        _return_freed_memory()


def _return_freed_memory() -> None:
    """Hand the freed weights' pages back to the system before the next graph loads its own.

    glibc keeps tensors under its (adaptive, up to 32 MiB) mmap threshold on the heap, and free
    heap pages stay resident: without this, the vision backbone's ~1.4 GB would still count
    while the language model's weights load."""
    release_free_heap()
