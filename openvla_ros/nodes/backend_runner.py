"""Backend calls one at a time, each watched for its timeout (ROS-free).

A backend that hangs (a device that stops answering, a driver stuck in a C call) cannot be
interrupted from Python. So a watchdog thread holds each call's deadline: past it, the call is
abandoned and `on_timeout` gets an `InferenceTimeout` on the watchdog thread, so whoever waits for
the result is answered and another thread can serve on. The call itself runs on the caller's
thread (the policy node's inference thread): handing every call to a thread of its own and back
cost two thread wake-ups per inference (0.3 / 0.55 ms p50 / p90 in-process on a loaded 2-core
machine, more in a node process whose other threads compete for the GIL). A hung call keeps its
thread until it returns; then its result is discarded (counted) and `run` raises `CallAbandoned`
there. While it still runs, new calls fail at once with
`BackendBusy`, because a backend is not re-entrant. Both are backend faults. Releasing the backend
(`close_when_idle`) never runs under a call and never blocks the caller: during a call it is
deferred until the call returns.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable


class InferenceTimeout(RuntimeError):
    """The call did not return in time; it keeps running and its result will be discarded."""


class BackendBusy(RuntimeError):
    """A call that timed out earlier is still running on the backend."""


class CallAbandoned(Exception):
    """Raised by `run` when the call returned after its timeout: its result is discarded, and its
    waiter was answered by `on_timeout` already."""


class BackendCall:
    """One started call; `BackendRunner.run` runs it."""

    def __init__(self, fn: Callable[[], Any], timeout_s: float, on_timeout: Callable[[InferenceTimeout], None]) -> None:
        self.fn, self.timeout_s, self.on_timeout = fn, timeout_s, on_timeout
        self.deadline = time.monotonic() + timeout_s
        self.abandoned_at: float | None = None  # time.monotonic() when the watchdog gave up on it


class BackendRunner:
    def __init__(self, name: str = "policy_backend_watchdog") -> None:
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # the watchdog waits on it
        self._idle = threading.Condition(lock)  # `stop` waits on it for the running call to return
        self._running: BackendCall | None = None
        self._deferred: list[Callable[[], None]] = []
        self._stopping = False
        self._watchdog_idle = False  # waiting for a call, not for a deadline: a new call wakes it
        self.late_results_discarded = 0
        self._watchdog = threading.Thread(target=self._watch, name=name, daemon=True)
        self._watchdog.start()

    def start(self, fn: Callable[[], Any], timeout_s: float,
              on_timeout: Callable[[InferenceTimeout], None]) -> BackendCall:
        """Claim the backend for `fn` (run it next with `run`, on the same thread); BackendBusy while
        an abandoned call still runs. `on_timeout` runs on the watchdog thread if `fn` is still
        running `timeout_s` from now; it must not raise."""
        with self._cond:
            busy = self._running
            if busy is not None:
                since = ("" if busy.abandoned_at is None
                         else f" that timed out {time.monotonic() - busy.abandoned_at:.1f} s ago")
                raise BackendBusy(f"the backend is still running an earlier inference{since}; "
                                  "no new inference until it returns")
            call = self._running = BackendCall(fn, timeout_s, on_timeout)
            if self._watchdog_idle:  # a watchdog waiting on an earlier deadline sees this call when it wakes
                self._cond.notify_all()
            return call

    def run(self, call: BackendCall) -> Any:
        """Run `call` on this thread: its result, or what it raised; CallAbandoned when it returned
        after its timeout."""
        try:
            result = call.fn()
        except BaseException:
            if not self._finish(call):
                raise
        else:
            if not self._finish(call):
                return result
        raise CallAbandoned(f"the inference returned {time.monotonic() - call.abandoned_at:.1f} s after it timed "
                            "out; its result is discarded")

    def _finish(self, call: BackendCall) -> bool:
        """Run the deferred closes, free the backend; True if the call had been abandoned."""
        with self._cond:
            deferred, self._deferred = self._deferred, []
        for close in deferred:  # still marked running, so no new call starts under a close
            close()
        with self._cond:
            self._running = None
            abandoned = call.abandoned_at is not None
            self.late_results_discarded += abandoned
            self._idle.notify_all()  # only `stop` ever waits here: no wake-up per call otherwise
        return abandoned

    def close_when_idle(self, close: Callable[[], None]) -> None:
        """Run `close` now if no call runs, else right after the running one returns (on the thread
        that ran it, so `close` must handle its own errors)."""
        with self._cond:
            if self._running is None:
                close()
            else:
                self._deferred.append(close)

    def busy(self) -> bool:
        with self._cond:
            return self._running is not None

    def stop(self, timeout: float) -> None:
        """End the watchdog and wait at most `timeout` s for a running call (a hung one included) to
        return: a process must not exit while its thread is inside the backend."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            self._idle.wait_for(lambda: self._running is None, timeout)
        self._watchdog.join(max(0.0, deadline - time.monotonic()))

    def _watch(self) -> None:
        while True:
            with self._cond:
                call = self._next_overdue_locked()
                if call is None:
                    return
                call.abandoned_at = time.monotonic()
            call.on_timeout(InferenceTimeout(
                f"inference did not return within inference_timeout_s = {call.timeout_s:g} s; "
                "its result will be discarded when it does"))

    def _next_overdue_locked(self) -> BackendCall | None:
        """Wait until the running call is past its deadline (None once stopping)."""
        while not self._stopping:
            call = self._running
            if call is None or call.abandoned_at is not None:
                self._watchdog_idle = True
                try:
                    self._cond.wait()
                finally:
                    self._watchdog_idle = False
                continue
            remaining = call.deadline - time.monotonic()
            if remaining <= 0:
                return call
            self._cond.wait(remaining)
        return None
