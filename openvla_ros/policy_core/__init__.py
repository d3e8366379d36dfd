"""The policy node's core, ROS-free: what to infer next, inference, clipping, state and counters.

`nodes/policy_node.py` is the ROS adapter around it (subscriptions, services, parameters,
lifecycle, publishers); the core runs and is tested in-process without DDS.
- `schedule.py`: the latest frame (latest wins), ~/step requests and the rate gate;
- `limits.py`: the action_limits parameter and clipping;
- `core.py`: `PolicyCore`, its inference thread and the backend calls (via nodes/backend_runner.py).
"""
