"""Memory estimates checked before large allocations, so a schema-valid but huge input (an 8192x8192
camera, a 512^3 SH grid) is refused with a message naming it instead of ending in the kernel's OOM killer.

The estimates are measured, not derived: `RENDER_BYTES_PER_PIXEL` is the peak resident growth of one
mesh render under a tape on the CPU (316 B/pixel at 1024^2 and 2048^2, benchmarks of 2026-12-07),
doubled for the backward pass's adjoints. A request is refused when it needs more than
`BUDGET_FRACTION` of the memory the system reports available now (`MemAvailable`).
"""

from __future__ import annotations

import os

RENDER_BYTES_PER_PIXEL = 2 * 320  # forward buffers under a tape, and their adjoints
BUDGET_FRACTION = 0.8


class MemoryBudgetError(MemoryError):
    """A request that would need more memory than the machine has available; nothing was allocated."""


def available_bytes() -> int:
    """Memory the system can give this process now (Linux MemAvailable; else physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def require(nbytes: float, what: str, available: int | None = None) -> None:
    """Refuse (MemoryBudgetError naming `what` and the estimate) a request of `nbytes`."""
    have = available_bytes() if available is None else available
    if nbytes > BUDGET_FRACTION * have:
        raise MemoryBudgetError(f"{what} needs about {gib(nbytes)}, more than this machine has available "
                                f"({gib(have)} free)")


def render_bytes(width: int, height: int, views: int = 1) -> int:
    return int(width) * int(height) * RENDER_BYTES_PER_PIXEL * int(views)


def grid_bytes(resolution, sh_degree: int, copies: int = 1) -> int:
    """A voxel grid's density and SH values (float32) at `resolution`, times `copies` (training holds the
    values, their gradients and two Adam moments: 4)."""
    n = 1
    for r in resolution:
        n *= int(r)
    return n * (1 + 3 * (int(sh_degree) + 1) ** 2) * 4 * int(copies)


def hash_table_bytes(n_levels: int, log2_table_size: int, n_features: int, copies: int = 1) -> int:
    """A hash-grid field's tables (float32 (L * 2^log2_T, F)) times `copies` (training holds the values, their
    gradient, torch's fresh gradient of a step and two Adam moments: 5)."""
    return int(n_levels) * (1 << int(log2_table_size)) * int(n_features) * 4 * int(copies)
