"""Ascend OM backend: the `.om` graphs executed with pyACL on a 310P NPU.

Deliberately thin: it only maps the `GraphRuntime` calls onto pyACL. Buffers are device memory
(`acl.rt.malloc`) wrapped in aclDataBuffers; `run` binds them into aclmdlDatasets in the order the
model description declares its inputs and outputs, looked up by name (cached per binding, so the
two alternating decode bindings are built once), and calls `acl.mdl.execute`. The KV cache
therefore stays in device memory for the whole action, and the shared pipeline copies only the
8-byte token id back per decode step.

Over a node's life (configure -> cleanup -> configure, inference on another thread than load):
`acl.init`/`acl.finalize` are process-wide and reference-counted in `acl_process`; each instance
has its own device reference (`acl.rt.set_device`/`reset_device`) and context, and binds that
context on whichever thread calls.

Facts used (CANN pyACL API reference, aclpythondevg_01_*; cited where used): calls returning a
handle return `(handle, ret)` (`acl.rt.malloc`, `acl.rt.create_context`, `acl.mdl.load_from_file`,
`acl.mdl.add_dataset_buffer` -> `(dataset, ret)`, `get_input_index_by_name` -> `(index, ret)`,
`get_input_dynamic_gear_count` -> `(count, ret)`); `acl.rt.memcpy`, `set_input_dynamic_dims`, `set_context`, `free`,
`execute`, `unload`, `destroy_*` return `ret`; `acl.mdl.create_desc`/`create_dataset`/
`acl.create_data_buffer` return the handle alone; the description getters return plain values
(`get_input_name_by_index` -> str, `get_input_data_type` -> aclDataType int,
`get_input_size_by_index` -> int).

The shared LLM graph (`vla_llm`) is one OM model converted with ATC shape gears (`--input_shape`
with -1 on the sequence axis, `--dynamic_dims` "L,L,L;1,1,1", `--input_format=ND`: ATC tool guide,
--dynamic_dims, atlasatc_16_0054 / atlasatcparam_16_0020), so prefill and decode share one copy of
the weights on the device. Per the pyACL dynamic-dims flow (aclpythondevg_0046 "dynamic batch/
resolution/dims", aclpythondevg_0129; aclcppdevg_000115): such a model has one extra input named
"ascend_mbatch_shape_data" (ACL_DYNAMIC_TENSOR_NAME); its index comes from `index, ret =
acl.mdl.get_input_index_by_name(desc, name)` (aclpythondevg_01_0210) and its size from
`get_input_size_by_index`; the application allocates it, adds it to the input dataset and does not
write it; `ret = acl.mdl.set_input_dynamic_dims(model_id, dataset, index, dims)` (aclpythondevg_01_0159)
selects the gear before execute, `dims = {"dimCount": n, "name": "", "dims": [...]}` holding the
full shapes of the dynamic inputs concatenated in `--input_shape` order (the documented example:
input_shape "data:1,1,40,-1;label:1,-1;mask:-1,-1" -> dims (1,1,40,20,1,20,1,1)), and the value must
be one of the converted gears. `gear_count, ret = acl.mdl.get_input_dynamic_gear_count(desc, -1)`
(aclpythondevg_01_0216, index reserved: -1) checks at load that the OM has the manifest's gears.

`acl` is imported lazily, only when this backend is constructed; without CANN the constructor
raises a RuntimeError saying what to install.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from openvla_ros.runtime.acl_process import THREAD_CONTEXTS, acl_process
from openvla_ros.runtime.manifest import GraphSpec, TensorSpec
from openvla_ros.runtime.session import DeviceBuffer, GraphRuntime

# acl.rt.malloc policy and acl.rt.memcpy kinds (aclpythondevg_01_0120 "memcpy": 1 = host to
# device, 2 = device to host; malloc policy 0 = ACL_MEM_MALLOC_HUGE_FIRST, as the recipe allocates
# its input buffers).
ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
# aclDataType values of the manifest's tensor dtypes (aclDataType enum, aclpythondevg_01_0912).
ACL_DTYPES: dict[str, int] = {"float32": 0, "float16": 1, "int64": 9}
_ACL_DTYPE_NAMES = {code: name for name, code in ACL_DTYPES.items()}
DYNAMIC_DIMS_INPUT = "ascend_mbatch_shape_data"  # ACL_DYNAMIC_TENSOR_NAME: the gear-selecting input
CONVERT_REMEDY = "convert the export again with `openvla-ros convert-om` (scripts/convert_onnx_to_om.sh)"


def import_acl() -> Any:
    """The pyACL module, or a RuntimeError explaining how to get it."""
    try:
        import acl  # noqa: PLC0415 - only on machines with CANN
    except ImportError as exc:
        raise RuntimeError(
            "the 'om' backend needs Huawei CANN's pyACL: install the CANN toolkit for your Ascend "
            "NPU (e.g. Ascend310P3), `source /usr/local/Ascend/ascend-toolkit/set_env.sh` so that "
            "`import acl` works, and convert the ONNX export with `openvla-ros convert-om`"
        ) from exc
    return acl


def _check(ret: int, call: str) -> None:
    if ret != 0:
        raise RuntimeError(f"pyACL {call} failed with error code {ret}")


def acl_dtype_name(code: int) -> str:
    return _ACL_DTYPE_NAMES.get(code, f"aclDataType {code}")


class AclGraphs(GraphRuntime):
    """`GraphRuntime` on pyACL: device buffers, models loaded once, execute with bound datasets."""

    backend = "om"
    graph_suffix = ".om"

    def __init__(self, device_id: int = 0) -> None:
        super().__init__()
        self._acl = acl = import_acl()
        self._process = acl_process(acl)
        self._process.acquire()
        self._device_id = device_id
        self._owner = object()  # names this instance's context in THREAD_CONTEXTS without keeping it alive
        self._device_set = False
        self._context = None
        self._models: dict[str, tuple[int, Any]] = {}  # graph -> (model id, model desc)
        # graph -> (input names, output names) in the model description's index order
        self._io_order: dict[str, tuple[list[str], list[str]]] = {}
        # geared graph -> (dims input index, its size, the sequence inputs in --input_shape order)
        self._dims_inputs: dict[str, tuple[int, int, tuple[str, ...]]] = {}
        self._allocations: list[tuple[int, Any]] = []  # (device pointer, aclDataBuffer)
        self._datasets: dict[tuple, tuple[Any, Any]] = {}  # binding key -> (input, output) datasets
        self._closed = False
        try:
            _check(acl.rt.set_device(device_id), f"acl.rt.set_device({device_id})")
            self._device_set = True
            # create_context makes the new context current on this thread (aclpythondevg_01_0074).
            context, ret = acl.rt.create_context(device_id)
            _check(ret, "acl.rt.create_context")
            self._context = context
            THREAD_CONTEXTS.mark_current(self._owner)
        except BaseException:
            self.close()
            raise

    def _bind_thread(self) -> None:
        # An ACL context is current per thread; the policy node loads on one thread and infers on
        # another, and another instance may have made its own context current here meanwhile.
        if not THREAD_CONTEXTS.is_current(self._owner):
            _check(self._acl.rt.set_context(self._context), "acl.rt.set_context")
            THREAD_CONTEXTS.mark_current(self._owner)

    def _load(self, spec: GraphSpec, path: Path) -> None:
        self._bind_thread()
        acl = self._acl
        model_id, ret = acl.mdl.load_from_file(str(path))
        _check(ret, f"acl.mdl.load_from_file({path})")
        desc = acl.mdl.create_desc()
        self._models[spec.name] = (model_id, desc)  # released by close() even if the checks below fail
        _check(acl.mdl.get_desc(desc, model_id), "acl.mdl.get_desc")
        inputs = [(acl.mdl.get_input_name_by_index(desc, i), acl.mdl.get_input_data_type(desc, i),
                   acl.mdl.get_input_size_by_index(desc, i)) for i in range(acl.mdl.get_num_inputs(desc))]
        outputs = [(acl.mdl.get_output_name_by_index(desc, i), acl.mdl.get_output_data_type(desc, i),
                    acl.mdl.get_output_size_by_index(desc, i)) for i in range(acl.mdl.get_num_outputs(desc))]
        tensors = [io for io in inputs if io[0] != DYNAMIC_DIMS_INPUT]
        if spec.sequence_gears:
            self._dims_inputs[spec.name] = self._check_gears(spec, path, desc)
        elif len(tensors) != len(inputs):
            raise ValueError(f"{path}: the OM model was converted with shape gears ({DYNAMIC_DIMS_INPUT} input), "
                             f"the manifest's {spec.name!r} has none; {CONVERT_REMEDY}")
        _check_described(path, "input", tensors, spec.inputs)
        _check_described(path, "output", outputs, spec.outputs)
        self._io_order[spec.name] = ([name for name, _, _ in inputs], [name for name, _, _ in outputs])

    def _check_gears(self, spec: GraphSpec, path: Path, desc: Any) -> tuple[int, int, tuple[str, ...]]:
        """The dims input's (index, size) and the sequence inputs of a geared model; ValueError unless
        it has the manifest's gears."""
        acl = self._acl
        index, ret = acl.mdl.get_input_index_by_name(desc, DYNAMIC_DIMS_INPUT)
        if ret != 0:
            raise ValueError(f"{path}: the OM model has no {DYNAMIC_DIMS_INPUT} input, so it was converted without "
                             f"shape gears; {spec.name!r} needs gears {list(spec.sequence_gears)}; {CONVERT_REMEDY}")
        count, ret = acl.mdl.get_input_dynamic_gear_count(desc, -1)
        _check(ret, "acl.mdl.get_input_dynamic_gear_count")
        if count != len(spec.sequence_gears):
            raise ValueError(f"{path}: the OM model has {count} shape gears, the manifest's {spec.name!r} has "
                             f"{len(spec.sequence_gears)} ({list(spec.sequence_gears)}); {CONVERT_REMEDY}")
        return index, acl.mdl.get_input_size_by_index(desc, index), spec.sequence_inputs

    def _allocate(self, spec: TensorSpec) -> Any:
        self._bind_thread()
        return self._allocate_bytes(spec.nbytes)

    def _allocate_bytes(self, nbytes: int) -> tuple[int, Any]:
        acl = self._acl
        ptr, ret = acl.rt.malloc(nbytes, ACL_MEM_MALLOC_HUGE_FIRST)
        _check(ret, f"acl.rt.malloc({nbytes})")
        data_buffer = acl.create_data_buffer(ptr, nbytes)
        self._allocations.append((ptr, data_buffer))
        return ptr, data_buffer

    def _upload(self, buffer: DeviceBuffer, host: np.ndarray) -> None:
        self._bind_thread()
        ptr, _ = buffer.handle
        n = buffer.spec.nbytes
        _check(self._acl.rt.memcpy(ptr, n, host.ctypes.data, n, ACL_MEMCPY_HOST_TO_DEVICE), "acl.rt.memcpy H2D")

    def _download(self, buffer: DeviceBuffer) -> np.ndarray:
        self._bind_thread()
        ptr, _ = buffer.handle
        host = np.empty(buffer.spec.shape, dtype=buffer.spec.dtype)
        n = buffer.spec.nbytes
        _check(self._acl.rt.memcpy(host.ctypes.data, n, ptr, n, ACL_MEMCPY_DEVICE_TO_HOST), "acl.rt.memcpy D2H")
        return host

    def _execute(self, spec: GraphSpec, inputs: Mapping[str, DeviceBuffer],
                 outputs: Mapping[str, DeviceBuffer]) -> None:
        self._bind_thread()
        model_id, _ = self._models[spec.name]
        in_names, out_names = self._io_order[spec.name]
        dims_input = self._dims_inputs.get(spec.name)
        tensors_in = [inputs[name].handle for name in in_names if name != DYNAMIC_DIMS_INPUT]
        ordered_out = [outputs[name].handle for name in out_names]
        key = (spec.name, tuple(p for p, _ in tensors_in), tuple(p for p, _ in ordered_out))
        if key not in self._datasets:
            ordered_in = list(tensors_in)
            if dims_input is not None:  # each input dataset gets its own dims buffer, which ACL fills
                ordered_in.insert(dims_input[0], self._allocate_bytes(dims_input[1]))
            self._datasets[key] = (self._dataset(ordered_in), self._dataset(ordered_out))
        in_ds, out_ds = self._datasets[key]
        if dims_input is not None:
            dims = [d for name in dims_input[2] for d in spec.input(name).shape]
            _check(self._acl.mdl.set_input_dynamic_dims(model_id, in_ds, dims_input[0],
                                                        {"dimCount": len(dims), "name": "", "dims": dims}),
                   f"acl.mdl.set_input_dynamic_dims({spec.name}, {dims})")
        _check(self._acl.mdl.execute(model_id, in_ds, out_ds), f"acl.mdl.execute({spec.name})")

    def _dataset(self, handles: list[tuple[int, Any]]) -> Any:
        dataset = self._acl.mdl.create_dataset()
        for _, data_buffer in handles:
            # `dataset, ret = acl.mdl.add_dataset_buffer(dataset, data_buffer)` (aclpythondevg_01_0188)
            dataset, ret = self._acl.mdl.add_dataset_buffer(dataset, data_buffer)
            _check(ret, "acl.mdl.add_dataset_buffer")
        return dataset

    def close(self) -> None:
        """Release datasets, buffers, models, the context and the device reference, then this
        instance's hold on the process's pyACL (finalized at exit); idempotent."""
        if self._closed:
            return
        self._closed = True
        acl = self._acl
        failures: list[str] = []

        def call(ret: int, what: str) -> None:
            if ret != 0:
                failures.append(f"{what} -> {ret}")

        if self._context is not None:
            self._bind_thread()
        for in_ds, out_ds in self._datasets.values():
            call(acl.mdl.destroy_dataset(in_ds), "acl.mdl.destroy_dataset")
            call(acl.mdl.destroy_dataset(out_ds), "acl.mdl.destroy_dataset")
        for ptr, data_buffer in self._allocations:
            call(acl.destroy_data_buffer(data_buffer), "acl.destroy_data_buffer")
            call(acl.rt.free(ptr), "acl.rt.free")
        for model_id, desc in self._models.values():
            call(acl.mdl.unload(model_id), "acl.mdl.unload")
            call(acl.mdl.destroy_desc(desc), "acl.mdl.destroy_desc")
        if self._context is not None:
            call(acl.rt.destroy_context(self._context), "acl.rt.destroy_context")
            THREAD_CONTEXTS.mark_current(None)
        if self._device_set:
            call(acl.rt.reset_device(self._device_id), f"acl.rt.reset_device({self._device_id})")
        self._datasets.clear()
        self._allocations.clear()
        self._models.clear()
        self._dims_inputs.clear()
        self._process.release()
        if failures:
            raise RuntimeError(f"pyACL release failed: {'; '.join(failures)}")


