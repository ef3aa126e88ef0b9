// Squeeze-and-excitation's small steps in ATen, shared by inverted_residual's CPU and CUDA hosts:
// the activations by their Act, the gate of each image and channel from the depthwise output's
// mean (two tiny fully connected layers: nothing to fuse), and the projection weights with the
// gate folded in, proj(d * s) = (W diag(s)) d, so that the gate costs no pass over d.
#pragma once

#include <ATen/ATen.h>

#include "checks.h"

namespace dasp_kernels {

inline at::Tensor aten_act(const at::Tensor& z, Act act, double alpha, double beta) {
  switch (act) {
    case Act::none: return z;
    case Act::relu: return at::relu(z);
    case Act::hardtanh: return at::hardtanh(z, alpha, beta);
    case Act::hardswish: return at::hardswish(z);
    case Act::silu: return at::silu(z);
    case Act::gelu: return at::gelu(z);
    case Act::gelu_tanh: return at::gelu(z, "tanh");
    case Act::leaky_relu: return at::leaky_relu(z, alpha);
  }
  return z;
}

// The gate [N, E]: gate(act(mean @ reduce^T + reduce_bias) @ expand^T + expand_bias).
inline at::Tensor se_gate(const at::Tensor& mean, const at::Tensor& reduce_weight,
                          const at::Tensor& reduce_bias, const at::Tensor& expand_weight,
                          const at::Tensor& expand_bias, const SeConf& c, double alpha,
                          double beta) {
  const int64_t sq = reduce_weight.size(0), e = reduce_weight.size(1);
  at::Tensor h = at::addmm(reduce_bias, mean, reduce_weight.reshape({sq, e}).t());
  h = aten_act(h, c.act, alpha, beta);
  const at::Tensor g = at::addmm(expand_bias, h, expand_weight.reshape({e, sq}).t());
  return c.gate == SeGate::sigmoid ? at::sigmoid(g) : at::hardsigmoid(g);
}

// Each image's projection weights [N, Co, E]: project_weight times the image's gate per column.
inline at::Tensor gated_projection(const at::Tensor& project_weight, const at::Tensor& gate) {
  const int64_t co = project_weight.size(0), e = project_weight.size(1);
  return project_weight.reshape({1, co, e}) * gate.unsqueeze(1);
}

}  // namespace dasp_kernels
