"""renderer.params: the parameter table — paths, kinds, entries, validated updates, versions and
subscribers — checked against the scene it is built from."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from drstudio.renderer.device_scene import DeviceScene
from drstudio.renderer.params import (
    FIELD_KINDS,
    TEXTURE_KINDS,
    Group,
    Kind,
    ParamPath,
    ParamTable,
    camera_pose,
)
from support.scenes import gradient_scene


@pytest.fixture(scope="module")
def scene():
    return gradient_scene()


def test_paths_are_strings_that_know_their_parts():
    p = ParamPath(Group.LIGHTS, "key", "position")
    assert p == "lights.key.position" and {"lights.key.position": 1}[p] == 1
    assert (p.group, p.owner, p.name) == (Group.LIGHTS, "key", "position")
    q = ParamPath.parse("materials.paint.albedo")
    assert (q.group, q.owner, q.name) == (Group.MATERIALS, "paint", "albedo")
    assert pickle.loads(pickle.dumps(q)).owner == "paint"
    assert camera_pose("front") == "cameras.front.pose"
    for bad in ("lights.key", "planets.x.y", "lights.a.b.c", ""):
        with pytest.raises(ValueError, match="group.owner.name"):
            ParamPath.parse(bad)
    with pytest.raises(ValueError, match="without dots"):
        ParamPath("lights", "a.b", "color")


def test_kinds_carry_their_vocabulary():
    assert Kind.ALBEDO == "albedo" and Kind("roughness") is Kind.ROUGHNESS
    assert {k for k in Kind if k.is_texture} == set(TEXTURE_KINDS) == {Kind.ALBEDO, Kind.ROUGHNESS, Kind.METALLIC}
    assert {k for k in Kind if k.is_field} == set(FIELD_KINDS)
    assert Kind.ROUGHNESS.range == (0.02, 1.0) and Kind.POSITION.range == (-1e6, 1e6)  # finite renders
    assert Kind.DENSITY.range == (-np.inf, np.inf)  # raw field values
    assert (Kind.ALBEDO.channels, Kind.METALLIC.channels, Kind.POSE.channels) == (3, 1, None)


def test_table_matches_the_scene(scene):
    table = ParamTable.from_scene(scene)
    params = scene.params()
    assert list(table) == list(params)  # same paths, same order
    for path, p in params.items():
        e = table[path]
        assert e.shape == p.value.shape and e.kind == p.kind and e.path.owner in path
    # geometry and cameras move silhouettes; materials and lights do not
    assert all(e.discontinuous for e in table.select(group="cameras"))
    assert not any(e.discontinuous for e in table.select(group=Group.MATERIALS))
    assert not any(e.discontinuous for e in table.select(group=Group.LIGHTS))
    assert [e.name for e in table.select(group="meshes", owner=next(iter(scene.meshes)))] == \
        ["vertices", "colors", "uvs", "translation", "rotation", "scale"]
    assert table.find("lights", "nope", "color") is None
    with pytest.raises(KeyError, match="did you mean"):
        table["lights.key.positoin"]


def test_update_validates_versions_and_notifies(scene):
    ds = DeviceScene(scene, "cpu")
    table = ds.params
    heard = []
    unsubscribe = table.subscribe(heard.append)
    path = next(e.path for e in table.select(kind=Kind.ALBEDO))
    before, version = ds.get(path), table.versions[path]
    for bad, message in ((np.full(before.shape, np.nan), "not finite"), (np.zeros(3), "shape"),
                         (np.full(before.shape, 1e39), "float32"), (np.full(before.shape, 2.0), r"\[0, 1\]")):
        with pytest.raises(ValueError, match=message):
            table.update(path, bad)
        np.testing.assert_array_equal(ds.get(path), before)  # a refused update changes nothing
    assert table.versions[path] == version and heard == []
    new = np.full(before.shape, 0.25, np.float32)
    table.update(path, new)
    np.testing.assert_array_equal(ds.get(path), new)
    assert table.versions[path] == version + 1 and heard == [(path,)]
    table.changed([path])
    assert table.versions[path] == version + 2 and len(heard) == 2
    unsubscribe()
    table.update(path, before)
    assert len(heard) == 2


def test_resize_is_the_only_shape_change(scene):
    ds = DeviceScene(scene, "cpu")
    path = next(e.path for e in ds.params.select(kind=Kind.ALBEDO))
    v = ds.params.versions[path]
    arr = ds.replace_leaf(path, np.full((2, 3, 3), 0.5, np.float32))
    assert ds.params[path].shape == (2, 3, 3) and ds.arrays[path] is arr and ds.params.versions[path] == v + 1
    np.testing.assert_array_equal(ds.get(path), np.full((2, 3, 3), 0.5, np.float32))
