"""OpenVLA-OFT on the OM backend: an OFT export converted by convert_onnx_to_om.sh with the pyACL
double's stand-in atc runs through the real `AclGraphs` adapter and the shared `ChunkPipeline`, and
gives the ONNX Runtime backend's chunks, with the same (small) traffic across the boundary, the
double's contract kept and nothing left allocated."""
from __future__ import annotations

import numpy as np
import pytest

import pyacl_double as acl_double
from openvla_ros.policy import load_policy
from openvla_ros.runtime.manifest import Manifest

INSTRUCTIONS = ("put the bowl on the plate", "open the top drawer")


@pytest.fixture(scope="session")
def tiny_oft_om_export(tiny_oft_onnx_export, tmp_path_factory):
    from om_stand_in import convert_with_stand_in_atc

    return convert_with_stand_in_atc(tiny_oft_onnx_export, tmp_path_factory.mktemp("tiny_oft_om") / "om",
                                     "--allow-fp32")


def _images(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)]


def test_oft_conversion_keeps_the_family_and_every_graph(tiny_oft_om_export):
    manifest = Manifest.load(tiny_oft_om_export)
    assert manifest.family == "oft" and manifest.chunk_layout.chunk == 8
    for name in manifest.graph_names:
        assert manifest.graph_path(name, ".om").is_file(), name


def test_om_backend_gives_onnxruntimes_chunks(pyacl, tiny_oft_onnx_export, tiny_oft_om_export):
    reference = load_policy("onnxruntime", tiny_oft_onnx_export)
    policy = load_policy("om", tiny_oft_om_export)
    try:
        assert policy.backend == "om"
        for seed, instruction in enumerate(INSTRUCTIONS * 2):
            images, state = _images(seed), np.random.default_rng(seed).uniform(-0.5, 0.5, 8)
            want = reference.predict_chunk(images, instruction, state)
            copies_before = len(pyacl.copies)
            got = policy.predict_chunk(images, instruction, state)
            assert got.prompt_ids == want.prompt_ids
            assert got.actions.shape == (8, 7)
            np.testing.assert_array_equal(got.actions, want.actions)
            # the same buffer plan on both backends: only the chunk comes back to the host
            om, ort = policy.last_result.transfers, reference.last_result.transfers
            assert om.to_host == ort.to_host == {"normalized_actions": 8 * 7 * 4}
            assert om.to_runtime == ort.to_runtime
            # and the double's own memcpy log agrees: one device-to-host copy per chunk
            back = [size for kind, size in pyacl.copies[copies_before:] if kind == acl_double.ACL_MEMCPY_DEVICE_TO_HOST]
            assert back == [8 * 7 * 4]
        assert pyacl.executions["oft_llm"] == len(INSTRUCTIONS) * 2  # one pass per chunk, no decode loop
        assert pyacl.executions["vision_backbone"] == 2 * len(INSTRUCTIONS) * 2  # once per image
    finally:
        reference.close()
        policy.close()
    assert all(count == 0 for count in pyacl.outstanding().values()), pyacl.outstanding()
    assert pyacl.violations == []
