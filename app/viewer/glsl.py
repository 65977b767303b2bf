"""GLSL programs from the files in shaders/ (repository root), with one preprocessor feature:
a line `#include "name.glsl"` is replaced by that file (once per program)."""

from __future__ import annotations

import re
from pathlib import Path

import moderngl

SHADER_DIR = Path(__file__).resolve().parents[2] / "shaders"
_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"\s*$', re.M)


def shader_source(name: str, directory: Path = SHADER_DIR) -> str:
    """The text of shaders/`name` with its includes expanded (each file at most once)."""
    seen: set[str] = set()

    def expand(file: str) -> str:
        path = directory / file
        if not path.is_file():
            raise FileNotFoundError(f"GLSL file {path} not found (shader directory {directory})")
        seen.add(file)

        def include(m: re.Match) -> str:
            inc = m.group(1)
            return "" if inc in seen else f"// ---- {inc}\n{expand(inc)}\n// ---- end {inc}"

        return _INCLUDE.sub(include, path.read_text())

    return expand(name)


def program(ctx: moderngl.Context, vertex: str, fragment: str) -> moderngl.Program:
    """Compile and link shaders/`vertex` + shaders/`fragment`; compile errors name the files."""
    try:
        return ctx.program(vertex_shader=shader_source(vertex), fragment_shader=shader_source(fragment))
    except moderngl.Error as exc:
        raise RuntimeError(f"GLSL program {vertex} + {fragment} failed to build:\n{exc}") from None


def set_uniform(prog: moderngl.Program, name: str, value) -> None:
    """Set a uniform if the linker kept it (unused uniforms are optimized away)."""
    if name in prog:
        prog[name].value = value


def write_uniform(prog: moderngl.Program, name: str, data: bytes) -> None:
    """Write raw bytes into a uniform (arrays), if the linker kept it."""
    if name in prog:
        prog[name].write(data)
