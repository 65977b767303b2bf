#version 330 core
#include "common.glsl"
#include "shading.glsl"
#include "shadows.glsl"

uniform sampler2D u_albedo;     // linear RGB; v = 0 is the top row (first row uploaded)
uniform sampler2D u_roughness;  // R
uniform sampler2D u_metallic;   // R
uniform sampler2D u_emission;   // linear RGB emitted radiance (zero for most materials)
uniform int u_emission_one_sided;  // 1 (path mode): emitted only on the side the CCW normal faces, as the path tracer
uniform int u_model;            // 0 Lambert, 1 GGX
uniform vec3 u_eye;             // camera position (world)
uniform int u_gouraud;          // 1: the vertex shader shaded (soft render mode)
uniform int u_output_linear;    // 1: write linear radiance (comparisons with the renderer)

uniform int u_overlay;          // 0 none, 1 texture-space gradient, 2 per-vertex gradient
uniform sampler2D u_heat_texture;  // gradient of a texture (any channels; the magnitude is shown)
uniform sampler2D u_colormap;
uniform float u_heat_max;
uniform int u_heat_log;
uniform float u_heat_opacity;

in vec3 v_position;
in vec3 v_normal;
in vec2 v_uv;
in vec3 v_color;
in float v_heat;
in vec3 v_radiance;

out vec4 f_color;

void main() {
    vec3 radiance = v_radiance;
    if (u_gouraud == 0) {
        vec3 albedo = texture(u_albedo, v_uv).rgb * v_color;
        float roughness = texture(u_roughness, v_uv).r;
        float metallic = texture(u_metallic, v_uv).r;
        radiance = shade(v_position, v_normal, u_eye, albedo, roughness, metallic, u_model);
    }
    // emissive materials: the renderer adds the emission to the shaded color (rasterized modes, both sides)
    if (u_emission_one_sided == 0 || gl_FrontFacing) {
        radiance += texture(u_emission, v_uv).rgb;
    }
    if (u_output_linear != 0) {
        f_color = vec4(radiance, 1.0);
        return;
    }
    vec3 c = linear_to_srgb(radiance);
    if (u_overlay == 1) {
        float m = length(texture(u_heat_texture, v_uv).rgb);
        c = mix(c, colormap(u_colormap, heat_position(m, u_heat_max, u_heat_log)), u_heat_opacity);
    } else if (u_overlay == 2) {
        c = mix(c, colormap(u_colormap, heat_position(v_heat, u_heat_max, u_heat_log)), u_heat_opacity);
    }
    f_color = vec4(c, 1.0);
}
