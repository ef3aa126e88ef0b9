// Every schema of the library, in one place. Kernels register themselves per backend in
// csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu; fakes and autograd are registered from Python
// (dasp_kernels/ops.py).
#include <Python.h>
#include <torch/library.h>

#include "cpu/cpu_kernels.h"

namespace {
// dasp_kernels._C.cpu_isa(): which build of the CPU kernels this process runs ("avx512", "avx2"
// or "default"), for benchmarks and tests.
PyObject* cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(dasp_kernels::cpu::kernels<float>().isa);
}
PyMethodDef methods[] = {{"cpu_isa", cpu_isa, METH_NOARGS, "The CPU kernels' instruction set."},
                         {nullptr, nullptr, 0, nullptr}};
}  // namespace

extern "C" {
// Lets `import dasp_kernels._C` load this library (and so run the registrations below). The ops
// all go through torch.ops; the module itself holds only cpu_isa().
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(dasp_kernels, m) {
  // act(depthwise_conv2d(x, weight, stride, padding) * scale[c] + shift[c]), act = ReLU or identity.
  m.def("dwconv_bn_relu(Tensor x, Tensor weight, Tensor scale, Tensor shift, int stride, "
        "int padding, bool relu) -> Tensor");
  // Returns (grad_x, grad_weight, grad_scale, grad_shift); recomputes the convolution.
  m.def("_dwconv_bn_relu_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor scale, "
        "Tensor shift, int stride, int padding, bool relu) -> (Tensor, Tensor, Tensor, Tensor)");
  // conv1x1(maxpool2d(x, 2, 2, ceil_mode=True), weight) + residual.
  m.def("ppm_add(Tensor x, Tensor weight, Tensor residual) -> Tensor");
  // Returns (grad_x, grad_weight); grad_residual is grad_out itself.
  m.def("_ppm_add_backward(Tensor grad_out, Tensor x, Tensor weight) -> (Tensor, Tensor)");
  // One whole DASP stage, Eq. (5): ppm_add(x, ppm_weight, relu(pw(dwconv_bn_relu(x)) * pw_scale +
  // pw_shift)), depthwise stride 2, padding K // 2, K odd. No intermediate goes to memory.
  m.def("dasp_stage(Tensor x, Tensor dw_weight, Tensor dw_scale, Tensor dw_shift, "
        "Tensor pw_weight, Tensor pw_scale, Tensor pw_shift, Tensor ppm_weight) -> Tensor");
  // Returns the gradients of all eight tensor inputs, in order.
  m.def("_dasp_stage_backward(Tensor grad_out, Tensor x, Tensor dw_weight, Tensor dw_scale, "
        "Tensor dw_shift, Tensor pw_weight, Tensor pw_scale, Tensor pw_shift, Tensor ppm_weight) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // dasp_stage applied len(stage_params) / 7 times in a row, each stage's 7 tensors in
  // dasp_stage's order (the DASP spatial path is three stages). Rows flow through all stages
  // together, so no stage's output but the last goes to memory. Autograd recomputes the
  // intermediate outputs and calls _dasp_stage_backward per stage.
  m.def("dasp_spatial_path(Tensor x, Tensor[] stage_params) -> Tensor");
}
