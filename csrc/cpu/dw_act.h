// The activations of dwconv_bn_act on at::vec vectors: act(z) for the forward epilogue and
// g * act'(z) for the backward, z the pre-activation conv * scale + shift. Each follows the
// formula of torch's own CPU kernel for it (and its backward), so that the results agree with
// dasp_kernels.reference to rounding. Included once per instruction set, inside the kernels'
// namespace (see cpu_kernels.h); hence no include guard.
#ifndef DASP_ISA
#error "define DASP_ISA before including dw_act.h"
#endif

#include <ATen/cpu/vec/vec.h>

#include "cpu_kernels.h"

namespace dasp_kernels::cpu::DASP_ISA {
namespace dw {

// One call's activation: id (DwActId) and its parameters broadcast. operator() switches on id per
// vector (the same branch every time, so it predicts), keeping one instantiation of each kernel
// for all eight activations; the channels-last forward switches once per block and inlines
// apply<ID> instead.
template <typename T>
struct ActV {
  using V = at::vec::Vectorized<T>;
  int id;
  V alpha, beta;
  explicit ActV(const DwShape& p) : ActV(p.act, p.alpha, p.beta) {}
  // Any other op's activation with the same ids and parameters (inverted_residual's three).
  ActV(int act, double a, double b) : id(act), alpha(T(a)), beta(T(b)) {}

  // sqrt(2/pi) and the cubic coefficient of the tanh form of GELU.
  static constexpr T kBeta = T(0.7978845608028654);
  static constexpr T kKappa = T(0.044715);

  // act(z) for activation ID known at compile time: the forward kernels switch on id once per
  // block of outputs and apply this inline (a call per vector cost more than the activation).
  template <int ID>
  V apply(const V& z) const {
    const V zero(T(0));
    if constexpr (ID == kActRelu) {
      return at::vec::maximum(z, zero);  // maximum() keeps NaN, like torch.relu
    } else if constexpr (ID == kActHardtanh) {
      return at::vec::minimum(at::vec::maximum(z, alpha), beta);
    } else if constexpr (ID == kActHardswish) {
      return z * at::vec::minimum(at::vec::maximum(z + V(T(3)), zero), V(T(6))) / V(T(6));
    } else if constexpr (ID == kActSilu) {
      return z / (V(T(1)) + z.neg().exp());
    } else if constexpr (ID == kActGelu) {
      return z * V(T(0.5)) * (V(T(1)) + (z * V(T(M_SQRT1_2))).erf());
    } else if constexpr (ID == kActGeluTanh) {
      const V inner = V(kBeta) * (z + V(kKappa) * z * z * z);
      return V(T(0.5)) * z * (V(T(1)) + inner.tanh());
    } else if constexpr (ID == kActLeaky) {
      return V::blendv(z * alpha, z, z > zero);
    } else {
      return z;
    }
  }

  V operator()(const V& z) const {
    switch (id) {
      case kActRelu: return apply<kActRelu>(z);
      case kActHardtanh: return apply<kActHardtanh>(z);
      case kActHardswish: return apply<kActHardswish>(z);
      case kActSilu: return apply<kActSilu>(z);
      case kActGelu: return apply<kActGelu>(z);
      case kActGeluTanh: return apply<kActGeluTanh>(z);
      case kActLeaky: return apply<kActLeaky>(z);
      default: return z;
    }
  }

  // g * act'(z), as torch's backward of each activation computes it.
  V grad(const V& g, const V& z) const {
    const V zero(T(0)), one(T(1));
    switch (id) {
      // threshold_backward on the result: relu(z) <= 0 drops the gradient; a NaN z passes it.
      case kActRelu: return V::blendv(g, zero, z <= zero);
      case kActHardtanh: return V::blendv(g, zero, (z <= alpha) | (z >= beta));
      case kActHardswish: {
        const V mid = g * (z / V(T(3)) + V(T(0.5)));
        return V::blendv(V::blendv(g, mid, z <= V(T(3))), zero, z < V(T(-3)));
      }
      case kActSilu: {
        const V sig = one / (one + z.neg().exp());
        return g * sig * (one + z * (one - sig));
      }
      case kActGelu: {
        const V cdf = V(T(0.5)) * (one + (z * V(T(M_SQRT1_2))).erf());
        const V pdf = (V(T(-0.5)) * z * z).exp() * V(T(0.3989422804014327));  // 1/sqrt(2 pi)
        return g * (cdf + z * pdf);
      }
      case kActGeluTanh: {
        const V z2 = z * z;
        const V th = (V(kBeta) * (z + V(kKappa) * z2 * z)).tanh();
        const V left = V(T(0.5)) * z, right = one + th;
        const V dright = (one - th * th) * V(kBeta) * (one + V(T(3) * kKappa) * z2);
        return g * (V(T(0.5)) * right + left * dright);
      }
      case kActLeaky: return V::blendv(g * alpha, g, z > zero);
      default: return g;
    }
  }
};

}  // namespace dw
}  // namespace dasp_kernels::cpu::DASP_ISA
