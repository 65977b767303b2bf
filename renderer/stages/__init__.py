"""Differentiable rendering stages: one file per stage, Warp kernels on top, launchers below."""
