"""The display stack the viewer is built on works here: Xvfb + Mesa GL, a GLFW window with a 3.3 core
context, moderngl on that context, and Dear ImGui's native GLFW/OpenGL3 backends (imgui_bundle).

If this fails, every viewer test will too; the failure message says which layer broke.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

# imgui_bundle must be imported before glfw: it points pyGLFW (PYGLFW_LIBRARY) at the libglfw its
# native ImGui backend is linked against, so both share one GLFW state (conftest.py also does this).
from imgui_bundle import imgui  # isort: split

import glfw
import moderngl

CLEAR_RGB = (0.2, 0.4, 0.6)
WIDTH, HEIGHT = 320, 240


def read_screen_rgb(ctx: moderngl.Context) -> np.ndarray:
    """The default framebuffer as (H, W, 3) uint8, rows bottom-up (GL order).

    moderngl's `screen.read()` calls glReadBuffer(GL_COLOR_ATTACHMENT0), which is invalid on the
    default framebuffer: GL records GL_INVALID_OPERATION and glReadPixels still reads the back
    buffer. Reading `ctx.error` here drains that expected error so later checks see only real ones.
    """
    fb_w, fb_h = ctx.screen.size
    data = ctx.screen.read(components=3)
    _ = ctx.error
    return np.frombuffer(data, dtype=np.uint8).reshape(fb_h, fb_w, 3)


@pytest.fixture
def gl_window(display):
    """A visible 320x240 GLFW window with a current OpenGL 3.3 core context on the test Xvfb."""
    errors: list[str] = []
    glfw.set_error_callback(lambda code, text: errors.append(f"GLFW error {code:#x}: {text}"))
    if not glfw.init():
        pytest.fail(f"glfw.init() failed on DISPLAY={display.display}: {errors}", pytrace=False)
    try:
        glfw.window_hint(glfw.CONTEXT_VERSION_MAJOR, 3)
        glfw.window_hint(glfw.CONTEXT_VERSION_MINOR, 3)
        glfw.window_hint(glfw.OPENGL_PROFILE, glfw.OPENGL_CORE_PROFILE)
        glfw.window_hint(glfw.OPENGL_FORWARD_COMPAT, True)
        window = glfw.create_window(WIDTH, HEIGHT, "drstudio display test", None, None)
        if not window:
            pytest.fail(f"could not create a GL 3.3 core window: {errors}\nXvfb log:\n{display.log()}",
                        pytrace=False)
        glfw.make_context_current(window)
        glfw.swap_interval(0)
        yield window
        glfw.destroy_window(window)
    finally:
        glfw.terminate()
        glfw.set_error_callback(None)


def test_moderngl_clear_and_read_back(gl_window):
    ctx = moderngl.create_context()
    assert ctx.version_code >= 330, f"need OpenGL >= 3.3, got {ctx.info['GL_VERSION']}"
    fb_w, fb_h = glfw.get_framebuffer_size(gl_window)
    assert (fb_w, fb_h) == (WIDTH, HEIGHT)

    ctx.screen.use()
    ctx.clear(*CLEAR_RGB, 1.0)
    assert ctx.error == "GL_NO_ERROR"
    pixels = read_screen_rgb(ctx)
    expected = np.round(np.array(CLEAR_RGB) * 255).astype(int)
    assert np.abs(pixels.astype(int) - expected).max() <= 1, (
        f"read back {pixels[fb_h // 2, fb_w // 2]} at the center, expected {expected} "
        f"(renderer {ctx.info['GL_RENDERER']})"
    )
    glfw.swap_buffers(gl_window)
    ctx.release()


def test_imgui_backends_render_frames(gl_window):
    ctx = moderngl.create_context()
    imgui.create_context()
    try:
        imgui.get_io().set_ini_filename(None)  # no imgui.ini written into the working directory
        window_address = ctypes.cast(gl_window, ctypes.c_void_p).value
        assert imgui.backends.glfw_init_for_opengl(window_address, True), "ImGui GLFW backend init failed"
        assert imgui.backends.opengl3_init("#version 330"), "ImGui OpenGL3 backend init failed"
        try:
            clicked = []
            for _ in range(4):
                glfw.poll_events()
                imgui.backends.opengl3_new_frame()
                imgui.backends.glfw_new_frame()
                imgui.new_frame()
                imgui.set_next_window_pos((10, 10))
                imgui.set_next_window_size((200, 120))
                imgui.begin("drstudio test window")
                clicked.append(imgui.button("Press me"))
                imgui.end()
                imgui.render()

                ctx.screen.use()
                ctx.clear(*CLEAR_RGB, 1.0)
                draw_data = imgui.get_draw_data()
                imgui.backends.opengl3_render_draw_data(draw_data)
                assert draw_data.total_vtx_count > 0, "ImGui produced no geometry for the window"
                assert ctx.error == "GL_NO_ERROR", "GL error while ImGui rendered"

            pixels = read_screen_rgb(ctx)
            glfw.swap_buffers(gl_window)
            assert not any(clicked)
            # Rows are bottom-up in GL: the ImGui window covers the top-left corner, the clear color
            # is still visible at the bottom right.
            expected = np.round(np.array(CLEAR_RGB) * 255).astype(int)
            assert np.abs(pixels[5, WIDTH - 5].astype(int) - expected).max() <= 1
            window_px = pixels[HEIGHT - 60, 100].astype(int)
            assert np.abs(window_px - expected).max() > 8, "the ImGui window was not drawn"
        finally:
            imgui.backends.opengl3_shutdown()
            imgui.backends.glfw_shutdown()
    finally:
        imgui.destroy_context()
        ctx.release()
