#version 330 core
// Shadow-map pass: world-space vertices seen from a light (one tile of the shadow atlas).
uniform mat4 u_view_proj;
in vec3 in_position;
out vec3 v_position;

void main() {
    v_position = in_position;
    gl_Position = u_view_proj * vec4(in_position, 1.0);
}
