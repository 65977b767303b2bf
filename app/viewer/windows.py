"""What every docked window function shares: `begin` (a docked window without its own background) and
`remember` (a widget's screen rect, for tests driving the real window). Its own module so that the
window modules (`panels`, `camera_panel`, `replay_mode`) import it and not each other."""

from __future__ import annotations

from imgui_bundle import imgui

WINDOW_BG = (0.06, 0.06, 0.06)  # ImGui's dark WindowBg; the app clears the screen with it


def begin(state, name: str, flags: int = 0) -> bool:
    """`imgui.begin` for a docked window: docked windows tile the screen, so they skip their own
    background and show the clear color (software GL pays for every blended pixel; a floating window
    keeps its background)."""
    docked = state.docked.get(name, False)
    if state.focus_window == name:  # bring a tabbed window to the front (menu, tests)
        imgui.set_next_window_focus()
        state.focus_window = None
    if docked:
        imgui.push_style_color(imgui.Col_.window_bg, (*WINDOW_BG, 0.0))
    visible = imgui.begin(name, None, flags)[0]
    if docked:
        imgui.pop_style_color()
    state.docked[name] = imgui.is_window_docked()
    pos, size = imgui.get_window_pos(), imgui.get_window_size()
    state.rects[f"window.{name}"] = (pos.x, pos.y, size.x, size.y)
    return visible


def remember(state, name: str) -> None:
    """Record the last item's screen rect under `name` in `state.rects`."""
    lo, hi = imgui.get_item_rect_min(), imgui.get_item_rect_max()
    state.rects[name] = (lo.x, lo.y, hi.x - lo.x, hi.y - lo.y)
