"""OpenVLA-OFT loading and the torch reference on project-generated checkpoints of other dims."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from openvla_ros.cli import main
from openvla_ros.model.tiny_oft import write_tiny_oft_checkpoint
from openvla_ros.oft import find_oft_files
from openvla_ros.policy import load_policy

INSTRUCTION = "pick up the bowl"


def _images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(count)]


@pytest.fixture(scope="module")
def odd_checkpoint(tmp_path_factory):
    """Action dim 5, proprio dim 3, 3 head blocks, a norm-stats key that names no platform."""
    return write_tiny_oft_checkpoint(tmp_path_factory.mktemp("odd") / "oft-odd", seed=4, action_dim=5,
                                     proprio_dim=3, head_blocks=3, unnorm_key="my_robot")


def test_constants_are_read_from_the_component_weights(odd_checkpoint):
    policy = load_policy("torch", odd_checkpoint, num_images=3, chunk=4)
    layout = policy.layout
    assert (layout.chunk, layout.action_dim, layout.proprio_dim, layout.num_images) == (4, 5, 3, 3)
    assert len(policy.model.action_head.model.mlp_resnet_blocks) == 3
    prediction = policy.predict_chunk(_images(3), INSTRUCTION, [0.1, -0.2, 0.3])
    assert prediction.actions.shape == (4, 5) and prediction.normalized_actions.shape == (4, 5)
    # Unnormalized where the mask is true; the last (gripper-like) dim passes through.
    raw = json.loads((odd_checkpoint / "config.json").read_text())["norm_stats"]["my_robot"]["action"]
    low, high = np.array(raw["q01"]), np.array(raw["q99"])
    expected = 0.5 * (prediction.normalized_actions + 1.0) * (high - low + 1e-8) + low
    np.testing.assert_allclose(prediction.actions[:, :4], expected[:, :4], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(prediction.actions[:, 4], prediction.normalized_actions[:, 4])


def test_chunk_length_must_be_given_when_the_platform_is_unknown(odd_checkpoint):
    with pytest.raises(ValueError, match="pass chunk"):
        load_policy("torch", odd_checkpoint, num_images=3)


def test_the_chunk_depends_on_every_input(tiny_oft_checkpoint):
    policy = load_policy("torch", tiny_oft_checkpoint)
    assert policy.layout.chunk == 8  # the key names LIBERO
    images, state = _images(2), [0.0] * 8
    base = policy.predict_chunk(images, INSTRUCTION, state).actions
    assert np.array_equal(base, policy.predict_chunk(images, INSTRUCTION, state).actions)
    for changed in (policy.predict_chunk([images[0], _images(1, seed=9)[0]], INSTRUCTION, state),
                    policy.predict_chunk(images, "open the drawer", state),
                    policy.predict_chunk(images, INSTRUCTION, [0.3] * 8)):
        assert not np.allclose(changed.actions, base, atol=1e-6)


def test_proprio_is_normalized_with_q01_q99_and_clipped(tiny_oft_checkpoint):
    policy = load_policy("torch", tiny_oft_checkpoint)
    stats = json.loads((tiny_oft_checkpoint / "config.json").read_text())["norm_stats"]["libero_oft_demo"]["proprio"]
    low, high = np.array(stats["q01"]), np.array(stats["q99"])
    state = np.where(np.arange(8) % 2, high + 5.0, (low + high) / 2)
    normalized = policy.predict_chunk(_images(2), INSTRUCTION, state).normalized_proprio
    np.testing.assert_allclose(normalized[0::2], 0.0, atol=1e-7)
    np.testing.assert_array_equal(normalized[1::2], 1.0)


def test_checkpoint_without_proprio_refuses_a_state(tmp_path):
    checkpoint = write_tiny_oft_checkpoint(tmp_path / "noproprio", seed=1, proprio_dim=0)
    assert find_oft_files(checkpoint).proprio_projector is None
    policy = load_policy("torch", checkpoint)
    assert policy.layout.proprio_dim == 0
    assert policy.predict_chunk(_images(2), INSTRUCTION).actions.shape == (8, 7)
    with pytest.raises(ValueError, match="takes no robot state"):
        policy.predict_chunk(_images(2), INSTRUCTION, [0.0] * 8)


@pytest.mark.parametrize("component, message", [("vision_backbone", "FiLM is not supported"),
                                                ("noisy_action_projector", "only the L1-regression head")])
def test_unsupported_oft_variants_are_refused(tiny_oft_checkpoint, tmp_path, component, message):
    checkpoint = tmp_path / "variant"
    shutil.copytree(tiny_oft_checkpoint, checkpoint)
    torch.save({"module.x": torch.zeros(1)}, checkpoint / f"{component}--0_checkpoint.pt")
    with pytest.raises(ValueError, match=message):
        load_policy("torch", checkpoint)


def test_two_action_heads_are_ambiguous(tiny_oft_checkpoint, tmp_path):
    checkpoint = tmp_path / "two"
    shutil.copytree(tiny_oft_checkpoint, checkpoint)
    shutil.copy(checkpoint / "action_head--0_checkpoint.pt", checkpoint / "action_head--500_checkpoint.pt")
    with pytest.raises(ValueError, match="2 action_head checkpoints"):
        find_oft_files(checkpoint)


def test_component_files_are_read_as_tensors_only(tiny_oft_checkpoint, tmp_path):
    checkpoint = tmp_path / "code"
    shutil.copytree(tiny_oft_checkpoint, checkpoint)
    # A pickle that would build an arbitrary object: weights_only loading refuses it.
    torch.save({"module.model.fc2.weight": torch.zeros(7, 32), "payload": shutil.copy},
               checkpoint / "action_head--0_checkpoint.pt")
    with pytest.raises(ValueError, match="action_head--0_checkpoint.pt: not a readable tensor state dict"):
        load_policy("torch", checkpoint)


def test_a_head_of_another_model_is_refused(tiny_oft_checkpoint, tmp_path):
    checkpoint = tmp_path / "wrong"
    shutil.copytree(tiny_oft_checkpoint, checkpoint)
    state = torch.load(checkpoint / "action_head--0_checkpoint.pt", weights_only=True)
    state["module.model.fc1.weight"] = torch.zeros(32, 7 * 64)
    torch.save(state, checkpoint / "action_head--0_checkpoint.pt")
    with pytest.raises(ValueError, match="is this the head of this model"):
        load_policy("torch", checkpoint)


def test_predict_cli_prints_the_chunk(tiny_oft_checkpoint, tmp_path, capsys):
    from PIL import Image

    paths = []
    for name, image in zip(("agentview.png", "wrist.png"), _images(2)):
        Image.fromarray(image).save(tmp_path / name)
        paths.append(tmp_path / name)
    state = [0.05 * i for i in range(8)]
    args = ["predict", "--checkpoint", str(tiny_oft_checkpoint), "--image", str(paths[0]), "--wrist-image",
            str(paths[1]), "--instruction", INSTRUCTION, "--state", *map(str, state)]
    assert main(args + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = load_policy("torch", tiny_oft_checkpoint).predict_chunk(_images(2), INSTRUCTION, state)
    np.testing.assert_allclose(result["actions"], expected.actions, rtol=0, atol=1e-6)
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "chunk 8 x 7" in text and len([line for line in text.splitlines() if line.strip()[:1].isdigit()]) == 8
    assert main(args[:-9]) == 2  # no state
    assert "takes the robot state" in capsys.readouterr().err


def test_make_tiny_writes_an_oft_checkpoint(tmp_path, capsys):
    out = tmp_path / "cli-oft"
    assert main(["make-tiny", "--oft", "--out", str(out), "--action-dim", "6", "--proprio-dim", "2",
                 "--head-blocks", "1"]) == 0
    files = find_oft_files(out)
    head = torch.load(files.action_head, weights_only=True)
    assert all(key.startswith("module.") for key in head)
    assert tuple(head["module.model.fc2.weight"].shape)[0] == 6
    assert tuple(torch.load(files.proprio_projector, weights_only=True)["module.fc1.weight"].shape)[1] == 2
