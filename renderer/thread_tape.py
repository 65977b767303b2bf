"""One active `wp.Tape` per thread.

Warp 1.19 keeps the active tape in one attribute of its process-wide runtime object,
`warp._src.context.runtime.tape`: `Tape.__enter__`/`__exit__` set and clear it, and `wp.launch`,
`wp.copy`, `wp.ScopedTimer` and `warp.fem` record on whatever it holds, whichever thread launches. So
a viewer thread rendering while the optimizer thread is inside `with wp.Tape():` would record on the
optimizer's tape, and a second thread entering a tape of its own would raise.

`install()` (run by `import renderer`) replaces that attribute by a data descriptor on Warp's `Runtime`
class that stores the value in a `threading.local()`: every read and write of `runtime.tape` — Warp's
own and this repo's — then sees the calling thread's tape. This module is the one place that touches
that attribute: the hand-written adjoints find the tape to record on with `active_tape()`, and code that
must not record (a read-out inside another's tape) uses `recording(None)`. A thread starts with no tape.
(Warp 1.19 has no per-thread tape of its own: `Tape.__enter__` and `wp.launch` use the one runtime
attribute; `record_tape=False` only keeps single launches off the tape.) Warp's native code never reads
the tape (it is a Python-only recorder), and there is one `Runtime` instance per process, so one
thread-local slot per thread is the whole state. Consequences:

- launches record on the tape of the thread that issues them, and only there;
- each thread may have its own tape active (`with wp.Tape():` in two threads at once is fine);
- a `with tape:` block must be entered and exited in one thread (as with any `with` block);
- code that wants worker threads to record for it must make their tapes active in those threads
  (`recording(tape)`, as `renderer.parallel` does) and chain them into its own (`Tape.record_func`).
"""

from __future__ import annotations

import contextlib
import threading

from warp._src import context as _context


class _PerThreadTape:
    """`Runtime.tape`, per thread: a data descriptor, so it takes precedence over the instance
    attribute `Runtime.__init__` assigns (which goes through `__set__` too)."""

    def __init__(self):
        self._local = threading.local()

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return getattr(self._local, "tape", None)

    def __set__(self, obj, value):
        self._local.tape = value


def install() -> None:
    """Make `warp._src.context.runtime.tape` per-thread for the whole process. Idempotent; works
    before or after `wp.init()`. A tape already active when it runs stays the active one of the calling
    thread."""
    runtime_class = _context.Runtime
    current = runtime_class.__dict__.get("tape")
    if isinstance(current, _PerThreadTape):
        return
    if current is not None:
        raise RuntimeError("renderer.thread_tape: warp's Runtime already defines a class attribute 'tape'; "
                           "this Warp version is not supported (written for Warp 1.19)")
    descriptor = _PerThreadTape()
    runtime = _context.runtime
    active = runtime.__dict__.pop("tape", None) if runtime is not None else None
    runtime_class.tape = descriptor
    if active is not None:
        descriptor._local.tape = active


def installed() -> bool:
    return isinstance(_context.Runtime.__dict__.get("tape"), _PerThreadTape)


def active_tape():
    """The calling thread's active tape (a `wp.Tape`, or a stand-in recorder), or None."""
    runtime = _context.runtime
    return runtime.tape if runtime is not None else None


@contextlib.contextmanager
def recording(tape):
    """Inside the block the calling thread's launches record on `tape` (None: on no tape), whatever
    tape the thread had, which is restored afterwards. Unlike `with tape:` it may replace an active
    tape; other threads are unaffected."""
    _context.init()
    runtime = _context.runtime
    previous = runtime.tape
    runtime.tape = tape
    try:
        yield tape
    finally:
        runtime.tape = previous
