// The compute ceiling of an adapter: 8 independent vec4 FMA chains per thread, held in
// registers, STEPS steps of x = x * a + b. a and b come from a buffer (1 and 1 at run time),
// so no compiler can fold the chains; each thread writes the sum of its 32 lanes, which the
// host checks against the closed form (lane s ends at s + STEPS).
@group(0) @binding(0) var<storage, read> ab: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

const STEPS: u32 = 4096u;

@compute @workgroup_size(256)
fn peak(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let a = vec4<f32>(ab[0]);
    let b = vec4<f32>(ab[1]);
    var x0 = vec4<f32>(0.0, 1.0, 2.0, 3.0);
    var x1 = x0 + 4.0;
    var x2 = x0 + 8.0;
    var x3 = x0 + 12.0;
    var x4 = x0 + 16.0;
    var x5 = x0 + 20.0;
    var x6 = x0 + 24.0;
    var x7 = x0 + 28.0;
    for (var i = 0u; i < STEPS; i++) {
        x0 = fma(x0, a, b);
        x1 = fma(x1, a, b);
        x2 = fma(x2, a, b);
        x3 = fma(x3, a, b);
        x4 = fma(x4, a, b);
        x5 = fma(x5, a, b);
        x6 = fma(x6, a, b);
        x7 = fma(x7, a, b);
    }
    let s = (x0 + x1) + (x2 + x3) + (x4 + x5) + (x6 + x7);
    out[gid.y * groups.x * 256u + gid.x] = s.x + s.y + s.z + s.w;
}
