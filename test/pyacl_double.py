"""A strict contract double of pyACL (the `acl` module of Huawei CANN), for tests only.

Never installed and never on the runtime path: tests put an instance in `sys.modules["acl"]` (the
`pyacl` fixture in conftest.py), so `openvla_ros.runtime.om_backend.import_acl()` picks it up and
the real `AclGraphs` runs on it. It implements exactly the pyACL calls the adapter uses, with the
documented calling conventions, and refuses what the documentation forbids instead of guessing.

What an "OM" is here: `write_om_stand_in` writes a small JSON file naming an ONNX graph (the
stand-in `atc` of the conversion tests writes one per graph). `acl.mdl.load_from_file` loads that
graph in ONNX Runtime; the model description (names, aclDataType, byte sizes, in the graph's
declared order) comes from it, as ATC's would; `acl.mdl.execute` copies the bound device buffers to
host arrays, runs the graph and writes the outputs back into the bound device buffers.

Sources (CANN pyACL / AscendCL API reference; aclpythondevg_01_* are the pyACL pages):
- return conventions: `ret = acl.init()`, `ret = acl.finalize()`; `ptr, ret = acl.rt.malloc(size,
  policy)`; `context, ret = acl.rt.create_context(device_id)`; `ret = acl.rt.set_context(ctx)`
  (aclpythondevg_01_0074); `ret = acl.rt.memcpy(dst, dest_max, src, count, kind)` (01_0120);
  `model_id, ret = acl.mdl.load_from_file(path)`; `desc = acl.mdl.create_desc()`;
  `ret = acl.mdl.get_desc(desc, model_id)`; `data_type = acl.mdl.get_input_data_type(desc, i)`
  (01_0217, value only); `get_input_name_by_index` -> the name; `get_input_size_by_index` -> int;
  `dataset = acl.mdl.create_dataset()`; `dataset, ret = acl.mdl.add_dataset_buffer(dataset,
  data_buffer)` (01_0188); `buffer = acl.create_data_buffer(ptr, size)`; `ret = acl.mdl.execute(
  model_id, input, output)`; destroy/unload/free/reset calls return `ret`. The reference recipe
  (hicann/cann-recipes-embodied-intelligence manipulation/openvla/infer_with_om/acllite_kv_model.py)
  uses the same conventions (`_, ret = acl.mdl.add_dataset_buffer(...)`).
- error codes (aclError table, aclpythondevg_01_0921; acl_base.h; rt_error_codes.h):
  ACL_ERROR_INVALID_PARAM 100000, ACL_ERROR_UNINITIALIZE 100001, ACL_ERROR_REPEAT_INITIALIZE 100002,
  ACL_ERROR_INVALID_FILE 100003, ACL_ERROR_PARSE_FILE 100006, ACL_ERROR_REPEAT_FINALIZE 100037,
  ACL_ERROR_RT_INVALID_DEVICEID 107001, ACL_ERROR_RT_CONTEXT_NULL 107002 ("current context null"),
  ACL_ERROR_RT_MODEL_CONTEXT 107004 ("model not in current context").
- process rules: acl.init before any other call, finalize once before exit (aclpythondevg_0007,
  01_0005). The double takes the strict reading the project relies on: one init per process, so an
  init after finalize is refused too (100002).
- thread rule: a context is current per thread; create_context makes the new context current on
  the calling thread; set_context replaces the calling thread's current context (01_0074).
  set_device gives the calling thread the device's default context. Device calls on a thread
  without a live current context answer 107002.
- memcpy kinds (01_0120): 0 host->host, 1 host->device, 2 device->host, 3 device->device; the
  double checks the kind against where the pointers are, `count <= dest_max`, and both ranges
  inside their allocations, and answers 100000 otherwise (stricter than the hardware, which
  derives the direction itself on newer CANN).
- aclDataType (01_0912): ACL_FLOAT 0, ACL_FLOAT16 1, ACL_INT32 3, ACL_INT64 9, ACL_BOOL 12.
- dataset/buffer lifetimes: destroying a dataset does not destroy its data buffers, nor does
  destroying a data buffer free its device memory; each is released by its own call. The double
  records a lifetime violation when memory is freed while a live data buffer still points into it,
  or a data buffer is destroyed while a live dataset holds it.

Device memory starts filled with 0xFF bytes (NaN as float, -1 as int64), so reading a buffer that
was never written shows up.

Dynamic dims (ATC shape gears), sources: ATC `--dynamic_dims` (atlasatc_16_0054 / atlasatcparam_16_0020:
used with `--input_shape`, -1 marking each dynamic dim, and `--input_format=ND`; gears separated by
";", one value per -1 in `--input_shape` order; at least 2 and at most 100 gears); pyACL
"dynamic batch/resolution/dims" flow (aclpythondevg_0046 / 0129; aclcppdevg_000115): the OM model
gains one extra input named "ascend_mbatch_shape_data"; its index comes from
`index, ret = acl.mdl.get_input_index_by_name(desc, name)` (aclpythondevg_01_0210), its size from
`get_input_size_by_index`; the application allocates it, adds it to the input dataset and never
writes it: `ret = acl.mdl.set_input_dynamic_dims(model_id, dataset, index, dims)`
(aclpythondevg_01_0159) fills it, with `dims = {'dimCount': n, 'name': '', 'dims': [...]}` the full
shapes of the dynamic inputs concatenated, which must be one of the gears;
`gear_count, ret = acl.mdl.get_input_dynamic_gear_count(desc, -1)` (aclpythondevg_01_0216; index
reserved, fixed to -1). The double's choices where the documents say nothing: the extra input is the
last one, int64, one element per dim of a gear; the description reports the dynamic inputs at the
largest gear (the docs advise allocating from `get_input_size_by_index` to be large enough for any
gear); a data buffer of a dynamic input must hold at least the selected gear's bytes; executing a
geared model on a dataset whose dims were never set, or set to a non-gear, answers
ACL_ERROR_INVALID_PARAM.
"""
from __future__ import annotations

