"""The demo model's pieces: instruction targets and their action tokens, the training sequence
layout (the same as inference), deterministic training that learns, and the built model's report."""
from __future__ import annotations

import json

import numpy as np
import pytest

from openvla_ros.actions import ActionDecoder
from openvla_ros.checkpoint import OpenVLAConfig
from openvla_ros.demo.build import make_examples, set_demo_norm_stats
from openvla_ros.demo.instructions import (
    DEMO_UNNORM_KEY,
    INSTRUCTIONS,
    MOTIONS,
    action_token_ids,
    demo_norm_stats,
    normalized_target,
)
from openvla_ros.sim.libero_env import postprocess_gripper


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory):
    """A fresh tiny checkpoint carrying the demo norm stats (untrained)."""
    from openvla_ros.model.tiny import write_tiny_checkpoint

    checkpoint = write_tiny_checkpoint(tmp_path_factory.mktemp("demo_ckpt") / "ckpt", seed=3, size="tiny")
    set_demo_norm_stats(checkpoint)
    return checkpoint


@pytest.fixture(scope="module")
def decoder(demo_checkpoint) -> ActionDecoder:
    return ActionDecoder.from_config(OpenVLAConfig.load(demo_checkpoint))


def test_checkpoint_has_only_the_demo_key(demo_checkpoint, decoder):
    assert decoder.keys == [DEMO_UNNORM_KEY]
    assert decoder.select_key(None) == DEMO_UNNORM_KEY


def test_action_tokens_follow_openvla_tokenizer_rule(decoder):
    # 256 uniform bin edges over [-1, 1]; token = vocab end - np.digitize(value, edges)
    end = decoder.vocab_end
    assert action_token_ids(np.array([-1.0, 0.0, 1.0, 5.0, -5.0]), decoder) == [end - 1, end - 128, end - 256,
                                                                                  end - 256, end - 1]
    with pytest.raises(ValueError, match="finite"):
        action_token_ids(np.array([np.nan]), decoder)


@pytest.mark.parametrize("word", list(MOTIONS))
def test_motion_instruction_moves_one_base_axis_with_gripper_open(word, decoder):
    text = f"move the gripper {word}"
    action, _ = decoder.decode(action_token_ids(normalized_target(text), decoder), DEMO_UNNORM_KEY)
    axis, sign = MOTIONS[word]
    expected = np.zeros(6)
    expected[axis] = sign * 0.9375 * 254 / 255  # the outermost bin centre, unnormalized with q99 = 0.9375
    np.testing.assert_allclose(action[:6], expected, atol=1e-12)
    assert postprocess_gripper(action)[6] == -1.0  # LIBERO: open


@pytest.mark.parametrize("text, env_gripper", [("close the gripper", 1.0), ("open the gripper", -1.0)])
def test_gripper_instructions_hold_the_arm_still(text, env_gripper, decoder):
    action, _ = decoder.decode(action_token_ids(normalized_target(text), decoder), DEMO_UNNORM_KEY)
    np.testing.assert_array_equal(action[:6], np.zeros(6))
    assert postprocess_gripper(action)[6] == env_gripper


def test_unknown_instruction_is_rejected():
    with pytest.raises(ValueError, match="not a demo instruction"):
        normalized_target("do a backflip")


def test_norm_stats_describe_the_targets():
    stats = demo_norm_stats()["action"]
    assert stats["mask"] == [True] * 6 + [False]
    assert stats["q01"][:3] == [-0.9375] * 3 and stats["q99"][:3] == [0.9375] * 3
    gripper = [target[6] for target in INSTRUCTIONS.values()]
    assert stats["mean"][6] == pytest.approx(np.mean(gripper), abs=1e-6)


def _random_frames(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 96, 128, 3), dtype=np.uint8)


