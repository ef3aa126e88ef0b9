"""Workloads and providers of the DASP benchmark, and running one case: build every provider, check
its output against the eager reference, then time those that pass side by side.

Workloads (names for --workloads; a group name or a prefix selects several):
  ops     dwconv_bn_relu/s{1,2,3}, ppm_add/s{1,2,3}, dasp_stage/s{1,2,3}: each fused op at the input
          of DASP stage 1, 2, 3 (Table I: 3x1024x1024 K7 3->64, 64x512x512 K3 64->64,
          64x256x256 K3 64->128 for a 1x3x1024x1024 image), called directly; dasp_spatial_path:
          the whole-path op (all three stages in one call)
  stages  DASPStage/s{1,2,3}: the nn.Module of each stage
  paths   SpatialPath (original), DASP (DepthwiseAttentionSpatialPath)
  models  BiSeNetV1/original, BiSeNetV1/dasp
  realmodels  torchvision tv/mobilenet_v2, tv/mobilenet_v3_large, tv/efficientnet_b0,
          tv/shufflenet_v2_x1_0, tv/mnasnet1_0, tv/lraspp_mobilenet_v3_large,
          tv/deeplabv3_mobilenet_v3_large (their "out"), timm/efficientnet_lite0,
          timm/mobilenetv4_conv_small, and both BiSeNetV1 (see benchmarks/realmodels.py)
  realblocks  tvblock/mobilenet_v2/{1..17}, tvblock/mobilenet_v3_large/{4,5,6,11..15} (its SE
          blocks): each inverted-residual block alone, at
          the input it sees for the image size given (a whole-model provider set)
  stream  stream/copy, stream/triad: the memory-bandwidth ceiling for the GB/s figures;
          stream/fma (CPU): the compute ceiling, a register-only FMA loop of this library's CPU
          build on every thread, for the GFLOP/s figures (together: the roofline)
Providers: eager (model as built), eager+fold+cl (BN folded into the conv, channels_last),
compile (inductor, freezing), onnxruntime (the unfused model exported, all graph optimisations),
for whole models openvino (the same ONNX file, f32, latency hint, one stream) and
openvino:default (OpenVINO's default precision: bf16 on CPUs with AVX512_BF16; checked with a
bf16-sized tolerance and not counted as an fp32 peer),
ours:<backend> (dasp_kernels.fuse(model, backend) or the op called directly),
ours:<backend>+cl (the same with channels_last input) and, for stages, paths and models,
ours:<backend>+compile (torch.compile of the fused model, inductor with freezing) and, for whole
models on the CPU, ours:cpu+compile+arena (the same, each call inside dasp_kernels.cpu_arena()).
"""
import copy
import gc
import io
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import dasp_kernels
from benchmarks import harness, realmodels
from dasp.models import BiSeNetV1, DASPStage, DepthwiseAttentionSpatialPath, SpatialPath
from dasp_kernels import _loader, functional, reference

# (cin, cout, k) of the three DASP stages; stage i sees the image downsampled 2**(i-1) times.
STAGES = {"s1": (3, 64, 7), "s2": (64, 64, 3), "s3": (64, 128, 3)}
OPS = ("dwconv_bn_relu", "ppm_add", "dasp_stage")
GROUPS = {
    "ops": [f"{op}/{s}" for op in OPS for s in STAGES] + ["dasp_spatial_path"],
    "stages": [f"DASPStage/{s}" for s in STAGES],
    "paths": ["SpatialPath", "DASP"],
    "models": ["BiSeNetV1/original", "BiSeNetV1/dasp"],
    "realmodels": realmodels.WORKLOADS + ["BiSeNetV1/original", "BiSeNetV1/dasp"],
    "realblocks": realmodels.BLOCKS,
    "stream": ["stream/copy", "stream/triad", "stream/fma"],
}
ALL_WORKLOADS = list(dict.fromkeys(w for g in GROUPS.values() for w in g))
# The fp32 peers a speed claim is measured against (openvino:default runs bf16 here).
PEER_PROVIDERS = ("eager", "eager+fold+cl", "compile", "onnxruntime", "openvino")
# Check tolerance of a provider computing in bf16 (8 mantissa bits through a deep network).
BF16_RTOL = 0.1


