// The shading model of the differentiable renderer (renderer/stages/shading.py), line for line:
// Lambert (model 0) and Cook-Torrance GGX (model 1) BRDFs; point lights give irradiance
// intensity * color * max(0, n.l) / d^2, directional lights intensity * color * max(0, n.l),
// ambient adds albedo * ambient (GGX: albedo * (1 - metallic) * ambient), no pi, no shadowing.
// Change both files together.

const float PI = 3.14159265358979;
const float INV_PI = 1.0 / PI;
const float ALPHA_MIN = 1.0e-4;
const int MODEL_LAMBERT = 0;
const int MODEL_GGX = 1;

// The lights, packed as the renderer packs them (app/viewer/lights.py, `renderer.stages.shading.Lights`):
// light i < u_num_point is point light i, light u_num_point + j directional light j. Texel 2 i of
// u_lights (counted row by row) holds the light's position (point) or travel direction (directional,
// unnormalized) and its intensity, texel 2 i + 1 its color. Any number of lights.
uniform int u_num_point;
uniform int u_num_dir;
uniform sampler2D u_lights;  // RGBA32F
uniform vec3 u_ambient;  // sum of ambient light colors

vec4 light_texel(int t) {
    int w = textureSize(u_lights, 0).x;
    return texelFetch(u_lights, ivec2(t % w, t / w), 0);
}

// Position (point light) or travel direction (directional light) of light `index`, and its intensity.
vec4 light_vector(int index) {
    return light_texel(2 * index);
}

vec3 light_color(int index) {
    return light_texel(2 * index + 1).rgb;
}

float ggx_distribution(float nh, float alpha) {
    float a2 = alpha * alpha;
    float d = nh * nh * (a2 - 1.0) + 1.0;
    return nh > 0.0 ? a2 / (PI * d * d) : 0.0;
}

// Height-correlated Smith G2 / (4 n.l n.v).
float smith_visibility(float nl, float nv, float alpha) {
    float a2 = alpha * alpha;
    float gv = nl * sqrt(nv * nv * (1.0 - a2) + a2);
    float gl = nv * sqrt(nl * nl * (1.0 - a2) + a2);
    return 0.5 / max(gv + gl, 1.0e-12);
}

vec3 fresnel_schlick(vec3 f0, float vh) {
    float m = 1.0 - vh;
    float m2 = m * m;
    return f0 + (vec3(1.0) - f0) * (m2 * m2 * m);
}

vec3 ggx_brdf(vec3 n, vec3 v, vec3 l, vec3 albedo, float roughness, float metallic) {
    float alpha = max(roughness * roughness, ALPHA_MIN);
    vec3 h = normalize(l + v);
    float nl = max(dot(n, l), 0.0);
    float nv = max(dot(n, v), 0.0);
    float nh = dot(n, h);
    float vh = max(dot(v, h), 0.0);
    vec3 f = fresnel_schlick(mix(vec3(0.04), albedo, metallic), vh);
    vec3 diffuse = (vec3(1.0) - f) * albedo * ((1.0 - metallic) * INV_PI);
    return diffuse + f * (ggx_distribution(nh, alpha) * smith_visibility(nl, nv, alpha));
}

vec3 brdf(vec3 n, vec3 v, vec3 l, vec3 albedo, float roughness, float metallic, int model) {
    if (model == MODEL_GGX) return ggx_brdf(n, v, l, albedo, roughness, metallic);
    if (model == MODEL_LAMBERT) return albedo * INV_PI;
    return vec3(0.0);
}

vec3 ambient_radiance(vec3 albedo, float metallic, int model) {
    if (model == MODEL_GGX) return albedo * u_ambient * (1.0 - metallic);
    if (model == MODEL_LAMBERT) return albedo * u_ambient;
    return vec3(0.0);
}

// Visibility (0..1) of light `index` (point lights first, then directional: the renderer's
// shadow-mask columns) from p with unit normal n; defined by the including shader.
float light_visibility(int index, vec3 p, vec3 n);

// Radiance leaving world point p with shading normal n (any nonzero length) towards the eye.
vec3 shade(vec3 p, vec3 n, vec3 eye, vec3 albedo, float roughness, float metallic, int model) {
    n = normalize(n);
    vec3 v = normalize(eye - p);
    vec3 c = ambient_radiance(albedo, metallic, model);
    for (int j = 0; j < u_num_point; ++j) {
        vec4 light = light_vector(j);
        vec3 d = light.xyz - p;
        float d2 = max(dot(d, d), 1.0e-12);
        float cosine = max(dot(n, d) / sqrt(d2), 0.0);
        vec3 e = light_color(j) * (light.w * cosine / d2);
        c += brdf(n, v, normalize(d), albedo, roughness, metallic, model) * e * light_visibility(j, p, n);
    }
    for (int j = u_num_point; j < u_num_point + u_num_dir; ++j) {
        vec4 light = light_vector(j);
        vec3 l = -normalize(light.xyz);
        float cosine = max(dot(n, l), 0.0);
        vec3 e = light_color(j) * (light.w * cosine);
        c += brdf(n, v, l, albedo, roughness, metallic, model) * e * light_visibility(j, p, n);
    }
    return c;
}
