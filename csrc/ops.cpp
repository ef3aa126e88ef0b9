// Every schema of the library, in one place. Kernels register themselves per backend in
// csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu; fakes and autograd are registered from Python
// (dasp_kernels/ops.py).
#include <Python.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>

#include "cpu/cpu_arena.h"
#include "cpu/cpu_kernels.h"

namespace {
// dasp_kernels._C.cpu_isa(): which build of the CPU kernels this process runs ("avx512", "avx2"
// or "default"), for benchmarks and tests.
PyObject* cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(dasp_kernels::cpu::kernels<float>().isa);
}
// The CPU arena (csrc/cpu/cpu_arena.cpp), driven by dasp_kernels/arena.py. Errors from the C++
// side (TORCH_CHECK) become RuntimeError.
template <typename F>
PyObject* guarded(F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}
PyObject* arena_enable(PyObject*, PyObject* args) {
  long long max_cached = -1;
  if (!PyArg_ParseTuple(args, "L", &max_cached)) return nullptr;
  return guarded([&] {
    dasp_kernels::cpu::arena_enable(max_cached);
    Py_RETURN_NONE;
  });
}
PyObject* arena_disable(PyObject*, PyObject*) {
  return guarded([] {
    dasp_kernels::cpu::arena_disable();
    Py_RETURN_NONE;
  });
}
PyObject* arena_release(PyObject*, PyObject*) {
  return guarded([] { return PyLong_FromLongLong(dasp_kernels::cpu::arena_release()); });
}
PyObject* arena_stats(PyObject*, PyObject*) {
  return guarded([] {
    const auto s = dasp_kernels::cpu::arena_stats();
    return Py_BuildValue("(OLLL)", s.enabled ? Py_True : Py_False,
                         static_cast<long long>(s.cached_bytes), static_cast<long long>(s.hits),
                         static_cast<long long>(s.misses));
  });
}
// dasp_kernels._C._fma_peak(iters): the benchmarks' compute ceiling. Runs the build's FMA loop
// (kernel_util.h) once on each of ATen's intra-op threads, without the GIL, and returns the
// floating-point operations done (2 per lane of each vector FMA).
PyObject* fma_peak(PyObject*, PyObject* args) {
  long long iters = 0;
  if (!PyArg_ParseTuple(args, "L", &iters)) return nullptr;
  if (iters < 0) {
    PyErr_Format(PyExc_ValueError, "_fma_peak: expected iters >= 0, got %lld", iters);
    return nullptr;
  }
  const auto& k = dasp_kernels::cpu::kernels<float>();
  const int64_t threads = at::get_num_threads();
  std::atomic<float> sink{0.f};
  Py_BEGIN_ALLOW_THREADS
  // One chunk per thread: grain 1 over exactly as many items as threads.
  at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) sink.store(k.fma_loop(iters), std::memory_order_relaxed);
  });
  Py_END_ALLOW_THREADS
  (void)sink.load();
  return PyLong_FromLongLong(static_cast<long long>(
      threads * iters * k.fma_per_iter * k.vec_size * 2));
}
PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "The CPU kernels' instruction set."},
    {"_arena_enable", arena_enable, METH_VARARGS, "Installs the CPU arena (nests)."},
    {"_arena_disable", arena_disable, METH_NOARGS, "Undoes one _arena_enable."},
    {"_arena_release", arena_release, METH_NOARGS, "Frees the arena's cached blocks."},
    {"_arena_stats", arena_stats, METH_NOARGS, "(enabled, cached_bytes, hits, misses)."},
    {"_fma_peak", fma_peak, METH_VARARGS, "FLOPs of a register-only FMA loop on every thread."},
    {nullptr, nullptr, 0, nullptr}};
}  // namespace