import ctypes
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ACL_SUCCESS = 0
ACL_ERROR_INVALID_PARAM = 100000
ACL_ERROR_UNINITIALIZE = 100001
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_ERROR_INVALID_FILE = 100003
ACL_ERROR_PARSE_FILE = 100006
ACL_ERROR_REPEAT_FINALIZE = 100037
ACL_ERROR_RT_INVALID_DEVICEID = 107001
ACL_ERROR_RT_CONTEXT_NULL = 107002
ACL_ERROR_RT_MODEL_CONTEXT = 107004
ACL_ERROR_INTERNAL = 500000  # "unrecognized errors are mapped to 500000" (aclError rules)

ACL_MEMCPY_HOST_TO_HOST, ACL_MEMCPY_HOST_TO_DEVICE, ACL_MEMCPY_DEVICE_TO_HOST, ACL_MEMCPY_DEVICE_TO_DEVICE = 0, 1, 2, 3
MALLOC_POLICIES = (0, 1, 2)  # ACL_MEM_MALLOC_HUGE_FIRST, _HUGE_ONLY, _NORMAL_ONLY
ACL_DATA_TYPES = {"tensor(float)": (0, np.float32), "tensor(float16)": (1, np.float16),
                  "tensor(int32)": (3, np.int32), "tensor(int64)": (9, np.int64), "tensor(bool)": (12, np.bool_)}

OM_FORMAT = "pyacl-double-om"
DYNAMIC_DIMS_INPUT = "ascend_mbatch_shape_data"  # ACL_DYNAMIC_TENSOR_NAME
MAX_GEARS = 100
DEVICE_BASE = 1 << 60  # far above any host address, so a pointer's side is unambiguous


def write_om_stand_in(onnx_path: str | Path, om_path: str | Path, input_shape: str | None = None,
                      dynamic_dims: str | None = None, input_format: str | None = None) -> Path:
    """Write the double's stand-in for an `.om` file: the ONNX graph it executes and, for a model
    converted with shape gears, the gears; ValueError where ATC would refuse the options."""
    gears = parse_gears(input_shape, dynamic_dims, input_format) if dynamic_dims is not None else None
    om_path = Path(om_path)
    om_path.write_text(json.dumps({"format": OM_FORMAT, "onnx": str(Path(onnx_path).resolve()),
                                   **({"gears": gears} if gears else {})}) + "\n")
    return om_path