def select_workloads(names):
    """Expands group names and prefixes ("ops", "dasp_stage", "DASPStage/s1") in ALL_WORKLOADS order."""
    chosen = set()
    for name in names:
        hits = GROUPS.get(name) or [w for w in ALL_WORKLOADS if w == name or w.startswith(name + "/")]
        if not hits:
            raise ValueError(f"unknown workload {name!r}; expected one of {sorted(GROUPS)} or "
                             f"{ALL_WORKLOADS}")
        chosen.update(hits)
    return [w for w in ALL_WORKLOADS if w in chosen]


def parse_size(text):
    """'1x3x1024x1024' -> (1, 3, 1024, 1024); the models take 3-channel images."""
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 4 or dims[1] != 3 or min(dims) < 1:
        raise ValueError(f"size must look like Nx3xHxW (e.g. 1x3x1024x1024), got {text!r}")
    return dims


def size_str(shape):
    return "x".join(str(d) for d in shape)


def _randomize_bn(module, gen):
    """Non-trivial running stats and affine parameters, so that a wrong BN fold shows."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=gen) + 0.5
            m.bias.data = torch.randn(c, generator=gen) * 0.1
            m.running_mean = torch.randn(c, generator=gen) * 0.1
            m.running_var = torch.rand(c, generator=gen) + 0.5
    return module


class _DWConvOp(nn.Module):
    def __init__(self, stage, backend=None):
        super().__init__()
        conv = stage.dw.conv
        scale, shift = reference.fold_bn(stage.dw.bn)
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        self.scale = nn.Parameter(scale.detach().clone(), requires_grad=False)
        self.shift = nn.Parameter(shift.detach().clone(), requires_grad=False)
        self.stride, self.padding, self.backend = conv.stride[0], conv.padding[0], backend

    def forward(self, x):
        if self.backend is None:
            return reference.dwconv_bn_relu(x, self.weight, self.scale, self.shift, self.stride,
                                            self.padding, True)
        return dasp_kernels.dwconv_bn_relu(x, self.weight, self.scale, self.shift, stride=self.stride,
                                           padding=self.padding, backend=self.backend)


class _PPMAddOp(nn.Module):
    def __init__(self, stage, backend=None):
        super().__init__()
        self.weight = nn.Parameter(stage.ppm.conv.weight.detach().clone(), requires_grad=False)
        self.backend = backend

    def forward(self, x, residual):
        if self.backend is None:
            return reference.ppm_add(x, self.weight, residual)
        return dasp_kernels.ppm_add(x, self.weight, residual, backend=self.backend)


def _stage_params(stage):
    """dasp_stage's seven weight arguments of a DASPStage, BN folded."""
    dws, dwb = reference.fold_bn(stage.dw.bn)
    pws, pwb = reference.fold_bn(stage.pw.bn)
    return [nn.Parameter(t.detach().clone(), requires_grad=False)
            for t in (stage.dw.conv.weight, dws, dwb, stage.pw.conv.weight, pws, pwb,
                      stage.ppm.conv.weight)]


class _StageOp(nn.Module):
    def __init__(self, stage, backend=None):
        super().__init__()
        self.params = nn.ParameterList(_stage_params(stage))
        self.backend = backend

    def forward(self, x):
        if self.backend is None:
            return reference.dasp_stage(x, *self.params)
        return dasp_kernels.dasp_stage(x, *self.params, backend=self.backend)


class _PathOp(nn.Module):
    def __init__(self, path, backend=None):
        super().__init__()
        self.params = nn.ParameterList([p for st in (path.stage1, path.stage2, path.stage3)
                                        for p in _stage_params(st)])
        self.backend = backend

    def forward(self, x):
        if self.backend is None:
            for i in range(0, len(self.params), 7):
                x = reference.dasp_stage(x, *self.params[i:i + 7])
            return x
        return functional.dasp_spatial_path(x, list(self.params), backend=self.backend)


_OP_MODULES = {"dwconv_bn_relu": _DWConvOp, "ppm_add": _PPMAddOp, "dasp_stage": _StageOp,
               "dasp_spatial_path": _PathOp}


@dataclass
class Case:
    """One workload at one size: the reference module and its inputs."""
    workload: str
    kind: str            # op | stage | path | model | stream
    size: str            # the image size the case derives from, e.g. 1x3x1024x1024
    module: nn.Module    # the eager reference, eval mode (None for stream)
    inputs: tuple
    source: nn.Module = None  # for ops: the DASPStage / DASP path the weights come from
    device: str = "cpu"       # where a case without inputs (stream/fma) runs

    @property
    def input_shape(self):
        return size_str(self.inputs[0].shape) if self.inputs else ""