extern "C" {
// Lets `import dasp_kernels._C` load this library (and so run the registrations below). The ops
// all go through torch.ops; the module itself holds only cpu_isa(), the CPU arena's switches and
// the benchmarks' FMA ceiling.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}

// The forward ops take any memory format and return their input's (NCHW or channels_last), so
// they are tagged flexible_layout: torch.compile then feeds them the layout the producer has
// (channels_last around oneDNN convs) instead of converting to the traced NCHW and back.
TORCH_LIBRARY(dasp_kernels, m) {
  const std::vector<at::Tag> any_layout = {at::Tag::flexible_layout};
  // act(depthwise_conv2d(x, weight, stride, padding, dilation) * scale[c] + shift[c]): the
  // depthwise conv of MobileNets and EfficientNets with its BatchNorm (folded: scale, shift; a
  // conv bias folds into shift) and activation. K 1..9, stride 1 or 2, padding [top, bottom,
  // left, right] (timm's "same" padding is asymmetric), act one of none, relu, hardtanh
  // (min alpha, max beta; ReLU6 is hardtanh(0, 6)), hardswish, silu, gelu, gelu_tanh,
  // leaky_relu (slope alpha).
  m.def("dwconv_bn_act(Tensor x, Tensor weight, Tensor scale, Tensor shift, int stride, "
        "int[4] padding, int dilation, str act, float alpha, float beta) -> Tensor", any_layout);
  // Returns (grad_x, grad_weight, grad_scale, grad_shift); recomputes the convolution.
  m.def("_dwconv_bn_act_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor scale, "
        "Tensor shift, int stride, int[4] padding, int dilation, str act, float alpha, "
        "float beta) -> (Tensor, Tensor, Tensor, Tensor)");
  // MobileNetV2's inverted-residual block in one pass (the expanded tensor never goes to memory):
  //   y = act_e(conv1x1(x, expand_weight) * expand_scale + expand_shift)  (y = x when the three
  //       expand_* tensors are None),
  //   z = act_d(depthwise_conv2d(y, dw_weight, stride, padding, dilation) * dw_scale + dw_shift)
  //       (zero padding applied to y: a padded tap contributes 0),
  //   z = z * se_gate(conv1x1(se_act(conv1x1(mean_hw(z), se_reduce_weight) + se_reduce_bias),
  //                           se_expand_weight) + se_expand_bias)  (squeeze-and-excitation, when
  //       its four tensors are given; se_gate sigmoid or hardsigmoid),
  //   out = act_p(conv1x1(z, project_weight) * project_scale + project_shift) (+ x if residual).
  // Depthwise arguments and activations as dwconv_bn_act's.
  m.def("inverted_residual(Tensor x, Tensor? expand_weight, Tensor? expand_scale, "
        "Tensor? expand_shift, str expand_act, float expand_alpha, float expand_beta, "
        "Tensor dw_weight, Tensor dw_scale, Tensor dw_shift, int stride, int[4] padding, "
        "int dilation, str dw_act, float dw_alpha, float dw_beta, Tensor project_weight, "
        "Tensor project_scale, Tensor project_shift, str project_act, float project_alpha, "
        "float project_beta, bool residual, Tensor? se_reduce_weight=None, "
        "Tensor? se_reduce_bias=None, Tensor? se_expand_weight=None, Tensor? se_expand_bias=None, "
        "str se_act=\"relu\", float se_alpha=0., float se_beta=0., "
        "str se_gate=\"sigmoid\") -> Tensor", any_layout);
  // conv1x1(maxpool2d(x, 2, 2, ceil_mode=True), weight) + residual.
  m.def("ppm_add(Tensor x, Tensor weight, Tensor residual) -> Tensor", any_layout);
  // Returns (grad_x, grad_weight); grad_residual is grad_out itself.
  m.def("_ppm_add_backward(Tensor grad_out, Tensor x, Tensor weight) -> (Tensor, Tensor)");
  // One whole DASP stage, Eq. (5): ppm_add(x, ppm_weight, relu(pw(dwconv_bn_relu(x)) * pw_scale +
  // pw_shift)), depthwise stride 2, padding K // 2, K odd. No intermediate goes to memory.
  m.def("dasp_stage(Tensor x, Tensor dw_weight, Tensor dw_scale, Tensor dw_shift, "
        "Tensor pw_weight, Tensor pw_scale, Tensor pw_shift, Tensor ppm_weight) -> Tensor", any_layout);
  // Returns the gradients of all eight tensor inputs, in order.
  m.def("_dasp_stage_backward(Tensor grad_out, Tensor x, Tensor dw_weight, Tensor dw_scale, "
        "Tensor dw_shift, Tensor pw_weight, Tensor pw_scale, Tensor pw_shift, Tensor ppm_weight) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // dasp_stage applied len(stage_params) / 7 times in a row, each stage's 7 tensors in
  // dasp_stage's order (the DASP spatial path is three stages). Rows flow through all stages
  // together, so no stage's output but the last goes to memory. Autograd recomputes the
  // intermediate outputs and calls _dasp_stage_backward per stage.
  m.def("dasp_spatial_path(Tensor x, Tensor[] stage_params) -> Tensor", any_layout);
}
