"""What can be known about a model directory without loading it: checked by the commands that start
a policy node before any process starts, so a wrong path, backend or norm-stats key fails in a
moment with the reason instead of in a node's log after its start-up.

Reads only small JSON files (manifest.json, config.json) and file names; never imports torch or a
backend. What only loading can tell (a damaged graph, a device error) stays the node's to report.
"""
from __future__ import annotations

from pathlib import Path

from openvla_ros.actions import ActionDecoder
from openvla_ros.policy import BACKENDS

GRAPH_SUFFIXES = {"onnxruntime": ".onnx", "om": ".om"}


def check_model_dir(backend: str, model_dir: str | Path, unnorm_key: str = "") -> None:
    """Raise FileNotFoundError or ValueError naming the problem and what was expected."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    if backend == "torch":
        decoder = _checkpoint_decoder(model_dir)
    else:
        decoder = _export_decoder(backend, model_dir)
    decoder.select_key(unnorm_key or None)


def model_family_of(backend: str, model_dir: str | Path) -> str:
    """"openvla" or "oft": an export's manifest says it; a checkpoint is OFT when it has an action
    head beside it (openvla_ros/oft.py). Call after check_model_dir."""
    model_dir = Path(model_dir)
    if backend == "torch":
        from openvla_ros.oft import find_oft_files

        return "oft" if find_oft_files(model_dir) is not None else "openvla"
    from openvla_ros.runtime.manifest import Manifest

    return Manifest.load(model_dir).family


def check_model_family(backend: str, model_dir: str | Path, expected: str) -> None:
    """ValueError when the model in `model_dir` is not of the family `expected`, naming both."""
    family = model_family_of(backend, model_dir)
    if family != expected:
        raise ValueError(f"{model_dir} holds an {family} model, not {expected}: use --model-family {family}, "
                         f"or a model of the {expected} family")


def _checkpoint_decoder(model_dir: Path) -> ActionDecoder:
    from openvla_ros.checkpoint import OpenVLAConfig, find_weight_files

    if (model_dir / "manifest.json").is_file() and not (model_dir / "model.safetensors").is_file():
        raise ValueError(f"{model_dir} is an exported model (manifest.json, no weights): use --backend "
                         "onnxruntime (ONNX graphs) or om (.om graphs); torch needs a Hugging Face checkpoint")
    config = OpenVLAConfig.load(model_dir)
    find_weight_files(model_dir)
    return ActionDecoder.from_config(config)


def _export_decoder(backend: str, model_dir: Path) -> ActionDecoder:
    from openvla_ros.runtime.manifest import MANIFEST_FILE, Manifest

    if not (model_dir / MANIFEST_FILE).is_file() and (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir / MANIFEST_FILE} not found: {model_dir} looks like a checkpoint "
                                f"(config.json); use --backend torch, or `openvla-ros export` it for {backend}")
    manifest = Manifest.load(model_dir)
    suffix = GRAPH_SUFFIXES[backend]
    missing = [name for name in manifest.graphs if not manifest.graph_path(name, suffix).is_file()]
    if missing:
        other = next((b for b, s in GRAPH_SUFFIXES.items() if b != backend
                      and all(manifest.graph_path(n, s).is_file() for n in manifest.graphs)), None)
        hint = f"; its graphs are for --backend {other}" if other else ""
        raise FileNotFoundError(f"{model_dir} lacks the {backend} graphs "
                                f"{', '.join(manifest.graph_path(n, suffix).name for n in missing)}{hint}")
    tokens = manifest.action_tokens
    return ActionDecoder(manifest.norm_stats, tokens.text_vocab_size, tokens.pad_to_multiple_of, tokens.n_action_bins)