def make_case(workload, shape, device="cpu", stream_mb=256, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n, _, h, w = shape
    size = size_str(shape)
    if workload == "stream/fma":
        return Case(workload, "stream", "registers", None, (), device=str(device))
    if workload.startswith("stream/"):
        numel = stream_mb * 2**20 // 4
        arrays = tuple(torch.rand(numel, generator=gen).to(device) for _ in range(3))
        return Case(workload, "stream", size, None, arrays)
    name, _, stage_id = workload.partition("/")
    if name in OPS or name == "DASPStage":
        cin, cout, k = STAGES[stage_id]
        div = 2 ** (int(stage_id[1]) - 1)
        x_shape = (n, cin, math.ceil(h / div), math.ceil(w / div))
        stage = _randomize_bn(DASPStage(cin, cout, k), gen).eval()
        x = torch.randn(x_shape, generator=gen)
        if name == "DASPStage":
            return Case(workload, "stage", size, stage.to(device), (x.to(device),))
        inputs = (x,)
        if name == "ppm_add":
            inputs += (torch.randn(n, cout, math.ceil(x_shape[2] / 2), math.ceil(x_shape[3] / 2),
                                   generator=gen),)
        module = _OP_MODULES[name](stage).eval()
        return Case(workload, "op", size, module.to(device), tuple(t.to(device) for t in inputs),
                    source=stage.to(device))
    if workload == "dasp_spatial_path":
        path = _randomize_bn(DepthwiseAttentionSpatialPath(), gen).eval().to(device)
        return Case(workload, "op", size, _PathOp(path).eval().to(device),
                    (torch.randn(shape, generator=gen).to(device),), source=path)
    if workload in ("SpatialPath", "DASP"):
        module = SpatialPath() if workload == "SpatialPath" else DepthwiseAttentionSpatialPath()
        kind = "path"
    elif workload in ("BiSeNetV1/original", "BiSeNetV1/dasp"):
        module = BiSeNetV1(spatial_path=stage_id, aux=True)
        kind = "model"
    elif workload in realmodels.WORKLOADS:
        module, kind = realmodels.build(workload), "model"
    elif workload in realmodels.BLOCKS:
        module, x_shape = realmodels.build_block(workload, shape)
        module = _randomize_bn(module, gen).eval().to(device)
        return Case(workload, "model", size, module, (torch.randn(x_shape, generator=gen).to(device),))
    else:
        raise ValueError(f"unknown workload {workload!r}")
    module = _randomize_bn(module, gen).eval().to(device)
    return Case(workload, kind, size, module, (torch.randn(shape, generator=gen).to(device),))


# ---- work per call: FLOPs and the bytes that must move ---------------------------------------

def count_flops(case):
    if case.workload == "stream/fma":
        return _loader._C._fma_peak(1) * FMA_ITERS  # the loop's count grows with its rounds
    if case.kind == "stream":
        return 2 * case.inputs[0].numel() if case.workload == "stream/triad" else 0
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        case.module(*case.inputs)
    return counter.get_total_flops()


def min_bytes(case, out):
    """Inputs + output + weights once: what any implementation must at least read and write."""
    if case.workload == "stream/fma":
        return 0
    if case.kind == "stream":
        a = case.inputs[0]
        return a.numel() * a.element_size() * (2 if case.workload == "stream/copy" else 3)
    nbytes = sum(t.numel() * t.element_size() for t in case.inputs)
    nbytes += out.numel() * out.element_size()
    nbytes += sum(t.numel() * t.element_size() for t in case.module.parameters())
    nbytes += sum(t.numel() * t.element_size() for t in case.module.buffers() if t.is_floating_point())
    return nbytes


# ---- providers ---------------------------------------------------------------------------------

class Skip(Exception):
    """A provider that cannot run here; the message says why."""


@dataclass
class Provider:
    name: str
    fn: object                    # the timed call
    to_tensor: object = None      # turns fn()'s result into a torch tensor for the check
    note: str = ""
    rtol: float = harness.RTOL    # tolerance of the output check


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def fold_conv_bn(module):
    """A copy of `module` with every BatchNorm2d that directly follows a Conv2d (in registration
    order, as in ConvBNReLU, BasicBlock, downsample) folded into that conv; checked numerically
    against the unfolded model like every provider."""
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d
                    and bn.num_features == conv.out_channels):
                parent._modules[a] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                parent._modules[b] = nn.Identity()
    return module


def _eager(case):
    m, xs = case.module, case.inputs
    return Provider("eager", lambda: m(*xs))


