"""The phases a user waits through, reported the same way to the CLI and the viewer (issue 17):
compiling / loading the renderer's Warp kernels (a new machine compiles them once: minutes), loading the
target images, rendering the targets, the final evaluation of every view.

Code that runs a phase wraps it: `with phase("loading target images", n, "image") as p: ... p.advance()`
or `for x in track("...", items)`. Listeners (`add_listener`) hear `(event, phase)` for "start", "advance"
and "end"; `TerminalReporter` draws a tqdm bar on stderr for phases that last longer than half a second
(`drstudio optimize`, `drstudio view` in a terminal); the viewer reads `current()` and draws the phase
with its progress and ETA. Phases may nest (the innermost is `current()`); any thread may run one.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

KERNELS_PHASE = "compiling renderer kernels, first run only"
KERNELS_CACHED_PHASE = "loading renderer kernels"


@dataclass
class Phase:
    name: str
    total: int
    unit: str = ""
    done: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds left at the pace so far (None before the first unit is done)."""
        if self.done <= 0 or self.total <= 0:
            return None
        elapsed = time.monotonic() - self.started
        return max(0.0, elapsed / self.done * (self.total - self.done))

    def advance(self, n: int = 1) -> None:
        self.done += n
        _notify("advance", self)

    def describe(self) -> str:
        """"name 3/10 image, ETA 12 s" (for a status line)."""
        eta = self.eta()
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.name} {self.done}/{self.total}{unit}" + (f", ETA {eta:.0f} s" if eta is not None else "")


_lock = threading.Lock()
_active: list[Phase] = []
_listeners: list[Callable[[str, Phase], None]] = []


def add_listener(fn: Callable[[str, Phase], None]) -> None:
    with _lock:
        _listeners.append(fn)


def remove_listener(fn) -> None:
    with _lock:
        if fn in _listeners:
            _listeners.remove(fn)


def current() -> Phase | None:
    """The innermost phase running now (any thread), or None."""
    with _lock:
        return _active[-1] if _active else None


def _notify(event: str, p: Phase) -> None:
    with _lock:
        listeners = list(_listeners)
    for fn in listeners:
        try:
            fn(event, p)
        except Exception:  # noqa: BLE001 - a broken display must not break the work it reports
            pass


@contextlib.contextmanager
def phase(name: str, total: int, unit: str = "") -> Iterator[Phase]:
    p = Phase(name, int(total), unit)
    with _lock:
        _active.append(p)
    _notify("start", p)
    try:
        yield p
    finally:
        with _lock:
            if p in _active:
                _active.remove(p)
        _notify("end", p)


def track(name: str, items: Iterable, total: int | None = None, unit: str = "") -> Iterator:
    """`items`, reported as phase `name` (one unit per item)."""
    items = list(items) if total is None else items
    with phase(name, len(items) if total is None else total, unit) as p:
        for item in items:
            yield item
            p.advance()


class TerminalReporter:
    """A tqdm bar on stderr per phase that lasts more than `delay` seconds (ETA included); when stderr is
    not a terminal (a log file, CI), a line every `every` seconds of a long phase and one when it ends."""

    def __init__(self, delay: float = 0.5, file=None, every: float = 5.0):
        self.delay = delay
        self.file = file
        self.every = every
        self._bars: dict[int, object] = {}
        self._lines: dict[int, float] = {}  # phase -> when its last line was printed

    def _line(self, p: Phase, event: str) -> None:
        key, now = id(p), time.monotonic()
        if event == "start":
            return
        last = self._lines.get(key)
        if event == "end":
            if last is not None or now - p.started > self.delay:
                print(f"{p.name}: {p.done}/{p.total} {p.unit} in {now - p.started:.1f} s".rstrip(),
                      file=self.file or sys.stderr, flush=True)
            self._lines.pop(key, None)
        elif now - p.started > self.delay and (last is None or now - last >= self.every):
            print(p.describe(), file=self.file or sys.stderr, flush=True)
            self._lines[key] = now

    def __call__(self, event: str, p: Phase) -> None:
        from tqdm import tqdm

        out = self.file or sys.stderr
        if not (hasattr(out, "isatty") and out.isatty()):
            self._line(p, event)
            return
        key = id(p)
        if event == "start":
            self._bars[key] = tqdm(total=p.total, desc=p.name, unit=f" {p.unit}" if p.unit else "it",
                                   delay=self.delay, file=self.file or sys.stderr, leave=False, dynamic_ncols=True)
        elif event == "advance" and key in self._bars:
            bar = self._bars[key]
            bar.update(p.done - bar.n)
        elif event == "end" and key in self._bars:
            bar = self._bars.pop(key)
            bar.update(p.done - bar.n)
            bar.close()


@contextlib.contextmanager
def terminal(delay: float = 0.5) -> Iterator[TerminalReporter]:
    """Report phases on stderr while the block runs."""
    reporter = TerminalReporter(delay)
    add_listener(reporter)
    try:
        yield reporter
    finally:
        remove_listener(reporter)


# -- the renderer's kernels -----------------------------------------------------------------------------

def _launch_block_dim(device) -> int:
    """The block size Warp builds a module for when our launches (no `block_dim` given) run on `device`: 1 on
    a CPU, 256 on CUDA. Not the module's `block_dim` option (256), which a CPU launch does not use: loading
    that variant on a CPU compiled every module a second time, for nothing."""
    try:
        from warp._src.context import _resolve_launch_block_dim

        return int(_resolve_launch_block_dim(device, None))
    except Exception:  # noqa: BLE001 (private API; the rule it implements in Warp 1.19)
        return 1 if device.is_cpu else 256


def _needs_compile(module, device, block_dim: int | None = None) -> bool | None:
    """Whether Warp will compile `module` for `device` (its `block_dim` variant, by default the one a launch
    uses, is not in the kernel cache); None when this Warp does not tell (private API)."""
    import os

    import warp as wp

    try:
        if block_dim is None:
            block_dim = _launch_block_dim(device)
        name = module.get_module_identifier(block_dim)
        out = module._get_compile_output_name(device, block_dim=block_dim)
        return not os.path.exists(os.path.join(wp.config.kernel_cache_dir, name, out))
    except Exception:  # noqa: BLE001
        return None


def load_kernels(device=None, prefix: str = "drstudio.") -> int:
    """Load (compiling on the first run) every Warp module imported from drstudio so far, one at a time,
    as one phase: "compiling renderer kernels, first run only" when some must be compiled, else "loading
    renderer kernels". Loading them here, before the engine starts, also keeps two threads from loading
    one module at once. Each is built for the block size our launches use on `device` (`_launch_block_dim`).
    (Loading on two threads, as Warp's `force_load` can, was measured: the same wall time on two cores and
    more CPU, so it is not done.) Returns the number of modules loaded now."""
    import warp as wp
    from warp._src.context import user_modules

    device = wp.get_device(device)
    block_dim = _launch_block_dim(device)
    modules = [m for name, m in sorted(user_modules.items()) if name.startswith(prefix)
               and not m.execs.get((device.context, block_dim))]
    if not modules:
        return 0
    compile_any = any(_needs_compile(m, device, block_dim) is not False for m in modules)
    with phase(KERNELS_PHASE if compile_any else KERNELS_CACHED_PHASE, len(modules), "module") as p:
        for m in modules:
            m.load(device, block_dim=block_dim)
            p.advance()
    return len(modules)
