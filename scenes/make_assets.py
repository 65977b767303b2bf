"""Generate the small committed assets of the shipped scenes, deterministically (no randomness).

    python -m scenes.make_assets            # (re)write scenes/assets/
    python -m scenes.make_assets --check    # exit 1 if the committed files differ from a fresh build

- albedo.png     128x128 sRGB: a checkerboard of 8x8 cells with hues across it, plus thin lines,
                 so a recovered texture is easy to judge by eye.
- roughness.png  128x128 gray, linear: concentric rings between 0.15 and 0.85.
- sphere.obj     the icosphere primitive (radius 1, 3 subdivisions: 642 vertices), the initial shape.
- bumpy_sphere.obj the same vertices and faces pushed along their normals by smooth bumps: the target
                 shape; vertex i of both files is the same point of the sphere, so they compare 1:1.
- blob.obj       a non-convex target for shape_sphere.json: a finer icosphere (4 subdivisions) with lobes
                 pushed out and dents pushed in (the valleys between them are concave), of its own topology.
"""

from __future__ import annotations

import argparse
import colorsys
import filecmp
import sys
import tempfile
from pathlib import Path

import numpy as np
from drstudio.renderer import primitives
from drstudio.renderer.images import atomic_write, write_image

ASSETS = Path(__file__).resolve().parent / "assets"
SIZE = 128
ICO_SUBDIVISIONS = 3
BUMPS = np.array([[0, 1, 0], [1, 0.2, 0.3], [-0.6, -0.4, 0.7], [-0.3, 0.5, -0.8], [0.4, -0.9, -0.2]], float)
# blob.obj: (direction, height, width) of each lobe (height > 0) or dent (height < 0)
BLOB_SUBDIVISIONS = 4
BLOB = [([0, 1, 0.2], 0.45, 0.12), ([1, -0.1, 0.3], 0.4, 0.1), ([-0.7, -0.3, 0.6], 0.4, 0.1),
        ([-0.2, 0.4, -0.9], 0.35, 0.12), ([0.3, -1, -0.3], 0.4, 0.1), ([0.2, 0.2, 1], -0.25, 0.08),
        ([-1, 0.3, -0.2], -0.2, 0.1)]


def albedo() -> np.ndarray:
    """(SIZE, SIZE, 3) sRGB values in [0, 1]."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    cell = (np.floor(x * 8) + np.floor(y * 8)) % 2
    hue = (x + 0.5 * y) % 1.0
    rgb = np.array([colorsys.hsv_to_rgb(h, 0.75, 0.95) for h in hue.ravel()]).reshape(SIZE, SIZE, 3)
    rgb = np.where(cell[..., None] > 0, rgb, 0.35 + 0.3 * rgb)
    lines = (np.abs(x * SIZE - SIZE / 2) < 1) | (np.abs(y * SIZE - SIZE / 2) < 1)
    return np.where(lines[..., None], 0.05, rgb)


def roughness() -> np.ndarray:
    """(SIZE, SIZE, 1) linear values in [0.15, 0.85]."""
    y, x = (np.mgrid[0:SIZE, 0:SIZE] + 0.5) / SIZE - 0.5
    return (0.5 + 0.35 * np.cos(2 * np.pi * 6 * np.hypot(x, y)))[..., None]


def spheres() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(plain vertices, bumpy vertices, faces): the unit icosphere and its bumped copy."""
    vertices, faces, _ = primitives.icosphere(1.0, ICO_SUBDIVISIONS)
    v = vertices.astype(np.float64)
    n = v / np.linalg.norm(v, axis=1, keepdims=True)
    centers = BUMPS / np.linalg.norm(BUMPS, axis=1, keepdims=True)
    height = 0.25 * np.exp(-(1 - n @ centers.T) / 0.08).sum(1)  # Gaussian-like bumps on the sphere
    return v, n * (1 + height)[:, None], faces


def blob() -> tuple[np.ndarray, np.ndarray]:
    """(vertices, faces) of the non-convex target: r(n) = 1 + sum_k h_k exp(-(1 - n.c_k) / w_k) on the sphere."""
    vertices, faces, _ = primitives.icosphere(1.0, BLOB_SUBDIVISIONS)
    n = vertices.astype(np.float64)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    r = np.ones(len(n))
    for direction, height, width in BLOB:
        c = np.asarray(direction, float) / np.linalg.norm(direction)
        r += height * np.exp(-(1 - n @ c) / width)
    return n * r[:, None], faces


def write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray, comment: str) -> None:
    lines = [f"# {comment}", *(f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices),
             *(f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces)]
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))


def build(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_image(out / "albedo.png", albedo(), srgb=False)  # the values are already sRGB
    write_image(out / "roughness.png", roughness(), srgb=False)
    plain, bumpy, faces = spheres()
    write_obj(out / "sphere.obj", plain, faces, f"icosphere, radius 1, {ICO_SUBDIVISIONS} subdivisions")
    write_obj(out / "bumpy_sphere.obj", bumpy, faces, "target shape: sphere.obj with smooth bumps")
    write_obj(out / "blob.obj", *blob(), "non-convex target shape: an icosphere with lobes and dents")
    return [out / n for n in ("albedo.png", "roughness.png", "sphere.obj", "bumpy_sphere.obj", "blob.obj")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSETS, help=f"output folder (default: {ASSETS})")
    parser.add_argument("--check", action="store_true", help="compare with a fresh build; write nothing")
    args = parser.parse_args(argv)
    if not args.check:
        for path in build(args.out):
            print(f"wrote {path}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = [p.name for p in build(Path(tmp))
                 if not (args.out / p.name).exists() or not filecmp.cmp(p, args.out / p.name, shallow=False)]
    if stale:
        print(f"out of date in {args.out}: {', '.join(stale)} (run python -m scenes.make_assets)",
              file=sys.stderr)
        return 1
    print(f"{args.out}: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
