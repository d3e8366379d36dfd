"""The real OM adapter (`AclGraphs`) and the shared pipeline over the strict pyACL contract double
(test/pyacl_double.py), on exports converted by convert_onnx_to_om.sh with the double's stand-in
atc: the same action tokens as the ONNX Runtime backend, 16 bytes across the boundary per decode
step, configure/cleanup/configure in one process, inference on another thread, models whose
inputs/outputs differ in name, dtype or size refused, nothing left allocated after close.

The double refuses what pyACL documents as errors (a call on a thread without a current context,
an execute under another context than the model's, a second acl.init, ...), so these tests fail if
the adapter breaks one of those rules. The first tests check that the double itself is strict."""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import pyacl_double as acl_double
from openvla_ros.policy import load_policy
from openvla_ros.runtime.acl_process import acl_process
from openvla_ros.runtime.manifest import TensorSpec

INSTRUCTION = "put the bowl on the plate"
ZERO_OUTSTANDING = {"device_allocations": 0, "device_bytes": 0, "data_buffers": 0, "datasets": 0, "models": 0,
                    "descs": 0, "contexts": 0, "device_references": 0}


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [np.zeros((224, 224, 3), np.uint8), rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)]


def _run_on_thread(fn):
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # re-raised on the calling thread
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


# --- the double is strict ------------------------------------------------------------------------

def test_double_follows_the_documented_process_and_context_rules(pyacl):
    assert pyacl.rt.malloc(16, 0) == (0, acl_double.ACL_ERROR_UNINITIALIZE)
    assert pyacl.finalize() == acl_double.ACL_ERROR_REPEAT_FINALIZE
    assert pyacl.init() == acl_double.ACL_SUCCESS
    assert pyacl.init() == acl_double.ACL_ERROR_REPEAT_INITIALIZE
    assert pyacl.rt.malloc(16, 0) == (0, acl_double.ACL_ERROR_RT_CONTEXT_NULL)  # no context on this thread
    assert pyacl.rt.set_device(1) == acl_double.ACL_ERROR_RT_INVALID_DEVICEID
    assert pyacl.rt.set_device(0) == 0
    context, ret = pyacl.rt.create_context(0)
    assert ret == 0 and context
    ptr, ret = pyacl.rt.malloc(16, 0)
    assert ret == 0
    # another thread has no current context until it sets one
    assert _run_on_thread(lambda: pyacl.rt.malloc(16, 0)) == (0, acl_double.ACL_ERROR_RT_CONTEXT_NULL)
    assert _run_on_thread(lambda: (pyacl.rt.set_context(context), pyacl.rt.malloc(16, 0)[1])) == (0, 0)
    host = np.arange(2, dtype=np.int64)
    wrong_kind = pyacl.rt.memcpy(ptr, 16, host.ctypes.data, 16, acl_double.ACL_MEMCPY_DEVICE_TO_HOST)
    assert wrong_kind == acl_double.ACL_ERROR_INVALID_PARAM
    assert pyacl.rt.memcpy(ptr, 16, host.ctypes.data, 32, acl_double.ACL_MEMCPY_HOST_TO_DEVICE) == \
        acl_double.ACL_ERROR_INVALID_PARAM  # count > dest_max
    assert pyacl.rt.memcpy(ptr, 16, host.ctypes.data, 16, acl_double.ACL_MEMCPY_HOST_TO_DEVICE) == 0
    back = np.zeros(2, dtype=np.int64)
    assert pyacl.rt.memcpy(back.ctypes.data, 16, ptr, 16, acl_double.ACL_MEMCPY_DEVICE_TO_HOST) == 0
    assert back.tolist() == [0, 1]
    buffer = pyacl.create_data_buffer(ptr, 16)
    dataset = pyacl.mdl.create_dataset()
    assert pyacl.mdl.add_dataset_buffer(dataset, buffer) == (dataset, 0)
    assert pyacl.rt.free(ptr) == 0
    assert pyacl.violations == [f"device memory {ptr:#x} freed while a live data buffer points into it"]
    assert pyacl.outstanding()["device_allocations"] == 1  # the other thread's 16 bytes


