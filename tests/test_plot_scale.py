"""The log axis of every loss plot is bounded by the data (issue 13 item 7: one term at 1e-30 stretched
loss.png's axis down to 1e-30). app/plot_scale.py: at most 6 decades below the largest series' median."""

import numpy as np
from drstudio.app.plot_scale import DECADES_BELOW_MEDIAN, log_axis_limits


def test_a_tiny_value_does_not_stretch_the_axis():
    loss = np.geomspace(1.0, 1e-3, 200)
    tiny = np.full(200, 1e-30)  # a regularizer that sits at 1e-30 the whole run
    spiky = loss * 1e-2
    spiky[50] = 1e-30  # one sample at 1e-30
    lo, hi = log_axis_limits({"loss": loss, "loss.reg": tiny, "loss.tv": (np.arange(200), spiky)})
    median = float(np.median(loss))
    assert lo >= median * 10 ** -DECADES_BELOW_MEDIAN / 10 ** 0.2 * 0.999 and lo > 1e-12
    assert 1.0 < hi < 2.0
    # data that spans fewer decades keeps its own minimum (padded)
    lo, hi = log_axis_limits({"loss": loss, "loss.tv": loss * 1e-2})
    assert 1e-5 / 2 < lo < 1e-5


def test_zero_nan_and_flat_series():
    assert log_axis_limits({"a": [0.0, -1.0, np.nan], "b": []}) is None
    lo, hi = log_axis_limits({"flat": [0.5, 0.5]})
    assert lo < 0.5 < hi


def test_loss_png_axis(tmp_path):
    """headless loss.png: the y range drawn for a history holding a 1e-30 term."""
    from drstudio.app.headless import _loss_plot

    loss = np.geomspace(0.1, 1e-3, 100)
    lo, hi = _loss_plot(tmp_path / "loss.png", {"loss": loss, "loss.l2": loss, "loss.reg": np.full(100, 1e-30),
                                                "psnr_db": np.full(100, 20.0)})
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert 1e-10 < lo < 1e-3 and 0.1 < hi < 0.2
    lo, hi = _loss_plot(tmp_path / "empty.png", {"loss": np.zeros(0)})  # no step: a linear axis, no error
    assert lo < hi
