"""`manifest.json`: everything a runtime needs to run an exported model without torch or the checkpoint.

An export directory holds the graphs (`<graph>.onnx`, or `<graph>.om` after ATC), the
processor files copied from the checkpoint (tokenizer, preprocessor config, config.json) and this
manifest. The manifest records each graph's input/output names, static shapes and dtypes in the
order the graph declares them (the OM adapter checks them by name against the .om model
description), the sequence layout (L = 1 + patches + max text tokens, KV capacity = L + action
dim), the special token ids and the action norm stats, and (since file records were added) the
size and SHA-256 of every file the export or conversion produced (`files`). A manifest without
`files` still loads: its files are then only checked for presence. The LLM graph `vla_llm`
also records its shape gears (`sequence_inputs`, `sequence_gears`, see GraphSpec). Exports made
before it (separate `vla_prefill` and `vla_decoder` graphs, two copies of the LLM weights) are
refused with one line saying to re-export.

An OpenVLA-OFT export (`model_family` "oft") holds `OFT_GRAPH_NAMES` instead (no decoder: one
bidirectional pass over the prompt and the action placeholders) and an "oft" section: the chunk
layout (chunk, action dim, proprio dim, number of images, normalization) and the pass's length.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from openvla_ros.model_files import FileRecord, InvalidModelFile, MissingModelFile, read_json
from openvla_ros.oft import ChunkLayout

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "openvla-ros-graphs"
# `files` was added without a version bump: readers that predate it ignore it (it lands in their
# `extra`), and this reader loads manifests without it, so exports made either way keep loading.
MANIFEST_VERSION = 1
LEGACY_REMEDY = ("re-export the checkpoint with `openvla-ros export` (one vla_llm graph for prefill and decode), "
                 "then `openvla-ros convert-om` again for the om backend")
MANIFEST_REMEDY = "re-copy the export directory, or re-export it (`openvla-ros export`)"

# Execution order of the split graphs; also the file stems (`<name>.onnx` / `<name>.om`).
GRAPH_NAMES: tuple[str, ...] = ("vision_backbone", "projector", "vla_llm")
# The LLM graphs of exports made before the shared LLM graph, each with its own copy of the weights.
LEGACY_LLM_GRAPHS: tuple[str, ...] = ("vla_prefill", "vla_decoder")
# OpenVLA-OFT: vision and projector run once per image, then one pass and the action head.
OFT_GRAPH_NAMES: tuple[str, ...] = ("vision_backbone", "projector", "embedding", "proprio_projector", "oft_llm",
                                    "action_head")
MODEL_FAMILIES: tuple[str, ...] = ("openvla", "oft")
DTYPES: tuple[str, ...] = ("fp32", "fp16")
TENSOR_DTYPES: tuple[str, ...] = ("float32", "float16", "int64")
SEQUENCE_AXIS = "sequence"  # the ONNX name of a geared graph's one dynamic axis (axis 1 of its sequence inputs)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: a static shape and a numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if self.dtype not in TENSOR_DTYPES:
            raise ValueError(f"tensor {self.name!r}: dtype {self.dtype!r} is not one of {TENSOR_DTYPES}")
        if not self.shape or any((not isinstance(d, int)) or d <= 0 for d in self.shape):
            raise ValueError(f"tensor {self.name!r}: shape {self.shape} must be static positive ints")

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TensorSpec":
        return cls(name=str(data["name"]), shape=tuple(int(d) for d in data["shape"]), dtype=str(data["dtype"]))


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: its file and its ordered inputs and outputs.

    A graph with shape gears (the shared LLM graph) has one dynamic axis, axis 1 of each of
    `sequence_inputs`, which takes one of `sequence_gears` per run (ATC `--dynamic_dims`); its
    TensorSpecs record those inputs at the first gear (the largest, the prefill's L), and
    `at_sequence(s)` gives the spec of one gear."""

    name: str
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    sequence_inputs: tuple[str, ...] = ()
    sequence_gears: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if bool(self.sequence_inputs) != bool(self.sequence_gears):
            raise ValueError(f"graph {self.name!r}: sequence_inputs and sequence_gears go together")
        for name in self.sequence_inputs:
            spec = self.input(name)
            if len(spec.shape) < 2 or spec.shape[1] != max(self.sequence_gears):
                raise ValueError(f"graph {self.name!r}: input {name!r} {list(spec.shape)} is not recorded at the "
                                 f"largest sequence gear {max(self.sequence_gears)} on axis 1")

    def input(self, name: str) -> TensorSpec:
        return _find(self.inputs, name, f"graph {self.name!r} input")

    def output(self, name: str) -> TensorSpec:
        return _find(self.outputs, name, f"graph {self.name!r} output")

    def at_sequence(self, length: int) -> "GraphSpec":
        """This graph's spec with the sequence axis at gear `length` (ValueError if not a gear)."""
        if length not in self.sequence_gears:
            raise ValueError(f"graph {self.name!r}: sequence length {length} is not one of its shape gears "
                             f"{list(self.sequence_gears)}")
        inputs = tuple(TensorSpec(t.name, (t.shape[0], length) + t.shape[2:], t.dtype)
                       if t.name in self.sequence_inputs else t for t in self.inputs)
        return GraphSpec(self.name, self.file, inputs, self.outputs)

    def to_json(self) -> dict[str, Any]:
        gears = {"sequence_inputs": list(self.sequence_inputs), "sequence_gears": list(self.sequence_gears)} \
            if self.sequence_gears else {}
        return {
            "file": self.file,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            **gears,
        }

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> "GraphSpec":
        return cls(
            name=name,
            file=str(data["file"]),
            inputs=tuple(TensorSpec.from_json(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_json(t) for t in data["outputs"]),
            sequence_inputs=tuple(str(n) for n in data.get("sequence_inputs", ())),
            sequence_gears=tuple(int(g) for g in data.get("sequence_gears", ())),
        )


def _find(specs: tuple[TensorSpec, ...], name: str, what: str) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(f"{what} {name!r} not found; have {[s.name for s in specs]}")


@dataclass(frozen=True)
class SequenceLayout:
    """Static prompt layout: [BOS, patches, text padded to max_text_tokens] = length positions."""

    num_patches: int
    max_text_tokens: int
    action_dim: int  # the largest action dim over the norm stats: decode steps the cache holds

    @property
    def length(self) -> int:
        return 1 + self.num_patches + self.max_text_tokens

    @property
    def kv_capacity(self) -> int:
        return self.length + self.action_dim

    @property
    def sequence_gears(self) -> tuple[int, int]:
        """The LLM graph's shape gears: the prefill's length L, then 1 for a decode step."""
        return (self.length, 1)


@dataclass(frozen=True)
class ActionTokens:
    """What action decoding needs: action token ids count down from V = text_vocab_size -
    pad_to_multiple_of, one per bin of n_action_bins uniform bins on [-1, 1]."""

    text_vocab_size: int
    pad_to_multiple_of: int
    n_action_bins: int


@dataclass(frozen=True)
class Manifest:
    """A parsed `manifest.json` (see module docstring)."""

    directory: Path
    model_name: str
    dtype: str
    opset: int
    layout: SequenceLayout
    image_shape: tuple[int, int, int]
    bos_token_id: int | None  # None when the tokenizer adds no BOS
    pad_token_id: int
    action_tokens: ActionTokens
    graphs: dict[str, GraphSpec]
    norm_stats: dict[str, Any]
    processor_files: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)
    files: dict[str, FileRecord] = field(default_factory=dict)  # file name -> size + SHA-256
    family: str = "openvla"  # "oft": an OpenVLA-OFT export, with `chunk_layout`
    chunk_layout: ChunkLayout | None = None

    @property
    def graph_names(self) -> tuple[str, ...]:
        """The graphs of this export, in execution order."""
        return graph_names_of(self.family, self.chunk_layout)

    def graph_path(self, name: str, suffix: str) -> Path:
        """Path of graph `name` with `suffix` (".onnx" or ".om") in this directory."""
        return self.directory / (Path(self.graphs[name].file).stem + suffix)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "model_name": self.model_name,
            "dtype": self.dtype,
            "opset": self.opset,
            "sequence": {
                "length": self.layout.length,
                "num_patches": self.layout.num_patches,
                "max_text_tokens": self.layout.max_text_tokens,
                "action_dim": self.layout.action_dim,
                "kv_capacity": self.layout.kv_capacity,
            },
            "image_shape": list(self.image_shape),
            "tokens": {"bos_token_id": self.bos_token_id, "pad_token_id": self.pad_token_id},
            "action_tokens": {
                "text_vocab_size": self.action_tokens.text_vocab_size,
                "pad_to_multiple_of": self.action_tokens.pad_to_multiple_of,
                "n_action_bins": self.action_tokens.n_action_bins,
            },
            "graphs": {name: self.graphs[name].to_json() for name in self.graph_names},
            "norm_stats": self.norm_stats,
            "processor_files": list(self.processor_files),
            **({"files": {name: record.to_json() for name, record in self.files.items()}} if self.files else {}),
            **self._family_json(),
            **self.extra,
        }

    def _family_json(self) -> dict[str, Any]:
        if self.family == "openvla":
            return {}
        return {"model_family": self.family, "oft": self.chunk_layout.to_json()}

    def write(self) -> Path:
        path = self.directory / MANIFEST_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "Manifest":
        directory = Path(directory)
        path = directory / MANIFEST_FILE
        if not path.is_file():
            checkpoint = " (this is a checkpoint: load it with the torch backend, or export it first)" \
                if (directory / "config.json").is_file() and any(directory.glob("*.safetensors")) else ""
            raise MissingModelFile(path, f"missing{checkpoint}",
                                   "expected a directory written by `openvla-ros export` or `convert-om`")
        data = read_json(path, MANIFEST_REMEDY)
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT \
                or data.get("format_version") != MANIFEST_VERSION:
            found = f"format {data.get('format')!r} v{data.get('format_version')!r}" if isinstance(data, dict) \
                else f"a JSON {type(data).__name__}"
            raise InvalidModelFile(path, f"not an openvla-ros manifest: {found}, expected {MANIFEST_FORMAT!r} "
                                         f"v{MANIFEST_VERSION}", MANIFEST_REMEDY)
        graphs = data.get("graphs")
        if data.get("model_family", "openvla") == "openvla" and isinstance(graphs, dict) \
                and set(LEGACY_LLM_GRAPHS) <= set(graphs):
            raise InvalidModelFile(path, "an export made before the shared LLM graph: separate vla_prefill and "
                                         "vla_decoder graphs, each with its own copy of the LLM weights",
                                   LEGACY_REMEDY)
        try:
            return cls._from_json(directory, data)
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"field {exc} missing" if isinstance(exc, KeyError) else str(exc)
            raise InvalidModelFile(path, f"manifest invalid: {detail}", MANIFEST_REMEDY) from exc

    @classmethod
    def _from_json(cls, directory: Path, data: dict[str, Any]) -> "Manifest":
        family = str(data.get("model_family", "openvla"))
        if family not in MODEL_FAMILIES:
            raise ValueError(f"model_family {family!r}; expected one of {MODEL_FAMILIES}")
        chunk_layout = ChunkLayout.from_json(data["oft"]) if family == "oft" else None
        names = graph_names_of(family, chunk_layout)
        missing = [g for g in names if g not in data.get("graphs", {})]
        if missing:
            raise ValueError(f"graphs {missing} missing; expected all of {names}")
        if data["dtype"] not in DTYPES:
            raise ValueError(f"dtype {data['dtype']!r}; expected one of {DTYPES}")
        seq = data["sequence"]
        layout = SequenceLayout(
            num_patches=int(seq["num_patches"]),
            max_text_tokens=int(seq["max_text_tokens"]),
            action_dim=int(seq["action_dim"]),
        )
        if layout.length != int(seq["length"]) or layout.kv_capacity != int(seq["kv_capacity"]):
            raise ValueError(f"sequence length/kv_capacity disagree with its parts: {seq}")
        known = {"format", "format_version", "model_name", "dtype", "opset", "sequence", "image_shape",
                 "tokens", "action_tokens", "graphs", "norm_stats", "processor_files", "files", "model_family",
                 "oft"}
        return cls(
            directory=directory,
            model_name=str(data["model_name"]),
            dtype=str(data["dtype"]),
            opset=int(data["opset"]),
            layout=layout,
            image_shape=tuple(int(d) for d in data["image_shape"]),
            bos_token_id=None if data["tokens"]["bos_token_id"] is None else int(data["tokens"]["bos_token_id"]),
            pad_token_id=int(data["tokens"]["pad_token_id"]),
            action_tokens=ActionTokens(**{k: int(v) for k, v in data["action_tokens"].items()}),
            graphs={name: GraphSpec.from_json(name, data["graphs"][name]) for name in names},
            norm_stats=data["norm_stats"],
            processor_files=tuple(data["processor_files"]),
            extra={k: v for k, v in data.items() if k not in known},
            files={str(name): FileRecord.from_json(record) for name, record in data.get("files", {}).items()},
            family=family,
            chunk_layout=chunk_layout,
        )


def graph_names_of(family: str, chunk_layout: ChunkLayout | None) -> tuple[str, ...]:
    """The graphs an export of `family` holds (an OFT model without proprio has no proprio projector)."""
    if family == "openvla":
        return GRAPH_NAMES
    if chunk_layout is None:
        raise ValueError("an OFT manifest needs its chunk layout")
    return tuple(n for n in OFT_GRAPH_NAMES if n != "proprio_projector" or chunk_layout.uses_proprio)
