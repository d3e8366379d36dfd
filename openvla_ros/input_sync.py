"""Do a policy's inputs show one moment? The stamps of the agentview image, the wrist image and the
robot state (OFT's inputs) must lie within a sync tolerance of each other. ROS-free.

A model fed a wrist view or a state from another moment than the agentview acts on a scene that
never existed; the LIBERO bridge stamps all of one frame's inputs alike, a real robot's drivers
within a few milliseconds. An inference whose inputs are out of sync is refused with the reason
(a rejection, like a stale frame), not run.
"""
from __future__ import annotations

from typing import Mapping

from openvla_ros.input_checks import InputRejected


class InputsOutOfSync(InputRejected):
    kind = "sync"


def check_inputs_in_sync(stamps_ns: Mapping[str, int | None], tolerance_s: float) -> None:
    """Raise InputsOutOfSync unless every input has arrived (stamp not None) and the earliest and
    latest stamps are at most `tolerance_s` apart. `stamps_ns`: input name -> header stamp (ns)."""
    if tolerance_s < 0:
        raise ValueError(f"sync tolerance is {tolerance_s}; expected >= 0 s")
    missing = [name for name, stamp in stamps_ns.items() if stamp is None]
    if missing:
        raise InputsOutOfSync(f"no {', '.join(missing)} received yet; the model needs {list(stamps_ns)}")
    if len(stamps_ns) < 2:
        return
    earliest = min(stamps_ns, key=stamps_ns.__getitem__)
    latest = max(stamps_ns, key=stamps_ns.__getitem__)
    apart_ns = stamps_ns[latest] - stamps_ns[earliest]
    if apart_ns > round(tolerance_s * 1e9):  # in whole nanoseconds: 30 ms apart is within 0.03 s
        raise InputsOutOfSync(f"inputs out of sync: {latest} is {apart_ns * 1e-9:.3f} s newer than {earliest}; "
                              f"sync_tolerance_s is {tolerance_s:g} (all inputs must show the same moment)")