def parse_gears(input_shape: str | None, dynamic_dims: str, input_format: str | None) -> list[dict[str, list[int]]]:
    """`--input_shape` + `--dynamic_dims` -> one {input name: full shape} per gear, as ATC reads them."""
    if not input_shape or input_format != "ND":
        raise ValueError("--dynamic_dims needs --input_shape and --input_format=ND")
    shapes = []
    for item in input_shape.split(";"):
        name, _, dims = item.rpartition(":")
        shapes.append((name, [int(d) for d in dims.split(",")]))
    dynamic = sum(d == -1 for _, dims in shapes for d in dims)
    gears = [[int(v) for v in gear.split(",")] for gear in dynamic_dims.split(";")]
    if not 1 < len(gears) <= MAX_GEARS:
        raise ValueError(f"--dynamic_dims: {len(gears)} gears; ATC takes 2..{MAX_GEARS}")
    if dynamic == 0 or any(len(g) != dynamic or min(g) < 1 for g in gears):
        raise ValueError(f"--dynamic_dims {dynamic_dims!r}: each gear needs {dynamic} positive values, "
                         f"one per -1 in --input_shape {input_shape!r}")
    result = []
    for gear in gears:
        values = iter(gear)
        result.append({name: [next(values) if d == -1 else d for d in dims] for name, dims in shapes})
    return result


@dataclass(frozen=True)
class _IO:
    name: str
    acl_dtype: int
    np_dtype: Any
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.np_dtype).itemsize


@dataclass
class _OmModel:
    path: str
    session: Any
    inputs: list[_IO]  # as described: dynamic inputs at the largest gear, then the dims input if geared
    outputs: list[_IO]
    context: int
    gears: list[dict[str, list[int]]] = field(default_factory=list)  # input name -> full shape, per gear

    @property
    def dims_index(self) -> int | None:
        return len(self.inputs) - 1 if self.gears else None

    def gear_of(self, dims: list[int]) -> dict[str, list[int]] | None:
        """The gear whose concatenated dynamic-input shapes are `dims`."""
        for gear in self.gears:
            if [d for shape in gear.values() for d in shape] == list(dims):
                return gear
        return None


def _geared(ios: list[_IO], gears: list[dict[str, list[int]]]) -> list[_IO]:
    """The model description of a geared model: each dynamic input at its largest gear, plus the
    dims input (int64, one element per dim of a gear)."""
    if not gears:
        return ios
    largest = {name: max((tuple(g[name]) for g in gears), key=lambda s: int(np.prod(s))) for name in gears[0]}
    unknown = sorted(set(largest) - {io.name for io in ios})
    if unknown:
        raise ValueError(f"--input_shape names inputs the graph does not have: {unknown}")
    described = [_IO(io.name, io.acl_dtype, io.np_dtype, largest.get(io.name, io.shape)) for io in ios]
    dim_count = sum(len(shape) for shape in gears[0].values())
    return described + [_IO(DYNAMIC_DIMS_INPUT, ACL_DATA_TYPES["tensor(int64)"][0], np.int64, (dim_count,))]


def _described(args: list[Any], gears: list[dict[str, list[int]]] | None = None) -> list[_IO]:
    """ONNX Runtime's declared inputs/outputs as ATC would describe them; a dim the graph leaves
    symbolic must be fixed by the gears (ATC refuses a dynamic input it was given no shape for)."""
    fixed = gears[0] if gears else {}
    ios = []
    for a in args:
        shape = tuple(fixed.get(a.name, a.shape))
        if a.type not in ACL_DATA_TYPES or not all(isinstance(d, int) for d in shape):
            raise ValueError(f"{a.name}: {a.type}{a.shape} is not a static shape of a supported type")
        code, np_dtype = ACL_DATA_TYPES[a.type]
        ios.append(_IO(a.name, code, np_dtype, shape))
    return ios


