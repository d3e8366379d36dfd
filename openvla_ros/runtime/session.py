"""The seam between the shared pipeline and a backend: "run this graph with these buffers".

A `GraphRuntime` owns tensors in runtime memory (`DeviceBuffer`: an ONNX Runtime OrtValue, or
device memory on an Ascend NPU) and runs loaded graphs on them. Everything above this seam (buffer
plan, prompt layout, greedy decoding, the KV ping-pong) lives in `pipeline.py` and is shared by
every backend, so tests of the pipeline over ONNX Runtime exercise the code the OM adapter runs.

Buffers are bound, never copied, when passed to `run`: a decode step's `present_kv` output buffer
becomes the next step's `past_kv` input. The only host<->runtime copies are `write` and `read`,
and both are logged per tensor in `TransferLog`, which is how tests and `openvla-ros bench`
report the bytes crossing the boundary (zero KV bytes per decode step).
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from openvla_ros.runtime.manifest import GraphSpec, TensorSpec


@dataclass(frozen=True)
class DeviceBuffer:
    """A tensor in runtime memory; `handle` is backend-specific and opaque to the pipeline."""

    spec: TensorSpec
    handle: Any


@dataclass(frozen=True)
class TransferTotals:
    """Bytes copied host->runtime (`to_runtime`) and runtime->host (`to_host`), per buffer name."""

    to_runtime: dict[str, int]
    to_host: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.to_runtime.values()) + sum(self.to_host.values())

    def bytes_of(self, name: str) -> int:
        return self.to_runtime.get(name, 0) + self.to_host.get(name, 0)

    def minus(self, earlier: "TransferTotals") -> "TransferTotals":
        def diff(now: dict[str, int], before: dict[str, int]) -> dict[str, int]:
            return {k: v - before.get(k, 0) for k, v in now.items() if v - before.get(k, 0)}

        return TransferTotals(diff(self.to_runtime, earlier.to_runtime), diff(self.to_host, earlier.to_host))


class TransferLog:
    """Running byte counts of every host<->runtime copy, keyed by buffer name."""

    def __init__(self) -> None:
        self._to_runtime: Counter[str] = Counter()
        self._to_host: Counter[str] = Counter()

    def record_to_runtime(self, name: str, nbytes: int) -> None:
        self._to_runtime[name] += nbytes

    def record_to_host(self, name: str, nbytes: int) -> None:
        self._to_host[name] += nbytes

    def totals(self) -> TransferTotals:
        return TransferTotals(dict(self._to_runtime), dict(self._to_host))


class GraphRuntime(ABC):
    """A backend: loads graphs, allocates buffers, copies host<->runtime, runs graphs on buffers."""

    backend: str = ""
    graph_suffix: str = ""  # file suffix of this backend's graphs: ".onnx" or ".om"

    def __init__(self) -> None:
        self.transfers = TransferLog()
        self._graphs: dict[str, GraphSpec] = {}

    def load_graph(self, spec: GraphSpec, path: Path) -> None:
        """Load graph `spec.name` from `path`; its declared inputs/outputs must match `spec`."""
        if not path.is_file():
            raise FileNotFoundError(f"graph file not found: {path}")
        self._load(spec, path)
        self._graphs[spec.name] = spec

    def allocate(self, spec: TensorSpec) -> DeviceBuffer:
        """A new buffer in runtime memory for `spec` (contents undefined until written or produced)."""
        return DeviceBuffer(spec, self._allocate(spec))

    def write(self, buffer: DeviceBuffer, array: np.ndarray) -> None:
        """Copy a host array into `buffer`; shape must match exactly, dtype is converted."""
        spec = buffer.spec
        if tuple(array.shape) != spec.shape:
            raise ValueError(f"buffer {spec.name!r}: got shape {tuple(array.shape)}, expected {spec.shape}")
        host = np.ascontiguousarray(array, dtype=spec.dtype)
        self._upload(buffer, host)
        self.transfers.record_to_runtime(spec.name, spec.nbytes)

    def read(self, buffer: DeviceBuffer) -> np.ndarray:
        """Copy `buffer` to a new host array."""
        host = self._download(buffer)
        self.transfers.record_to_host(buffer.spec.name, buffer.spec.nbytes)
        return host

    def run(self, graph: str, inputs: Mapping[str, DeviceBuffer], outputs: Mapping[str, DeviceBuffer]) -> None:
        """Run `graph` reading `inputs` and writing `outputs` in place (buffers keyed by graph I/O name).
        A graph with shape gears runs at the gear its bound sequence inputs have (ValueError if that
        is not one of its gears); `_execute` then gets the spec of that gear."""
        spec = self._graphs.get(graph)
        if spec is None:
            raise KeyError(f"graph {graph!r} is not loaded; loaded: {sorted(self._graphs)}")
        if spec.sequence_gears:
            spec = spec.at_sequence(_bound_sequence_length(spec, inputs))
        _check_bindings(f"{graph} input", spec.inputs, inputs)
        _check_bindings(f"{graph} output", spec.outputs, outputs)
        if {id(b) for b in inputs.values()} & {id(b) for b in outputs.values()}:
            raise ValueError(f"{graph}: a buffer is bound as both input and output; use a second buffer")
        self._execute(spec, inputs, outputs)

    def run_timed(self, graph: str, inputs: Mapping[str, DeviceBuffer], outputs: Mapping[str, DeviceBuffer],
                  stage_ms: dict[str, float], stage: str | None = None) -> None:
        """`run`, adding its wall time in milliseconds to `stage_ms[stage or graph]`."""
        t0 = time.perf_counter()
        self.run(graph, inputs, outputs)
        key = stage or graph
        stage_ms[key] = stage_ms.get(key, 0.0) + (time.perf_counter() - t0) * 1e3

    @abstractmethod
    def _load(self, spec: GraphSpec, path: Path) -> None: ...

    @abstractmethod
    def _allocate(self, spec: TensorSpec) -> Any: ...

    @abstractmethod
    def _upload(self, buffer: DeviceBuffer, host: np.ndarray) -> None: ...

    @abstractmethod
    def _download(self, buffer: DeviceBuffer) -> np.ndarray: ...

    @abstractmethod
    def _execute(
        self, spec: GraphSpec, inputs: Mapping[str, DeviceBuffer], outputs: Mapping[str, DeviceBuffer]
    ) -> None: ...

    def close(self) -> None:
        """Release graphs and buffers; idempotent."""


def _bound_sequence_length(spec: GraphSpec, bound: Mapping[str, DeviceBuffer]) -> int:
    """The sequence length (axis 1) shared by the buffers bound to `spec`'s sequence inputs."""
    lengths = {name: bound[name].spec.shape[1] for name in spec.sequence_inputs
               if name in bound and len(bound[name].spec.shape) > 1}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{spec.name}: the sequence inputs are bound with different lengths {lengths}; "
                         f"one gear of {list(spec.sequence_gears)} per run")
    if not lengths:
        raise ValueError(f"{spec.name} inputs bound: {sorted(bound)}; expected exactly {[s.name for s in spec.inputs]}")
    return next(iter(lengths.values()))


def _check_bindings(what: str, specs: tuple[TensorSpec, ...], bound: Mapping[str, DeviceBuffer]) -> None:
    expected = [s.name for s in specs]
    if sorted(bound) != sorted(expected):
        raise ValueError(f"{what}s bound: {sorted(bound)}; expected exactly {expected}")
    for spec in specs:
        have = bound[spec.name].spec
        if (have.shape, have.dtype) != (spec.shape, spec.dtype):
            raise ValueError(
                f"{what} {spec.name!r}: buffer {have.name!r} is {have.dtype}{list(have.shape)}, "
                f"graph expects {spec.dtype}{list(spec.shape)}"
            )
