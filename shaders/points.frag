#version 330 core
#include "common.glsl"
// Occupancy-grid overlay points: a colormap of the cell's height in the box, semi-transparent.
uniform sampler2D u_colormap;
uniform float u_opacity;
in float v_height;
out vec4 f_color;

void main() {
    f_color = vec4(colormap(u_colormap, v_height), u_opacity);
}
