"""What our ops do under torch.autocast: the cast policy, registered for every op.

Policy (the same for every op, its forward and the wrappers of dasp_kernels.functional):
- autocast("cpu", dtype=torch.bfloat16): every floating-point tensor argument on the CPU except
  float64 ones (x, the conv weights, the folded-BN scale/shift, residuals, stage_params) is cast
  to bfloat16 and the op runs in bfloat16, so its output is bfloat16, as torch's convolutions
  give under autocast. float64 tensors are left alone, as autocast leaves them.
  The folded scale and shift are cast too, not kept in float32: every op takes one dtype for all
  its tensors (checks, fakes, kernels and the gradients' dtypes stay as they are), and rounding
  them to bfloat16 adds at most 2^-8 of |scale * conv| and of |shift| to a result that is itself
  rounded to bfloat16 (2^-8 relative), while the kernels accumulate in float32 either way.
- autocast("cpu", dtype=torch.float16): the tensors are cast to float32 instead (the op runs in
  float32 and returns float32, as autocast runs its float32-list ops): the CPU kernels have no
  float16 path (this CPU has no AVX512_FP16, so float16 would only be converted to float32 and
  back), and float32 is exact for float16 inputs.
- autocast on other devices: nothing is registered (the ops run in their inputs' dtypes).

register() installs an AutocastCPU kernel for each op of dasp_kernels (ops.OPS; ops.register
calls it), in the form
torch.library.register_autocast uses (a Python kernel also seen by torch.compile's tracing), but
with the target dtype read from the autocast state at each call.
"""
import torch

DEVICE = "cpu"


def target_dtype(device_type=DEVICE):
    """The dtype our ops run in under the current autocast state, None where autocast is off (or
    is not ours to handle)."""
    if device_type != DEVICE or not torch.is_autocast_enabled(device_type):
        return None
    dtype = torch.get_autocast_dtype(device_type)
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def cast(value, dtype, device_type=DEVICE):
    """value with each floating-point, non-float64 tensor on device_type cast to dtype (in lists
    and tuples too, e.g. dasp_spatial_path's stage_params)."""
    if isinstance(value, torch.Tensor):
        ok = (value.is_floating_point() and value.device.type == device_type
              and value.dtype != torch.float64)
        return value.to(dtype) if ok else value
    if isinstance(value, (list, tuple)):
        return type(value)(cast(v, dtype, device_type) for v in value)
    return value


def cast_args(args, device_type=DEVICE):
    """args as the op runs them under the current autocast state (unchanged when it is off)."""
    dtype = target_dtype(device_type)
    return args if dtype is None else cast(args, dtype, device_type)


def _register_one(qualname, lib):
    op = torch._library.utils.lookup_op(qualname)
    key = torch._C.DispatchKey.AutocastCPU

    def run(*args):
        args = cast_args(args)  # before the guard: inside it autocast reads as off
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return op(*args)

    if op.has_kernel_for_dispatch_key(key):
        op.py_kernels.pop(key)
    op.py_impl(key)(run)  # what dispatch in Python (torch.compile's tracing) runs
    lib.impl(qualname.split("::")[1], lambda _keyset, *args: run(*args), "AutocastCPU",
             with_keyset=True)


_LIBS = {}


def register(ns, names):
    """The autocast kernel of ops `names` of namespace `ns` (once per namespace)."""
    if ns in _LIBS:
        return
    lib = _LIBS[ns] = torch.library.Library(ns, "IMPL")
    for name in names:
        _register_one(f"{ns}::{name}", lib)
