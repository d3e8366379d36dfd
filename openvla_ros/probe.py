"""A probe node: publishes, records subscriptions, calls services and sets parameters of a node
running in another process, spinning on its own executor thread in its own rclpy context.

Used by the tests (through test/ros_probe.py) and by `openvla-ros bench-node`.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict

import rclpy
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile

from openvla_ros.qos import RELIABLE

SHUTDOWN_GUARD_S = 30.0  # a guard against a wedged spin thread on a loaded machine, not a speed requirement


class Probe:
    """Use as a context manager; `received[topic]` lists (receive perf_counter, message)."""

    def __init__(self, name: str = "test_probe", namespace: str = "") -> None:
        self._context = rclpy.Context()
        rclpy.init(context=self._context)
        self.node = Node(name, namespace=namespace, context=self._context)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._executor.spin, daemon=True)
        self._publishers: dict[str, object] = {}
        self._lock = threading.Lock()
        self.received: dict[str, list] = defaultdict(list)
        self._clients: dict[str, object] = {}

    def __enter__(self) -> "Probe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        # The spin thread must be out of its wait set before the node's handles are destroyed
        # (otherwise it dies on rclpy's InvalidHandle); shutdown() only waits for running callbacks.
        self._executor.shutdown(timeout_sec=SHUTDOWN_GUARD_S)
        self._thread.join(timeout=SHUTDOWN_GUARD_S)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self._context)

    def publisher(self, msg_type, topic: str, qos: QoSProfile = RELIABLE):
        if topic not in self._publishers:
            self._publishers[topic] = self.node.create_publisher(msg_type, topic, qos)
        return self._publishers[topic]

    def subscribe(self, msg_type, topic: str, qos: QoSProfile = RELIABLE, on_message=None) -> None:
        def record(msg) -> None:
            now = time.perf_counter()
            with self._lock:
                self.received[topic].append((now, msg))
            if on_message is not None:
                on_message(now, msg)

        self.node.create_subscription(msg_type, topic, record, qos)

    def messages(self, topic: str) -> list:
        with self._lock:
            return [msg for _, msg in self.received[topic]]

    def clear(self, topic: str | None = None) -> None:
        with self._lock:
            for key in ([topic] if topic else list(self.received)):
                self.received[key].clear()

    def wait_for_subscribers(self, topic: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.node.count_subscribers(topic) > 0:
                return True
            time.sleep(0.05)
        return False

    def call(self, srv_type, name: str, request, timeout: float = 30.0):
        """Call a service and return its response (raises TimeoutError)."""
        client = self._clients.get(name) or self.node.create_client(srv_type, name)
        self._clients[name] = client
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {name} not available within {timeout} s")
        future = client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise TimeoutError(f"service {name} did not answer within {timeout} s")
        return future.result()

    def set_parameters(self, node_name: str, **values) -> list:
        """Set parameters on `node_name` (fully qualified); returns the SetParametersResult list."""
        request = SetParameters.Request(parameters=[
            ParameterMsg(name=k, value=Parameter(k, value=v).get_parameter_value()) for k, v in values.items()])
        return self.call(SetParameters, f"{node_name}/set_parameters", request).results