@dataclass
class _State:
    initialized: bool = False
    finalized: bool = False
    devices: Counter = field(default_factory=Counter)  # device id -> set_device references
    contexts: dict[int, int] = field(default_factory=dict)  # live context -> device id
    memory: dict[int, np.ndarray] = field(default_factory=dict)  # device pointer -> bytes
    data_buffers: dict[int, tuple[int, int]] = field(default_factory=dict)  # handle -> (ptr, size)
    datasets: dict[int, list[int]] = field(default_factory=dict)  # handle -> data buffer handles
    models: dict[int, _OmModel] = field(default_factory=dict)
    descs: dict[int, int | None] = field(default_factory=dict)  # desc -> model id (None until get_desc)
    dataset_dims: dict[int, list[int]] = field(default_factory=dict)  # input dataset -> dims set on it


class PyAclDouble:
    """One pyACL "process": `acl.init` .. `acl.finalize`, devices, contexts, memory and models."""

    def __init__(self, device_count: int = 1) -> None:
        self.device_count = device_count
        self.state = _State()
        self.calls: Counter[str] = Counter()  # pyACL call name -> times called
        self.copies: list[tuple[int, int]] = []  # (memcpy kind, bytes) in call order
        self.executions: Counter[str] = Counter()  # ONNX graph stem -> acl.mdl.execute runs
        self.violations: list[str] = []  # lifetime rules broken (must stay empty)
        self._next_handle = 0x1000
        self._next_device_ptr = DEVICE_BASE
        self._local = threading.local()
        self._lock = threading.RLock()
        self.rt = _Rt(self)
        self.mdl = _Mdl(self)

    # --- bookkeeping shared by the namespaces -------------------------------------------------
    def _handle(self) -> int:
        self._next_handle += 0x10
        return self._next_handle

    def _enter(self, call: str) -> int:
        self.calls[call] += 1
        return ACL_SUCCESS if self.state.initialized else ACL_ERROR_UNINITIALIZE

    def current_context(self) -> int | None:
        """The calling thread's current context, if it is still alive."""
        ctx = getattr(self._local, "context", None)
        return ctx if ctx in self.state.contexts else None

    def _needs_context(self, call: str) -> int:
        ret = self._enter(call)
        if ret == ACL_SUCCESS and self.current_context() is None:
            return ACL_ERROR_RT_CONTEXT_NULL
        return ret

    def _device_range(self, ptr: int, nbytes: int) -> np.ndarray | None:
        """The device bytes [ptr, ptr + nbytes) when inside one allocation."""
        for base, mem in self.state.memory.items():
            if base <= ptr and ptr + nbytes <= base + mem.size:
                return mem[ptr - base: ptr - base + nbytes]
        return None

    def outstanding(self) -> dict[str, int]:
        """Everything allocated and not yet released (all zero after a clean close)."""
        s = self.state
        return {"device_allocations": len(s.memory), "device_bytes": int(sum(m.size for m in s.memory.values())),
                "data_buffers": len(s.data_buffers), "datasets": len(s.datasets), "models": len(s.models),
                "descs": len(s.descs), "contexts": len(s.contexts), "device_references": sum(s.devices.values())}

    # --- acl.* ---------------------------------------------------------------------------------
    def init(self, config_path: str | None = None) -> int:
        with self._lock:
            self.calls["acl.init"] += 1
            if self.state.initialized or self.state.finalized:
                return ACL_ERROR_REPEAT_INITIALIZE
            self.state.initialized = True
            return ACL_SUCCESS

    def finalize(self) -> int:
        with self._lock:
            self.calls["acl.finalize"] += 1
            if not self.state.initialized:
                return ACL_ERROR_REPEAT_FINALIZE
            self.state.initialized = False
            self.state.finalized = True
            return ACL_SUCCESS

    def create_data_buffer(self, ptr: int, size: int) -> int:
        with self._lock:
            # returns the handle alone; 0 (a null aclDataBuffer) when refused
            if (self._enter("acl.create_data_buffer") != ACL_SUCCESS or size <= 0
                    or self._device_range(ptr, size) is None):
                return 0
            handle = self._handle()
            self.state.data_buffers[handle] = (ptr, size)
            return handle

    def destroy_data_buffer(self, data_buffer: int) -> int:
        with self._lock:
            ret = self._enter("acl.destroy_data_buffer")
            if ret != ACL_SUCCESS:
                return ret
            if data_buffer not in self.state.data_buffers:
                return ACL_ERROR_INVALID_PARAM
            if any(data_buffer in members for members in self.state.datasets.values()):
                self.violations.append(f"data buffer {data_buffer:#x} destroyed while a live dataset holds it")
            del self.state.data_buffers[data_buffer]
            return ACL_SUCCESS


