"""Ascend OM backend: the five `.om` graphs executed with pyACL on a 310P NPU.

Deliberately thin: it only maps the `GraphRuntime` calls onto pyACL. Buffers are device memory
(`acl.rt.malloc`) wrapped in aclDataBuffers; `run` binds them by position into aclmdlDatasets
(cached per binding, so the two alternating decode bindings are built once) and calls
`acl.mdl.execute`. The KV cache therefore stays in device memory for the whole action, and the
shared pipeline copies only the 8-byte token id back per decode step.

`acl` is imported lazily, only when this backend is constructed; without CANN the constructor
raises a RuntimeError saying what to install.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from openvla_ros.runtime.manifest import GraphSpec, TensorSpec
from openvla_ros.runtime.session import DeviceBuffer, GraphRuntime

# pyACL constants (acl.h): memory policy and memcpy directions.
ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
ACL_ERROR_REPEAT_INITIALIZE = 100002


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


def _ret(result: Any) -> int:
    # Some pyACL versions return (handle, ret) from add_dataset_buffer, others just ret.
    return result[1] if isinstance(result, tuple) else result


class AclGraphs(GraphRuntime):
    """`GraphRuntime` on pyACL: device buffers, models loaded once, execute with bound datasets."""

    backend = "om"
    graph_suffix = ".om"

    def __init__(self, device_id: int = 0) -> None:
        super().__init__()
        self._acl = acl = import_acl()
        ret = acl.init()
        if ret not in (0, ACL_ERROR_REPEAT_INITIALIZE):
            raise RuntimeError(f"pyACL acl.init failed with error code {ret}")
        self._device_id = device_id
        _check(acl.rt.set_device(device_id), f"acl.rt.set_device({device_id})")
        self._context, ret = acl.rt.create_context(device_id)
        _check(ret, "acl.rt.create_context")
        self._context_thread = threading.get_ident()
        self._models: dict[str, tuple[int, Any]] = {}  # graph -> (model id, model desc)
        self._allocations: list[tuple[int, Any]] = []  # (device pointer, aclDataBuffer)
        self._datasets: dict[tuple, tuple[Any, Any]] = {}  # binding key -> (input, output) datasets
        self._closed = False

    def _bind_thread(self) -> None:
        # An ACL context is current only on the thread that made it current; the policy node
        # loads on one thread and infers on another, so every call re-binds when the thread changed.
        if threading.get_ident() != self._context_thread:
            _check(self._acl.rt.set_context(self._context), "acl.rt.set_context")
            self._context_thread = threading.get_ident()

    def _load(self, spec: GraphSpec, path: Path) -> None:
        self._bind_thread()
        acl = self._acl
        model_id, ret = acl.mdl.load_from_file(str(path))
        _check(ret, f"acl.mdl.load_from_file({path})")
        desc = acl.mdl.create_desc()
        _check(acl.mdl.get_desc(desc, model_id), "acl.mdl.get_desc")
        self._models[spec.name] = (model_id, desc)
        sizes = (
            [acl.mdl.get_input_size_by_index(desc, i) for i in range(acl.mdl.get_num_inputs(desc))],
            [acl.mdl.get_output_size_by_index(desc, i) for i in range(acl.mdl.get_num_outputs(desc))],
        )
        expected = ([t.nbytes for t in spec.inputs], [t.nbytes for t in spec.outputs])
        if sizes != expected:
            raise ValueError(f"{path}: OM input/output byte sizes {sizes} do not match the manifest {expected}")

    def _allocate(self, spec: TensorSpec) -> Any:
        self._bind_thread()
        acl = self._acl
        ptr, ret = acl.rt.malloc(spec.nbytes, ACL_MEM_MALLOC_HUGE_FIRST)
        _check(ret, f"acl.rt.malloc({spec.nbytes})")
        data_buffer = acl.create_data_buffer(ptr, spec.nbytes)
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

    def _execute(self, spec: GraphSpec, inputs: Mapping[str, DeviceBuffer], outputs: Mapping[str, DeviceBuffer]) -> None:
        self._bind_thread()
        model_id, _ = self._models[spec.name]
        ordered_in = [inputs[t.name].handle for t in spec.inputs]
        ordered_out = [outputs[t.name].handle for t in spec.outputs]
        key = (spec.name, tuple(p for p, _ in ordered_in), tuple(p for p, _ in ordered_out))
        if key not in self._datasets:
            self._datasets[key] = (self._dataset(ordered_in), self._dataset(ordered_out))
        in_ds, out_ds = self._datasets[key]
        _check(self._acl.mdl.execute(model_id, in_ds, out_ds), f"acl.mdl.execute({spec.name})")

    def _dataset(self, handles: list[tuple[int, Any]]) -> Any:
        dataset = self._acl.mdl.create_dataset()
        for _, data_buffer in handles:
            _check(_ret(self._acl.mdl.add_dataset_buffer(dataset, data_buffer)), "acl.mdl.add_dataset_buffer")
        return dataset

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._bind_thread()
        acl = self._acl
        for in_ds, out_ds in self._datasets.values():
            acl.mdl.destroy_dataset(in_ds)
            acl.mdl.destroy_dataset(out_ds)
        for model_id, desc in self._models.values():
            acl.mdl.unload(model_id)
            acl.mdl.destroy_desc(desc)
        for ptr, data_buffer in self._allocations:
            acl.destroy_data_buffer(data_buffer)
            acl.rt.free(ptr)
        acl.rt.destroy_context(self._context)
        acl.rt.reset_device(self._device_id)
        acl.finalize()
