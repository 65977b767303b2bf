#!/usr/bin/env bash
# Make sure the headless display stack the GUI tests need is installed: Xvfb, Mesa's software GL
# (libGL + swrast DRI driver + EGL), the X client libraries GLFW loads, xdotool and ImageMagick's
# `import`. Installs the missing pieces with apt-get when run as root (CI); otherwise only warns and
# leaves it to tests/conftest.py to skip (locally) or fail (CI) the GUI tests with a clear message.
# Fast and silent when everything is present.
set -euo pipefail

PACKAGES=(
    xvfb xauth libgl1 libglx-mesa0 libgl1-mesa-dri libegl1 libegl-mesa0
    libx11-6 libxext6 libxrandr2 libxinerama1 libxcursor1 libxi6 libxxf86vm1 libx11-xcb1 libxrender1
    xdotool imagemagick
)
COMMANDS=(Xvfb xauth xdotool import)
LIBRARIES=(
    libGL.so.1 libGLX_mesa.so.0 libEGL.so.1 libEGL_mesa.so.0
    libX11.so.6 libXext.so.6 libXrandr.so.2 libXinerama.so.1 libXcursor.so.1 libXi.so.6
    libXxf86vm.so.1 libX11-xcb.so.1 libXrender.so.1
)

missing_items() {
    local missing=() cmd lib cache
    for cmd in "${COMMANDS[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    cache="$(ldconfig -p 2>/dev/null || true)"
    for lib in "${LIBRARIES[@]}"; do
        grep -qE "^[[:space:]]+${lib//./\\.} " <<<"$cache" || missing+=("$lib")
    done
    # Mesa's software rasterizer, which GLX and EGL load on a machine without a GPU.
    compgen -G "/usr/lib/*/dri/swrast_dri.so" >/dev/null \
        || compgen -G "/usr/lib*/dri/swrast_dri.so" >/dev/null \
        || missing+=("swrast_dri.so")
    echo "${missing[*]}"
}

missing="$(missing_items)"
[[ -z "$missing" ]] && exit 0

if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_display_deps: WARNING: missing $missing" >&2
    echo "ensure_display_deps: the GUI tests need them; as root on Debian/Ubuntu run" >&2
    echo "    apt-get install -y ${PACKAGES[*]}" >&2
    echo "ensure_display_deps: (GUI tests are skipped locally and FAIL when CI is set)" >&2
    exit 0
fi

echo "ensure_display_deps: missing $missing; installing display packages with apt-get" >&2
log="$(mktemp -t ensure_display_deps.XXXXXX.log)"
apt_opts=(-y -qq --no-install-recommends -o DPkg::Lock::Timeout=300)
if DEBIAN_FRONTEND=noninteractive apt-get update -qq -o DPkg::Lock::Timeout=300 >"$log" 2>&1 \
    && DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" "${PACKAGES[@]}" >>"$log" 2>&1; then
    rm -f "$log"
else
    cat "$log" >&2
    rm -f "$log"
    echo "ensure_display_deps: WARNING: apt-get failed (output above); GUI tests will not run" >&2
    exit 0
fi

missing="$(missing_items)"
if [[ -n "$missing" ]]; then
    echo "ensure_display_deps: WARNING: still missing after install: $missing" >&2
else
    echo "ensure_display_deps: display packages installed" >&2
fi
