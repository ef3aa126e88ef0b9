// bfloat16 on the CPU for the ops (or directions) with no bf16 kernel yet: the op runs in float32
// on its inputs widened (exactly) and rounds its outputs to bf16 (round to nearest even, ATen's
// conversion), so the result is the float32 op's, rounded once. Outputs keep the memory format
// the float32 op gives them (Tensor::to preserves it).
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <utility>
#include <vector>

namespace dasp_kernels::cpu {

// The dtypes the CPU ops take (check_backend_dtype): float16 is refused, since this CPU family's
// float16 would only be widened to float32 and back (no AVX512_FP16 here); autocast's float16
// runs the ops in float32 (dasp_kernels/autocast.py).
#define DASP_CPU_DTYPES {at::kFloat, at::kDouble, at::kBFloat16}

inline bool is_bf16(const at::Tensor& x) { return x.scalar_type() == at::kBFloat16; }

inline at::Tensor widen(const at::Tensor& t) { return t.to(at::kFloat); }
inline std::optional<at::Tensor> widen(const std::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return t;
  return t->to(at::kFloat);
}
inline std::vector<at::Tensor> widen(at::TensorList ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.to(at::kFloat));
  return out;
}

inline at::Tensor narrow_bf16(const at::Tensor& t) { return t.to(at::kBFloat16); }
template <typename... Ts>
std::tuple<Ts...> narrow_bf16(const std::tuple<Ts...>& ts) {
  return std::apply([](const auto&... t) { return std::make_tuple(narrow_bf16(t)...); }, ts);
}

}  // namespace dasp_kernels::cpu
