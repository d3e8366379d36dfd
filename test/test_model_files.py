"""Damaged, incomplete and mismatched model files: each is one line naming the file, what is wrong
and what to do, from `load_policy`, `openvla-ros predict` and `openvla-ros check`; checksums
recorded by export and convert-om find same-size corruption. Checkpoints load with the torch
reference, exports with ONNX Runtime; OM folders are checked before pyACL is imported."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openvla_ros.cli import main
from openvla_ros.model_files import FileRecord, InvalidModelFile, MissingModelFile, ModelFileError, sha256_file
from openvla_ros.policy import load_policy
from openvla_ros.runtime.export_files import check_export_files
from openvla_ros.runtime.manifest import GRAPH_NAMES, Manifest
from om_stand_in import stand_in_atc_env

RECOPY_CHECKPOINT = "re-copy (or re-download) the checkpoint"
REEXPORT = "re-export it (`openvla-ros export`)"
RECONVERT = "convert the export again (`openvla-ros convert-om`)"
class _Notes(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture()
def runtime_notes():
    """Warnings of `openvla_ros.runtime`, collected by a handler on that logger itself (the
    launch_testing pytest plugin turns propagation off for new loggers, so caplog misses them)."""
    notes, logger = _Notes(), logging.getLogger("openvla_ros.runtime")
    logger.addHandler(notes)
    yield notes.messages
    logger.removeHandler(notes)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "frame.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(path)
    return path


def _copy(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / source.name))


def _overwrite(path: Path, offset: int, data: bytes = b"\xa5" * 64) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def _predict(capsys, *args) -> tuple[int, str]:
    code = main(["predict", *map(str, args), "--instruction", "pick up the bowl"])
    return code, capsys.readouterr().err


def _one_error_line(err: str, *parts: str) -> str:
    """The CLI's error output is exactly one line containing every part (no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


# ---- checkpoints (torch reference) ------------------------------------------------------------

