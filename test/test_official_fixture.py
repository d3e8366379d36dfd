"""Our implementation vs the official OpenVLA code: all 50 reference cases, token for token."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from openvla_ros.processing import ImageProcessor, PromptTokenizer
from conftest import SHARED_FIXTURE

CASES = (json.loads((SHARED_FIXTURE / "reference.json").read_text())["cases"]
         if (SHARED_FIXTURE / "reference.json").is_file() else [])
CASE_IDS = [f"{c['image']}-{c['instruction'][:24].replace(' ', '_')}-{c['unnorm_key']}" for c in CASES]


@pytest.fixture(scope="module")
def policies(official_fixture):
    from openvla_ros.model.torch_policy import TorchPolicy

    keys = sorted({case["unnorm_key"] for case in CASES})
    return {key: TorchPolicy.load(official_fixture / "ckpt", unnorm_key=key) for key in keys}


def _image(official_fixture, name: str) -> np.ndarray:
    return np.asarray(Image.open(official_fixture / name).convert("RGB"))


def test_fixture_has_all_cases(official_fixture):
    assert len(CASES) == 50


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_official_case_is_reproduced(case, official_fixture, policies):
    prediction = policies[case["unnorm_key"]].predict(_image(official_fixture, case["image"]), case["instruction"])
    assert prediction.prompt_ids == case["prompt_ids"]
    assert prediction.action_token_ids == case["action_token_ids"]
    np.testing.assert_allclose(prediction.action, case["action"], rtol=0, atol=1e-5)
    assert set(prediction.timings_ms) >= {"preprocess", "vision", "prefill", "decode", "total"}


@pytest.mark.parametrize("name", sorted({c["image"] for c in CASES}))
def test_pixel_values_match_the_official_processor(name, official_fixture):
    expected = next(c["pixel_values_sum"] for c in CASES if c["image"] == name)
    pixels = ImageProcessor.from_pretrained(official_fixture / "ckpt").preprocess(_image(official_fixture, name))
    assert pixels.shape == (1, 6, 224, 224) and pixels.dtype == np.float32
    assert float(pixels.astype(np.float64).sum()) == pytest.approx(expected, rel=0, abs=1e-6)


def test_prompt_ids_match_the_official_processor(official_fixture):
    tokenizer = PromptTokenizer.from_pretrained(official_fixture / "ckpt")
    for case in CASES:
        assert tokenizer.encode(case["instruction"]) == case["prompt_ids"], case["instruction"]
