import os

import pytest
import torch

import dasp_kernels

# Fused depthwise layers and inverted-residual blocks run our kernels in the tests, whatever is
# faster on the machine at the time (dasp_kernels/dw_choice.py, ir_choice.py):
# tests/test_dw_choice.py and test_ir_choice.py set the other modes themselves.
os.environ["DASP_KERNELS_DW_IMPL"] = "dasp"
os.environ["DASP_KERNELS_IR_IMPL"] = "dasp"

# fp32 references must be true fp32 on a GPU too.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module's tests, restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def backend_skip(backend):
    """A pytest mark that skips, with the reason, when `backend` cannot run here."""
    why = dasp_kernels.backend_status()[backend]
    return pytest.mark.skipif(why is not None, reason=f"backend {backend!r}: {why}")


needs_cpu_ext = backend_skip("cpu")
needs_cuda = backend_skip("cuda")
needs_triton = backend_skip("triton")
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def perturbed_bn(model, seed=0):
    """model in eval mode with random BatchNorm statistics and affine parameters, so that a wrong
    fold of a norm shows (a fresh model's norms are the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model.eval()