class _Rt:
    """`acl.rt`: devices, contexts, device memory and copies."""

    def __init__(self, acl: PyAclDouble) -> None:
        self._acl = acl

    def set_device(self, device_id: int) -> int:
        acl = self._acl
        with acl._lock:
            ret = acl._enter("acl.rt.set_device")
            if ret != ACL_SUCCESS:
                return ret
            if not 0 <= device_id < acl.device_count:
                return ACL_ERROR_RT_INVALID_DEVICEID
            acl.state.devices[device_id] += 1
            default = -1 - device_id  # the device's default context
            acl.state.contexts.setdefault(default, device_id)
            if acl.current_context() is None:
                acl._local.context = default
            return ACL_SUCCESS

    def reset_device(self, device_id: int) -> int:
        acl = self._acl
        with acl._lock:
            ret = acl._enter("acl.rt.reset_device")
            if ret != ACL_SUCCESS:
                return ret
            if acl.state.devices[device_id] <= 0:
                return ACL_ERROR_INVALID_PARAM
            acl.state.devices[device_id] -= 1
            if acl.state.devices[device_id] == 0:
                del acl.state.devices[device_id]
                acl.state.contexts.pop(-1 - device_id, None)
            return ACL_SUCCESS

    def create_context(self, device_id: int) -> tuple[int, int]:
        acl = self._acl
        with acl._lock:
            ret = acl._enter("acl.rt.create_context")
            if ret != ACL_SUCCESS:
                return 0, ret
            if acl.state.devices[device_id] <= 0:
                return 0, ACL_ERROR_RT_INVALID_DEVICEID
            context = acl._handle()
            acl.state.contexts[context] = device_id
            acl._local.context = context
            return context, ACL_SUCCESS

    def set_context(self, context: int) -> int:
        acl = self._acl
        with acl._lock:
            ret = acl._enter("acl.rt.set_context")
            if ret != ACL_SUCCESS:
                return ret
            if context not in acl.state.contexts:
                return ACL_ERROR_INVALID_PARAM
            acl._local.context = context
            return ACL_SUCCESS

    def destroy_context(self, context: int) -> int:
        acl = self._acl
        with acl._lock:
            ret = acl._enter("acl.rt.destroy_context")
            if ret != ACL_SUCCESS:
                return ret
            if context not in acl.state.contexts or context < 0:  # default contexts are not destroyable
                return ACL_ERROR_INVALID_PARAM
            if any(model.context == context for model in acl.state.models.values()):
                acl.violations.append(f"context {context:#x} destroyed with models still loaded in it")
            del acl.state.contexts[context]
            return ACL_SUCCESS

    def malloc(self, size: int, policy: int) -> tuple[int, int]:
        acl = self._acl
        with acl._lock:
            ret = acl._needs_context("acl.rt.malloc")
            if ret != ACL_SUCCESS:
                return 0, ret
            if size <= 0 or policy not in MALLOC_POLICIES:
                return 0, ACL_ERROR_INVALID_PARAM
            ptr = acl._next_device_ptr
            acl._next_device_ptr += (size + 0xFFF) & ~0xFFF
            acl.state.memory[ptr] = np.full(size, 0xFF, dtype=np.uint8)
            return ptr, ACL_SUCCESS

    def free(self, ptr: int) -> int:
        acl = self._acl
        with acl._lock:
            ret = acl._needs_context("acl.rt.free")
            if ret != ACL_SUCCESS:
                return ret
            mem = acl.state.memory.get(ptr)
            if mem is None:
                return ACL_ERROR_INVALID_PARAM
            if any(ptr <= p < ptr + mem.size for p, _ in acl.state.data_buffers.values()):
                acl.violations.append(f"device memory {ptr:#x} freed while a live data buffer points into it")
            del acl.state.memory[ptr]
            return ACL_SUCCESS

    def memcpy(self, dst: int, dest_max: int, src: int, count: int, kind: int) -> int:
        acl = self._acl
        with acl._lock:
            ret = acl._needs_context("acl.rt.memcpy")
            if ret != ACL_SUCCESS:
                return ret
            if count <= 0 or count > dest_max:
                return ACL_ERROR_INVALID_PARAM
            if kind == ACL_MEMCPY_HOST_TO_DEVICE:
                target = acl._device_range(dst, dest_max)
                if target is None or src >= DEVICE_BASE:
                    return ACL_ERROR_INVALID_PARAM
                target[:count] = np.frombuffer(ctypes.string_at(src, count), dtype=np.uint8)
            elif kind == ACL_MEMCPY_DEVICE_TO_HOST:
                source = acl._device_range(src, count)
                if source is None or dst >= DEVICE_BASE:
                    return ACL_ERROR_INVALID_PARAM
                ctypes.memmove(dst, source.ctypes.data, count)
            else:  # the adapter never copies host->host or device->device
                return ACL_ERROR_INVALID_PARAM
            acl.copies.append((kind, count))
            return ACL_SUCCESS


