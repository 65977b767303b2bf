"""Argument validation shared by every Warp launcher: raise (never assert) with the argument's name
and what was expected, as Warp's own launch errors do."""

from __future__ import annotations

import warp as wp


def check_array(name: str, arr, dtype, shape: tuple, device=None) -> None:
    """Raise TypeError/ValueError naming `name` unless `arr` is a wp.array of `dtype` whose shape
    matches `shape` (None entries match any size), on `device` when one is given."""
    want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ("," * (len(shape) == 1)) + ")"
    if not isinstance(arr, wp.array):
        raise TypeError(f"{name}: expected a wp.array of dtype {wp.types.type_repr(dtype)} and shape {want}, "
                        f"got {type(arr).__name__}")
    if arr.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {wp.types.type_repr(dtype)}, got {wp.types.type_repr(arr.dtype)}")
    if len(arr.shape) != len(shape) or any(s not in (None, n) for s, n in zip(shape, arr.shape, strict=True)):
        raise ValueError(f"{name}: expected shape {want}, got {tuple(arr.shape)}")
    if device is not None and arr.device != device:
        raise ValueError(f"{name}: expected an array on device {device}, got one on {arr.device}")
