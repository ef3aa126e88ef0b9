// dwconv_bn_act's activations (the Act enum of checks.h) and their derivatives, on the device.
//
// Forward formulas follow ATen's CPU/CUDA kernels term for term (same operation order), so float64
// results agree with the reference to rounding. The backward returns grad * act'(z) written as
// ATen's *_backward kernels write it: the piecewise ones select (relu at 0 passes nothing,
// hardtanh's edges pass nothing), so an inf or NaN gradient is dropped where autograd drops it.
// At a NaN z relu and leaky_relu pass the gradient as autograd does; there hardtanh passes nothing
// and hardswish gives NaN, as ATen's vectorized kernels do (their scalar tails differ, so ATen's
// own answer depends on the element's position).
// `act` is uniform across a launch, so the switch does not diverge.
#pragma once
#include <cmath>
#include <type_traits>

#include "common.cuh"

namespace dasp_kernels {
namespace cuda {

// The float overloads by name: nvcc and the host compiler both have erff/expf/tanhf.
template <typename T>
__device__ __forceinline__ T exp_t(T v) {
  if constexpr (std::is_same<T, float>::value) return expf(v);
  else return exp(v);
}
template <typename T>
__device__ __forceinline__ T erf_t(T v) {
  if constexpr (std::is_same<T, float>::value) return erff(v);
  else return erf(v);
}
template <typename T>
__device__ __forceinline__ T tanh_t(T v) {
  if constexpr (std::is_same<T, float>::value) return tanhf(v);
  else return tanh(v);
}

// gelu_tanh's constants: sqrt(2 / pi) and the cubic coefficient.
constexpr double kGeluTanhBeta = 0.7978845608028654;
constexpr double kGeluTanhKappa = 0.044715;
constexpr double kSqrtHalf = 0.7071067811865476;       // 1 / sqrt(2)
constexpr double kInvSqrt2Pi = 0.3989422804014327;     // 1 / sqrt(2 pi)

template <typename T>
__device__ __forceinline__ T act_forward(T z, Act act, T alpha, T beta) {
  switch (act) {
    case Act::relu:
      return z < T(0) ? T(0) : z;  // NaN stays NaN, as torch.relu
    case Act::hardtanh:
      return z < alpha ? alpha : (z > beta ? beta : z);  // clamp: NaN stays NaN
    case Act::hardswish: {
      T r = z + T(3);
      r = r < T(0) ? T(0) : (r > T(6) ? T(6) : r);
      return z * r / T(6);
    }
    case Act::silu:
      return z / (T(1) + exp_t(-z));
    case Act::gelu:
      return z * T(0.5) * (T(1) + erf_t(z * T(kSqrtHalf)));
    case Act::gelu_tanh: {
      const T inner = T(kGeluTanhBeta) * (z + T(kGeluTanhKappa) * z * z * z);
      return T(0.5) * z * (T(1) + tanh_t(inner));
    }
    case Act::leaky_relu:
      return z > T(0) ? z : z * alpha;
    default:
      return z;  // Act::none
  }
}

// grad * act'(z): the gradient of the pre-activation z from the gradient g of the output.
template <typename T>
__device__ __forceinline__ T act_backward(T g, T z, Act act, T alpha, T beta) {
  switch (act) {
    case Act::relu:
      return z <= T(0) ? T(0) : g;  // threshold_backward: a NaN z passes the gradient
    case Act::hardtanh:
      return (z > alpha && z < beta) ? g : T(0);
    case Act::hardswish:
      return z <= T(-3) ? T(0) : (z >= T(3) ? g : g * (z / T(3) + T(0.5)));
    case Act::silu: {
      const T s = T(1) / (T(1) + exp_t(-z));
      return g * s * (T(1) + z * (T(1) - s));
    }
    case Act::gelu: {
      const T cdf = T(0.5) * (T(1) + erf_t(z * T(kSqrtHalf)));
      const T pdf = exp_t(T(-0.5) * z * z) * T(kInvSqrt2Pi);
      return g * (cdf + z * pdf);
    }
    case Act::gelu_tanh: {
      const T z2 = z * z;
      const T t = tanh_t(T(kGeluTanhBeta) * (z + T(kGeluTanhKappa) * z2 * z));
      const T left = T(0.5) * z;
      const T dright = (T(1) - t * t) * T(kGeluTanhBeta) * (T(1) + T(3 * kGeluTanhKappa) * z2);
      return g * (T(0.5) * (T(1) + t) + left * dright);
    }
    case Act::leaky_relu:
      return z > T(0) ? g : g * alpha;
    default:
      return g;  // Act::none
  }
}

}  // namespace cuda
}  // namespace dasp_kernels
