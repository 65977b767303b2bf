"""Recorded optimization sessions: a versioned, crash-safe directory format (docs/recording.md).

- `Recorder` (writer): an `Engine` listener that records commands, steps, keyframes and thumbnails.
- `load_recording(dir) -> Recording` (reader): loads what is intact, says what is not.
- `verify(recording)`: re-executes the session and compares it with the recording.
- `resume_problem(recording, from_step)`: a `Problem` in the state of a keyframe, to continue from.
No GUI here; `app/replay.py` builds the replay command and the viewer's replay source on top.
"""

from .format import FORMAT_NAME, FORMAT_VERSION, RecordingError, RecordingVersionError
from .reader import Recording, load_recording
from .session import VerifyReport, apply_command, build_problem, resume_problem, verify
from .state import Keyframe
from .writer import Recorder, RecorderOptions, next_recording_dir, render_thumbnail

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "Keyframe", "Recorder", "RecorderOptions", "Recording", "RecordingError",
    "RecordingVersionError", "VerifyReport", "apply_command", "build_problem", "load_recording",
    "next_recording_dir", "render_thumbnail", "resume_problem", "verify",
]