def _eager_fold_cl(case):
    m = fold_conv_bn(case.module).to(memory_format=torch.channels_last)
    xs = tuple(_cl(t) for t in case.inputs)
    return Provider("eager+fold+cl", lambda: m(*xs))


def _compile(case):
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    torch._dynamo.reset()
    m = torch.compile(copy.deepcopy(case.module), backend="inductor", dynamic=False)
    xs = case.inputs
    return Provider("compile", lambda: m(*xs), note="inductor, freezing")


def export_onnx(module, inputs):
    """ONNX bytes of `module`: the TorchScript exporter (fast, and exact on these models), else the
    dynamo one. Returns (bytes, which)."""
    errors = []
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if dynamo:
                    prog = torch.onnx.export(module, tuple(inputs), dynamo=True, verbose=False)
                    return prog.model_proto.SerializeToString(), "dynamo exporter"
                f = io.BytesIO()
                torch.onnx.export(module, tuple(inputs), f, dynamo=False)
                return f.getvalue(), "torchscript exporter"
        except Exception as e:  # noqa: BLE001 - any exporter failure: try the other one
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(e).__name__}: {e}")
    raise Skip("ONNX export failed: " + " | ".join(m[:200] for m in errors))


def exported_onnx(case):
    """export_onnx of the case's module, once per case (ONNX Runtime and both OpenVINO providers
    read the same file; exporting a whole model takes seconds)."""
    if "_onnx" not in case.__dict__:
        case.__dict__["_onnx"] = export_onnx(case.module, case.inputs)
    return case.__dict__["_onnx"]


def ort_session_options(threads):
    """ONNX Runtime's CPU settings: every graph optimisation, `threads` intra-op threads, and no
    spin-waiting (DASP_BENCH_ORT_SPIN=1 turns ORT's default back on). ORT's idle workers otherwise
    keep spinning for tens of milliseconds after each run, on the cores that the next provider of
    the interleaved round is timed on: the stage-1 dwconv_bn_relu op timed after a spinning ORT took
    3.98 ms, 1.26 ms without (benchmarks/results/ort_spinning, ort_no_spinning)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if os.environ.get("DASP_BENCH_ORT_SPIN") != "1":
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def _onnxruntime(case, threads):
    try:
        import onnxruntime as ort
    except ImportError:
        raise Skip("onnxruntime is not installed (pip install onnxruntime onnx onnxscript)")
    device = case.inputs[0].device
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise Skip("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)")
        eps = ["CUDAExecutionProvider"]
    else:
        eps = ["CPUExecutionProvider"]
    model_bytes, how = exported_onnx(case)
    sess = ort.InferenceSession(model_bytes, ort_session_options(threads), providers=eps)
    names = [i.name for i in sess.get_inputs()]
    feeds = {n: t.detach().cpu().contiguous().numpy() for n, t in zip(names, case.inputs)}
    return Provider("onnxruntime", lambda: sess.run(None, feeds)[0], torch.from_numpy,
                    note=f"{how}, ORT_ENABLE_ALL, {threads} intra-op threads")


def _openvino(case, threads, precision):
    """OpenVINO on the CPU from the ONNX file ONNX Runtime gets: latency hint, one stream,
    `threads` inference threads; precision "f32" forces fp32, None keeps OpenVINO's default."""
    try:
        import openvino as ov
    except ImportError:
        raise Skip("openvino is not installed (pip install openvino)")
    if case.inputs[0].device.type != "cpu":
        raise Skip("OpenVINO runs here on the CPU only")
    model_bytes, how = exported_onnx(case)
    core = ov.Core()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.onnx")
        with open(path, "wb") as f:
            f.write(model_bytes)
        model = core.read_model(path)
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(model, "CPU", config)
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: f32, bf16, f16
    used = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    request, out = compiled.create_infer_request(), compiled.output(0)
    feeds = [t.detach().contiguous().numpy() for t in case.inputs]
    name = "openvino" if precision is not None else "openvino:default"
    return Provider(name, lambda: request.infer(feeds)[out], lambda a: torch.from_numpy(a.copy()),
                    note=f"{how}, precision {used}, latency hint, {threads} threads",
                    rtol=harness.RTOL if used == "f32" else BF16_RTOL)