def test_double_executes_the_stand_in_om_by_its_onnx_graph(pyacl, tiny_om_export):
    assert pyacl.init() == 0 and pyacl.rt.set_device(0) == 0
    pyacl.rt.create_context(0)
    assert pyacl.mdl.load_from_file(str(tiny_om_export / "missing.om")) == (0, acl_double.ACL_ERROR_INVALID_FILE)
    assert pyacl.mdl.load_from_file(str(tiny_om_export / "manifest.json"))[1] == acl_double.ACL_ERROR_PARSE_FILE
    model_id, ret = pyacl.mdl.load_from_file(str(tiny_om_export / "projector.om"))
    assert ret == 0
    desc = pyacl.mdl.create_desc()
    assert pyacl.mdl.get_desc(desc, model_id) == 0
    names = [pyacl.mdl.get_input_name_by_index(desc, i) for i in range(pyacl.mdl.get_num_inputs(desc))]
    assert names == ["patch_features"]
    assert pyacl.mdl.get_input_data_type(desc, 0) == 0  # ACL_FLOAT
    # a static model has no dynamic-dims input and no gears
    assert (pyacl.mdl.get_input_index_by_name(desc, "ascend_mbatch_shape_data")
            == (0, acl_double.ACL_ERROR_INVALID_PARAM))
    assert pyacl.mdl.get_input_dynamic_gear_count(desc, -1) == (0, 0)
    # a dataset that does not fit the model is refused without running it
    assert pyacl.mdl.execute(model_id, pyacl.mdl.create_dataset(), pyacl.mdl.create_dataset()) == \
        acl_double.ACL_ERROR_INVALID_PARAM
    assert pyacl.executions["projector"] == 0


def _device_buffer(pyacl, content: int | np.ndarray) -> int:
    """A data buffer over new device memory: `content` bytes, or a host array copied in."""
    nbytes = content if isinstance(content, int) else content.nbytes
    ptr, ret = pyacl.rt.malloc(nbytes, 0)
    assert ret == 0
    if not isinstance(content, int):
        assert pyacl.rt.memcpy(ptr, nbytes, content.ctypes.data, nbytes, acl_double.ACL_MEMCPY_HOST_TO_DEVICE) == 0
    return pyacl.create_data_buffer(ptr, nbytes)


