#version 330 core
#include "common.glsl"
// The environment light as the viewport's background, drawn with image.vert's full-viewport triangle:
// each pixel looks up the equirectangular texel the path tracer sees in its view direction
// (renderer/stages/pathtrace.py env_texel, the same formulas): d = (sin t sin p, cos t, -sin t cos p),
// +Y up, p = 0 looking down -Z; column floor(We (p / 2 pi + 1/2)), row floor(He t / pi), row 0 at the
// zenith (the first row uploaded). Piecewise constant per texel: texelFetch, no filtering.
// Texture overlay on an environment gradient: its magnitude per texel over the radiance.

uniform sampler2D u_env;         // (He, We) linear RGB radiance
uniform mat4 u_inv_view_proj;    // clip -> world of the viewport's camera
uniform vec3 u_eye;
uniform int u_output_linear;     // 1: write linear radiance (comparisons with the renderer)
uniform int u_overlay;           // 1: blend the gradient heat of u_heat
uniform sampler2D u_heat;        // (He, We) gradient of the environment texels (any channels)
uniform sampler2D u_colormap;
uniform float u_heat_max;
uniform int u_heat_log;
uniform float u_heat_opacity;

in vec2 v_uv;
out vec4 f_color;

const float PI = 3.14159265358979323846;

ivec2 env_texel(vec3 d, ivec2 size) {
    float theta = acos(clamp(d.y, -1.0, 1.0));
    float phi = atan(d.x, -d.z);
    int x = clamp(int(floor((phi * (0.5 / PI) + 0.5) * float(size.x))), 0, size.x - 1);
    int y = clamp(int(floor(theta / PI * float(size.y))), 0, size.y - 1);
    return ivec2(x, y);
}

void main() {
    vec4 far = u_inv_view_proj * vec4(v_uv * 2.0 - 1.0, 1.0, 1.0);
    vec3 d = normalize(far.xyz / far.w - u_eye);
    ivec2 t = env_texel(d, textureSize(u_env, 0));
    vec3 radiance = texelFetch(u_env, t, 0).rgb;
    if (u_output_linear != 0) {
        f_color = vec4(radiance, 1.0);
        return;
    }
    vec3 c = linear_to_srgb(radiance);
    if (u_overlay != 0) {
        ivec2 th = env_texel(d, textureSize(u_heat, 0));
        float m = length(texelFetch(u_heat, th, 0).rgb);
        c = mix(c, colormap(u_colormap, heat_position(m, u_heat_max, u_heat_log)), u_heat_opacity);
    }
    f_color = vec4(c, 1.0);
}
