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
- sky.tif        32x64 float32 linear radiance, equirectangular (row 0 the zenith, the middle column -Z):
                 a blue sky brightening to the horizon, a sun of radiance 60 at 35 degrees elevation
                 (azimuth 150: behind the front camera of env_object.json, to its right), a warm and a
                 cool panel on the horizon, a dark ground. (.hdr / .exr have no imageio backend in the
                 lock; a float TIFF holds the same values.)
"""

from __future__ import annotations

import argparse
import colorsys
import datetime
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


def environment(height: int = 32, width: int = 64) -> np.ndarray:
    """The sky of env_object.json, (height, width, 3) float32 (see the module docstring)."""
    theta = (np.arange(height) + 0.5) / height * np.pi  # from the zenith
    phi = ((np.arange(width) + 0.5) / width - 0.5) * 2 * np.pi  # azimuth, 0 looking down -Z
    t, p = np.meshgrid(theta, phi, indexing="ij")
    d = np.stack([np.sin(t) * np.sin(p), np.cos(t), -np.sin(t) * np.cos(p)], -1)
    up = d[..., 1]
    u = np.clip(up, 0, 1)[..., None]
    horizon, zenith, ground = np.array([0.8, 0.85, 0.9]), np.array([0.2, 0.35, 0.8]), np.array([0.18, 0.14, 0.1])
    sky = np.where(up[..., None] > 0, horizon * (1 - u) + zenith * u, ground)
    sun_dir = np.array([np.cos(np.radians(35)) * np.sin(np.radians(150)), np.sin(np.radians(35)),
                        -np.cos(np.radians(35)) * np.cos(np.radians(150))])
    sun = (d @ sun_dir) > np.cos(np.radians(6))
    sky[sun] = [60.0, 55.0, 45.0]
    panel = (np.abs(up) < 0.25)
    sky[panel & (np.abs(p - 2.2) < 0.5)] = [2.0, 0.8, 0.3]
    sky[panel & (np.abs(p + 1.8) < 0.4)] = [0.3, 0.9, 2.0]
    return sky.astype(np.float32)


def write_float_tiff(path: Path, image: np.ndarray) -> None:
    """A float32 TIFF with a fixed creation time, so that a rebuild is byte-identical."""
    import tifffile

    def write(tmp):
        tifffile.imwrite(tmp, image, photometric="rgb", datetime=datetime.datetime(2026, 1, 1))
    atomic_write(path, write)


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
    write_float_tiff(out / "sky.tif", environment())
    return [out / n for n in ("albedo.png", "roughness.png", "sphere.obj", "bumpy_sphere.obj", "blob.obj",
                              "sky.tif")]


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