def test_double_implements_the_dynamic_dims_contract(pyacl, tiny_om_export):
    """The geared LLM model as pyACL documents it: one extra input "ascend_mbatch_shape_data", the
    dynamic inputs described at the largest gear, the gear chosen per dataset with
    set_input_dynamic_dims (the full shapes of the dynamic inputs concatenated), and only a
    converted gear accepted."""
    manifest = json.loads((tiny_om_export / "manifest.json").read_text())
    length = manifest["sequence"]["length"]
    assert pyacl.init() == 0 and pyacl.rt.set_device(0) == 0
    pyacl.rt.create_context(0)
    model_id, ret = pyacl.mdl.load_from_file(str(tiny_om_export / "vla_llm.om"))
    assert ret == 0
    desc = pyacl.mdl.create_desc()
    assert pyacl.mdl.get_desc(desc, model_id) == 0
    count = pyacl.mdl.get_num_inputs(desc)
    names = [pyacl.mdl.get_input_name_by_index(desc, i) for i in range(count)]
    assert names == ["input_ids", "patch_embeds", "attention_mask", "position_ids", "past_kv",
                     "ascend_mbatch_shape_data"]
    index, ret = pyacl.mdl.get_input_index_by_name(desc, "ascend_mbatch_shape_data")
    assert (index, ret) == (5, 0)
    assert pyacl.mdl.get_input_dynamic_gear_count(desc, -1) == (2, 0)
    assert pyacl.mdl.get_input_dynamic_gear_count(desc, 0)[1] == acl_double.ACL_ERROR_INVALID_PARAM  # reserved: -1
    assert pyacl.mdl.get_input_size_by_index(desc, 0) == length * 8  # input_ids at the largest gear
    sizes = [pyacl.mdl.get_input_size_by_index(desc, i) for i in range(count)]
    outputs = [pyacl.mdl.get_output_size_by_index(desc, i) for i in range(pyacl.mdl.get_num_outputs(desc))]

    def dataset(contents):
        ds = pyacl.mdl.create_dataset()
        for content in contents:
            ds, ret = pyacl.mdl.add_dataset_buffer(ds, _device_buffer(pyacl, content))
            assert ret == 0
        return ds

    def one(value: int) -> np.ndarray:
        return np.array([[value]], dtype=np.int64)

    # the decode gear: input_ids, attention_mask, position_ids hold one int64 each
    step = dataset([one(1), sizes[1], one(1), one(length), sizes[4], sizes[5]])
    out = dataset(outputs)
    assert pyacl.mdl.execute(model_id, step, out) == acl_double.ACL_ERROR_INVALID_PARAM  # no gear chosen yet
    assert pyacl.violations.pop().endswith("without set_input_dynamic_dims on its dataset")

    def dims(values):
        return {"dimCount": len(values), "name": "", "dims": values}

    for bad in ([1, 2, 1, 2, 1, 2], [1, 1, 1, 1], [1, length, 1, length, 1, length, 1]):  # not one of the gears
        assert pyacl.mdl.set_input_dynamic_dims(model_id, step, index, dims(bad)) == acl_double.ACL_ERROR_INVALID_PARAM
    assert pyacl.mdl.set_input_dynamic_dims(model_id, step, 2, dims([1, 1] * 3)) == \
        acl_double.ACL_ERROR_INVALID_PARAM  # not the dims input's index
    assert pyacl.mdl.set_input_dynamic_dims(model_id, step, index, {"dims": [1, 1] * 3}) == \
        acl_double.ACL_ERROR_INVALID_PARAM  # not an aclmdlIODims dict
    assert pyacl.mdl.set_input_dynamic_dims(model_id, step, index, dims([1, 1] * 3)) == 0
    assert pyacl.mdl.execute(model_id, step, out) == 0
    # the prefill gear needs the L-long buffers: the decode dataset is too small for it
    assert pyacl.mdl.set_input_dynamic_dims(model_id, step, index, dims([1, length] * 3)) == 0
    assert pyacl.mdl.execute(model_id, step, out) == acl_double.ACL_ERROR_INVALID_PARAM
    assert pyacl.executions["vla_llm"] == 1


# --- the adapter and the shared pipeline on the double --------------------------------------------

@pytest.mark.parametrize("size", ["tiny", "small"])
def test_om_backend_matches_onnxruntime_with_16_bytes_per_decode_step(pyacl, size, request):
    onnx_dir = request.getfixturevalue(f"{size}_onnx_export")
    om_dir = request.getfixturevalue(f"{size}_om_export")
    reference = load_policy("onnxruntime", onnx_dir)
    policy = load_policy("om", om_dir)
    try:
        assert policy.backend == "om"
        for image in _images():
            want = reference.predict(image, INSTRUCTION)
            copies_before = len(pyacl.copies)
            got = policy.predict(image, INSTRUCTION)
            assert got.action_token_ids == want.action_token_ids
            assert got.prompt_ids == want.prompt_ids
            np.testing.assert_array_equal(got.action, want.action)
            steps = policy.last_generation.decode_step_transfers
            assert len(steps) == policy.action_dim - 1
            for step in steps:
                assert step.to_runtime == {"cache_position": 8}
                assert set(step.to_host.values()) == {8} and len(step.to_host) == 1  # the next token id
                assert step.total == 16
                assert sum(step.bytes_of(name) for name in policy.kv_buffer_names) == 0
            # the double's own memcpy log agrees: the decode steps' copies are 8 bytes each way
            copies = pyacl.copies[copies_before:]
            decode_copies = copies[-2 * len(steps):]
            assert decode_copies == [(acl_double.ACL_MEMCPY_HOST_TO_DEVICE, 8),
                                     (acl_double.ACL_MEMCPY_DEVICE_TO_HOST, 8)] * len(steps)
        # one model serves the prefill and every decode step, each run selecting its gear
        assert pyacl.executions["vla_llm"] == len(_images()) * policy.action_dim
        assert pyacl.calls["acl.mdl.set_input_dynamic_dims"] == pyacl.executions["vla_llm"]
    finally:
        reference.close()
        policy.close()
    assert pyacl.outstanding() == ZERO_OUTSTANDING
    assert pyacl.violations == []