def _check_described(path: Path, kind: str, described: list[tuple[str, int, int]],
                     expected: tuple[TensorSpec, ...]) -> None:
    """The model description's (name, aclDataType, size) per input/output must be the manifest's,
    matched by name: binding by position or size alone would not notice two same-size tensors
    (attention_mask / position_ids) declared in another order or under other names."""
    by_name = {name: (dtype, size) for name, dtype, size in described}
    want = {t.name: t for t in expected}
    if sorted(by_name) != sorted(want):
        raise ValueError(f"{path}: the OM model's {kind}s are named {sorted(by_name)}; the manifest expects "
                         f"{sorted(want)} (missing {sorted(set(want) - set(by_name))}, "
                         f"unexpected {sorted(set(by_name) - set(want))})")
    for name, spec in want.items():
        dtype, size = by_name[name]
        if dtype != ACL_DTYPES[spec.dtype]:
            raise ValueError(f"{path}: OM {kind} {name!r} is {acl_dtype_name(dtype)}; the manifest expects "
                             f"{spec.dtype} (convert an export made with the same --dtype)")
        if size != spec.nbytes:
            raise ValueError(f"{path}: OM {kind} {name!r} holds {size} bytes; the manifest expects {spec.nbytes} "
                             f"({spec.dtype}{list(spec.shape)})")