def _fused(case, backend):
    """(callable, note) of ours for `case`: the op module, or dasp_kernels.fuse(model, backend);
    raises Skip when the backend or the fusion is not there."""
    why = dasp_kernels.backend_status().get(backend)
    if why is not None:
        raise Skip(f"backend {backend!r}: {why}")
    if backend == "triton" and case.inputs[0].device.type == "cpu":
        raise Skip("triton on the CPU runs only in the interpreter: not a performance backend")
    if case.kind == "op":
        if not hasattr(functional, case.workload.split("/")[0]):
            raise Skip(f"this dasp_kernels has no {case.workload.split('/')[0]}")
        m = type(case.module)(case.source, backend=backend).eval()
        return m, f"dasp_kernels.{case.workload.split('/')[0]}(backend={backend!r})"
    m = dasp_kernels.fuse(case.module, backend=backend)
    counts = getattr(m, "dasp_fused", {})
    if not any(counts.values()):
        raise Skip("dasp_kernels.fuse found no DASP stage or depthwise conv to fuse")
    return m, "fuse(): " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)


def _ours(case, backend, channels_last):
    m, note = _fused(case, backend)
    name = f"ours:{backend}" + ("+cl" if channels_last else "")
    # +cl changes the activations' layout only: the kernels follow the input's memory format.
    xs = tuple(_cl(t) for t in case.inputs) if channels_last else case.inputs
    return Provider(name, lambda: m(*xs), note=note)


def _ours_compiled(case, backend):
    """fuse(model) under torch.compile (inductor, freezing): our ops for the DASP parts, inductor
    for the rest of the model (the context path, heads), as a user would combine them."""
    import torch._inductor.config as inductor_config

    m, note = _fused(case, backend)
    inductor_config.freezing = True
    torch._dynamo.reset()
    m = torch.compile(m, backend="inductor", dynamic=False)
    xs = case.inputs
    return Provider(f"ours:{backend}+compile", lambda: m(*xs),
                    note=note + "; torch.compile (inductor, freezing)")


def _ours_compiled_arena(case, backend):
    """ours:<backend>+compile with every call inside dasp_kernels.cpu_arena(): its large CPU tensors
    reuse freed memory instead of page-faulting fresh memory in each call (ONNX Runtime's arena
    does the same for its tensors)."""
    import dasp_kernels

    p = _ours_compiled(case, backend)
    compiled = p.fn

    def fn():
        with dasp_kernels.cpu_arena():
            return compiled()

    return Provider(f"ours:{backend}+compile+arena", fn,
                    note=p.note + "; calls inside dasp_kernels.cpu_arena()")


def provider_builders(case, threads, backends):
    """[(name, build)] in table order; build() returns a Provider or raises Skip."""
    out = [("eager", lambda: _eager(case)),
           ("eager+fold+cl", lambda: _eager_fold_cl(case)),
           ("compile", lambda: _compile(case)),
           ("onnxruntime", lambda: _onnxruntime(case, threads))]
    if case.kind == "model":
        out += [("openvino", lambda: _openvino(case, threads, "f32")),
                ("openvino:default", lambda: _openvino(case, threads, None))]
    for b in backends:
        out.append((f"ours:{b}", lambda b=b: _ours(case, b, False)))
        if b != "reference":
            out.append((f"ours:{b}+cl", lambda b=b: _ours(case, b, True)))
        if b != "reference" and case.kind in ("stage", "path", "model"):
            out.append((f"ours:{b}+compile", lambda b=b: _ours_compiled(case, b)))
        # The arena is for the CPU allocator; whole models are where large tensors outside our
        # ops (the ResNet-18 stem, the upsampled logits) are allocated in every call.
        if b == "cpu" and case.kind == "model":
            out.append((f"ours:{b}+compile+arena", lambda b=b: _ours_compiled_arena(case, b)))
    return out


def default_backends(device):
    return ["reference", "cpu"] if torch.device(device).type == "cpu" else ["cuda", "triton"]


# ---- one case ----------------------------------------------------------------------------------

# Rounds of the FMA loop per thread and call: about 0.3 ms on a 2023 x86 core.
FMA_ITERS = 100_000


def _stream_fn(case):
    if case.workload == "stream/fma":
        return lambda: _loader._C._fma_peak(FMA_ITERS)
    a, b, c = case.inputs
    if case.workload == "stream/copy":
        return lambda: a.copy_(b)
    return lambda: torch.add(b, c, alpha=3.0, out=a)