def test_configure_cleanup_configure_initializes_pyacl_once(pyacl, tiny_om_export):
    image = _images()[1]
    tokens = []
    for _ in range(2):  # what a lifecycle configure -> cleanup -> configure does
        policy = load_policy("om", tiny_om_export)
        tokens.append(policy.predict(image, INSTRUCTION).action_token_ids)
        policy.close()
        assert pyacl.outstanding() == ZERO_OUTSTANDING
    assert tokens[0] == tokens[1]
    assert pyacl.calls["acl.init"] == 1 and pyacl.calls["acl.finalize"] == 0
    process = acl_process(pyacl)
    assert process.users == 0
    process.finalize_at_exit()  # what the atexit handler does
    process.finalize_at_exit()
    assert pyacl.calls["acl.finalize"] == 1
    with pytest.raises(RuntimeError, match="already finalized"):
        load_policy("om", tiny_om_export)
    assert pyacl.violations == []


def test_pyacl_initialized_by_another_library_is_left_to_it(pyacl, tiny_om_export):
    assert pyacl.init() == 0  # e.g. ACLLite, earlier in the process
    policy = load_policy("om", tiny_om_export)
    policy.predict(_images()[0], INSTRUCTION)
    policy.close()
    acl_process(pyacl).finalize_at_exit()
    assert pyacl.calls["acl.finalize"] == 0  # its finalize belongs to the library that initialized


def test_a_device_that_does_not_exist_is_refused_and_released(pyacl, tiny_om_export):
    with pytest.raises(RuntimeError, match=r"acl\.rt\.set_device\(3\) failed with error code 107001"):
        load_policy("om", tiny_om_export, device_id=3)
    assert acl_process(pyacl).users == 0
    assert pyacl.outstanding() == ZERO_OUTSTANDING


def test_inference_on_another_thread_and_two_instances(pyacl, tiny_om_export):
    image = _images()[1]
    first = load_policy("om", tiny_om_export)  # loaded on this thread
    try:
        want = first.predict(image, INSTRUCTION).action_token_ids
        assert _run_on_thread(lambda: first.predict(image, INSTRUCTION).action_token_ids) == want
        second = load_policy("om", tiny_om_export)  # its context is now current on this thread
        try:
            assert first.predict(image, INSTRUCTION).action_token_ids == want  # re-binds its own context
            assert second.predict(image, INSTRUCTION).action_token_ids == want
            assert _run_on_thread(lambda: second.predict(image, INSTRUCTION).action_token_ids) == want
        finally:
            second.close()
        assert first.predict(image, INSTRUCTION).action_token_ids == want
    finally:
        first.close()
    assert pyacl.calls["acl.rt.set_context"] >= 3
    assert pyacl.outstanding() == ZERO_OUTSTANDING
    assert pyacl.violations == []


# --- models that do not fit the manifest are refused by name --------------------------------------

