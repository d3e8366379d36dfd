"""What both exporters (OpenVLA: exporter.py, OpenVLA-OFT: oft_exporter.py) share: the argument
check, writing and checking the graphs in order, copying the processor files and recording every
produced file's size and SHA-256 for the manifest. A leaf of export/, so neither exporter imports
the other's module for it.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

from openvla_ros.export.onnx_graph import check_graph, export_module
from openvla_ros.model_files import record_files
from openvla_ros.runtime.manifest import DTYPES, GraphSpec

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# Copied next to the manifest: what the torch-free processor, tokenizer and action decoder read.
PROCESSOR_FILES = ("config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "generation_config.json")

Progress = Callable[[str], None]


def check_export_arguments(dtype: str, max_text_tokens: int) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}; expected one of {DTYPES}")
    if max_text_tokens < 1:
        raise ValueError(f"max_text_tokens must be >= 1, got {max_text_tokens}")


def write_graphs(graphs: Iterable[tuple[str, tuple]], names: tuple[str, ...], out_dir: Path,
                 say: Progress) -> dict[str, GraphSpec]:
    """Export and check each graph of `graphs`, (name, (module, args, input names, output names))
    pairs in the order of `names`. Each pair is dropped before the next is asked for, so a lazy
    `graphs` can free one graph's weights before it loads the next one's."""
    out_dir.mkdir(parents=True, exist_ok=True)
    specs: dict[str, GraphSpec] = {}
    for i, (name, graph) in enumerate(graphs, 1):
        if i > len(names) or name != names[i - 1]:
            raise ValueError(f"graph {i} is {name!r}; expected the order {list(names)}")
        # (module, args, input names, output names[, (sequence inputs, sequence gears)])
        module, args, input_names, output_names, *gears = graph
        del graph
        sequence_inputs, sequence_gears = gears[0] if gears else ((), ())
        t0 = time.perf_counter()
        say(f"[export] [{i}/{len(names)}] {name}: tracing and writing {name}.onnx ...")
        path = out_dir / f"{name}.onnx"
        export_module(module, args, path, input_names, output_names, sequence_inputs=sequence_inputs)
        report = check_graph(path, sequence_gears)
        specs[name] = GraphSpec(name, path.name, report.inputs, report.outputs, report.sequence_inputs,
                                tuple(sequence_gears))
        say(f"[export] [{i}/{len(names)}] {name}: {report.nbytes / 1e6:.1f} MB, "
            f"{len(report.op_types)} op types, checked, {time.perf_counter() - t0:.1f} s")
        del module, args
    if len(specs) != len(names):
        raise ValueError(f"exported {sorted(specs)}; expected {list(names)}")
    return specs


def record_produced_files(out_dir: Path, graph_names: tuple[str, ...], copied: tuple[str, ...], say: Progress,
                          progress_bar: bool) -> dict:
    """Size + SHA-256 of every file the export wrote (graphs, their external data, processor files),
    for the manifest: loading and `openvla-ros check` compare a copy against them."""
    produced = [p.name for name in graph_names for p in (out_dir / f"{name}.onnx", out_dir / f"{name}.onnx.data")
                if p.is_file()] + list(copied)
    say(f"[export] recording the size and SHA-256 of {len(produced)} files ...")
    return record_files(out_dir, produced, progress=progress_bar)


def copy_processor_files(checkpoint_dir: Path, out_dir: Path) -> tuple[str, ...]:
    """Copy the processor files a torch-free runtime reads next to the manifest; returns their names."""
    copied = tuple(name for name in PROCESSOR_FILES if (checkpoint_dir / name).is_file())
    for name in copied:
        shutil.copy2(checkpoint_dir / name, out_dir / name)
    return copied
