// Shadow-map visibility of each light (1 lit, 0 occluded), the rasterized counterpart of the
// renderer's shadow rays (renderer/stages/shading.py `shadow_mask`: hard 0/1 visibility, point
// lights first, then directional lights). One atlas holds every map: a point light j has six cube
// faces in tiles 6 j .. 6 j + 5, directional light j one orthographic tile after all point lights.
// app/viewer/shadows.py renders the tiles with the same face bases as `shadow_face` below.

uniform int u_shadows;            // 0: every light is visible
uniform sampler2D u_shadow_atlas; // R32F
uniform ivec2 u_shadow_grid;      // tiles per row, rows
uniform float u_shadow_texel_point;  // world size of a point-light texel at unit distance
uniform float u_shadow_texel_dir;    // world size of a directional-light texel
uniform vec3 u_shadow_center;     // directional maps: the scene's bounding sphere
uniform float u_shadow_radius;

// Face basis of cube face f (+X, -X, +Y, -Y, +Z, -Z): columns right, up, forward.
mat3 shadow_face(int f) {
    if (f == 0) return mat3(vec3(0, 0, -1), vec3(0, 1, 0), vec3(1, 0, 0));
    if (f == 1) return mat3(vec3(0, 0, 1), vec3(0, 1, 0), vec3(-1, 0, 0));
    if (f == 2) return mat3(vec3(1, 0, 0), vec3(0, 0, -1), vec3(0, 1, 0));
    if (f == 3) return mat3(vec3(1, 0, 0), vec3(0, 0, 1), vec3(0, -1, 0));
    if (f == 4) return mat3(vec3(1, 0, 0), vec3(0, 1, 0), vec3(0, 0, 1));
    return mat3(vec3(-1, 0, 0), vec3(0, 1, 0), vec3(0, 0, -1));
}

float shadow_lookup(int tile, vec2 ndc) {
    vec2 uv = clamp(ndc * 0.5 + 0.5, vec2(0.0), vec2(1.0));
    vec2 grid = vec2(u_shadow_grid);
    vec2 cell = vec2(float(tile % u_shadow_grid.x), float(tile / u_shadow_grid.x));
    return texture(u_shadow_atlas, (cell + uv) / grid).r;
}

// Visibility of light `index` (shadow-mask column) from surface point p with unit normal n.
float light_visibility(int index, vec3 p, vec3 n) {
    if (u_shadows == 0) return 1.0;
    vec3 light = light_vector(index).xyz;
    if (index < u_num_point) {
        vec3 to_light = light - p;
        float dist = length(to_light);
        // leave the surface on the light's side, by about a texel (the renderer offsets its rays too)
        float offset = u_shadow_texel_point * dist * 1.5;
        vec3 q = p + n * (dot(n, to_light) < 0.0 ? -offset : offset);
        vec3 d = q - light;
        vec3 a = abs(d);
        int f = a.x >= a.y && a.x >= a.z ? (d.x > 0.0 ? 0 : 1) : (a.y >= a.z ? (d.y > 0.0 ? 2 : 3) : (d.z > 0.0 ? 4 : 5));
        mat3 b = shadow_face(f);
        float w = dot(d, b[2]);
        float stored = shadow_lookup(6 * index + f, vec2(dot(d, b[0]), dot(d, b[1])) / w);
        return length(d) <= stored + u_shadow_texel_point * length(d) * 2.0 ? 1.0 : 0.0;
    }
    int j = index - u_num_point;
    vec3 dir = normalize(light);
    float offset = u_shadow_texel_dir * 1.5;
    vec3 q = p + n * (dot(n, -dir) < 0.0 ? -offset : offset);
    vec3 up = abs(dir.y) < 0.9 ? vec3(0, 1, 0) : vec3(1, 0, 0);
    vec3 right = normalize(cross(dir, up));
    up = cross(right, dir);
    vec3 d = q - u_shadow_center;
    float stored = shadow_lookup(6 * u_num_point + j, vec2(dot(d, right), dot(d, up)) / u_shadow_radius);
    return dot(d, dir) <= stored + u_shadow_texel_dir * 2.0 ? 1.0 : 0.0;
}