def test_training_layout_is_the_inference_layout(demo_checkpoint):
    """Teacher-forced argmax at the training positions reproduces exactly the tokens the torch
    reference policy generates greedily: both see BOS, patches, prompt, previous actions alike."""
    from openvla_ros.demo.train import Example, exact_match
    from openvla_ros.model import OpenVLA
    from openvla_ros.policy import load_policy
    from openvla_ros.processing import ImageProcessor, PromptTokenizer

    frames = _random_frames(2, seed=1)
    policy = load_policy("torch", demo_checkpoint)
    images, prompts = ImageProcessor.from_pretrained(demo_checkpoint), PromptTokenizer.from_pretrained(demo_checkpoint)
    examples = []
    for index, frame in enumerate(frames):
        for text in ("move the gripper up", "close the gripper"):
            generated = policy.predict(frame, text).action_token_ids
            examples.append(Example(index, text, tuple(prompts.encode(text)), tuple(generated)))
    policy.close()
    pixels = np.concatenate([images.preprocess(frame) for frame in frames])
    model = OpenVLA.from_pretrained(demo_checkpoint)
    assert exact_match(model, pixels, examples) == {"move the gripper up": 1.0, "close the gripper": 1.0}
    # and a single wrong target token is noticed
    wrong = [Example(e.frame, e.instruction, e.prompt_ids, (e.action_ids[0] - 1,) + e.action_ids[1:]) for e in examples]
    assert exact_match(model, pixels, wrong) == {"move the gripper up": 0.0, "close the gripper": 0.0}


def _train_once(checkpoint, steps: int):
    from openvla_ros.demo.train import TrainConfig, exact_match, train
    from openvla_ros.model import OpenVLA
    from openvla_ros.processing import ImageProcessor, PromptTokenizer

    images, prompts = ImageProcessor.from_pretrained(checkpoint), PromptTokenizer.from_pretrained(checkpoint)
    decoder = ActionDecoder.from_config(OpenVLAConfig.load(checkpoint))
    pixels = np.concatenate([images.preprocess(frame) for frame in _random_frames(1, seed=2)])
    examples = make_examples(prompts, decoder, len(pixels))  # the 8 instructions on one frame
    model = OpenVLA.from_pretrained(checkpoint)
    result = train(model, pixels, examples, TrainConfig(seed=5, steps=steps, batch_size=8), progress=None)
    return model, result, exact_match(model, pixels, examples)


@pytest.mark.slow
def test_training_is_deterministic_and_learns(demo_checkpoint):
    model_a, result_a, accuracy = _train_once(demo_checkpoint, steps=150)
    model_b, result_b, _ = _train_once(demo_checkpoint, steps=150)
    assert result_a.losses == result_b.losses
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert a.equal(b), name
    assert result_a.losses[-1] < 0.05 * result_a.losses[0]
    assert min(accuracy.values()) == 1.0, accuracy


@pytest.mark.slow
@pytest.mark.sim
def test_built_demo_model_decodes_every_instruction_on_held_out_frames(demo_model):
    report = json.loads((demo_model / "training_report.json").read_text())
    assert report["unnorm_key"] == DEMO_UNNORM_KEY
    assert report["frames"]["held_out"] > 0
    assert report["exact_match"]["held_out_onnx_greedy"] == {text: 1.0 for text in INSTRUCTIONS}
    assert report["exact_match"]["held_out_torch"] == {text: 1.0 for text in INSTRUCTIONS}
    assert report["loss"]["last"] < report["loss"]["first"]
    assert (demo_model / "onnx" / "manifest.json").is_file()
    assert (demo_model / "checkpoint" / "model.safetensors").is_file()


def test_a_demo_exported_in_the_two_graph_layout_counts_as_not_built(tmp_path):
    """`make-demo --skip-if-exists` rebuilds a demo whose export predates the shared LLM graph
    (it would no longer load)."""
    from openvla_ros.demo.build import demo_paths, is_built

    paths = demo_paths(tmp_path)
    paths["onnx"].mkdir(parents=True)
    assert not is_built(tmp_path)
    paths["report"].write_text("{}")
    for graphs, built in ((["vision_backbone", "projector", "embedding", "vla_prefill", "vla_decoder"], False),
                          (["vision_backbone", "projector", "vla_llm"], True)):
        (paths["onnx"] / "manifest.json").write_text(json.dumps({"graphs": dict.fromkeys(graphs, {})}))
        assert is_built(tmp_path) is built
