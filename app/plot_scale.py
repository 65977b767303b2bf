"""The range of a log-scale loss axis, bounded by the data (issue 13 item 7: one term of 1e-30 stretched
loss.png's axis down to 1e-30 and squashed every curve). One rule for every loss plot: the viewer's
(`app/viewer/panels.py`), `loss.png` of a headless run (`app/headless.py`) and the replay video
(`app/replay.py`). No GUI imports, so the headless paths can use it.
"""

from __future__ import annotations

import numpy as np

#: The axis reaches at most this many decades below the median of the largest series (the total loss,
#: normally): a term that much smaller than the loss contributes nothing visible to it.
DECADES_BELOW_MEDIAN = 6.0
PAD = 10 ** 0.2  # a fifth of a decade of margin above and below


def log_axis_limits(series: dict) -> tuple[float, float] | None:
    """(lo, hi) of a log axis for `series` (label -> (xs, ys), or label -> ys).

    Only positive finite values can be drawn on a log axis (zeros, negative and non-finite values are left
    out). `hi` is the largest of them; `lo` is the smallest of them, but never less than
    `DECADES_BELOW_MEDIAN` decades below the median of the series whose median is largest, so a term that
    sits at 1e-30 (or a single 1e-30 sample) cannot stretch the axis away from the curves that matter;
    both padded by a fifth of a decade. None when there is no positive value (the caller draws a linear
    axis). Values below `lo` run off the bottom of the plot."""
    medians, values = [], []
    for ys in series.values():
        if isinstance(ys, tuple) and len(ys) == 2:
            ys = ys[1]
        v = np.asarray(ys, np.float64).ravel()
        v = v[np.isfinite(v) & (v > 0)]
        if v.size:
            values.append(v)
            medians.append(float(np.median(v)))
    if not values:
        return None
    lo = min(float(v.min()) for v in values)
    hi = max(float(v.max()) for v in values)
    lo = max(lo, max(medians) * 10.0 ** -DECADES_BELOW_MEDIAN)
    if hi <= lo:  # a flat series: one decade around it
        return lo / PAD, lo * PAD * PAD
    return lo / PAD, hi * PAD
