"""Plot held-out PSNR against training time for the radiance-field runs in benchmarks/results/field_*.json
(written by `bench_field.py --json`), one panel per resolution:

    .venv/bin/python benchmarks/plot_fields.py            # -> benchmarks/results/field_psnr.png
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from drstudio.renderer.images import atomic_write  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NAMES = {"grid": "voxel grid", "neural": "neural (IPE)", "nerfw": "NeRF-W", "dyn": "dynamic"}


def main() -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, size in zip(axes, (128, 200), strict=True):
        for key, label in NAMES.items():
            path = RESULTS / f"field_{key}{size}.json"
            if not path.is_file():
                continue
            curve = json.loads(path.read_text())["curve"]
            ax.plot([c["seconds"] for c in curve], [c["psnr_linear_db"] for c in curve], "o-", ms=3, label=label)
        ax.axhline(28.0, color="gray", lw=0.8, ls="--")
        ax.set(title=f"{size}x{size}, 64 views", xlabel="training time (s)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out PSNR (dB, linear RGB)")
    axes[0].legend(loc="lower right")
    fig.tight_layout()
    atomic_write(RESULTS / "field_psnr.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    print(RESULTS / "field_psnr.png")


if __name__ == "__main__":
    main()
