"""Reuse of a view's G-buffer across renders while the geometry, the camera and (for the shadow mask) the
lights' positions stay the same: an explicit, opt-in cache for appearance optimization.

In a texture, material or light-color optimization the rays, the primary visibility (triangle ids,
barycentrics, depth), the interpolated normals, uvs and vertex colors, the uv derivatives, the hit points,
the antialias silhouette pairs and the shadow mask are the same at every step. `render_view(...,
cache=GBufferCache(ds, varying=...))` computes each of these parts once and reuses it while none of the
scene paths it depends on has changed:

- visibility (rays, tri_id, barycentrics, depth, materials, normals, hit points, barycentric derivatives,
  antialias silhouette pairs): every mesh's vertices, translation, rotation and scale, and the camera's
  intrinsics and pose;
- uv (uv and its screen derivatives) and footprint (the albedo lookup's texel addresses and weights, for
  the albedo pool's layout): those, plus every mesh's uvs;
- colors (interpolated vertex colors): the visibility paths plus every mesh's colors;
- shadow (the shadow mask): the visibility paths plus every light's position and direction;
- lambert (scenes whose materials are all Lambert): vertex color times the irradiance factor
  ambient + sum_j E_j s_j / pi of every pixel, so that the radiance is the albedo sample times it: the
  visibility paths plus every mesh's colors and every light path (colors and intensities too).

A path "has changed" when its `DeviceScene.versions` counter moved (`DeviceScene.set` and `touch` bump
it) or its leaf array was replaced. The cache subscribes to the scene's parameter table, so a change also
drops the stored parts computed from it at once (their memory is freed; no caller invalidates by hand).
Paths that change in place without either (the optimizer's FREE parameters) must be declared `varying`: a
part that depends on a varying path is never stored and is recomputed, differentiably, at every render,
exactly as without a cache.

Gradients. A stored part is built off the tape from inputs without gradients, so it is a constant of
every later render. That is exact for every path the part does not depend on: texels, albedo, roughness,
metallic, light colors and intensities, ambient, the background, and (when only the colors part is not
stored) vertex colors, or (when only the uv part is not stored) uvs. The render through stored parts
gives the uncached render's image and gradients of those paths up to float32 roundoff: the footprint
gather and the Lambert factor sum the same terms in another order (tests/test_render_cache.py). It is
deterministic: the same state gives the same bits whether a part was just built or reused. Gradients of
the paths a stored part depends on are not computed (they are not being optimized).

`DeviceScene.prepare(cache=...)` reuses, the same way, the packed world positions and normals (and skips
the BVH refit), uvs, vertex colors, each material property's texture pool and the packed lights.

The soft render mode does not use the cache. Not thread-safe for concurrent renders of one view; the
views or bands that `renderer.parallel` renders in parallel use separate entries.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import warp as wp

from .params import Group, Kind, camera_intrinsics, camera_pose
from .thread_tape import recording

# the mesh leaves every part depends on (they move the geometry)
_GEOMETRY = ("vertices", "translation", "rotation", "scale")
PARTS = ("visibility", "uv", "footprint", "colors", "shadow", "lambert")


def constant(a):
    """`a` without gradient: an alias of the same memory with requires_grad=False (no copy). Kernels that
    read it are not differentiated w.r.t. it. Keep `a` alive while the alias is used."""
    if not isinstance(a, wp.array) or not a.requires_grad:
        return a
    return wp.array(ptr=a.ptr, dtype=a.dtype, shape=a.shape, strides=a.strides, device=a.device,
                    requires_grad=False)


def untaped():
    """Launches inside the block are not recorded on the calling thread's tape (`renderer.thread_tape`
    makes the active tape per-thread, so other threads' tapes are untouched)."""
    return recording(None)


def _nbytes(value) -> int:
    if isinstance(value, wp.array):
        return int(value.capacity)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


