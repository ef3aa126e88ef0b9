# CPU time (time.process_time, all threads; run with OMP_WAIT_POLICY=PASSIVE so idle workers do not
# spin) of one call of every op at the README's main size, 2 threads: min of N calls.
import time, torch, sys, dasp_kernels
torch.set_num_threads(2)
ops = torch.ops.dasp_kernels
torch.manual_seed(0)
N = int(sys.argv[2])
def sp(cin, cout, k):
    return [torch.randn(cin, 1, k, k) / k, torch.rand(cin) + .5, .1 * torch.randn(cin),
            torch.randn(cout, cin, 1, 1) / cin ** .5, torch.rand(cout) + .5, .1 * torch.randn(cout),
            torch.randn(cout, cin, 1, 1) / cin ** .5]
STAGES = {"s1": (3, 64, 7, 1024), "s2": (64, 64, 3, 512), "s3": (64, 128, 3, 256)}
cases = {}
for s, (cin, cout, k, hw) in STAGES.items():
    for lay in ("nchw", "cl"):
        x = torch.randn(1, cin, hw, hw)
        if lay == "cl": x = x.contiguous(memory_format=torch.channels_last)
        p = sp(cin, cout, k)
        r = torch.randn(1, cout, hw // 2, hw // 2)
        if lay == "cl": r = r.contiguous(memory_format=torch.channels_last)
        cases[f"dwconv/{s}/{lay}"] = (lambda x=x, p=p, k=k: ops.dwconv_bn_relu(x, p[0], p[1], p[2], 2, k // 2, True))
        cases[f"ppm_add/{s}/{lay}"] = (lambda x=x, p=p, r=r: ops.ppm_add(x, p[6], r))
        cases[f"stage/{s}/{lay}"] = (lambda x=x, p=p: ops.dasp_stage(x, *p))
x = torch.randn(1, 3, 1024, 1024)
pp = sp(3, 64, 7) + sp(64, 64, 3) + sp(64, 128, 3)
cases["path/nchw"] = lambda: ops.dasp_spatial_path(x, pp)
xc = x.contiguous(memory_format=torch.channels_last)
cases["path/cl"] = lambda: ops.dasp_spatial_path(xc, pp)
res = {}
for name, f in cases.items():
    for _ in range(2): f()
    ts = []
    for _ in range(N):
        t = time.process_time(); f(); ts.append(time.process_time() - t)
    res[name] = min(ts) * 1e3
print(sys.argv[1], dasp_kernels.cpu_isa(), " ".join(f"{k}={v:.2f}" for k, v in res.items()))
