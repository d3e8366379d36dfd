"""The real policy node over the real backend, with faults injected into the backend's decoder graph.

Test-only: run as `python test/ros_scripts/fault_injecting_policy_node.py --ros-args ...` (the same
arguments as the policy node). It calls `openvla_ros.nodes.policy_node.main` with a policy loader
that builds the real RuntimePolicy on the real graph runtime (ONNX Runtime), wrapped so that each
run of the decoder graph (mid-inference: after vision, projector, embedding and prefill) first
looks at the directory named by OPENVLA_FAULT_DIR:
- `raise` exists: the run raises RuntimeError (a backend fault);
- `hang` exists: the run blocks until `hang` is removed (it writes `hung` while blocked), then
  runs for real, so the late result is a real one.
Nothing of this is installed or reachable from the package's runtime path.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from openvla_ros.nodes import policy_node
from openvla_ros.runtime.manifest import GraphSpec, Manifest, TensorSpec
from openvla_ros.runtime.policy import RuntimePolicy
from openvla_ros.runtime.session import DeviceBuffer, GraphRuntime

FAULTY_GRAPH = "vla_llm"


class FaultInjectingGraphs(GraphRuntime):
    """Delegates every call to a real `GraphRuntime`; injects the faults the fault directory asks for."""

    def __init__(self, real: GraphRuntime, faults: Path) -> None:
        super().__init__()
        self.backend, self.graph_suffix = real.backend, real.graph_suffix
        self._real, self._faults = real, faults

    def _load(self, spec: GraphSpec, path: Path) -> None:
        self._real._load(spec, path)

    def _allocate(self, spec: TensorSpec) -> Any:
        return self._real._allocate(spec)

    def _upload(self, buffer: DeviceBuffer, host: np.ndarray) -> None:
        self._real._upload(buffer, host)

    def _download(self, buffer: DeviceBuffer) -> np.ndarray:
        return self._real._download(buffer)

    def _execute(self, spec: GraphSpec, inputs: Mapping[str, DeviceBuffer],
                 outputs: Mapping[str, DeviceBuffer]) -> None:
        if spec.name == FAULTY_GRAPH:
            self._inject()
        self._real._execute(spec, inputs, outputs)

    def _inject(self) -> None:
        if (self._faults / "raise").exists():
            raise RuntimeError(f"injected backend fault in {FAULTY_GRAPH}")
        hang, hung = self._faults / "hang", self._faults / "hung"
        if hang.exists():
            hung.touch()
            while hang.exists():
                time.sleep(0.01)
            hung.unlink()

    def close(self) -> None:
        self._real.close()


def real_runtime(backend: str) -> GraphRuntime:
    if backend == "onnxruntime":
        from openvla_ros.runtime.onnxruntime_backend import OnnxRuntimeGraphs

        return OnnxRuntimeGraphs()
    if backend == "om":
        from openvla_ros.runtime.om_backend import AclGraphs

        return AclGraphs()
    raise ValueError(f"no fault injection for backend {backend!r}; expected onnxruntime or om")


def load_with_faults(backend: str, model_dir: str, unnorm_key: str | None = None,
                     verify_checksums: bool = False) -> RuntimePolicy:
    # The fault tests never damage files (test_model_files does): `verify_checksums` is the node's
    # loader signature, not a check this wrapper repeats.
    runtime = FaultInjectingGraphs(real_runtime(backend), Path(os.environ["OPENVLA_FAULT_DIR"]))
    return RuntimePolicy(Manifest.load(model_dir), runtime, unnorm_key=unnorm_key)


if __name__ == "__main__":
    policy_node.main(policy_loader=load_with_faults)
