"""pyACL's process-wide state: `acl.init` once per process, `acl.finalize` once at exit, and the
ACL context bound on whichever thread calls.

Why a module of its own: the policy node configures, cleans up and configures again in one
process, but pyACL's init/finalize pair is process-wide (the CANN guide "pyACL initialization and
deinitialization": init before any other call; finalize "after all pyACL calls are complete or
before the process exits", and not from a destructor: aclpythondevg_0007 / aclpythondevg_01_0005,
https://www.hiascend.com/document/detail/en/CANNCommunityEdition/900/programug/acldevg/aclpythondevg_0007.html).
A second `acl.init` in the process answers ACL_ERROR_REPEAT_INITIALIZE (100002, aclError table,
aclpythondevg_01_0921). So every `AclGraphs` acquires the process's pyACL here (the first one
calls `acl.init`), releases it on close (a count of live users, no finalize), and `acl.finalize`
runs once from an `atexit` handler.

Contexts are per thread (`acl.rt.set_context`: "sets the context of a thread", the last call on a
thread wins; aclpythondevg_01_0074). `ThreadContexts` remembers which owner's context each thread
has current, so an owner re-binds only when the calling thread has another (or none).
"""
from __future__ import annotations

import atexit
import threading
from typing import Any, Callable

ACL_SUCCESS = 0
ACL_ERROR_REPEAT_INITIALIZE = 100002


class AclProcess:
    """Reference-counted `acl.init` for one pyACL module; `acl.finalize` once, at exit."""

    def __init__(self, acl: Any, register_exit: Callable[[Callable[[], None]], Any] = atexit.register) -> None:
        self.acl = acl
        self.users = 0
        self._initialized_here = False
        self._finalized = False
        self._lock = threading.Lock()
        self._register_exit = register_exit

    def acquire(self) -> None:
        """Count one more user; the first ever initializes pyACL (or finds it initialized by another
        library in the process, e.g. ACLLite: then that library owns finalize)."""
        with self._lock:
            if self._finalized:
                raise RuntimeError("pyACL was already finalized in this process (at exit); it cannot be used again")
            if self.users == 0 and not self._initialized_here:
                ret = self.acl.init()
                if ret == ACL_SUCCESS:
                    self._initialized_here = True
                    self._register_exit(self.finalize_at_exit)
                elif ret != ACL_ERROR_REPEAT_INITIALIZE:
                    raise RuntimeError(f"pyACL acl.init failed with error code {ret}")
            self.users += 1

    def release(self) -> None:
        """One user fewer; pyACL stays initialized for the next configure in this process."""
        with self._lock:
            if self.users <= 0:
                raise RuntimeError("AclProcess.release without a matching acquire")
            self.users -= 1

    def finalize_at_exit(self) -> None:
        """`acl.finalize` once, if this process initialized pyACL (the atexit handler)."""
        with self._lock:
            if self._initialized_here and not self._finalized:
                self._finalized = True
                self.acl.finalize()


_processes: dict[int, AclProcess] = {}
_processes_lock = threading.Lock()


def acl_process(acl: Any) -> AclProcess:
    """The `AclProcess` of this pyACL module (one per module object: there is one pyACL per
    process, and a contract double standing in for it is a process of its own)."""
    with _processes_lock:
        state = _processes.get(id(acl))
        if state is None or state.acl is not acl:
            state = _processes[id(acl)] = AclProcess(acl)
        return state


class ThreadContexts:
    """Which owner's ACL context is current on each thread."""

    def __init__(self) -> None:
        self._local = threading.local()

    def is_current(self, owner: object) -> bool:
        return getattr(self._local, "owner", None) is owner

    def mark_current(self, owner: object | None) -> None:
        self._local.owner = owner


THREAD_CONTEXTS = ThreadContexts()
