"""The one error every bad scene input becomes: it names the file, the field path and what was expected."""

from __future__ import annotations

_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}  # what splitlines splits on


class SceneError(ValueError):
    """A user mistake in a scene file or a file it references.

    `str(err)` is one line: ``scenes/x.json: materials[0].albedo: expected ...``. `file` is the scene
    file (or the asset) as the user named it, `field` the JSON path of the offending value ("" for
    the whole file), `message` what is wrong and what was expected. `others` holds further errors
    found in the same pass (the CLI prints them under the first)."""

    def __init__(self, file: str, field: str, message: str, others: tuple[SceneError, ...] = ()):
        self.file = str(file)
        self.field = field
        self.message = message
        self.others = tuple(others)
        super().__init__(str(self))

    def __str__(self) -> str:  # one line even when a file name or a JSON key holds a line break
        head = ": ".join(part.translate(_LINE_BREAKS) for part in (self.file, self.field) if part)
        more = f" (and {len(self.others)} more error{'s' * (len(self.others) > 1)})" if self.others else ""
        message = self.message.translate(_LINE_BREAKS)
        return f"{head}: {message}{more}" if head else f"{message}{more}"

    def __reduce__(self):  # keep the error picklable (worker processes, multiprocessing queues)
        return (type(self), (self.file, self.field, self.message, self.others))


def field_path(parts) -> str:
    """JSON path text of location parts: ("meshes", 1, "file") -> meshes[1].file; keys that are not
    identifiers are quoted: ("optimize", "parameters", "a.b") -> optimize.parameters["a.b"]."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).isidentifier():
            out += f".{part}" if out else str(part)
        else:
            out += f'["{part}"]'
    return out
