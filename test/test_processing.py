"""Image preprocessing, prompt building/tokenization and input validation (torch-free)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from openvla_ros.processing import (ImageProcessor, PromptTokenizer, build_prompt, center_crop,
                                    validate_image, validate_instruction)

PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def processor_only_dir(official_fixture, tmp_path_factory):
    """A directory with only the processor files, as the exporter copies them next to its manifest."""
    out = tmp_path_factory.mktemp("processor_only")
    for name in PROCESSOR_FILES:
        shutil.copy(official_fixture / "ckpt" / name, out / name)
    return out


@pytest.mark.parametrize("image, problem", [
    (np.zeros((8, 8, 3), np.float32), "dtype is float32"),
    (np.zeros((8, 8), np.uint8), "2-D"),
    (np.zeros((8, 8, 4), np.uint8), "4 channels"),
    (np.zeros((0, 8, 3), np.uint8), "empty"),
    ([[0, 0, 0]], "numpy array"),
])
def test_bad_images_are_value_errors(image, problem):
    with pytest.raises(ValueError, match=problem):
        validate_image(image)


@pytest.mark.parametrize("instruction", ["", "   \n\t"])
def test_blank_instructions_are_value_errors(instruction):
    with pytest.raises(ValueError, match="empty or whitespace"):
        validate_instruction(instruction)


def test_prompt_template_lowercases_the_instruction():
    assert build_prompt("Put the Cream Cheese in the basket") == (
        "In: What action should the robot take to put the cream cheese in the basket?\nOut:")


def test_constant_image_normalizes_per_backbone(official_fixture):
    processor = ImageProcessor.from_pretrained(official_fixture / "ckpt")
    pixels = processor.preprocess(np.full((50, 70, 3), 200, np.uint8))
    assert pixels.shape == (1, 6, 224, 224) and pixels.dtype == np.float32
    config = json.loads((official_fixture / "ckpt" / "preprocessor_config.json").read_text())
    for backbone, params in enumerate(config["tvf_normalize_params"]):
        for channel in range(3):
            mean, std = np.float32(params["mean"][channel]), np.float32(params["std"][channel])
            expected = (np.float32(200) / np.float32(255) - mean) / std
            assert np.all(pixels[0, 3 * backbone + channel] == expected)


def test_normalization_table_is_bit_identical_to_the_float_formula(official_fixture):
    processor = ImageProcessor.from_pretrained(official_fixture / "ckpt")
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    pixels = processor.preprocess(image)[0]
    chw = image.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    for backbone, transform in enumerate(processor.transforms):
        expected = (chw - transform.mean[:, None, None]) / transform.std[:, None, None]
        assert np.array_equal(pixels[3 * backbone:3 * backbone + 3].view(np.int32), expected.view(np.int32))


def test_processors_load_from_a_directory_with_only_processor_files(processor_only_dir, official_fixture):
    case = json.loads((official_fixture / "reference.json").read_text())["cases"][0]
    assert PromptTokenizer.from_pretrained(processor_only_dir).encode(case["instruction"]) == case["prompt_ids"]
    assert ImageProcessor.from_pretrained(processor_only_dir).channels == 6


def test_prompt_ends_with_the_space_token_once(official_fixture):
    tokenizer = PromptTokenizer.from_pretrained(official_fixture / "ckpt")
    ids = tokenizer.encode("move the gripper left")
    assert ids[0] == tokenizer.bos_token_id == 1
    assert ids[-1] == tokenizer.space_token_id == 29871 and ids[-2] != 29871


def test_center_crop_keeps_the_size_and_takes_the_middle():
    image = np.zeros((100, 200, 3), np.uint8)
    image[40:60, 90:110] = 255  # a bright centre square grows when the centre is zoomed in
    cropped = center_crop(image, 0.25)  # half the side lengths
    assert cropped.shape == image.shape and cropped.dtype == np.uint8
    assert cropped[50, 100].tolist() == [255, 255, 255]
    assert cropped[50, 100 + 15].tolist() == [255, 255, 255]  # was at column 107 before the 2x zoom
    assert cropped[0, 0].tolist() == [0, 0, 0]
    assert center_crop(image, 1.0) is image
    with pytest.raises(ValueError, match="area_scale"):
        center_crop(image, 0.0)


def test_center_crop_samples_like_tf_crop_and_resize():
    """Corner-aligned bilinear sampling and TF's float -> uint8 conversion (x * 255.5, truncated):
    a 3x3 image, area 0.25 -> box [0.25, 0.75] -> input rows 0.5, 1.0, 1.5."""
    image = np.repeat(np.array([0, 101, 200], np.uint8)[:, None, None], 3, axis=1).repeat(3, axis=2)
    cropped = center_crop(image, 0.25)
    # row 0.5: (0 + 101) / 2 / 255 * 255.5 = 50.6 -> 50 (truncated, where rounding would give 51)
    # row 1.5: (101 + 200) / 2 / 255 * 255.5 = 150.8 -> 150
    assert cropped[:, 0, 0].tolist() == [50, 101, 150]
    assert (cropped == cropped[:, :1, :1]).all()  # constant along the rows' other axes


def test_runtime_processing_modules_do_not_import_torch():
    code = ("import sys, numpy as np\n"
            "import openvla_ros.processing, openvla_ros.actions, openvla_ros.checkpoint, openvla_ros.commands.predict\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