def _variant(om_dir: Path, tmp_path: Path, graph: str, edit) -> Path:
    """A copy of `om_dir` whose `graph` runs an edited copy of its ONNX graph."""
    variant = tmp_path / "om_variant"
    shutil.copytree(om_dir, variant)
    onnx_path = Path(__import__("json").loads((om_dir / f"{graph}.om").read_text())["onnx"])
    model = onnx.load(str(onnx_path))
    edit(model.graph)
    edited = tmp_path / f"{graph}_edited.onnx"
    onnx.save(model, str(edited))
    acl_double.write_om_stand_in(edited, variant / f"{graph}.om", *_gear_options(om_dir, graph))
    return variant


def _gear_options(om_dir: Path, graph: str, gears: tuple[int, ...] | None = None) -> tuple:
    """The stand-in atc's (input_shape, dynamic_dims, input_format) for `graph`, as the conversion
    script passes them (with other `gears` if given); (None, None, None) for a static graph."""
    spec = json.loads((om_dir / "manifest.json").read_text())["graphs"][graph]
    dynamic = spec.get("sequence_inputs", [])
    if not dynamic:
        return None, None, None
    gears = gears or spec["sequence_gears"]
    return (";".join(f"{name}:1,-1" for name in dynamic),
            ";".join(",".join([str(g)] * len(dynamic)) for g in gears), "ND")


def _rename_input(graph, old: str, new: str) -> None:
    next(i for i in graph.input if i.name == old).name = new
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]


def _input_as_fp16(graph, name: str) -> None:
    tensor = next(i for i in graph.input if i.name == name)
    tensor.type.tensor_type.elem_type = TensorProto.FLOAT16
    for node in graph.node:
        node.input[:] = [f"{name}_fp32" if n == name else n for n in node.input]
    graph.node.insert(0, helper.make_node("Cast", [name], [f"{name}_fp32"], to=TensorProto.FLOAT))


def _halve_tokens(graph, name: str) -> None:
    dim = next(i for i in graph.input if i.name == name).type.tensor_type.shape.dim[1]
    dim.dim_value //= 2


def _swap_inputs(graph, a: str, b: str) -> None:
    inputs = list(graph.input)
    i, j = [next(k for k, t in enumerate(inputs) if t.name == n) for n in (a, b)]
    inputs[i], inputs[j] = inputs[j], inputs[i]
    del graph.input[:]
    graph.input.extend(inputs)


@pytest.mark.parametrize("edit, message", [
    (lambda g: _rename_input(g, "patch_features", "features"),
     r"projector\.om: the OM model's inputs are named \['features'\]; the manifest expects \['patch_features'\]"),
    (lambda g: _input_as_fp16(g, "patch_features"),
     r"projector\.om: OM input 'patch_features' is float16; the manifest expects float32"),
    (lambda g: _halve_tokens(g, "patch_features"),
     r"projector\.om: OM input 'patch_features' holds \d+ bytes; the manifest expects \d+"),
])
def test_models_with_wrong_name_dtype_or_size_are_refused(pyacl, tiny_om_export, tmp_path, edit, message):
    variant = _variant(tiny_om_export, tmp_path, "projector", edit)
    with pytest.raises(ValueError, match=message):
        load_policy("om", variant)
    assert pyacl.outstanding() == ZERO_OUTSTANDING  # the partly loaded runtime was released
    assert pyacl.violations == []


def test_inputs_are_bound_by_name_not_position(pyacl, tiny_onnx_export, tiny_om_export, tmp_path):
    # attention_mask and position_ids have the same size: only names tell them apart
    variant = _variant(tiny_om_export, tmp_path, "vla_llm",
                       lambda g: _swap_inputs(g, "attention_mask", "position_ids"))
    reference = load_policy("onnxruntime", tiny_onnx_export)
    policy = load_policy("om", variant)
    try:
        image = _images()[1]
        assert policy.predict(image, INSTRUCTION).action_token_ids == \
            reference.predict(image, INSTRUCTION).action_token_ids
    finally:
        policy.close()
        reference.close()
    assert pyacl.outstanding() == ZERO_OUTSTANDING


