#version 330 core
#include "common.glsl"
// The radiance-field preview over the viewport: a linear float image (row 0 = top, as the renderer
// stores it) drawn with image.vert's full-viewport triangle, sRGB-encoded like the rest of the viewer.
// Nearest or linear upscaling is the texture's filter.

uniform sampler2D u_field;

in vec2 v_uv;
out vec4 f_color;

void main() {
    vec2 uv = vec2(v_uv.x, 1.0 - v_uv.y);
    f_color = vec4(linear_to_srgb(texture(u_field, uv).rgb), 1.0);
}