def test_overwritten_safetensors_header_is_one_line_naming_the_file(tiny_checkpoint, tmp_path, image_file, capsys):
    ckpt = _copy(tiny_checkpoint, tmp_path)
    _overwrite(ckpt / "model.safetensors", 0)
    code, err = _predict(capsys, "--checkpoint", ckpt, "--image", image_file)
    assert code == 2
    _one_error_line(err, f"{ckpt / 'model.safetensors'}: not safetensors", RECOPY_CHECKPOINT)
    # --debug adds the traceback for whoever needs it.
    assert main(["--debug", "predict", "--checkpoint", str(ckpt), "--image", str(image_file),
                 "--instruction", "x"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_safetensors_header_damaged_inside_its_json(tiny_checkpoint, tmp_path):
    ckpt = _copy(tiny_checkpoint, tmp_path)
    _overwrite(ckpt / "model.safetensors", 100)
    with pytest.raises(InvalidModelFile, match="model.safetensors: not safetensors: its header is not valid JSON"):
        load_policy("torch", ckpt)


def test_truncated_safetensors_says_expected_and_actual_bytes(tiny_checkpoint, tmp_path):
    ckpt = _copy(tiny_checkpoint, tmp_path)
    size = (ckpt / "model.safetensors").stat().st_size
    _truncate(ckpt / "model.safetensors", size - 1000)
    with pytest.raises(InvalidModelFile) as info:
        load_policy("torch", ckpt)
    assert str(info.value) == (f"{ckpt / 'model.safetensors'}: truncated: expected {size} bytes (from its header), "
                               f"got {size - 1000}; {RECOPY_CHECKPOINT}")


def test_broken_config_json_gives_line_and_column(tiny_checkpoint, tmp_path):
    ckpt = _copy(tiny_checkpoint, tmp_path)
    (ckpt / "config.json").write_text('{\n  "model_type": "openvla",\n  oops\n}\n')
    with pytest.raises(InvalidModelFile, match=r"config.json: invalid JSON at line 3 column 3"):
        load_policy("torch", ckpt)


def _shard(checkpoint: Path, out: Path) -> list[str]:
    """`checkpoint` rewritten as two safetensors shards + model.safetensors.index.json in `out`."""
    from safetensors.numpy import save_file

    from openvla_ros.checkpoint import load_state_dict

    shutil.copytree(checkpoint, out, ignore=shutil.ignore_patterns("model.safetensors"))
    state = load_state_dict(checkpoint)
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(out / shard))
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return list(shards)


def test_sharded_checkpoint_is_checked_against_its_index(tiny_checkpoint, tmp_path):
    ckpt = tmp_path / "sharded"
    first, second = _shard(tiny_checkpoint, ckpt)
    assert load_policy("torch", ckpt).action_dim == 7
    assert main(["check", str(ckpt)]) == 0

    # A shard from another checkpoint (here: the other shard's contents under this shard's name).
    shutil.copy(ckpt / second, tmp_path / "kept")
    shutil.copy(ckpt / first, ckpt / second)
    with pytest.raises(InvalidModelFile, match=f"{second}: lacks .* tensors that model.safetensors.index.json "
                                               "assigns to it"):
        load_policy("torch", ckpt)

    (ckpt / second).unlink()
    with pytest.raises(MissingModelFile, match=f"{second}: missing"):
        load_policy("torch", ckpt)
    shutil.copy(tmp_path / "kept", ckpt / second)

    _truncate(ckpt / first, 4)
    with pytest.raises(InvalidModelFile, match=f"{first}: not safetensors: 4 bytes"):
        load_policy("torch", ckpt)


def test_check_reports_every_damaged_checkpoint_file(tiny_checkpoint, tmp_path, capsys):
    ckpt = _copy(tiny_checkpoint, tmp_path)
    assert main(["check", str(ckpt)]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    (ckpt / "tokenizer.json").write_text('{"model": ')
    _truncate(ckpt / "model.safetensors", 500_000)
    assert main(["check", str(ckpt)]) == 1
    out = capsys.readouterr().out
    problems = [line for line in out.splitlines() if "PROBLEM" in line]
    assert len(problems) == 2, out
    assert f"{ckpt / 'tokenizer.json'}: invalid JSON at line 1 column 11" in problems[0]
    assert f"{ckpt / 'model.safetensors'}: truncated: expected" in problems[1]
    assert out.strip().endswith("2 problems")


# ---- ONNX exports (ONNX Runtime) --------------------------------------------------------------

def test_export_records_size_and_sha256_of_every_file(tiny_onnx_export):
    manifest = Manifest.load(tiny_onnx_export)
    produced = {p.name for p in tiny_onnx_export.iterdir() if p.name not in ("manifest.json", "verify_report.json")}
    assert set(manifest.files) == produced
    assert {f"{g}.onnx" for g in GRAPH_NAMES} <= produced and "tokenizer.json" in produced
    for name, record in manifest.files.items():
        assert record == FileRecord.of(tiny_onnx_export / name)


def test_truncated_graph_is_named_with_expected_and_actual_bytes(tiny_onnx_export, tmp_path, image_file, capsys):
    export = _copy(tiny_onnx_export, tmp_path)
    size = (export / "vla_llm.onnx").stat().st_size
    _truncate(export / "vla_llm.onnx", 1000)
    code, err = _predict(capsys, "--onnx", export, "--image", image_file)
    assert code == 2
    _one_error_line(err, f"{export / 'vla_llm.onnx'}: truncated: expected {size} bytes, got 1000", REEXPORT)


def test_two_graph_export_is_refused_with_one_re_export_line(tiny_onnx_export, tmp_path, image_file, capsys):
    """An export made before the shared LLM graph (vla_prefill + vla_decoder, two copies of the LLM
    weights) no longer loads: one line naming the manifest and saying to re-export."""
    export = _copy(tiny_onnx_export, tmp_path)
    data = json.loads((export / "manifest.json").read_text())
    llm = data["graphs"].pop("vla_llm")
    data["graphs"].update({"vla_prefill": {**llm, "file": "vla_prefill.onnx"},
                           "vla_decoder": {**llm, "file": "vla_decoder.onnx"}})
    (export / "manifest.json").write_text(json.dumps(data))
    code, err = _predict(capsys, "--onnx", export, "--image", image_file)
    assert code == 2
    _one_error_line(err, f"{export / 'manifest.json'}: an export made before the shared LLM graph: separate "
                         f"vla_prefill and vla_decoder graphs, each with its own copy of the LLM weights",
                    "re-export the checkpoint with `openvla-ros export` (one vla_llm graph for prefill and decode), "
                    "then `openvla-ros convert-om` again for the om backend")


def test_file_that_is_not_onnx(tiny_onnx_export, tmp_path):
    export = _copy(tiny_onnx_export, tmp_path)
    _overwrite(export / "projector.onnx", 0, b"PK\x03\x04")
    with pytest.raises(InvalidModelFile, match="projector.onnx: not ONNX: it starts with byte 0x50"):
        load_policy("onnxruntime", export)


def _drop_records(export: Path) -> None:
    data = json.loads((export / "manifest.json").read_text())
    del data["files"]
    (export / "manifest.json").write_text(json.dumps(data))


def test_export_without_records_still_loads_with_a_note(tiny_onnx_export, tmp_path, runtime_notes, capsys):
    export = _copy(tiny_onnx_export, tmp_path)
    _drop_records(export)
    load_policy("onnxruntime", export).close()
    notes = list(runtime_notes)
    assert len(notes) == 1 and "no size or checksum recorded for vision_backbone.onnx" in notes[0]
    assert main(["check", str(export)]) == 0
    assert "unchecked vla_llm.onnx" in capsys.readouterr().out
    # Without records a truncated graph is still named, by ONNX Runtime failing to parse it.
    _truncate(export / "vla_llm.onnx", 1000)
    with pytest.raises(InvalidModelFile, match="vla_llm.onnx: not ONNX: ONNX Runtime cannot parse it"):
        load_policy("onnxruntime", export)


def test_broken_manifest_gives_line_and_column(tiny_onnx_export, tmp_path, image_file, capsys):
    export = _copy(tiny_onnx_export, tmp_path)
    text = (export / "manifest.json").read_text().splitlines()
    text[1] = "  garbage"
    (export / "manifest.json").write_text("\n".join(text))
    code, err = _predict(capsys, "--onnx", export, "--image", image_file)
    assert code == 2
    _one_error_line(err, f"{export / 'manifest.json'}: invalid JSON at line 2 column 3", REEXPORT)

    data = json.loads((tiny_onnx_export / "manifest.json").read_text())
    del data["sequence"]
    (export / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(InvalidModelFile, match="manifest.json: manifest invalid: field 'sequence' missing"):
        load_policy("onnxruntime", export)


def test_same_size_corruption_is_found_by_checksums_only(tiny_onnx_export, tmp_path, capsys):
    export = _copy(tiny_onnx_export, tmp_path)
    _overwrite(export / "vla_llm.onnx", (export / "vla_llm.onnx").stat().st_size - 5000)
    # The damage lies in weights: it still parses and would run, which is what checksums are for.
    load_policy("onnxruntime", export).close()
    with pytest.raises(InvalidModelFile, match="vla_llm.onnx: checksum mismatch: sha256 [0-9a-f]{16}..., "
                                               "the manifest records"):
        load_policy("onnxruntime", export, verify_checksums=True)
    assert main(["check", str(export), "--sizes-only"]) == 0
    capsys.readouterr()
    assert main(["check", str(export)]) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM  {export / 'vla_llm.onnx'}: checksum mismatch" in out
    assert "ok       projector.onnx" in out and out.strip().endswith("1 problem")


def test_missing_files_are_named_and_counted(tiny_onnx_export, tmp_path, image_file, capsys):
    export = _copy(tiny_onnx_export, tmp_path)
    (export / "tokenizer.json").unlink()
    (export / "projector.onnx").unlink()
    code, err = _predict(capsys, "--onnx", export, "--image", image_file)
    assert code == 2
    _one_error_line(err, f"{export / 'projector.onnx'}: missing", "(1 more problem: `openvla-ros check")
    assert main(["check", str(export)]) == 1
    out = capsys.readouterr().out
    assert f"{export / 'projector.onnx'}: missing" in out and f"{export / 'tokenizer.json'}: missing" in out


def test_checkpoint_and_export_given_to_the_wrong_backend(tiny_checkpoint, tiny_onnx_export):
    with pytest.raises(MissingModelFile, match="manifest.json: missing \\(this is a checkpoint: load it with the "
                                               "torch backend"):
        load_policy("onnxruntime", tiny_checkpoint)
    with pytest.raises(FileNotFoundError, match="it holds manifest.json: an `openvla-ros export`"):
        load_policy("torch", tiny_onnx_export)
    with pytest.raises(InvalidModelFile, match="manifest for another backend: this directory holds .onnx graphs"):
        load_policy("om", tiny_onnx_export)


def test_hash_progress_reads_the_whole_file_in_chunks(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(20 << 20))
    seen: list[int] = []
    digest = sha256_file(path, on_chunk=seen.append)
    import hashlib

    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sum(seen) == 20 << 20 and len(seen) == 3


def test_recorded_side_file_is_checked_with_a_progress_bar(tiny_onnx_export, tmp_path, capsys):
    # Graphs over 64 MiB keep their weights in `<graph>.onnx.data`; export records it like any file.
    export = _copy(tiny_onnx_export, tmp_path)
    data = export / "vla_llm.onnx.data"
    data.write_bytes(os.urandom(65 << 20))
    manifest = Manifest.load(export)
    replace(manifest, files={**manifest.files, data.name: FileRecord.of(data)}).write()
    assert main(["check", str(export)]) == 0
    captured = capsys.readouterr()
    assert f"ok       {data.name} ({65 << 20} bytes, size + sha256 ok)" in captured.out
    assert f"sha256 {data.name}:" in captured.err and "/68.2M" in captured.err  # the tqdm bar
    _truncate(data, 1 << 20)
    with pytest.raises(InvalidModelFile, match=f"{data.name}: truncated: expected {65 << 20} bytes, got {1 << 20}"):
        load_policy("onnxruntime", export)


# ---- OM folders (checked before pyACL) --------------------------------------------------------

@pytest.fixture()
def om_dir(tiny_onnx_export, tmp_path) -> Path:
    """`openvla-ros convert-om` on the (fp32) tiny export with the pyACL double's stand-in `atc`
    (CANN is not installable here); convert-om records the .om files' sizes and hashes."""
    out = tmp_path / "om"
    proc = subprocess.run([sys.executable, "-m", "openvla_ros.cli", "convert-om", "--onnx", str(tiny_onnx_export),
                           "--out", str(out), "--allow-fp32"], env=stand_in_atc_env(tmp_path / "cann_bin"),
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return out


def test_convert_om_records_the_om_files(om_dir):
    manifest = Manifest.load(om_dir)
    assert set(manifest.files) == {f"{g}.om" for g in GRAPH_NAMES} | set(manifest.processor_files)
    for name, record in manifest.files.items():
        assert record == FileRecord.of(om_dir / name)
    assert not check_export_files(manifest, ".om", verify_hashes=True).problems
    assert main(["check", str(om_dir)]) == 0


@pytest.mark.skipif(importlib.util.find_spec("acl") is not None, reason="pyACL is installed here")
def test_sound_om_folder_reaches_pyacl(om_dir):
    # The file checks pass, so loading goes on to pyACL, which is absent here.
    with pytest.raises(RuntimeError, match="CANN's pyACL"):
        load_policy("om", om_dir, verify_checksums=True)


@pytest.mark.parametrize("damage", ["missing", "truncated", "corrupted", "manifest"])
def test_damaged_om_folder_fails_before_pyacl(om_dir, damage):
    graph = om_dir / "vla_llm.om"
    size = graph.stat().st_size
    if damage == "missing":
        graph.unlink()
        expected = MissingModelFile, f"{graph}: missing; re-copy the OM directory, or {RECONVERT}"
    elif damage == "truncated":
        _truncate(graph, size // 2)
        expected = InvalidModelFile, f"{graph}: truncated: expected {size} bytes, got {size // 2}"
    elif damage == "corrupted":
        _overwrite(graph, size // 2, b"\xa5" * 8)
        expected = InvalidModelFile, f"{graph}: checksum mismatch"
    else:
        (om_dir / "manifest.json").write_text("{")
        expected = InvalidModelFile, f"{om_dir / 'manifest.json'}: invalid JSON at line 1 column 2"
    kind, message = expected
    with pytest.raises(kind) as info:
        load_policy("om", om_dir, verify_checksums=True)
    assert str(info.value).startswith(message) and isinstance(info.value, ModelFileError)
    assert "acl" not in sys.modules


@pytest.mark.skipif(importlib.util.find_spec("acl") is not None, reason="pyACL is installed here")
def test_om_folder_from_the_bare_script_loads_with_a_note(om_dir, tiny_onnx_export, runtime_notes):
    # The bare conversion script copies the ONNX export's manifest: no records for the .om files.
    shutil.copy(tiny_onnx_export / "manifest.json", om_dir / "manifest.json")
    with pytest.raises(RuntimeError, match="pyACL"):
        load_policy("om", om_dir)
    assert len(runtime_notes) == 1
    assert "no size or checksum recorded for vision_backbone.om, projector.om" in runtime_notes[0]
    assert "tokenizer.json" not in runtime_notes[0]
