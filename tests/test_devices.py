"""The `device` fixture (conftest.py, support/devices.py): it lists the CPU always and CUDA whenever this
machine has it, so a GPU machine cannot silently run the device-parametrized tests on the CPU only."""

from __future__ import annotations

import os

import numpy as np
import pytest
import warp as wp
from drstudio.renderer.device_scene import default_device
from support import devices
from support.arrays import farr


def test_fixture_lists_the_cpu_and_cuda_when_present():
    listed = devices.test_devices()
    if devices.ENV in os.environ:  # an explicit restriction is the user's choice, not silent
        pytest.skip(f"{devices.ENV} is set")
    assert listed[0] == "cpu"
    if wp.get_cuda_device_count() > 0:
        assert "cuda:0" in listed
    else:
        assert listed == ("cpu",)


def test_renderer_default_device_agrees():
    assert default_device() in devices.available_devices()
    assert default_device() == ("cuda:0" if "cuda:0" in devices.available_devices() else "cpu")
    if devices.ENV not in os.environ:
        assert default_device() in devices.test_devices()


def test_fixture_is_the_default_device_with_a_readable_id(device, request):
    assert request.node.name.endswith(f"[{device}]")
    assert wp.get_device() == wp.get_device(device)
    a = farr([1.0, 2.0])  # built without device=: lands on the test's device
    assert a.device == wp.get_device(device)
    np.testing.assert_array_equal(a.numpy(), [1.0, 2.0])


def test_environment_restricts_the_list(monkeypatch):
    uncached = devices.test_devices.__wrapped__
    monkeypatch.setenv(devices.ENV, "cpu")
    assert uncached() == ("cpu",)
    monkeypatch.setenv(devices.ENV, " CPU , cpu ")
    assert uncached() == ("cpu",)
    monkeypatch.setenv(devices.ENV, "cpu,tpu")
    with pytest.raises(ValueError, match="tpu not available"):
        uncached()
    if wp.get_cuda_device_count() == 0:
        monkeypatch.setenv(devices.ENV, "cuda")  # naming a missing GPU is an error, never a silent skip
        with pytest.raises(ValueError, match="cuda:0 not available"):
            uncached()
    else:
        monkeypatch.setenv(devices.ENV, "cuda")
        assert uncached() == ("cuda:0",)


def test_assert_same_render_is_bit_exact_on_the_cpu():
    a = np.float32([0.25, 0.5])
    devices.assert_same_render(a, a.copy(), "cpu")
    with pytest.raises(AssertionError):
        devices.assert_same_render(a, np.nextafter(a, np.float32(1)), "cpu")


@pytest.mark.parametrize("device", ["cpu"])  # how a CPU-only test says so: the fixture leaves it alone
def test_an_explicitly_cpu_only_test_runs_on_the_cpu_only(device, request):
    assert request.node.name.endswith("[cpu]") and wp.get_device().is_cpu


def test_every_listed_device_gets_a_case(request):
    """The collected cases of the fixture test above: one per listed device (on a GPU machine a [cuda:0] one)."""
    cases = [item for item in request.session.items
             if item.originalname == "test_fixture_is_the_default_device_with_a_readable_id"]
    if not cases:
        pytest.skip("test_fixture_is_the_default_device_with_a_readable_id is not selected")
    assert sorted(item.callspec.params["device"] for item in cases) == sorted(devices.test_devices())
