"""Header stamp checks shared by the policy node (camera frames) and the LIBERO bridge (actions), ROS-free.

A zero stamp means the publisher never set it; a stamp ahead of the receiver's clock by more than a
tolerance means a camera (or clock) that is wrong. Either way the age of the data is unknown, and
acting on it would drive the robot on frames of unknown age, so both are rejected. A small lead is
allowed: two machines' clocks never agree exactly.
"""
from __future__ import annotations

ZERO, FUTURE = "zero", "future"


def stamp_problem(stamp_ns: int, now_ns: int, max_future_s: float) -> tuple[str, str] | None:
    """None for a usable stamp, else (ZERO | FUTURE, the reason)."""
    if stamp_ns == 0:
        return ZERO, "header.stamp is zero (never set); stamp it with the capture time"
    ahead_s = (stamp_ns - now_ns) * 1e-9
    if ahead_s > max_future_s:
        return FUTURE, (f"header.stamp is {ahead_s:.3f} s ahead of this node's clock; max_future_stamp_s is "
                        f"{max_future_s:g} (check the publisher's clock, or use_sim_time on both sides)")
    return None
