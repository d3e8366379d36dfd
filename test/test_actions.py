"""Action decoding rules: bins, unnormalization, masks and key selection, by hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from openvla_ros.actions import ActionDecoder, dimension_labels

STATS = {
    "two": {"action": {"q01": [-2.0, 10.0], "q99": [2.0, 30.0], "mask": [True, False]}},
    "three": {"action": {"q01": [0.0, 0.0, -1.0], "q99": [1.0, 10.0, 3.0]}},  # no mask: all true
}
# vocab 1064 padded by 64 -> action tokens end at V = 1000.
DECODER = ActionDecoder(STATS, vocab_size=1064, pad_to_multiple_of=64, n_bins=256)


def test_bin_centres_are_midpoints_of_256_uniform_bins():
    centres = DECODER.bin_centers
    assert centres.shape == (255,)
    assert centres[0] == pytest.approx(-1.0 + 1.0 / 255.0)
    assert centres[-1] == pytest.approx(1.0 - 1.0 / 255.0)
    assert centres[127] == pytest.approx(0.0, abs=1e-15)


def test_token_ids_map_to_centres_counting_down_from_the_vocab_end():
    # id V-1 -> centre 0; id V-255 -> centre 254; ids outside the action range clip to the ends.
    _, normalized = DECODER.decode([999, 745], "two")
    np.testing.assert_allclose(normalized, [-1.0 + 1.0 / 255.0, 1.0 - 1.0 / 255.0])
    _, clipped = DECODER.decode([1063, 5], "two")
    np.testing.assert_allclose(clipped, [-1.0 + 1.0 / 255.0, 1.0 - 1.0 / 255.0])


def test_unnormalize_uses_q01_q99_where_masked_and_keeps_the_rest():
    action, normalized = DECODER.decode([872, 872], "two")  # centre index 127 -> 0.0
    assert normalized.tolist() == pytest.approx([0.0, 0.0], abs=1e-15)
    # dim 0: 0.5 * (0 + 1) * (2 - -2) + -2 = 0; dim 1 is unmasked -> stays normalized (0), not 20.
    assert action.tolist() == pytest.approx([0.0, 0.0], abs=1e-12)
    action, _ = DECODER.decode([999, 745], "two")
    assert action[0] == pytest.approx(0.5 * (1.0 / 255.0) * 4.0 - 2.0)
    assert action[1] == pytest.approx(1.0 - 1.0 / 255.0)
    assert action.dtype == np.float64


def test_missing_mask_means_every_dimension_is_unnormalized():
    action, _ = DECODER.decode([745, 745, 999], "three")
    top, bottom = 1.0 - 1.0 / 255.0, -1.0 + 1.0 / 255.0
    expected = [0.5 * (top + 1) * 1.0, 0.5 * (top + 1) * 10.0, 0.5 * (bottom + 1) * 4.0 - 1.0]
    np.testing.assert_allclose(action, expected, rtol=0, atol=1e-12)


def test_action_dim_is_the_length_of_q01():
    assert DECODER.action_dim("two") == 2
    assert DECODER.action_dim("three") == 3


def test_unknown_key_lists_the_available_keys():
    with pytest.raises(ValueError, match=r"'nope'.*\['three', 'two'\]"):
        DECODER.select_key("nope")


def test_key_may_be_omitted_only_when_there_is_exactly_one():
    with pytest.raises(ValueError, match="2 norm-stats keys"):
        DECODER.select_key(None)
    single = ActionDecoder({"only": STATS["two"]}, vocab_size=1064, pad_to_multiple_of=64)
    assert single.select_key(None) == "only"


def test_wrong_token_count_is_an_error():
    with pytest.raises(ValueError, match="got 3 action tokens"):
        DECODER.decode([900, 900, 900], "two")


def test_dimension_labels():
    assert dimension_labels(7) == ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    assert dimension_labels(2) == ["a0", "a1"]
