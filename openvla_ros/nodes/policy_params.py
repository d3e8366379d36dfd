"""The policy node's parameters: declarations (descriptions, ranges) and when each may change.

- RUNTIME: safe at any time (limits, ages, rate, enable, error budget).
- ACTIVATE: read on activate; rejected while the node is active (deactivate, set, activate).
- CONFIGURE: choose the model; read on configure; rejected once configured (clean up first).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from openvla_ros.input_checks import DEFAULT_MAX_INSTRUCTION_CHARS
from openvla_ros.policy import BACKENDS
from openvla_ros.policy_core.limits import parse_action_limits

RUNTIME, ACTIVATE, CONFIGURE = "runtime", "activate", "configure"
MODES = ("continuous", "trigger")
ACTION_OUTPUTS = ("chunk", "queue")


@dataclass(frozen=True)
class ParamSpec:
    default: Any
    description: str
    when: str
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None


PARAMS: dict[str, ParamSpec] = {
    "backend": ParamSpec("onnxruntime", f"inference backend: {' | '.join(BACKENDS)}", CONFIGURE),
    "model_dir": ParamSpec("", "torch: HF-format checkpoint; onnxruntime/om: export directory", CONFIGURE),
    "unnorm_key": ParamSpec("", "norm stats key for unnormalizing actions ('' = the model's only one)", CONFIGURE),
    "verify_checksums": ParamSpec(False, "on configure, hash every model file against the export's manifest "
                                         "(sizes are always checked; hashing reads every byte)", CONFIGURE),
    "mode": ParamSpec("continuous", "continuous: infer on every new frame (<= max_rate_hz); "
                                    "trigger: one inference per ~/step call", ACTIVATE),
    "max_rate_hz": ParamSpec(10.0, "most inferences per second in continuous mode", RUNTIME,
                             float_range=(0.01, 1000.0)),
    "max_image_age_s": ParamSpec(0.5, "frames older than this (header stamp vs node clock) at inference start "
                                      "are not acted on", RUNTIME, float_range=(0.001, 3600.0)),
    "max_future_stamp_s": ParamSpec(0.5, "frames stamped further ahead of the node clock than this are rejected on "
                                         "receipt (zero stamps too)", RUNTIME, float_range=(0.0, 3600.0)),
    "action_limits": ParamSpec([0.0], "per-dimension clip as [min0, max0, min1, max1, ...]; [] or [0.0] = no clip",
                               RUNTIME),
    "action_frame_id": ParamSpec("base_link", "frame_id of action and action/twist", ACTIVATE),
    "use_compressed": ParamSpec(False, "subscribe image/compressed (jpeg/png) instead of image", ACTIVATE),
    "max_image_pixels": ParamSpec(4096 * 4096, "larger images are rejected", ACTIVATE, int_range=(1, 1 << 28)),
    "max_instruction_chars": ParamSpec(DEFAULT_MAX_INSTRUCTION_CHARS, "longer instructions are rejected (checked "
                                       "before tokenizing, so it bounds the instruction callback's cost)",
                                       ACTIVATE, int_range=(1, 100000)),
    "center_crop_scale": ParamSpec(1.0, "centre crop area fraction before the model's resize (1.0 = off; LIBERO "
                                        "fine-tunes use 0.9)", ACTIVATE, float_range=(0.01, 1.0)),
    "autostart": ParamSpec(False, "configure and activate on start (plain `ros2 run`)", ACTIVATE),
    "max_consecutive_errors": ParamSpec(3, "backend faults in a row (errors, timeouts, non-finite actions; "
                                           "never input rejections) before the node deactivates itself",
                                        RUNTIME, int_range=(1, 1000000)),
    "inference_timeout_s": ParamSpec(10.0, "an inference running longer is a backend fault: its waiters get an "
                                           "error and its late result is discarded (raise it for slow backends, "
                                           "e.g. a 7B model on torch CPU)", RUNTIME, float_range=(0.001, 3600.0)),
    "enabled": ParamSpec(True, "publish actions (also set by ~/enable)", RUNTIME),
    # OpenVLA-OFT (a chunk policy) only; an OpenVLA model ignores them.
    "sync_tolerance_s": ParamSpec(0.02, "OpenVLA-OFT: the image, wrist image(s) and robot state of one inference "
                                        "must be stamped within this many seconds of each other, else the "
                                        "inference is refused as out of sync", RUNTIME, float_range=(0.0, 3600.0)),
    "control_rate_hz": ParamSpec(20.0, "OpenVLA-OFT: the robot's control rate; a chunk's step k is due k / "
                                       "control_rate_hz after its frame (time_from_start), and in queue output "
                                       "one action is published per 1 / control_rate_hz", ACTIVATE,
                                 float_range=(0.01, 1000.0)),
    "action_output": ParamSpec("chunk", "OpenVLA-OFT in continuous mode: chunk: publish each inference's whole "
                                        "chunk on action; queue: execute chunks one action per control tick "
                                        "(~/step in trigger mode always answers with the whole chunk)", ACTIVATE),
    "replan_every": ParamSpec(0, "OpenVLA-OFT queue output: infer a new chunk after this many actions of the "
                                 "current one (0 = the chunk length: each chunk runs open loop, as OFT's LIBERO "
                                 "evaluation does)", ACTIVATE, int_range=(0, 1000000)),
}


def declare_all(node) -> dict[str, Any]:
    """Declare every parameter on `node`; returns name -> current value."""
    values = {}
    for name, spec in PARAMS.items():
        descriptor = ParameterDescriptor(description=spec.description)
        if spec.float_range:
            descriptor.floating_point_range = [FloatingPointRange(from_value=spec.float_range[0],
                                                                  to_value=spec.float_range[1])]
        if spec.int_range:
            descriptor.integer_range = [IntegerRange(from_value=spec.int_range[0], to_value=spec.int_range[1])]
        values[name] = node.declare_parameter(name, spec.default, descriptor).value
    return values


def change_refusal(name: str, state: str) -> str | None:
    """Why `name` cannot change in lifecycle `state` ('unconfigured' | 'inactive' | 'active'), or None."""
    when = PARAMS[name].when if name in PARAMS else RUNTIME
    if when == ACTIVATE and state == "active":
        return f"{name} cannot change while the node is active; deactivate it, set {name}, then activate"
    if when == CONFIGURE and state in ("inactive", "active"):
        return f"{name} cannot change once a model is loaded; deactivate and clean up, set {name}, then configure"
    return None


def check_value(name: str, value: Any) -> None:
    """Raise ValueError for values the descriptors cannot express."""
    if name == "backend" and value not in BACKENDS:
        raise ValueError(f"backend {value!r} is unknown; expected one of {', '.join(BACKENDS)}")
    if name == "mode" and value not in MODES:
        raise ValueError(f"mode {value!r} is unknown; expected one of {', '.join(MODES)}")
    if name == "action_output" and value not in ACTION_OUTPUTS:
        raise ValueError(f"action_output {value!r} is unknown; expected one of {', '.join(ACTION_OUTPUTS)}")
    if name == "action_limits":
        parse_action_limits(value, None)


def launch_overrides(arguments: dict[str, str]) -> dict[str, Any]:
    """Typed parameter overrides from launch-argument strings; "" keeps the params file's value.

    A bad value raises ValueError naming the argument, the value and what it accepts, so a launch
    stops before it starts a node that would refuse the value later (or crash declaring it)."""
    overrides = {}
    for name, text in arguments.items():
        if text == "":
            continue
        spec = PARAMS[name]
        try:
            value = _parse_text(text, type(spec.default))
            _check_typed(name, value)
        except ValueError as exc:
            raise ValueError(f"launch argument {name}:={text}: {exc}") from None
        overrides[name] = value
    return overrides


def _parse_text(text: str, kind: type) -> Any:
    if kind is str:
        return text
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ValueError("expected true or false")
        return text.lower() == "true"
    try:
        return kind(text)
    except ValueError:
        raise ValueError("expected an integer" if kind is int else "expected a number") from None


def _check_typed(name: str, value: Any) -> None:
    """A value of the declared type: its range, and what the descriptors cannot express."""
    _check_range(PARAMS[name], value)
    check_value(name, value)


def _check_range(spec: ParamSpec, value: Any) -> None:
    bounds = spec.float_range or spec.int_range
    if bounds and not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"expected a value in [{bounds[0]}, {bounds[1]}]")


def checked_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Typed parameter overrides (e.g. an evaluation's), checked like launch arguments: ValueError
    naming the parameter for an undeclared name, a value of another type, or one out of range.
    Integers given for float parameters become floats (a node refuses an int for a double)."""
    checked = {}
    for name, value in values.items():
        if name not in PARAMS:
            raise ValueError(f"policy parameter {name!r} is not declared; expected one of {sorted(PARAMS)}")
        spec = PARAMS[name]
        kind = type(spec.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind:
            raise ValueError(f"policy parameter {name}={value!r}: expected a {kind.__name__}")
        try:
            _check_typed(name, value)
        except ValueError as exc:
            raise ValueError(f"policy parameter {name}={value!r}: {exc}") from None
        checked[name] = value
    return checked
