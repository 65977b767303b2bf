"""The viewer's optimizer in a child process (issue 16, item 5): `drstudio view SCENE --engine process`.

The viewer and the optimizer in one process share one GIL: every UI frame's Python delays the
optimizer's launches and the reverse. Here the child builds the same `Problem` and `Engine` as the
in-process viewer (`app.viewer.app.build`: paused until Start, image panes published), records the session
when asked, and serves the engine on a random 127.0.0.1 port (`renderer.optim.remote.EngineServer`); the
parent attaches to it as `drstudio view --attach` does and shows the same panels.

Handshake: the child prints one JSON line on stdout, `{"address": [host, port], "token": ...}`, once the
engine runs (the token never reaches a command line or a file: the pipe is private to the two processes);
it runs until its stdin closes (the parent ended, whatever the reason) and then stops the engine, closes
the recording and exits 0. A scene the child cannot load ends it with exit 2 and the CLI's message on
stderr (inherited: the user reads it in the same terminal).

    python -m drstudio.app.engine_process SCENE [--device cpu] [--record DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from pathlib import Path

EXIT_USER_ERROR = 2
#: Seconds the parent waits for the child's handshake: loading the scene and compiling the kernels on
#: first use (minutes on a new machine) happen before it.
HANDSHAKE_TIMEOUT = 900.0


class EngineProcessError(RuntimeError):
    """The child ended or stayed silent before its handshake; the message says what it printed."""


def serve(scene_path: str, device: str | None, record_dir: str | None, out=sys.stdout) -> int:
    """The child: build, serve, print the handshake, run until stdin closes."""
    from drstudio.renderer.errors import SceneError
    from drstudio.renderer.loading import open_scene
    from drstudio.renderer.optim.engine import Engine
    from drstudio.renderer.optim.problem import Problem
    from drstudio.renderer.optim.remote import EngineServer

    try:
        problem = Problem(open_scene(scene_path), device)
    except (SceneError, ValueError) as exc:
        print(f"drstudio view: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    # images rendered only as often as the attached viewer reads them (it polls slower while nobody touches it)
    engine = Engine(problem, image_interval=1.0 if problem.field_training is not None else 0.1,
                    images_on_demand=True)
    recorder = None
    if record_dir is not None:
        from drstudio.renderer.recording import Recorder, next_recording_dir

        recorder = Recorder(next_recording_dir(record_dir), problem)
        engine.add_listener(recorder)
        print(f"recording to {recorder.dir}", file=sys.stderr)
    engine.start_thread()
    server = EngineServer(engine, problem, ("127.0.0.1", 0))
    try:
        host, port = server.address
        out.write(json.dumps({"address": [host, port], "token": server.token}) + "\n")
        out.flush()
        sys.stdin.read()  # until the parent closes the pipe (or dies)
    finally:
        server.close()
        engine.shutdown()
        if recorder is not None:
            recorder.close()
            print(recorder.summary(), file=sys.stderr)
    return 0


class EngineProcess:
    """The parent's handle: `start()` spawns the child and waits for its handshake; `address`, `token`;
    `close()` closes its stdin and waits for it to finish (killing it after `timeout` seconds)."""

    def __init__(self, scene_path: str, device: str | None = None, record_dir: str | Path | None = None):
        cmd = [sys.executable, "-m", "drstudio.app.engine_process", str(scene_path)]
        if device:
            cmd += ["--device", str(device)]
        if record_dir is not None:
            cmd += ["--record", str(record_dir)]
        self.cmd = cmd
        self.proc: subprocess.Popen | None = None
        self.address: tuple[str, int] | None = None
        self.token: str | None = None

    def start(self, timeout: float = HANDSHAKE_TIMEOUT) -> EngineProcess:
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not line[0]:
            code = self.proc.poll()
            if line:  # end of its output: the child is exiting
                try:
                    code = self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    code = None
            self.close(timeout=5)
            if code is None:
                raise EngineProcessError(f"the optimizer process sent no address within {timeout:.0f} s")
            raise EngineProcessError(f"the optimizer process ended with exit code {code} (its message is above)")
        try:
            hello = json.loads(line[0])
            self.address, self.token = (str(hello["address"][0]), int(hello["address"][1])), str(hello["token"])
        except (ValueError, KeyError, TypeError, IndexError):
            self.close(timeout=5)
            raise EngineProcessError(f"the optimizer process sent {line[0][:200]!r}, expected its address") from None
        return self

    def close(self, timeout: float = 30.0) -> int | None:
        """Ask the child to stop (stdin closed), wait `timeout` seconds, then kill it. Its exit code."""
        if self.proc is None:
            return None
        try:
            if self.proc.stdin and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drstudio.app.engine_process", description=__doc__.split("\n")[0])
    parser.add_argument("scene")
    parser.add_argument("--device")
    parser.add_argument("--record", metavar="DIR")
    args = parser.parse_args(argv)
    try:
        return serve(args.scene, args.device, args.record)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports it
        return 130


if __name__ == "__main__":
    sys.exit(main())