def test_a_sequence_length_that_is_not_a_gear_is_refused(pyacl, tiny_om_export):
    from openvla_ros.runtime.manifest import Manifest
    from openvla_ros.runtime.om_backend import AclGraphs

    manifest = Manifest.load(tiny_om_export)
    spec = manifest.graphs["vla_llm"]
    runtime = AclGraphs()
    try:
        runtime.load_graph(spec, tiny_om_export / "vla_llm.om")
        bound = {t.name: runtime.allocate(t) for t in spec.at_sequence(1).inputs}
        bound.update({name: runtime.allocate(TensorSpec(name, (1, 5), "int64"))
                      for name in ("input_ids", "attention_mask", "position_ids")})
        out = {t.name: runtime.allocate(t) for t in spec.outputs}
        with pytest.raises(ValueError, match=r"vla_llm': sequence length 5 is not one of its shape gears "
                                             rf"\[{manifest.layout.length}, 1\]"):
            runtime.run("vla_llm", bound, out)
        bound["attention_mask"] = runtime.allocate(TensorSpec("attention_mask", (1, 1), "int64"))
        with pytest.raises(ValueError, match="bound with different lengths"):
            runtime.run("vla_llm", bound, out)
        assert pyacl.calls["acl.mdl.execute"] == 0
    finally:
        runtime.close()
    assert pyacl.outstanding() == ZERO_OUTSTANDING


@pytest.mark.parametrize("gears, message", [
    (None, r"vla_llm\.om: the OM model has no ascend_mbatch_shape_data input, so it was converted without shape "
           r"gears; 'vla_llm' needs gears \[\d+, 1\]"),
    ((1, 2, 3), r"vla_llm\.om: the OM model has 3 shape gears, the manifest's 'vla_llm' has 2"),
])
def test_an_llm_model_without_the_manifest_gears_is_refused(pyacl, tiny_om_export, tmp_path, gears, message):
    variant = shutil.copytree(tiny_om_export, tmp_path / "variant")
    onnx_path = json.loads((tiny_om_export / "vla_llm.om").read_text())["onnx"]
    options = (None, None, None) if gears is None else _gear_options(tiny_om_export, "vla_llm", gears)
    if gears is None:  # converted without gears: the ONNX graph's sequence axis fixed to L
        model = onnx.load(onnx_path)
        length = json.loads((tiny_om_export / "manifest.json").read_text())["sequence"]["length"]
        for value in model.graph.input:
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param == "sequence":
                    dim.Clear()
                    dim.dim_value = length
        onnx_path = tmp_path / "static_llm.onnx"
        onnx.save(model, str(onnx_path))
    acl_double.write_om_stand_in(onnx_path, variant / "vla_llm.om", *options)
    with pytest.raises(ValueError, match=message):
        load_policy("om", variant)
    assert pyacl.outstanding() == ZERO_OUTSTANDING


def test_stand_in_atc_refuses_gear_options_atc_refuses(tmp_path):
    onnx_path = tmp_path / "g.onnx"
    onnx_path.write_text("unused")
    with pytest.raises(ValueError, match="needs --input_shape and --input_format=ND"):
        acl_double.write_om_stand_in(onnx_path, tmp_path / "g.om", "x:1,-1", "4;8", None)
    with pytest.raises(ValueError, match="1 gears; ATC takes 2..100"):
        acl_double.write_om_stand_in(onnx_path, tmp_path / "g.om", "x:1,-1", "4", "ND")
    with pytest.raises(ValueError, match="each gear needs 2 positive values"):
        acl_double.write_om_stand_in(onnx_path, tmp_path / "g.om", "x:1,-1;y:-1", "4;8", "ND")
