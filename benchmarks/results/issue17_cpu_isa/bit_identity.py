# usage: python bit_identity.py save FILE (under the old build) / compare FILE (under the new one)
"""Saves (or compares) dasp_stage / dasp_spatial_path / dwconv / ppm outputs for fixed inputs.
usage: outputs.py save|compare FILE"""
import sys, torch, dasp_kernels
ops = torch.ops.dasp_kernels
def sp(cin, cout, k, dt, g):
    r = lambda *s: torch.randn(*s, generator=g, dtype=dt)
    return [r(cin, 1, k, k) / k, torch.rand(cin, generator=g, dtype=dt) + 0.5, 0.1 * r(cin),
            r(cout, cin, 1, 1) / cin ** 0.5, torch.rand(cout, generator=g, dtype=dt) + 0.5,
            0.1 * r(cout), r(cout, cin, 1, 1) / cin ** 0.5]
def x_of(shape, layout, dt, g):
    x = torch.randn(*shape, generator=g, dtype=dt)
    if layout == "cl": x = x.contiguous(memory_format=torch.channels_last)
    if layout == "sliced": x = x[:, :, :, ::2]
    return x
res = {}
for dt in (torch.float32, torch.float64):
    g = torch.Generator().manual_seed(0)
    for (n, cin, cout, k, h, w, lay) in [(2, 3, 64, 7, 33, 37, "nchw"), (1, 3, 64, 7, 20, 19, "cl"),
            (1, 64, 64, 3, 17, 20, "cl"), (1, 64, 64, 3, 9, 101, "nchw"), (2, 64, 128, 3, 9, 31, "cl"),
            (2, 8, 24, 5, 13, 1, "cl"), (1, 24, 40, 5, 30, 50, "cl"), (1, 3, 8, 7, 3, 1001, "nchw"),
            (1, 64, 64, 1, 12, 80, "cl"), (1, 16, 16, 3, 40, 60, "sliced"), (1, 3, 64, 7, 256, 256, "nchw")]:
        x = x_of((n, cin, h, w), lay, dt, g)
        res[f"stage {dt} {n,cin,cout,k,h,w,lay}"] = ops.dasp_stage(x, *sp(cin, cout, k, dt, g))
    for shape, lay in [((1, 3, 256, 256), "nchw"), ((2, 3, 37, 53), "cl"), ((1, 3, 70, 18), "sliced"),
                       ((1, 3, 512, 512), "nchw")]:
        x = x_of(shape, lay, dt, g)
        ps = sp(3, 64, 7, dt, g) + sp(64, 64, 3, dt, g) + sp(64, 128, 3, dt, g)
        res[f"path {dt} {shape} {lay}"] = ops.dasp_spatial_path(x, ps)
    for lay in ("nchw", "cl"):
        x = x_of((1, 3, 128, 96), lay, dt, g); wt = torch.randn(3, 1, 7, 7, generator=g, dtype=dt)
        sc, sh = torch.rand(3, generator=g, dtype=dt) + .5, torch.randn(3, generator=g, dtype=dt)
        res[f"dw {dt} {lay}"] = ops.dwconv_bn_relu(x, wt, sc, sh, 2, 3, True)
        go = torch.randn(res[f"dw {dt} {lay}"].shape, generator=g, dtype=dt)
        res[f"dwb {dt} {lay}"] = ops._dwconv_bn_relu_backward(go, x, wt, sc, sh, 2, 3, True)
        x = x_of((2, 64, 64, 48), lay, dt, g); wt = torch.randn(64, 64, 1, 1, generator=g, dtype=dt)
        r = torch.randn(2, 64, 32, 24, generator=g, dtype=dt)
        res[f"ppm {dt} {lay}"] = ops.ppm_add(x, wt, r)
        res[f"ppmb {dt} {lay}"] = ops._ppm_add_backward(torch.randn(r.shape, generator=g, dtype=dt), x, wt)
    for (c, h, w, k, st, pd) in [(64, 33, 47, 3, 1, 1), (64, 40, 40, 3, 2, 1), (20, 17, 70, 5, 1, 2),
                                 (32, 31, 29, 7, 2, 3), (3, 300, 200, 7, 2, 3), (16, 50, 81, 4, 2, 0)]:
        for lay in ("nchw", "cl"):
            x = x_of((2, c, h, w), lay, dt, g); wt = torch.randn(c, 1, k, k, generator=g, dtype=dt)
            sc, sh = torch.rand(c, generator=g, dtype=dt) + .5, torch.randn(c, generator=g, dtype=dt)
            y = ops.dwconv_bn_relu(x, wt, sc, sh, st, pd, True)
            res[f"dw2 {dt} {lay} {c,h,w,k,st,pd}"] = y
            go = torch.randn(y.shape, generator=g, dtype=dt)
            res[f"dwb2 {dt} {lay} {c,h,w,k,st,pd}"] = ops._dwconv_bn_relu_backward(go, x, wt, sc, sh, st, pd, True)
mode, f = sys.argv[1], sys.argv[2]
print("isa", dasp_kernels.cpu_isa(), dasp_kernels.__file__)
if mode == "save":
    torch.save(res, f); print("saved", len(res))
else:
    old = torch.load(f); bad = 0
    for key, v in res.items():
        a = v if isinstance(v, (tuple, list)) else [v]; b = old[key] if isinstance(old[key], (tuple, list)) else [old[key]]
        eq = all(torch.equal(p, q) for p, q in zip(a, b))
        if not eq:
            bad += 1; print("DIFF", key, max((p.double() - q.double()).abs().max().item() for p, q in zip(a, b)))
    print("compared", len(res), "differ", bad)
