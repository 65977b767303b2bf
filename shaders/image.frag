#version 330 core
#include "common.glsl"
// Image panes: linear float images (row 0 = top, as the renderer stores them) to display colors.

const int MODE_COLOR = 0;  // a, with an optional gradient-magnitude heat overlay
const int MODE_DIFF = 1;   // |a - b| * gain
const int MODE_SPLIT = 2;  // a left of the split line, b right of it
const int MODE_BLEND = 3;  // mix(a, b, split)
const int MODE_HEAT = 4;   // colormap of |a| (a gradient)
const int MODE_VALUE = 5;  // a.r as gray, not encoded (roughness, metallic)

uniform sampler2D u_a;
uniform sampler2D u_b;
uniform sampler2D u_heat;  // gradient image for the overlay of MODE_COLOR
uniform sampler2D u_colormap;
uniform int u_mode;
uniform float u_split;
uniform float u_gain;
uniform int u_heat_overlay;
uniform float u_heat_max;
uniform int u_heat_log;
uniform float u_heat_opacity;

in vec2 v_uv;
out vec4 f_color;

void main() {
    vec2 uv = vec2(v_uv.x, 1.0 - v_uv.y);  // the output's top row shows image row 0
    vec3 a = texture(u_a, uv).rgb;
    vec3 c;
    if (u_mode == MODE_DIFF) {
        c = linear_to_srgb(abs(a - texture(u_b, uv).rgb) * u_gain);
    } else if (u_mode == MODE_SPLIT) {
        c = linear_to_srgb(v_uv.x < u_split ? a : texture(u_b, uv).rgb);
        float px = abs(v_uv.x - u_split) * float(textureSize(u_a, 0).x);
        c = mix(c, vec3(1.0), px < 0.5 ? 1.0 : 0.0);
    } else if (u_mode == MODE_BLEND) {
        c = linear_to_srgb(mix(a, texture(u_b, uv).rgb, u_split));
    } else if (u_mode == MODE_HEAT) {
        c = colormap(u_colormap, heat_position(length(a), u_heat_max, u_heat_log));
    } else if (u_mode == MODE_VALUE) {
        c = vec3(clamp(a.r, 0.0, 1.0));
    } else {
        c = linear_to_srgb(a);
        if (u_heat_overlay != 0) {
            float m = length(texture(u_heat, uv).rgb);
            float t = heat_position(m, u_heat_max, u_heat_log);
            // transparent where the gradient vanishes, so the render shows through
            c = mix(c, colormap(u_colormap, t), u_heat_opacity * sqrt(t));
        }
    }
    f_color = vec4(c, 1.0);
}
