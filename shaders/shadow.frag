#version 330 core
// Stores the distance to a point light, or the depth along a directional light's travel direction
// (the same quantities shadows.glsl compares against).
uniform int u_directional;
uniform vec3 u_origin;     // point light position, or the center of the scene (directional)
uniform vec3 u_direction;  // directional: the unit direction the light travels
in vec3 v_position;
out float f_depth;

void main() {
    vec3 d = v_position - u_origin;
    f_depth = u_directional != 0 ? dot(d, u_direction) : length(d);
}
