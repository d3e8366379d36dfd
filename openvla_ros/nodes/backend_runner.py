"""Backend calls on their own thread, one at a time, awaited with a timeout (ROS-free).

A backend that hangs (a device that stops answering, a driver stuck in a C call) cannot be
interrupted from Python. So the policy node starts each inference here and waits at most
`inference_timeout_s`: on a timeout the waiter gets `InferenceTimeout` and the node goes on
serving; the hung call keeps this thread until it returns, and its late result is discarded
(counted). While it still runs, new calls fail at once with `BackendBusy`, because a backend is not
re-entrant. Both are backend faults. Releasing the backend (`close_when_idle`) never runs under a
call and never blocks the caller: during a call it is deferred until the call returns.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable


class InferenceTimeout(RuntimeError):
    """The call did not return in time; it keeps running and its result will be discarded."""


class BackendBusy(RuntimeError):
    """A call that timed out earlier is still running on the backend."""


class BackendCall:
    """One call: `BackendRunner.wait` returns its result or raises what it raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.abandoned_at: float | None = None  # time.monotonic() when its waiter gave up


class BackendRunner:
    def __init__(self, name: str = "policy_backend") -> None:
        self._cond = threading.Condition()
        self._pending: BackendCall | None = None
        self._running: BackendCall | None = None
        self._deferred: list[Callable[[], None]] = []
        self._stopping = False
        self.late_results_discarded = 0
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def start(self, fn: Callable[[], Any]) -> BackendCall:
        """Queue `fn` to run next; BackendBusy while an abandoned call still runs."""
        with self._cond:
            busy = self._running or self._pending
            if busy is not None:
                since = "" if busy.abandoned_at is None else f" that timed out {time.monotonic() - busy.abandoned_at:.1f} s ago"
                raise BackendBusy(f"the backend is still running an earlier inference{since}; "
                                  "no new inference until it returns")
            call = self._pending = BackendCall(fn)
            self._cond.notify_all()
            return call

    def wait(self, call: BackendCall, timeout: float) -> Any:
        """The result of `call` within `timeout` s; InferenceTimeout (and the call abandoned) after."""
        with self._cond:
            if not self._cond.wait_for(lambda: call.done, timeout):
                call.abandoned_at = time.monotonic()
                raise InferenceTimeout(f"inference did not return within inference_timeout_s = {timeout:g} s; "
                                       "its result will be discarded when it does")
        if call.error is not None:
            raise call.error
        return call.result

    def close_when_idle(self, close: Callable[[], None]) -> None:
        """Run `close` now if no call runs, else right after the running one returns (on this
        runner's thread, so `close` must handle its own errors)."""
        with self._cond:
            if self._running is None and self._pending is None:
                close()
            else:
                self._deferred.append(close)

    def busy(self) -> bool:
        with self._cond:
            return self._running is not None or self._pending is not None

    def stop(self, timeout: float) -> None:
        """End the thread after the running call (a hung one is left behind: the thread is a daemon)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _serve(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._stopping)
                if self._pending is None:
                    return
                call, self._pending = self._pending, None
                self._running = call
            try:
                call.result = call.fn()
            except BaseException as exc:  # handed to the waiter, who decides what it means
                call.error = exc
            with self._cond:
                deferred, self._deferred = self._deferred, []
            for close in deferred:  # still marked running, so no new call starts under a close
                close()
            with self._cond:
                self._running = None
                call.done = True
                if call.abandoned_at is not None:
                    self.late_results_discarded += 1
                self._cond.notify_all()