class GBufferCache:
    """Per-view G-buffer parts of one `DeviceScene`, kept while their inputs are unchanged (see the module
    docstring). Pass it to `render_view` (and `renderer.parallel`) as `cache=`.

    Args:
        ds: the DeviceScene whose leaves the parts are computed from.
        varying: dotted paths that change without `DeviceScene.set`/`touch` (the optimizer's free
            parameters); parts depending on them are never stored.
        max_bytes: memory budget of the stored parts; the least recently used views are dropped beyond it.
    """

    def __init__(self, ds, varying=(), max_bytes: int = 512 * 2**20):
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes: expected an int >= 0, got {max_bytes!r}")
        self.ds = ds
        self.max_bytes = max_bytes
        self._varying: frozenset[str] = frozenset()
        self._entries: OrderedDict = OrderedDict()  # (view key, part) -> (token, value, bytes)
        self._lock = threading.Lock()
        self._deps: dict[tuple[str, str], list[str]] = {}
        self.hits = 0
        self.builds = 0
        self.set_varying(varying)
        # every change the parameter table hears of (an edit, a reset, a truth edit, a resized leaf) drops
        # the parts computed from the changed paths: no caller has to invalidate by hand
        self.close = ds.params.subscribe(self._changed)

    def _changed(self, paths) -> None:
        """Drop the stored parts whose inputs include one of `paths` (their tokens would no longer match)."""
        changed = set(paths)
        with self._lock:
            stale = [k for k, (token, _, _) in self._entries.items() if any(d[0] in changed for d in token)]
            for k in stale:
                del self._entries[k]

    # -- control ---------------------------------------------------------------------------------
    @property
    def varying(self) -> frozenset:
        return self._varying

    def set_varying(self, paths) -> None:
        """Declare the paths that change in place (e.g. the free parameters). Changing the set clears the
        cache: a path that was varying may have changed without its version moving."""
        paths = frozenset(paths)
        unknown = sorted(p for p in paths if p not in self.ds.arrays)
        if unknown:
            raise ValueError(f"varying: unknown paths {unknown}; expected dotted paths of the scene's params()")
        if paths != self._varying:
            self._varying = paths
            self.clear()

    def clear(self) -> None:
        """Drop every stored part."""
        with self._lock:
            self._entries.clear()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(e[2] for e in self._entries.values())

    # -- dependencies ----------------------------------------------------------------------------
    def dependencies(self, part: str, camera: str) -> list[str]:
        """The dotted paths `part` of view `camera` depends on."""
        memo = self._deps.get((part, camera))
        if memo is None:
            memo = self._deps[(part, camera)] = self._dependencies(part, camera)
        return memo

    def _dependencies(self, part: str, camera: str) -> list[str]:
        if part not in PARTS:
            raise ValueError(f"part: expected one of {PARTS}, got {part!r}")
        table = self.ds.params
        meshes = table.select(group=Group.MESHES)
        paths = [e.path for e in meshes if e.name in _GEOMETRY]
        paths += [p for p in (camera_intrinsics(camera), camera_pose(camera)) if p in table]
        if part in ("uv", "footprint"):
            paths += [e.path for e in meshes if e.kind is Kind.UVS]
        elif part == "colors":
            paths += [e.path for e in meshes if e.kind is Kind.COLORS]
        elif part == "shadow":
            paths += [e.path for e in table.select(group=Group.LIGHTS) if e.kind in (Kind.POSITION, Kind.DIRECTION)]
        elif part == "lambert":
            paths += [e.path for e in meshes if e.kind is Kind.COLORS]
            paths += [e.path for e in table.select(group=Group.LIGHTS)]
        return paths

    def _token(self, part: str, camera: str):
        """The identity of the inputs of `part`, or None when one of them is varying."""
        deps = self.dependencies(part, camera)
        if any(p in self._varying for p in deps):
            return None
        return tuple((p, id(self.ds.arrays[p]), self.ds.versions.get(p, 0)) for p in deps)

    def cacheable(self, part: str, camera: str) -> bool:
        """Whether `part` of `camera` may be stored (none of its dependencies is varying)."""
        return self._token(part, camera) is not None

    # -- lookup ----------------------------------------------------------------------------------
    def fetch_static(self, name: str, deps: list[str], build):
        """Like `fetch` for a per-scene value (not per view) depending on the paths `deps` (used by
        `DeviceScene.prepare(cache=...)` for the packed geometry)."""
        if any(p in self._varying for p in deps):
            return build(False)
        token = tuple((p, id(self.ds.arrays[p]), self.ds.versions.get(p, 0)) for p in deps)
        return self._lookup(("scene",), name, token, build)

    def fetch(self, key: tuple, part: str, camera: str, build):
        """The stored value of `part` for view `key` (a tuple naming the view: camera, size, band, render
        settings), or `build(True)` run off the tape on gradient-free inputs and stored; `build(False)`
        (recorded as usual) when the part depends on a varying path."""
        token = self._token(part, camera)
        if token is None:
            return build(False)
        return self._lookup(key, part, token, build)

    def _lookup(self, key: tuple, part: str, token: tuple, build):
        with self._lock:
            entry = self._entries.get((key, part))
            if entry is not None and entry[0] == token:
                self._entries.move_to_end((key, part))
                self.hits += 1
                return entry[1]
        with untaped():
            value = build(True)
        size = _nbytes(value)
        with self._lock:
            self.builds += 1
            self._entries[(key, part)] = (token, value, size)
            self._entries.move_to_end((key, part))
            total = sum(e[2] for e in self._entries.values())
            while total > self.max_bytes and len(self._entries) > 1:
                _, (_, _, dropped) = self._entries.popitem(last=False)
                total -= dropped
        return value
