"""`drstudio replay DIR`: a recorded session in the viewer, exported as a video, or verified.

    drstudio replay DIR                       the viewer in replay mode (timeline, scrubber, play/pause)
    drstudio replay DIR --speed 4             ... playing at 4x the recorded pace
    drstudio replay DIR --export out.mp4      a video (or .gif): render | target | |difference| and the loss
    drstudio replay DIR --verify              re-execute the session and compare it with the recording

The viewer's side of a recording (`ReplaySource`, `Playback`) is `app.replay_source`; it is
re-exported here.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from drstudio.renderer.recording import RecordingError, load_recording, verify
from drstudio.renderer.recording import format as fmt
from drstudio.renderer.recording.reader import Recording

from .plot_scale import PAD, log_axis_limits
from .replay_source import EditMarker, Playback, ReplaySource

__all__ = ["EditMarker", "Playback", "ReplaySource", "cmd_replay", "export_video"]

EXIT_OK, EXIT_DIVERGED, EXIT_USER_ERROR = 0, 1, 2
VIDEO_SIZE = (960, 320)  # (width, height) of exported frames: even, and multiples of 16 for H.264


# ---- export ----------------------------------------------------------------------------------------

class _FramePainter:
    """One exported frame: render | target | |difference| x4 and the loss curve up to the frame's step,
    drawn by matplotlib (Agg) into an (H, W, 3) uint8 array of `VIDEO_SIZE`."""

    def __init__(self, rec: Recording):
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        w, h = VIDEO_SIZE
        self.fig = Figure(figsize=(w / 100, h / 100), dpi=100, facecolor="white")
        self.canvas = FigureCanvasAgg(self.fig)
        self.images = []
        blank = np.zeros((2, 2, 3), np.uint8)
        for i, title in enumerate(("render", "target", "|difference| x4")):
            ax = self.fig.add_axes((0.01 + i * 0.2, 0.06, 0.19, 0.78))
            ax.set_axis_off()
            ax.set_title(title, fontsize=9)
            self.images.append(ax.imshow(blank, interpolation="nearest"))
        self.ax = self.fig.add_axes((0.67, 0.17, 0.31, 0.68))
        hist = rec.history()
        self.x = np.arange(rec.first_at, rec.last_at)
        self.loss = hist["loss"]
        finite = self.loss[np.isfinite(self.loss) & (self.loss > 0)]
        limits = log_axis_limits({"loss": self.loss})  # bounded by the data (app/plot_scale.py)
        log = limits is not None and limits[1] / limits[0] > 20 * PAD * PAD
        if log:
            self.ax.set_yscale("log")
        self.ax.plot(self.x, self.loss, color="0.8", lw=0.8)
        (self.line,) = self.ax.plot([], [], color="tab:blue", lw=1.2)
        self.marker = self.ax.axvline(rec.first_at, color="tab:red", lw=0.8)
        for c in rec.commands:
            if c.get("kind") in fmt.EDIT_COMMANDS and c.get("at", 0) > rec.first_at:
                self.ax.axvline(c["at"], color="tab:orange", lw=0.6, ls="--")
        self.ax.set_xlim(rec.first_at, max(rec.last_at, rec.first_at + 1))
        if finite.size:
            hi = finite.max()
            self.ax.set_ylim(*limits) if log else self.ax.set_ylim(0, hi * 1.1)
        self.ax.set_xlabel("step", fontsize=8)
        self.ax.set_ylabel("loss", fontsize=8)
        self.ax.tick_params(labelsize=7)
        self.ax.grid(True, alpha=0.3)
        self.title = self.fig.text(0.01, 0.93, "", fontsize=10)

    def paint(self, step: int, render: np.ndarray, target: np.ndarray, view: str) -> np.ndarray:
        from drstudio.renderer.conventions import linear_to_srgb

        diff = np.clip(np.abs(render - target) * 4.0, 0.0, 1.0)
        for im, img in zip(self.images, (render, target, diff)):
            im.set_data(np.round(linear_to_srgb(img) * 255).astype(np.uint8))
            im.set_extent((-0.5, img.shape[1] - 0.5, img.shape[0] - 0.5, -0.5))
        n = step - int(self.x[0]) if self.x.size else 0
        self.line.set_data(self.x[:n], self.loss[:n])
        self.marker.set_xdata([step, step])
        loss = self.loss[n - 1] if 0 < n <= self.loss.size else math.nan
        self.title.set_text(f"step {step}   loss {loss:.4g}   view {view}")
        self.canvas.draw()
        frame = np.asarray(self.canvas.buffer_rgba())[..., :3]
        return np.ascontiguousarray(frame)


def export_video(rec: Recording, out, *, fps: float = 10.0, progress: bool = True) -> dict:
    """Write the session as a video: one frame per recorded thumbnail (render | target | |difference|
    and the loss curve up to that step), `fps` frames per second. `.mp4` (H.264 via imageio-ffmpeg,
    yuv420p) or `.gif` (pillow). Returns {"path", "frames", "size": (w, h), "seconds"}."""
    from tqdm import tqdm

    out = Path(out)
    ext = out.suffix.lower()
    if ext not in (".mp4", ".gif"):
        raise ValueError(f"--export {out}: expected a .mp4 or .gif file name")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps: expected a number > 0, got {fps}")
    thumbs = list(rec.thumbs.values())
    if not thumbs:
        raise RecordingError(f"{rec.path}: has no thumbnails to make a video of")
    painter = _FramePainter(rec)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")
    bar = tqdm(total=len(thumbs), desc=f"export {out.name}", unit="frame", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)

    def frames():
        for t in thumbs:
            yield painter.paint(int(t["at"]), rec.image(t["file"]), rec.image(t["target"]), t.get("view", ""))
            bar.update(1)

    try:
        if ext == ".mp4":
            import imageio_ffmpeg

            writer = imageio_ffmpeg.write_frames(str(tmp), VIDEO_SIZE, fps=fps, codec="libx264",
                                                 pix_fmt_out="yuv420p", macro_block_size=16, quality=7,
                                                 output_params=["-movflags", "+faststart"])
            writer.send(None)
            try:
                for frame in frames():
                    writer.send(frame)
            finally:
                writer.close()
        else:
            import imageio.v3 as iio

            with iio.imopen(tmp, "w", extension=".gif") as f:
                for frame in frames():
                    f.write(frame, duration=1000.0 / fps, loop=0)
        tmp.replace(out)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    return {"path": str(out), "frames": len(thumbs), "size": VIDEO_SIZE, "seconds": len(thumbs) / fps}


# ---- the command ----------------------------------------------------------------------------------

def cmd_replay(args: argparse.Namespace) -> int:
    """`drstudio replay DIR [--export FILE] [--fps F] [--verify] [--speed S] [--device D]`."""
    try:
        rec = load_recording(args.recording, quiet=True)
    except RecordingError as exc:
        print(f"drstudio replay: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    for w in rec.warnings:
        print(f"drstudio replay: warning: {w}", file=sys.stderr)
    print(rec.summary())
    status = EXIT_OK
    if args.export:
        try:
            info = export_video(rec, args.export, fps=args.fps)
        except (ValueError, RecordingError) as exc:
            print(f"drstudio replay: error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        w, h = info["size"]
        print(f"wrote {info['path']} ({info['frames']} frames, {w}x{h}, {info['seconds']:.1f} s)")
    if args.verify:
        from tqdm import tqdm

        bar = tqdm(total=len(rec.steps), desc="verify", unit="step", dynamic_ncols=True, file=sys.stderr)
        try:
            report = verify(rec, device=args.device or "cpu", progress=lambda done, total: bar.update(done - bar.n))
        except RecordingError as exc:
            print(f"drstudio replay: error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        finally:
            bar.close()
        for note in report.notes:
            print(f"drstudio replay: note: {note}", file=sys.stderr)
        print(report.message())
        if not report.ok:
            status = EXIT_DIVERGED
    if not args.export and not args.verify:
        from .viewer import run_replay

        return run_replay(ReplaySource(rec), speed=args.speed)
    return status