def run_case(case, *, threads, backends, providers=None, extra=None, timing=None, log=print):
    """Builds, checks and times every provider of `case`; returns one row dict per provider.

    providers: names to keep (None: all). extra: {name: build(case) -> Provider}, appended (tests
    use it to inject a wrong provider). timing: kwargs for harness.measure_interleaved.
    """
    timing = dict(timing or {})
    device = case.inputs[0].device if case.inputs else torch.device(case.device)
    base = {"workload": case.workload, "kind": case.kind, "size": case.size,
            "input_shape": case.input_shape, "threads": threads,
            "load_at_case": round(os.getloadavg()[0], 2)}  # other processes skew timings
    if case.kind == "stream":
        provider = "dasp_kernels" if case.workload == "stream/fma" else "torch"
        if provider == "dasp_kernels" and (device.type != "cpu" or _loader._C is None):
            why = ("a CPU ceiling" if device.type != "cpu"
                   else "the dasp_kernels extension is not built")
            return [{**base, "provider": provider, "status": "skipped", "note": why,
                     "setup_s": 0.0}]
        t = harness.measure(_stream_fn(case), device=device, **timing)
        nbytes, flops = min_bytes(case, None), count_flops(case)
        return [{**base, "provider": provider, "status": "ok", "note": "", "setup_s": 0.0,
                 "max_abs_diff": 0.0, **_timing_fields(t), "gflop": flops / 1e9,
                 "gflops": flops / t.median_ms / 1e6, "min_mb": nbytes / 1e6,
                 "gbps": nbytes / t.median_ms / 1e6}]

    with torch.no_grad():
        ref = case.module(*case.inputs)
        flops = count_flops(case)
        nbytes = min_bytes(case, ref)
        builders = provider_builders(case, threads, backends)
        builders += [(k, (lambda b=b: b(case))) for k, b in (extra or {}).items()]
        rows, live = {}, {}
        for name, build in builders:
            if providers is not None and name not in providers:
                continue
            row = {**base, "provider": name, "status": "", "note": "", "gflop": flops / 1e9,
                   "min_mb": nbytes / 1e6}
            rows[name] = row
            t0 = time.perf_counter()
            try:
                p = build()
                out = p.fn()  # first call: compiles, exports, warms up
                if device.type == "cuda":
                    torch.cuda.synchronize()
                row["setup_s"] = round(time.perf_counter() - t0, 3)
                row["note"] = p.note
                ok, diff = harness.check_output(p.to_tensor(out) if p.to_tensor else out, ref, p.rtol)
                row["max_abs_diff"] = diff
                if ok:
                    live[name] = p.fn
                else:
                    row["status"] = "wrong"
                    row["note"] = (row["note"] + "; " if row["note"] else "") + \
                        f"output differs from eager (max abs diff {diff:.3g}); not timed"
            except Skip as e:
                row["status"], row["note"] = "skipped", str(e)
            except Exception as e:  # noqa: BLE001 - a broken provider is reported, not fatal
                row["status"], row["note"] = "error", f"{type(e).__name__}: {str(e)[:300]}"
            row["setup_s"] = row.get("setup_s", round(time.perf_counter() - t0, 3))
        del ref
        gc.collect()
        if live:
            timings = harness.measure_interleaved(live, device=device, **timing)
            for name, t in timings.items():
                rows[name].update(status="ok", **_timing_fields(t),
                                  gflops=flops / t.median_ms / 1e6, gbps=nbytes / t.median_ms / 1e6)
    torch._dynamo.reset()
    gc.collect()
    out = list(rows.values())
    _add_ratios(out)
    log(_progress_line(case, threads, out))
    return out


def _timing_fields(t):
    return {"median_ms": t.median_ms, "p20_ms": t.p20_ms, "p80_ms": t.p80_ms, "reps": t.reps,
            "faults_per_call": t.faults_per_call}


def is_ours(name):
    return name.startswith("ours:") and not name.startswith("ours:reference")


def _add_ratios(rows):
    """speedup_of_ours: this provider's median / the fastest compiled 'ours' median (>1: ours wins)."""
    ours = [r["median_ms"] for r in rows if r.get("status") == "ok" and is_ours(r["provider"])]
    best = min(ours) if ours else None
    for r in rows:
        r["best_ours_ms"] = best if best is not None else ""
        r["speedup_of_ours"] = (r["median_ms"] / best if best and r.get("status") == "ok"
                                and not is_ours(r["provider"]) else "")


def _progress_line(case, threads, rows):
    parts = []
    for r in rows:
        if r["status"] == "ok":
            parts.append(f"{r['provider']} {r['median_ms']:.2f}")
        else:
            parts.append(f"{r['provider']} {r['status']}")
    return f"  {case.workload} [{case.input_shape}, {threads}t]: " + ", ".join(parts) + " (ms)"
