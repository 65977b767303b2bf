"""The `drstudio` CLI: info/run on every shipped scene, user mistakes exit 2 without a traceback,
unbuilt commands say so and exit 3, --help and --version work, `video` writes a camera-path mp4."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from drstudio.app import cli

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "scenes").glob("*.json"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drstudio.app.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_info_on_shipped_scenes(path, capsys):
    assert cli.main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"scene {path}") and "parameters (" in out and "* " in out


def test_info_subprocess_prints_paths_and_shapes():
    result = run_cli("info", "scenes/texture.json")
    assert result.returncode == 0, result.stderr
    assert "materials.paint.albedo" in result.stdout and "(128, 128, 3)" in result.stdout


def test_bad_scene_exits_2_with_the_message_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 1, "meshes": [], "materials": [], "cameras": [],
                               "render": {"mode": "x"}}))
    result = run_cli("info", str(bad))
    assert result.returncode == 2
    assert f"{bad}: meshes: expected at least 1 item" in result.stderr
    assert "also: " in result.stderr and "render.mode" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("command", ["info", "run"])
def test_missing_scene_exits_2(tmp_path, command, capsys):
    assert cli.main([command, str(tmp_path / "nope.json")]) == 2
    assert "nope.json: scene file not found" in capsys.readouterr().err


def test_run_headless_optimizes_and_writes_results(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", str(ROOT / "scenes" / "light.json"), "--headless", "--steps", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "lights.key.position" in captured.out  # the scene summary
    assert f"results written to {out}" in captured.out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["parameters"]["lights.key.position"]["distance"] >= 0
    for name in ("params.npz", "loss.png", "views/front.png"):
        assert (out / name).is_file()


def test_run_defaults_to_the_texture_scene(tmp_path, capsys):
    assert cli.main(["run", "--headless", "--steps", "1", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "texture.json" in out and (tmp_path / "r" / "materials.paint.albedo.png").is_file()


def test_render_writes_an_image(tmp_path, capsys):
    image = tmp_path / "front.png"
    assert cli.main(["render", str(ROOT / "scenes" / "light.json"), "-o", str(image), "--camera", "front"]) == 0
    assert image.is_file() and "wrote" in capsys.readouterr().out


def test_render_unknown_camera_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["render", str(ROOT / "scenes" / "light.json"), "-o", str(tmp_path / "x.png"),
                     "--camera", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no camera named 'nope'" in err and "Traceback" not in err


def test_replay_of_a_missing_recording_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["replay", str(tmp_path / "nope")]) == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("command", [None, "run", "view", "optimize", "render", "replay", "bench", "info", "video"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(([command] if command else []) + ["--help"])
    assert info.value.code == 0
    assert "usage: drstudio" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("drstudio 0.")


@pytest.mark.parametrize("args, message", [
    (["optimize", "scenes/light.json", "--device", "tpu"], "expected cpu, cuda or cuda:N"),
    (["optimize", "scenes/light.json", "--steps", "0"], "expected a positive integer"),
    (["render", "scenes/light.json"], "-o/--output"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_exit_2_without_traceback(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_video_of_a_trained_field_and_of_meshes(tmp_path):
    """`drstudio video`: an orbit of a field scene with values from a params.npz, and a keyframed
    path of a mesh scene; frame count and size read back; no temporary file left."""
    import imageio.v3 as iio
    import numpy as np
    from test_viewer_fields import write_field_scene

    scene = write_field_scene(tmp_path)
    res = 16
    ax = np.linspace(-1, 1, res)
    p = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1)
    density = np.where(np.linalg.norm(p, axis=-1) < 0.6, 8.0, -8.0).astype(np.float32)
    sh = np.full((res, res, res, 3), -3.0, np.float32)
    sh[..., 1] = 3.0  # green
    np.savez(tmp_path / "params.npz", **{"fields.nerf.density": density, "fields.nerf.sh": sh})
    out = tmp_path / "videos" / "field.mp4"
    out.parent.mkdir()
    result = run_cli("video", str(scene), "--params", str(tmp_path / "params.npz"), "--frames", "5",
                     "--size", "48x32", "--out", str(out))
    assert result.returncode == 0, result.stderr
    video = iio.imread(out)
    assert video.shape == (5, 32, 48, 3)
    center = video[:, 12:20, 20:28].reshape(-1, 3).mean(axis=0)
    assert center[1] > center[0] + 50, f"not the green trained field: {center}"
    path = tmp_path / "path.json"
    path.write_text(json.dumps({"fov_y": 40, "keyframes": [{"eye": [0, 1, 5], "target": [0, 0, 0]},
                                                           {"eye": [5, 1, 0], "target": [0, 0, 0]}]}))
    mesh_out = tmp_path / "videos" / "mesh.mp4"
    result = run_cli("video", "scenes/light.json", "--path", str(path), "--frames", "3", "--size", "32x24",
                     "--out", str(mesh_out))
    assert result.returncode == 0, result.stderr
    assert iio.imread(mesh_out).shape == (3, 24, 32, 3)
    assert sorted(f.name for f in out.parent.iterdir()) == ["field.mp4", "mesh.mp4"]


@pytest.mark.parametrize("args, message", [
    (["--size", "33x24"], "size: expected even width and height"),
    (["--size", "big"], "size: expected WIDTHxHEIGHT"),
    (["--frames", "0"], "expected a positive integer"),
    (["--path", "nope.json"], "--path nope.json: expected 'orbit' or a camera path JSON file"),
    (["--params", "scenes/light.json"], "not a params.npz"),
    (["--out", "x.avi"], "expected an .mp4 file"),
])
def test_video_bad_arguments_exit_2_without_traceback(tmp_path, args, message):
    opts = {"--out": str(tmp_path / "v.mp4"), "--frames": "2", "--size": "32x24"}
    for i in range(0, len(args), 2):
        opts[args[i]] = args[i + 1]
    result = run_cli("video", "scenes/light.json", *[x for kv in opts.items() for x in kv])
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []
