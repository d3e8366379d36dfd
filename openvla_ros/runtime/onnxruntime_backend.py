"""ONNX Runtime backend: every buffer is an OrtValue preallocated on the execution provider's device,
bound with IO binding, so graph outputs are written in place and fed to the next graph uncopied.

Execution providers are chosen by short name: `cpu` (default), `cuda`, `cann`. The CPU
provider's OrtValues live in host RAM, but they are still only touched through the `GraphRuntime`
copy calls, so the transfer accounting means the same thing as on a device.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf, NoSuchFile

from openvla_ros.model_files import InvalidModelFile
from openvla_ros.runtime.manifest import MANIFEST_REMEDY, SEQUENCE_AXIS, GraphSpec, TensorSpec
from openvla_ros.runtime.session import DeviceBuffer, GraphRuntime

# short name -> (execution provider, OrtValue device type)
PROVIDERS: dict[str, tuple[str, str]] = {
    "cpu": ("CPUExecutionProvider", "cpu"),
    "cuda": ("CUDAExecutionProvider", "cuda"),
    "cann": ("CANNExecutionProvider", "cann"),
}
# ONNX Runtime's errors for a graph file it cannot read (others, e.g. a provider failing, pass through).
_UNREADABLE_GRAPH = (InvalidProtobuf, InvalidGraph, NoSuchFile, Fail)
_ONNX_TO_NUMPY = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}


class OnnxRuntimeGraphs(GraphRuntime):
    """`GraphRuntime` on ONNX Runtime sessions with IO binding."""

    backend = "onnxruntime"
    graph_suffix = ".onnx"

    def __init__(self, provider: str = "cpu", device_id: int = 0, intra_op_threads: int | None = None) -> None:
        super().__init__()
        if provider not in PROVIDERS:
            raise ValueError(f"unknown ONNX Runtime provider {provider!r}; expected one of {sorted(PROVIDERS)}")
        ep, self._device = PROVIDERS[provider]
        if ep not in ort.get_available_providers():
            raise RuntimeError(
                f"ONNX Runtime provider {ep} is not available in this onnxruntime build "
                f"(available: {ort.get_available_providers()}); install the matching onnxruntime package"
            )
        self.provider = provider
        self._providers = ([ep] if ep == "CPUExecutionProvider"
                           else [(ep, {"device_id": device_id}), "CPUExecutionProvider"])
        self._device_id = device_id
        self._options = ort.SessionOptions()
        self._options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The graphs run one after another: a session's threads spin between its ops (no wake-up per
        # op) but stop when its run ends, so the idle sessions' pools never steal the running one's
        # cores (always-spinning pools measured 2x slower, never-spinning ones ~15% slower).
        self._options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        self._options.add_session_config_entry("session.force_spinning_stop", "1")
        if intra_op_threads is not None:
            self._options.intra_op_num_threads = int(intra_op_threads)
        self._sessions: dict[str, ort.InferenceSession] = {}

    def _load(self, spec: GraphSpec, path: Path) -> None:
        try:
            session = ort.InferenceSession(str(path), self._options, providers=self._providers)
        except _UNREADABLE_GRAPH as exc:
            # ONNX Runtime's own message (e.g. INVALID_PROTOBUF) names neither the problem's cause nor a remedy.
            reason = str(exc).strip().splitlines()[0][:300]
            what = "not ONNX: ONNX Runtime cannot parse it" if isinstance(exc, InvalidProtobuf) \
                else "not a loadable ONNX graph"
            raise InvalidModelFile(path, f"{what} (truncated or damaged? {reason})", MANIFEST_REMEDY) from exc
        _check_declared(spec, path, "input", spec.inputs, session.get_inputs())
        _check_declared(spec, path, "output", spec.outputs, session.get_outputs())
        self._sessions[spec.name] = session

    def _allocate(self, spec: TensorSpec) -> Any:
        return ort.OrtValue.ortvalue_from_shape_and_type(list(spec.shape), np.dtype(spec.dtype), self._device,
                                                         self._device_id)

    def _upload(self, buffer: DeviceBuffer, host: np.ndarray) -> None:
        buffer.handle.update_inplace(host)

    def _download(self, buffer: DeviceBuffer) -> np.ndarray:
        # On the CPU provider OrtValue.numpy() aliases the buffer; the copy keeps results stable
        # when the buffer is reused by the next run.
        return np.array(buffer.handle.numpy(), copy=True)

    def _execute(self, spec: GraphSpec, inputs: Mapping[str, DeviceBuffer],
                 outputs: Mapping[str, DeviceBuffer]) -> None:
        session = self._sessions[spec.name]
        binding = session.io_binding()
        for name, buffer in inputs.items():
            binding.bind_ortvalue_input(name, buffer.handle)
        for name, buffer in outputs.items():
            binding.bind_ortvalue_output(name, buffer.handle)
        session.run_with_iobinding(binding)

    def close(self) -> None:
        self._sessions.clear()


def _check_declared(spec: GraphSpec, path: Path, kind: str, expected: tuple[TensorSpec, ...], declared: list) -> None:
    got = [(d.name, tuple(d.shape), _ONNX_TO_NUMPY.get(d.type, d.type)) for d in declared]
    # A geared graph declares its sequence inputs' axis 1 by name; the manifest records the largest gear.
    want = [(t.name, tuple(SEQUENCE_AXIS if t.name in spec.sequence_inputs and i == 1 else d
                           for i, d in enumerate(t.shape)), t.dtype) for t in expected]
    if got != want:
        raise InvalidModelFile(path, f"graph {spec.name!r} from another export: the file declares {kind}s {got}, "
                                     f"the manifest says {want}", "copy the whole export directory from one export")
