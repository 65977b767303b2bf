#version 330 core
#include "shading.glsl"
// World-space vertices (the viewer applies each mesh's transform on the host, as the renderer does).
// In the renderer's soft (SoftRas) mode materials are sampled and shaded at the vertices (Gouraud),
// without shadows: u_gouraud = 1 does the same here and hands the radiance to the fragment shader.
uniform mat4 u_view_proj;
uniform int u_gouraud;
uniform vec3 u_eye;
uniform int u_model;
uniform sampler2D u_albedo;
uniform sampler2D u_roughness;
uniform sampler2D u_metallic;

in vec3 in_position;
in vec3 in_normal;
in vec2 in_uv;
in vec3 in_color;
in float in_heat;  // per-vertex gradient magnitude (geometry overlay)

out vec3 v_position;
out vec3 v_normal;
out vec2 v_uv;
out vec3 v_color;
out float v_heat;
out vec3 v_radiance;

float light_visibility(int index, vec3 p, vec3 n) {
    return 1.0;
}

void main() {
    v_position = in_position;
    v_normal = in_normal;
    v_uv = in_uv;
    v_color = in_color;
    v_heat = in_heat;
    v_radiance = vec3(0.0);
    if (u_gouraud != 0) {
        vec3 albedo = textureLod(u_albedo, in_uv, 0.0).rgb * in_color;
        v_radiance = shade(in_position, in_normal, u_eye, albedo, textureLod(u_roughness, in_uv, 0.0).r,
                           textureLod(u_metallic, in_uv, 0.0).r, u_model);
    }
    gl_Position = u_view_proj * vec4(in_position, 1.0);
}
