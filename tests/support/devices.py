"""The Warp devices the device-parametrized tests run on (the `device` fixture in conftest.py).

Every available device by default: the CPU always, plus the first CUDA device when the CUDA driver
reports one (Warp's own test suite runs "basic" mode the same way: CPU and first GPU). The environment
variable DRSTUDIO_TEST_DEVICES (a comma list, e.g. "cpu" or "cpu,cuda:0,cuda:1") restricts or extends
the list; naming a device this machine lacks is an error, never a silent skip.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import warp as wp

ENV = "DRSTUDIO_TEST_DEVICES"


@functools.cache
def available_devices() -> tuple[str, ...]:
    """Every Warp device of this machine: "cpu", then "cuda:0", "cuda:1", ..."""
    wp.init()  # once per process (cached here; wp.init is itself a no-op once initialized)
    return ("cpu",) + tuple(f"cuda:{i}" for i in range(wp.get_cuda_device_count()))


def _normalize(name: str) -> str:
    name = name.strip().lower()
    return "cuda:0" if name == "cuda" else name


@functools.cache
def test_devices() -> tuple[str, ...]:
    """The devices the `device` fixture is parametrized over: $DRSTUDIO_TEST_DEVICES when set, else the
    CPU and the first CUDA device when there is one."""
    available = available_devices()
    wanted = os.environ.get(ENV, "").strip()
    if not wanted:
        return available[:2]
    devices = tuple(dict.fromkeys(_normalize(d) for d in wanted.split(",") if d.strip()))
    missing = [d for d in devices if d not in available]
    if missing or not devices:
        raise ValueError(f"{ENV}={wanted!r}: {', '.join(missing) or 'no device'} not available "
                         f"(this machine has {', '.join(available)})")
    return devices


test_devices.__test__ = False  # a helper, not a test pytest should collect


def assert_same_render(got, want, device, err_msg: str = "") -> None:
    """Two computations that run the same kernels on the same inputs (e.g. two renders) agree: bit for bit
    on the CPU; on CUDA to float32 roundoff (rtol 1e-5, atol 1e-7), since vertex normals, antialias edge
    blends and volume composites are sums of atomic adds whose order varies between launches (each term
    rounds differently: a few ulp of the sum, far below any change a test looks for)."""
    if wp.get_device(device).is_cpu:
        np.testing.assert_array_equal(got, want, err_msg=err_msg)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=err_msg)


def torch_device(device: str):
    """The torch device of Warp device `device`. Skips the calling test, naming the reason, when torch cannot
    run there (requirements.lock installs the CPU build of torch, so a CUDA machine needs a CUDA torch)."""
    import torch

    if not wp.get_device(device).is_cpu and not torch.cuda.is_available():
        pytest.skip(f"torch {torch.__version__} has no CUDA: the torch path cannot run on {device}")
    return wp.device_to_torch(device)
