# The small ops of stage 3 (1x64x256x256), CPU time (process_time, 2 threads, OMP_WAIT_POLICY=PASSIVE), min and median of 200 calls.
import time, torch, sys, dasp_kernels
torch.set_num_threads(2)
ops = torch.ops.dasp_kernels
torch.manual_seed(0)
w = torch.randn(64, 1, 3, 3); sc = torch.rand(64) + .5; sh = torch.randn(64); pw = torch.randn(128, 64, 1, 1)
res = {}
for lay in ("nchw", "cl"):
    x = torch.randn(1, 64, 256, 256)
    r = torch.randn(1, 128, 128, 128)
    if lay == "cl":
        x = x.contiguous(memory_format=torch.channels_last); r = r.contiguous(memory_format=torch.channels_last)
    for name, f in {f"dwconv/s3/{lay}": lambda: ops.dwconv_bn_relu(x, w, sc, sh, 2, 1, True),
                    f"ppm_add/s3/{lay}": lambda: ops.ppm_add(x, pw, r)}.items():
        for _ in range(5): f()
        ts = []
        for _ in range(200):
            t = time.process_time(); f(); ts.append(time.process_time() - t)
        ts.sort(); res[name] = (ts[0] * 1e3, ts[100] * 1e3)
print(sys.argv[1], " ".join(f"{k}={a:.3f}/{b:.3f}" for k, (a, b) in res.items()))
