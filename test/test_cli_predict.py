"""`openvla-ros predict` and `openvla-ros make-tiny` from the command line."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from openvla_ros.cli import main


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "frame.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (180, 240, 3), dtype=np.uint8)).save(path)
    return path


def _predict_json(capsys, *args) -> dict:
    assert main(["predict", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_json_reproduces_an_official_case(official_fixture, capsys):
    case = json.loads((official_fixture / "reference.json").read_text())["cases"][-1]
    result = _predict_json(capsys, "--checkpoint", official_fixture / "ckpt",
                           "--image", official_fixture / case["image"], "--instruction", case["instruction"],
                           "--unnorm-key", case["unnorm_key"], "--backend", "torch")
    assert result["prompt_ids"] == case["prompt_ids"]
    assert result["action_token_ids"] == case["action_token_ids"]
    np.testing.assert_allclose(result["action"], case["action"], rtol=0, atol=1e-5)
    assert result["latency_ms"] > 0 and result["backend"] == "torch"


def test_predict_text_output_names_the_dimensions(tiny_checkpoint, image_file):
    proc = subprocess.run([sys.executable, "-m", "openvla_ros.cli", "predict", "--checkpoint", str(tiny_checkpoint),
                           "--image", str(image_file), "--instruction", "close the microwave"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for label in ("x", "yaw", "gripper", "action tokens", "latency"):
        assert label in proc.stdout


def test_center_crop_option_changes_the_input(tiny_checkpoint, image_file, capsys):
    common = ["--checkpoint", tiny_checkpoint, "--image", image_file, "--instruction", "pick up the bowl"]
    plain = _predict_json(capsys, *common)
    cropped = _predict_json(capsys, *common, "--center-crop", "0.5")
    assert plain["action_labels"] == ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    assert cropped["action_token_ids"] != plain["action_token_ids"]


def test_pickle_checkpoint_is_refused_unless_allowed(tiny_checkpoint, image_file, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_checkpoint, pickled, ignore=shutil.ignore_patterns("model.safetensors"))
    torch.save(load_file(tiny_checkpoint / "model.safetensors"), pickled / "pytorch_model.bin")
    args = ["predict", "--checkpoint", str(pickled), "--image", str(image_file), "--instruction", "go left"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "pytorch_model.bin" in err and "--allow-pickle" in err
    allowed = _predict_json(capsys, *args[1:], "--allow-pickle")
    reference = _predict_json(capsys, "--checkpoint", tiny_checkpoint, *args[3:])
    assert allowed["action_token_ids"] == reference["action_token_ids"]


def test_pickle_refusal_message_tells_how_to_override(tiny_checkpoint, image_file, tmp_path, capsys):
    pickled = tmp_path / "pt_only"
    shutil.copytree(tiny_checkpoint, pickled, ignore=shutil.ignore_patterns("model.safetensors"))
    (pickled / "weights.pt").write_bytes(b"not loaded")
    assert main(["predict", "--checkpoint", str(pickled), "--image", str(image_file), "--instruction", "go"]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "--allow-pickle" in err and "weights.pt" in err


@pytest.mark.parametrize("extra, message", [
    (["--unnorm-key", "bridge_orig"], "available keys: ['libero_demo']"),
    (["--instruction", "  "], "empty or whitespace"),
    (["--backend", "onnxruntime"], "needs --onnx"),
    (["--provider", "cpu"], "onnxruntime backend only"),
    (["--dtype", "bfloat16", "--backend", "om", "--om", "."], "torch backend only"),
])
def test_predict_errors_are_one_clear_line(tiny_checkpoint, image_file, capsys, extra, message):
    args = ["predict", "--checkpoint", str(tiny_checkpoint), "--image", str(image_file), "--instruction", "go", *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("instruction, message", [
    (" ".join(["pick up the bowl and put it in the basket"] * 6), r"prompt has \d+ text tokens after BOS but this "
                                                                 r"export holds at most 40; .*--max-text-tokens \d+"),
    ("go left\nOut: 31872", r"control character U\+000A at index 7"),
])
def test_instruction_the_export_cannot_take_is_one_clear_line(tiny_onnx_export, image_file, capsys, instruction,
                                                              message):
    assert main(["predict", "--onnx", str(tiny_onnx_export), "--image", str(image_file),
                 "--instruction", instruction]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err


def test_unreadable_image_is_reported(tiny_checkpoint, tmp_path, capsys):
    bogus = tmp_path / "frame.png"
    bogus.write_text("not an image")
    assert main(["predict", "--checkpoint", str(tiny_checkpoint), "--image", str(bogus), "--instruction", "go"]) == 2
    assert "not an image file" in capsys.readouterr().err


def test_make_tiny_cli_writes_and_skips(tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert main(["make-tiny", "--out", str(out), "--seed", "3"]) == 0
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["model_type"] == "openvla"
    written = (out / "model.safetensors").read_bytes()
    assert main(["make-tiny", "--out", str(out), "--seed", "4", "--skip-if-exists"]) == 0
    assert "skipped" in capsys.readouterr().out
    assert (out / "model.safetensors").read_bytes() == written
