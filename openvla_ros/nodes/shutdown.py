"""A node process's end: bounded, logged, and tied to the process that started it.

rclpy's signal handlers turn SIGINT and SIGTERM into a shutdown of the default context, which
ends the executor's spin; the node's `main()` then releases what it holds. `ShutdownGuard` adds:
- a log line when the shutdown is requested and when it is complete, so a supervisor (or a test)
  reads from the node itself how long its cleanup took;
- a bound: cleanup that is still blocked after `grace_s` (a backend call that cannot be
  interrupted: a model load, an inference; a simulator reset) is cut short. The process then logs
  what it was doing and exits with 0 at once: the stop it was asked for has happened, and the
  operating system releases memory, files and devices of an exiting process;
- when started by `openvla_ros.node_process.NodeProcess`, a watch on the pipe from its starter:
  end-of-file means the starter died (even by SIGKILL), and the node shuts itself down like on
  SIGINT;
- an end without the interpreter's teardown once cleanup is complete (`run_node`).
"""
from __future__ import annotations

import atexit
import faulthandler
import os
import signal
import sys
import threading
import time
from typing import Callable, NoReturn

import rclpy
from rclpy.context import Context
from rclpy.executors import Executor
from rclpy.node import Node

from openvla_ros.node_process import PARENT_FD_ENV
from openvla_ros.nodes.spin import spin_until_shutdown

SHUTDOWN_GRACE_S = 4.0  # below the 5 s a node has to exit after SIGINT or SIGTERM
POLL_S = 0.1  # how often the guard looks at the context (rclpy's signal handler calls no Python code)


class ShutdownGuard:
    """Start right after `rclpy.init()`; call `complete()` as the last step of cleanup."""

    def __init__(self, context: Context, name: str, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        self._context, self._name, self._grace_s = context, name, grace_s
        self._complete = threading.Event()
        self._requested_at: float | None = None
        self._lock = threading.Lock()
        self.executor: Executor | None = None  # woken when the context goes down (see _guard)
        threading.Thread(target=self._guard, name="shutdown_guard", daemon=True).start()
        parent_fd = os.environ.get(PARENT_FD_ENV)
        if parent_fd:
            threading.Thread(target=self._watch_parent, args=(int(parent_fd),), name="parent_watch",
                             daemon=True).start()

    def log(self, text: str) -> None:
        """One line on stderr (the node's log), not through rclpy: its logging may be finalized already."""
        print(f"[{self._name}] [{time.time():.3f}] {text}", file=sys.stderr, flush=True)

    def _watch_parent(self, fd: int) -> None:
        try:
            while os.read(fd, 1):  # the starter never writes: this returns b"" when it is gone
                pass
        except OSError:
            pass
        if self._context.ok():
            self.log("the process that started this node is gone; shutting down")
            os.kill(os.getpid(), signal.SIGINT)

    def _guard(self) -> None:
        while self._context.ok() and not self._complete.is_set():
            time.sleep(POLL_S)
        self.begin()
        # rclpy's signal handler wakes the executor before it shuts the context down; a wait that
        # took the wake-up in between sees a live context and waits on (seen under load: the spin
        # outlived the 4 s). Waking it again now lets it see the shutdown.
        executor = self.executor
        if executor is not None and not self._complete.is_set():
            try:
                executor.wake()
            except Exception:  # already shut down: nothing left to wake
                pass
        if self._complete.wait(max(0.0, self._requested_at + self._grace_s - time.monotonic())):
            return
        self.log(f"cleanup still running after {self._grace_s:.1f} s; exiting now. It was at:")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(0)

    def begin(self) -> None:
        """The shutdown starts now (called by the guard when the context goes down, and by the
        node's main before its cleanup, whichever comes first); the grace period runs from here."""
        with self._lock:
            if self._requested_at is not None or self._complete.is_set():
                return
            self._requested_at = time.monotonic()
        self.log("shutdown requested")

    def complete(self) -> None:
        """Cleanup done: log how long it took since the request."""
        self.begin()
        self._complete.set()
        self.log(f"shutdown complete in {time.monotonic() - self._requested_at:.2f} s")


def run_node(args: list[str] | None, name: str, create_node: Callable[[], Node],
             create_executor: Callable[[], Executor], *, start: Callable[[Node], None] | None = None,
             cleanup: Callable[[Node, Executor, Callable[[str], None]], bool | None] | None = None) -> None:
    """A node process's main: init, create, `start` (e.g. autostart's configure), spin until SIGINT,
    SIGTERM or the starter's end, then `cleanup(node, executor, log)` and destroy, within the guard's
    bound; `log` writes a line next to the guard's (what the cleanup waits for). Then the process
    ends with 0 at once (`_end_process`), without the interpreter's teardown: after a complete
    cleanup that teardown only frees, module by module, what the operating system frees anyway
    (MuJoCo, Mesa's EGL, ONNX Runtime), and it took 2-5 s after the bridge's 1.2 s cleanup on a
    loaded machine, past the 5 s a node has to exit. A cleanup that returns True leaves a thread
    inside a native library: the process then ends without running the atexit handlers either
    (pyACL's finalize must not run under an inference).

    A stop that comes while the node is still being created or started (a model loading) is a
    normal end as well: rclpy raises KeyboardInterrupt (SIGINT) there, or fails on the context that
    SIGTERM shut down."""
    rclpy.init(args=args)
    context = rclpy.get_default_context()
    guard = ShutdownGuard(context, name)
    node = executor = None
    stopped = False  # a normal end: asked to stop, whether spinning or still starting
    try:
        node = create_node()
        executor = create_executor()
        guard.executor = executor
        executor.add_node(node)
        if start is not None:
            start(node)
        spin_until_shutdown(executor)
        stopped = True
    except KeyboardInterrupt:
        stopped = True
    except Exception:
        if context.ok():
            raise  # a real failure (a bad parameters file, a bug): exit non-zero with the traceback
        stopped = True
    finally:
        # From here a SIGINT changes nothing: one rclpy's handler passes on late (after the context
        # shutdown already ended the code above) or a second one must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        guard.begin()
        still_busy = False
        if node is not None:
            if cleanup is not None:
                still_busy = bool(cleanup(node, executor, guard.log))
            node.destroy_node()
        rclpy.try_shutdown()
        guard.complete()
        if stopped:
            _end_process(run_exit_handlers=not still_busy)


def _end_process(run_exit_handlers: bool) -> NoReturn:
    """Exit with 0 now. The atexit handlers run first unless a thread is still inside a native
    library (they finalize pyACL and flush logging); the interpreter's teardown never does."""
    if run_exit_handlers:
        atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
