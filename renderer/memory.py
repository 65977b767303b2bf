"""Memory estimates checked before large allocations, so a schema-valid but huge input (an 8192x8192
camera, a 512^3 SH grid) is refused with a message naming it instead of ending in the kernel's OOM killer.

The estimates are measured, not derived: `RENDER_BYTES_PER_PIXEL` is the peak resident growth of one
mesh render under a tape on the CPU (316 B/pixel at 1024^2 and 2048^2, benchmarks of 2026-12-07),
doubled for the backward pass's adjoints. A request is refused when it needs more than
`BUDGET_FRACTION` of the memory the system reports available now (`MemAvailable`).

Radiance fields cost memory per ray sample (`field_batch_bytes`): one training step of a voxel grid grew
the peak resident size by 78 B per ray sample (SH degree 1, 32^3, 2,048 -> 16,384 rays of 128 samples,
98 % of them inside the box), an MLP field by 904 + 5.9 * width * depth B (width 64 and 256, depth 4,
1,024 -> 4,096 rays of 64 samples); the constants round these up. A forward render holds the sample
arrays of one group of rays (44 B a sample) plus the values queried there.
"""

from __future__ import annotations

import ctypes
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


def reuse_freed_buffers() -> bool:
    """Make glibc keep freed buffers for reuse instead of returning them to the OS (mmap threshold 32 MB, its
    maximum; trim threshold 512 MB). A render allocates fresh per-pixel buffers every step (~50 MB at
    512x512), which glibc's defaults map anew each time and page-fault in on first touch: about 10 % of a
    512x512 forward pass and 13 % of a shape step measured (CPU time), for about 40 MB more peak resident
    memory there. Process-wide and idempotent; the command line calls it once. False where glibc's
    mallopt is unavailable."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 32 * 2**20)) and bool(libc.mallopt(-1, 512 * 2**20))  # M_MMAP/TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 0.1 * 2**30 else f"{n / 2**20:.0f} MiB"


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


GRID_SAMPLE_BYTES = 128  # a voxel / time grid's training step, per ray sample (measured 78)
NEURAL_SAMPLE_BYTES = 1024  # an MLP field's training step, per ray sample: this ...
NEURAL_UNIT_BYTES = 8  # ... plus this per hidden unit and layer (measured 904 + 5.9 * width * depth)
RENDER_SAMPLE_BYTES = 64  # a forward render's sample arrays (44 B) and queried values, per ray sample
RAY_BANK_BYTES_PER_PIXEL = 48  # a field's training pixel: its ray (origin, direction) and color, and the target


def field_batch_bytes(field, rays: int, *, training: bool) -> int:
    """The memory a batch of `rays` rays of `field` (a scene-schema field spec: its `type`, `samples_per_ray`,
    and `width`, `depth` for MLP fields) needs: a training step under a tape, or a forward render of a group."""
    samples = int(rays) * int(field.samples_per_ray)
    neural = getattr(field, "type", "") in ("neural", "nerf_w")
    if training:
        per = NEURAL_SAMPLE_BYTES + NEURAL_UNIT_BYTES * field.width * field.depth if neural else GRID_SAMPLE_BYTES
    else:  # torch keeps two layers' activations alive at a time without a tape
        per = RENDER_SAMPLE_BYTES + (2 * 4 * field.width if neural else 0)
    return samples * per


def hash_table_bytes(n_levels: int, log2_table_size: int, n_features: int, copies: int = 1) -> int:
    """A hash-grid field's tables (float32 (L * 2^log2_T, F)) times `copies` (training holds the values, their
    gradient, torch's fresh gradient of a step and two Adam moments: 5)."""
    return int(n_levels) * (1 << int(log2_table_size)) * int(n_features) * 4 * int(copies)
