// Display helpers shared by the viewer's fragment shaders, pasted in by the include line of
// app/viewer/glsl.py.

// sRGB encoding of linear RGB, as renderer.conventions.linear_to_srgb (clamped to [0, 1] first).
vec3 linear_to_srgb(vec3 c) {
    c = clamp(c, 0.0, 1.0);
    return mix(c * 12.92, 1.055 * pow(c, vec3(1.0 / 2.4)) - 0.055, step(0.0031308, c));
}

// Position in [0, 1] of a non-negative magnitude m on a colormap whose top is vmax. The log scale
// spans three decades below vmax.
float heat_position(float m, float vmax, int log_scale) {
    vmax = max(vmax, 1.0e-30);
    if (log_scale != 0) {
        float vmin = vmax * 1.0e-3;
        return clamp(log(max(m, vmin) / vmin) / log(1000.0), 0.0, 1.0);
    }
    return clamp(m / vmax, 0.0, 1.0);
}

// A 256 x 1 colormap texture holding display (sRGB) colors, sampled at texel centers.
vec3 colormap(sampler2D lut, float t) {
    return texture(lut, vec2(clamp(t, 0.0, 1.0) * (255.0 / 256.0) + 0.5 / 256.0, 0.5)).rgb;
}
