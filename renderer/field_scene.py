"""A `DeviceScene` of a scene with radiance fields: its voxel grids may change lattice.

A voxel-grid field trains coarse to fine (`Field.resolutions()`): its `density` and `sh` leaves are
replaced by resampled ones of another shape. `FieldDeviceScene.move_to_lattice` is the one way that
happens; it replaces both leaves and announces it through the parameter table (`resize`), so whoever holds
views of the leaves (a training model, the G-buffer cache) hears of it from the table. `set` of a grid value
of another lattice (a keyframe taken after an upsample) first moves the field to that lattice. The scene
holds no training state.
"""

from __future__ import annotations

import numpy as np

from .device_scene import DeviceScene
from .params import Group, Kind, ParamPath
from .render_field import field_grid


class FieldDeviceScene(DeviceScene):
    """See the module docstring."""

    def grid_paths(self, name: str) -> tuple[ParamPath, ParamPath]:
        """(density path, sh path) of voxel-grid field `name`."""
        return ParamPath(Group.FIELDS, name, Kind.DENSITY.value), ParamPath(Group.FIELDS, name, Kind.SH.value)

    def lattice(self, name: str) -> tuple[int, int, int]:
        """The current lattice of voxel-grid field `name`."""
        return tuple(int(n) for n in self.arrays[self.grid_paths(name)[0]].shape)

    def move_to_lattice(self, name: str, resolution: tuple[int, int, int]) -> None:
        """Resample voxel-grid field `name` to `resolution`, one of its lattices (`Field.resolutions()`):
        both leaves are replaced (new arrays) and the change announced by the table. ValueError for a
        lattice the field does not have."""
        field = self.scene.fields[name]
        lattices = field.resolutions()
        resolution = tuple(int(n) for n in resolution)
        if resolution not in lattices:
            raise ValueError(f"{self.grid_paths(name)[0]}: a value of lattice {resolution} does not fit the field, "
                             f"whose lattices are {lattices}")
        density, sh = self.grid_paths(name)
        new = field_grid(field, self.arrays[density], self.arrays[sh]).upsample(resolution)
        self.replace_grid(name, new.density.numpy(), new.sh.numpy())

    def replace_grid(self, name: str, density: np.ndarray, sh: np.ndarray) -> None:
        """New leaves (density (nx, ny, nz), sh (nx, ny, nz, 3K)) for voxel-grid field `name`, announced by
        the table (density first, then sh: a listener acts once both agree)."""
        d_path, sh_path = self.grid_paths(name)
        self.replace_leaf(d_path, density)
        self.replace_leaf(sh_path, sh)

    def set(self, path, value: np.ndarray, *, check_range: bool = False) -> None:
        entry = self.params[path]
        if entry.kind.is_grid and self.scene.fields[entry.owner].type == "voxel_grid":
            shape = tuple(np.shape(value))
            if shape != tuple(self.arrays[entry.path].shape):
                self.move_to_lattice(entry.owner, shape[:3])
        super().set(path, value, check_range=check_range)
