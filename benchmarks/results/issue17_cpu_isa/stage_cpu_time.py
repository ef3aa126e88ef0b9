# Wall time, 2 threads, min and median of 40 calls: dasp_stage s1 (NCHW and channels_last) and the path.
import time, torch, sys, dasp_kernels
torch.set_num_threads(2)
ops = torch.ops.dasp_kernels
torch.manual_seed(0)
def sp(cin, cout, k):
    return [torch.randn(cin, 1, k, k) / k, torch.rand(cin) + .5, .1 * torch.randn(cin),
            torch.randn(cout, cin, 1, 1) / cin ** .5, torch.rand(cout) + .5, .1 * torch.randn(cout),
            torch.randn(cout, cin, 1, 1) / cin ** .5]
x = torch.randn(1, 3, 1024, 1024); xc = x.contiguous(memory_format=torch.channels_last)
p1 = sp(3, 64, 7); p2 = sp(64, 64, 3); p3 = sp(64, 128, 3)
x2 = torch.randn(1, 64, 512, 512).contiguous(memory_format=torch.channels_last)
cases = {"s1": lambda: ops.dasp_stage(x, *p1), "s1cl": lambda: ops.dasp_stage(xc, *p1),
         "s2cl": lambda: ops.dasp_stage(x2, *p2), "path": lambda: ops.dasp_spatial_path(x, p1 + p2 + p3)}
res = {}
for name, f in cases.items():
    for _ in range(3): f()
    ts = []
    for _ in range(40):
        t = time.process_time(); f(); ts.append(time.process_time() - t)
    ts.sort(); res[name] = (ts[0] * 1e3, ts[20] * 1e3)
print(f"{dasp_kernels.cpu_isa():7s} {sys.argv[1]:5s}", " ".join(f"{k}={v[0]:.2f}/{v[1]:.2f}" for k, v in res.items()))
