#version 330 core
// Occupancy-grid overlay: one point per occupied cell center, colored by height, size in pixels.
uniform mat4 u_view_proj;
uniform float u_point_size;
uniform vec2 u_y_range;  // world y of the box's bottom and top
in vec3 in_position;
out float v_height;

void main() {
    v_height = clamp((in_position.y - u_y_range.x) / max(u_y_range.y - u_y_range.x, 1e-6), 0.0, 1.0);
    gl_Position = u_view_proj * vec4(in_position, 1.0);
    gl_PointSize = u_point_size;
}