class _Mdl:
    """`acl.mdl`: models, descriptions, datasets, execute."""

    def __init__(self, acl: PyAclDouble) -> None:
        self._acl = acl

    def load_from_file(self, path: str) -> tuple[int, int]:
        import onnxruntime as ort

        acl = self._acl
        with acl._lock:
            ret = acl._needs_context("acl.mdl.load_from_file")
            if ret != ACL_SUCCESS:
                return 0, ret
            if not Path(path).is_file():
                return 0, ACL_ERROR_INVALID_FILE
            try:
                stand_in = json.loads(Path(path).read_text())
                if stand_in.get("format") != OM_FORMAT:
                    return 0, ACL_ERROR_PARSE_FILE
                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                session = ort.InferenceSession(stand_in["onnx"], options, providers=["CPUExecutionProvider"])
                gears = stand_in.get("gears", [])
                model = _OmModel(path, session, _geared(_described(session.get_inputs(), gears), gears),
                                 _described(session.get_outputs()), acl.current_context(), gears)
            except (ValueError, KeyError, OSError, RuntimeError) as exc:
                acl.violations.append(f"load_from_file({path}): {exc}")
                return 0, ACL_ERROR_PARSE_FILE
            model_id = acl._handle()
            acl.state.models[model_id] = model
            return model_id, ACL_SUCCESS

    def unload(self, model_id: int) -> int:
        acl = self._acl
        with acl._lock:
            ret = acl._needs_context("acl.mdl.unload")
            if ret != ACL_SUCCESS:
                return ret
            if acl.state.models.pop(model_id, None) is None:
                return ACL_ERROR_INVALID_PARAM
            return ACL_SUCCESS

    def create_desc(self) -> int:
        acl = self._acl
        with acl._lock:
            if acl._enter("acl.mdl.create_desc") != ACL_SUCCESS:
                return 0
            desc = acl._handle()
            acl.state.descs[desc] = None
            return desc

    def get_desc(self, desc: int, model_id: int) -> int:
        acl = self._acl
        with acl._lock:
            ret = acl._enter("acl.mdl.get_desc")
            if ret != ACL_SUCCESS:
                return ret
            if desc not in acl.state.descs or model_id not in acl.state.models:
                return ACL_ERROR_INVALID_PARAM
            acl.state.descs[desc] = model_id
            return ACL_SUCCESS

    def destroy_desc(self, desc: int) -> int:
        acl = self._acl
        with acl._lock:
            ret = acl._enter("acl.mdl.destroy_desc")
            if ret != ACL_SUCCESS:
                return ret
            if acl.state.descs.pop(desc, "missing") == "missing":
                return ACL_ERROR_INVALID_PARAM
            return ACL_SUCCESS

    def _ios(self, desc: int, outputs: bool) -> list[_IO]:
        model_id = self._acl.state.descs.get(desc)
        model = self._acl.state.models.get(model_id) if model_id is not None else None
        if model is None:
            return []
        return model.outputs if outputs else model.inputs

    # The description getters return plain values; for a bad desc or index the C API returns
    # 0 / NULL / ACL_DT_UNDEFINED (-1), which is what these answer.
    def get_num_inputs(self, desc: int) -> int:
        self._acl.calls["acl.mdl.get_num_inputs"] += 1
        return len(self._ios(desc, False))

    def get_num_outputs(self, desc: int) -> int:
        self._acl.calls["acl.mdl.get_num_outputs"] += 1
        return len(self._ios(desc, True))

    def _field(self, desc: int, index: int, outputs: bool, attr: str, missing: Any) -> Any:
        ios = self._ios(desc, outputs)
        return getattr(ios[index], attr) if 0 <= index < len(ios) else missing

    def get_input_name_by_index(self, desc: int, index: int) -> str:
        return self._field(desc, index, False, "name", "")

    def get_output_name_by_index(self, desc: int, index: int) -> str:
        return self._field(desc, index, True, "name", "")

    def get_input_data_type(self, desc: int, index: int) -> int:
        return self._field(desc, index, False, "acl_dtype", -1)

    def get_output_data_type(self, desc: int, index: int) -> int:
        return self._field(desc, index, True, "acl_dtype", -1)

    def get_input_size_by_index(self, desc: int, index: int) -> int:
        return self._field(desc, index, False, "size", 0)

    def get_output_size_by_index(self, desc: int, index: int) -> int:
        return self._field(desc, index, True, "size", 0)

    def get_input_index_by_name(self, desc: int, name: str) -> tuple[int, int]:
        acl = self._acl
        with acl._lock:
            ret = acl._enter("acl.mdl.get_input_index_by_name")
            if ret != ACL_SUCCESS:
                return 0, ret
            names = [io.name for io in self._ios(desc, False)]
            if name not in names:
                return 0, ACL_ERROR_INVALID_PARAM
            return names.index(name), ACL_SUCCESS

    def get_input_dynamic_gear_count(self, desc: int, index: int) -> tuple[int, int]:
        acl = self._acl
        with acl._lock:
            ret = acl._enter("acl.mdl.get_input_dynamic_gear_count")
            if ret != ACL_SUCCESS:
                return 0, ret
            model_id = acl.state.descs.get(desc)
            if index != -1 or model_id not in acl.state.models:  # index is reserved, fixed to -1
                return 0, ACL_ERROR_INVALID_PARAM
            return len(acl.state.models[model_id].gears), ACL_SUCCESS

    def set_input_dynamic_dims(self, model_id: int, dataset: int, index: int, dims: dict) -> int:
        acl = self._acl
        with acl._lock:
            ret = acl._needs_context("acl.mdl.set_input_dynamic_dims")
            if ret != ACL_SUCCESS:
                return ret
            model = acl.state.models.get(model_id)
            members = acl.state.datasets.get(dataset)
            if model is None or members is None or model.dims_index is None or index != model.dims_index:
                return ACL_ERROR_INVALID_PARAM
            if not isinstance(dims, dict) or set(dims) != {"dimCount", "name", "dims"} \
                    or dims["dimCount"] != len(dims["dims"]) or model.gear_of(list(dims["dims"])) is None:
                return ACL_ERROR_INVALID_PARAM  # not one of the gears the model was converted with
            if len(members) <= index or members[index] not in acl.state.data_buffers:
                return ACL_ERROR_INVALID_PARAM  # the dims input's buffer must be in the dataset first
            ptr, size = acl.state.data_buffers[members[index]]
            target = acl._device_range(ptr, size)
            values = np.asarray(dims["dims"], dtype=np.int64)
            if target is None or size != values.nbytes:
                return ACL_ERROR_INVALID_PARAM
            target[:] = values.view(np.uint8)  # "the system fills that memory"
            acl.state.dataset_dims[dataset] = list(dims["dims"])
            return ACL_SUCCESS

    def create_dataset(self) -> int:
        acl = self._acl
        with acl._lock:
            if acl._enter("acl.mdl.create_dataset") != ACL_SUCCESS:
                return 0
            dataset = acl._handle()
            acl.state.datasets[dataset] = []
            return dataset

    def add_dataset_buffer(self, dataset: int, data_buffer: int) -> tuple[int, int]:
        acl = self._acl
        with acl._lock:
            ret = acl._enter("acl.mdl.add_dataset_buffer")
            if ret != ACL_SUCCESS:
                return dataset, ret
            if dataset not in acl.state.datasets or data_buffer not in acl.state.data_buffers:
                return dataset, ACL_ERROR_INVALID_PARAM
            acl.state.datasets[dataset].append(data_buffer)
            return dataset, ACL_SUCCESS

    def destroy_dataset(self, dataset: int) -> int:
        acl = self._acl
        with acl._lock:
            ret = acl._enter("acl.mdl.destroy_dataset")
            if ret != ACL_SUCCESS:
                return ret
            if acl.state.datasets.pop(dataset, None) is None:
                return ACL_ERROR_INVALID_PARAM
            acl.state.dataset_dims.pop(dataset, None)
            return ACL_SUCCESS

    def execute(self, model_id: int, input_dataset: int, output_dataset: int) -> int:
        acl = self._acl
        with acl._lock:
            ret = acl._needs_context("acl.mdl.execute")
            if ret != ACL_SUCCESS:
                return ret
            model = acl.state.models.get(model_id)
            if model is None:
                return ACL_ERROR_INVALID_PARAM
            if model.context != acl.current_context():
                return ACL_ERROR_RT_MODEL_CONTEXT
            inputs = model.inputs
            if model.gears:
                gear = model.gear_of(acl.state.dataset_dims.get(input_dataset, []))
                if gear is None:
                    acl.violations.append(
                        f"execute({Path(model.path).stem}) without set_input_dynamic_dims on its dataset")
                    return ACL_ERROR_INVALID_PARAM
                inputs = [_IO(io.name, io.acl_dtype, io.np_dtype, tuple(gear.get(io.name, io.shape))) for io in inputs]
            bound_in = self._bound(input_dataset, inputs, model.inputs)
            bound_out = self._bound(output_dataset, model.outputs, model.outputs)
            if bound_in is None or bound_out is None:
                return ACL_ERROR_INVALID_PARAM
            feeds = {io.name: np.frombuffer(mem.tobytes(), dtype=io.np_dtype).reshape(io.shape)
                     for io, mem in zip(inputs, bound_in) if io.name != DYNAMIC_DIMS_INPUT}
            try:
                results = model.session.run([io.name for io in model.outputs], feeds)
            except Exception as exc:  # noqa: BLE001 - a device-side failure is an error code, never an exception
                self._acl.violations.append(f"execute({Path(model.path).stem}) failed: {exc}")
                return ACL_ERROR_INTERNAL
            for io, mem, value in zip(model.outputs, bound_out, results):
                mem[:] = np.frombuffer(np.ascontiguousarray(value, dtype=io.np_dtype).tobytes(), dtype=np.uint8)
            acl.executions[Path(model.path).stem] += 1
            return ACL_SUCCESS

    def _bound(self, dataset: int, ios: list[_IO], described: list[_IO]) -> list[np.ndarray] | None:
        """The device bytes of each data buffer in `dataset`, one per model input/output (`ios`: at
        the selected gear), each holding at least the gear's bytes and at most the described size
        (exactly the described size for a static tensor); None if the dataset does not fit."""
        acl = self._acl
        members = acl.state.datasets.get(dataset)
        if members is None or len(members) != len(ios):
            return None
        views = []
        for data_buffer, io, full in zip(members, ios, described):
            if data_buffer not in acl.state.data_buffers:
                return None
            ptr, size = acl.state.data_buffers[data_buffer]
            view = acl._device_range(ptr, size)
            if view is None or not io.size <= size <= full.size or (io.shape == full.shape and size != full.size):
                return None
            views.append(view[: io.size])
        return views
