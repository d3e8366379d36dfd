"""Our OpenVLA-OFT reference vs the official OFT code: all reference cases, 8 x 7 actions to 1e-5."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_OFT_FIXTURE

REFERENCE = (json.loads((SHARED_OFT_FIXTURE / "reference.json").read_text())
             if (SHARED_OFT_FIXTURE / "reference.json").is_file() else {"cases": []})
CASES = REFERENCE["cases"]
CASE_IDS = [f"{c['agentview'].split('_')[0]}-{c['instruction'][:24].replace(' ', '_')}" for c in CASES]
SPACE_TOKEN_ID = 29871


@pytest.fixture(scope="module")
def policy(official_oft_fixture):
    from openvla_ros.policy import load_policy

    return load_policy("torch", official_oft_fixture / "ckpt")


def case_images(fixture, case) -> list[np.ndarray]:
    return [np.asarray(Image.open(fixture / case[key]).convert("RGB")) for key in ("agentview", "wrist")]


def test_fixture_has_all_cases(official_oft_fixture):
    assert len(CASES) == 9


def test_constants_come_from_the_component_weights(policy):
    layout = policy.layout
    assert (layout.chunk, layout.action_dim, layout.proprio_dim, layout.num_images) == (
        REFERENCE["chunk"], REFERENCE["action_dim"], REFERENCE["proprio_dim"], REFERENCE["num_images"])
    assert len(policy.model.action_head.model.mlp_resnet_blocks) == 2


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_official_case_is_reproduced(case, official_oft_fixture, policy):
    prediction = policy.predict_chunk(case_images(official_oft_fixture, case), case["instruction"], case["state"])
    # The reference holds the processor's ids; OFT's predict_action then appends the space token.
    assert prediction.prompt_ids == case["prompt_ids"] + [SPACE_TOKEN_ID]
    np.testing.assert_allclose(prediction.normalized_proprio, case["normalized_proprio"], rtol=0, atol=1e-12)
    assert prediction.actions.shape == (8, 7)
    np.testing.assert_allclose(prediction.actions, case["actions"], rtol=0, atol=1e-5)


def test_wrong_inputs_are_refused_with_the_expected_shape(official_oft_fixture, policy):
    case = CASES[0]
    images = case_images(official_oft_fixture, case)
    with pytest.raises(ValueError, match="got 1 images; this OFT model takes 2"):
        policy.predict_chunk(images[:1], case["instruction"], case["state"])
    with pytest.raises(ValueError, match=r"expected 8 values"):
        policy.predict_chunk(images, case["instruction"], case["state"][:7])
    with pytest.raises(ValueError, match="takes the robot state"):
        policy.predict_chunk(images, case["instruction"], None)
