// Input checks shared by the CPU and CUDA kernels. They say what dasp_kernels/_checks.py says, in
// the same words, so that the wrapper, the fake kernel and the real kernel agree.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <vector>

namespace dasp_kernels {

inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    default: return c10::toString(t);
  }
}

// The largest depthwise kernel of the stage ops (dasp_stage, dasp_spatial_path: K in 1, 3, 5, 7).
constexpr int64_t kMaxK = 7;

inline void check_rank4_floating(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, op, ": expected x to be 4-D (N, C, H, W), got ", x.dim(),
              "-D of shape ", x.sizes());
  auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, op,
              ": expected x of dtype float32, float64, float16 or bfloat16, got ", dtype_name(t));
}

inline void check_like_x(const char* op, const at::Tensor& x, const char* name,
                         const at::Tensor& t) {
  TORCH_CHECK(t.device() == x.device(), op, ": expected ", name, " on the device of x (",
              x.device(), "), got ", t.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": expected ", name,
              " to have the dtype of x (", dtype_name(x.scalar_type()), "), got ",
              dtype_name(t.scalar_type()));
}

// What a compiled backend accepts beyond the generic checks, e.g. {kFloat, kDouble} on the CPU.
inline void check_backend_dtype(const char* op, const char* backend, const at::Tensor& x,
                                std::initializer_list<at::ScalarType> ok) {
  std::string names;
  for (auto t : ok) {
    if (t == x.scalar_type()) return;
    names += (names.empty() ? "" : ", ") + dtype_name(t);
  }
  TORCH_CHECK(false, op, ": backend '", backend, "' supports ", names, ", got ",
              dtype_name(x.scalar_type()));
}

// dwconv_bn_act's activations, in the order of dasp_kernels/_checks.py's ACTIVATIONS (the op's
// `act` string names one). alpha, beta: hardtanh's min and max, leaky_relu's slope (alpha).
enum class Act : int { none, relu, hardtanh, hardswish, silu, gelu, gelu_tanh, leaky_relu };
constexpr const char* kActNames[] = {"none", "relu", "hardtanh",
                                     "hardswish", "silu", "gelu", "gelu_tanh", "leaky_relu"};
constexpr int kNumActs = 8;
constexpr int64_t kDwMaxK = 9;

inline int64_t dwconv_bn_act_out_size(int64_t size, int64_t k, int64_t stride, int64_t pad_begin,
                                      int64_t pad_end, int64_t dilation) {
  return (size + pad_begin + pad_end - dilation * (k - 1) - 1) / stride + 1;
}

// An activation argument (`name`: act, dw_act ...) as an Act, or the error the Python check
// gives.
inline Act parse_act(const char* op, c10::string_view act, const char* name = "act") {
  std::string names;
  for (int i = 0; i < kNumActs; ++i) {
    if (act == kActNames[i]) return static_cast<Act>(i);
    names += (i ? ", " : "") + std::string(kActNames[i]);
  }
  TORCH_CHECK(false, op, ": expected ", name, " in ", names, ", got '", std::string(act), "'");
}

// The depthwise stage's arguments, named `<prefix>weight` ..., on an input of x's H and W and c
// channels, which errors call c_name (dasp_kernels/_checks.py's _check_depthwise).
inline Act check_depthwise(const char* op, const at::Tensor& x, const at::Tensor& weight,
                           const at::Tensor& scale, const at::Tensor& shift, int64_t stride,
                           at::IntArrayRef padding, int64_t dilation, c10::string_view act,
                           const std::string& prefix, const char* c_name, int64_t c) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == c && weight.size(1) == 1 &&
                  weight.size(2) == weight.size(3),
              op, ": expected ", prefix, "weight of shape [", c_name, ", 1, K, K] with ", c_name,
              " = ", c, ", got ", weight.sizes());
  const int64_t k = weight.size(2);
  TORCH_CHECK(k >= 1 && k <= kDwMaxK, op, ": expected kernel size 1 <= K <= ", kDwMaxK,
              ", got K = ", k);
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == c, op, ": expected ", prefix,
              "scale of shape [", c, "], got ", scale.sizes());
  TORCH_CHECK(shift.dim() == 1 && shift.size(0) == c, op, ": expected ", prefix,
              "shift of shape [", c, "], got ", shift.sizes());
  TORCH_CHECK(stride == 1 || stride == 2, op, ": expected stride 1 or 2, got ", stride);
  TORCH_CHECK(dilation >= 1, op, ": expected dilation >= 1, got ", dilation);
  const int64_t span = dilation * (k - 1);  // the kernel's reach beyond its first tap
  bool pad_ok = padding.size() == 4;
  for (int64_t p : padding) pad_ok = pad_ok && p >= 0 && p <= span;
  TORCH_CHECK(pad_ok, op, ": expected padding [top, bottom, left, right], each 0 <= p <= ",
              "dilation * (K - 1) = ", span, ", got ", padding);
  const int64_t h = x.size(2), w = x.size(3);
  TORCH_CHECK(h + padding[0] + padding[1] > span && w + padding[2] + padding[3] > span, op,
              ": expected H + top + bottom > dilation * (K - 1) and W + left + right > ",
              "dilation * (K - 1), got H = ", h, ", W = ", w, ", padding = ", padding,
              ", dilation * (K - 1) = ", span);
  return parse_act(op, act, (prefix + "act").c_str());
}

// padding = [top, bottom, left, right].
inline Act check_dwconv_bn_act(const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& scale, const at::Tensor& shift, int64_t stride,
                               at::IntArrayRef padding, int64_t dilation, c10::string_view act) {
  const char* op = "dwconv_bn_act";
  check_rank4_floating(op, x);
  check_like_x(op, x, "weight", weight);
  check_like_x(op, x, "scale", scale);
  check_like_x(op, x, "shift", shift);
  return check_depthwise(op, x, weight, scale, shift, stride, padding, dilation, act, "", "C",
                         x.size(1));
}

// A 1x1 conv + scale/shift stage named `<prefix>weight` ... on cin input channels
// (_checks.py's _check_pointwise); returns its output channels.
inline int64_t check_pointwise(const char* op, const char* prefix, const at::Tensor& weight,
                               const at::Tensor& scale, const at::Tensor& shift, int64_t cin,
                               const char* cin_name, const char* cout_name) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == cin && weight.size(2) == 1 &&
                  weight.size(3) == 1,
              op, ": expected ", prefix, "weight of shape [", cout_name, ", ", cin_name,
              ", 1, 1] with ", cin_name, " = ", cin, ", got ", weight.sizes());
  const int64_t cout = weight.size(0);
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == cout, op, ": expected ", prefix,
              "scale of shape [", cout, "], got ", scale.sizes());
  TORCH_CHECK(shift.dim() == 1 && shift.size(0) == cout, op, ": expected ", prefix,
              "shift of shape [", cout, "], got ", shift.sizes());
  return cout;
}

// inverted_residual's three activations, in order: expansion, depthwise, projection.
struct IrActs {
  Act expand, dw, project;
};

inline bool given(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

inline IrActs check_inverted_residual(
    const at::Tensor& x, const std::optional<at::Tensor>& expand_weight,
    const std::optional<at::Tensor>& expand_scale, const std::optional<at::Tensor>& expand_shift,
    c10::string_view expand_act, const at::Tensor& dw_weight, const at::Tensor& dw_scale,
    const at::Tensor& dw_shift, int64_t stride, at::IntArrayRef padding, int64_t dilation,
    c10::string_view dw_act, const at::Tensor& project_weight, const at::Tensor& project_scale,
    const at::Tensor& project_shift, c10::string_view project_act, bool residual) {
  const char* op = "inverted_residual";
  check_rank4_floating(op, x);
  const bool ge = given(expand_weight), gs = given(expand_scale), gh = given(expand_shift);
  auto what = [](bool g) { return g ? "a tensor" : "None"; };
  TORCH_CHECK((ge && gs && gh) || (!ge && !gs && !gh), op,
              ": expected expand_weight, expand_scale and expand_shift all given or all None, "
              "got ", what(ge), ", ", what(gs), ", ", what(gh));
  if (ge) {
    check_like_x(op, x, "expand_weight", *expand_weight);
    check_like_x(op, x, "expand_scale", *expand_scale);
    check_like_x(op, x, "expand_shift", *expand_shift);
  }
  check_like_x(op, x, "dw_weight", dw_weight);
  check_like_x(op, x, "dw_scale", dw_scale);
  check_like_x(op, x, "dw_shift", dw_shift);
  check_like_x(op, x, "project_weight", project_weight);
  check_like_x(op, x, "project_scale", project_scale);
  check_like_x(op, x, "project_shift", project_shift);
  int64_t e = x.size(1);
  if (ge)
    e = check_pointwise(op, "expand_", *expand_weight, *expand_scale, *expand_shift, x.size(1),
                        "C", "E");
  IrActs acts;
  acts.expand = parse_act(op, expand_act, "expand_act");
  acts.dw = check_depthwise(op, x, dw_weight, dw_scale, dw_shift, stride, padding, dilation,
                            dw_act, "dw_", "E", e);
  check_pointwise(op, "project_", project_weight, project_scale, project_shift, e, "E", "Co");
  acts.project = parse_act(op, project_act, "project_act");
  if (residual) {
    const int64_t k = dw_weight.size(2);
    const std::vector<int64_t> out = {
        x.size(0), project_weight.size(0),
        dwconv_bn_act_out_size(x.size(2), k, stride, padding[0], padding[1], dilation),
        dwconv_bn_act_out_size(x.size(3), k, stride, padding[2], padding[3], dilation)};
    TORCH_CHECK(x.sizes() == at::IntArrayRef(out), op, ": expected an output of x's shape ",
                x.sizes(), " with residual=True, got ", at::IntArrayRef(out));
  }
  return acts;
}

// squeeze-and-excitation's gate (dasp_kernels/_checks.py's SE_GATES) and what an inverted_residual
// call's SE arguments say: on = its four tensors given.
enum class SeGate : int { sigmoid, hardsigmoid };
struct SeConf {
  bool on;
  Act act;
  SeGate gate;
};

// The SE stage on the depthwise output's e channels (dasp_kernels/_checks.py's _check_se).
inline SeConf check_inverted_residual_se(
    const at::Tensor& x, int64_t e, const std::optional<at::Tensor>& reduce_weight,
    const std::optional<at::Tensor>& reduce_bias, const std::optional<at::Tensor>& expand_weight,
    const std::optional<at::Tensor>& expand_bias, c10::string_view act, c10::string_view gate) {
  const char* op = "inverted_residual";
  const bool g[4] = {given(reduce_weight), given(reduce_bias), given(expand_weight),
                     given(expand_bias)};
  auto what = [](bool b) { return b ? "a tensor" : "None"; };
  const bool all = g[0] && g[1] && g[2] && g[3], none = !g[0] && !g[1] && !g[2] && !g[3];
  TORCH_CHECK(all || none, op, ": expected se_reduce_weight, se_reduce_bias, se_expand_weight ",
              "and se_expand_bias all given or all None, got ", what(g[0]), ", ", what(g[1]),
              ", ", what(g[2]), ", ", what(g[3]));
  SeConf c{all, parse_act(op, act, "se_act"), SeGate::sigmoid};
  TORCH_CHECK(gate == "sigmoid" || gate == "hardsigmoid", op,
              ": expected se_gate in sigmoid, hardsigmoid, got '", std::string(gate), "'");
  if (gate == "hardsigmoid") c.gate = SeGate::hardsigmoid;
  if (!all) return c;
  check_like_x(op, x, "se_reduce_weight", *reduce_weight);
  check_like_x(op, x, "se_reduce_bias", *reduce_bias);
  check_like_x(op, x, "se_expand_weight", *expand_weight);
  check_like_x(op, x, "se_expand_bias", *expand_bias);
  const at::Tensor& rw = *reduce_weight;
  TORCH_CHECK(rw.dim() == 4 && rw.size(0) >= 1 && rw.size(1) == e && rw.size(2) == 1 &&
                  rw.size(3) == 1,
              op, ": expected se_reduce_weight of shape [S, E, 1, 1] with S >= 1 and E = ", e,
              ", got ", rw.sizes());
  const int64_t sq = rw.size(0);
  TORCH_CHECK(reduce_bias->dim() == 1 && reduce_bias->size(0) == sq, op,
              ": expected se_reduce_bias of shape [", sq, "], got ", reduce_bias->sizes());
  const std::vector<int64_t> ew = {e, sq, 1, 1};
  TORCH_CHECK(expand_weight->sizes() == at::IntArrayRef(ew), op,
              ": expected se_expand_weight of shape [E, S, 1, 1] = ", at::IntArrayRef(ew),
              ", got ", expand_weight->sizes());
  TORCH_CHECK(expand_bias->dim() == 1 && expand_bias->size(0) == e, op,
              ": expected se_expand_bias of shape [", e, "], got ", expand_bias->sizes());
  return c;
}

inline void check_ppm_add(const at::Tensor& x, const at::Tensor& weight,
                          const at::Tensor& residual) {
  const char* op = "ppm_add";
  check_rank4_floating(op, x);
  check_like_x(op, x, "weight", weight);
  check_like_x(op, x, "residual", residual);
  const int64_t cin = x.size(1);
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == cin && weight.size(2) == 1 &&
                  weight.size(3) == 1,
              op, ": expected weight of shape [Cout, Cin, 1, 1] with Cin = ", cin, ", got ",
              weight.sizes());
  std::vector<int64_t> expected = {x.size(0), weight.size(0), (x.size(2) + 1) / 2,
                                   (x.size(3) + 1) / 2};
  TORCH_CHECK(residual.dim() == 4 && residual.sizes() == at::IntArrayRef(expected), op,
              ": expected residual of shape [N, Cout, ceil(H/2), ceil(W/2)] = ",
              at::IntArrayRef(expected), ", got ", residual.sizes());
}

inline void check_vector(const char* op, const char* name, const at::Tensor& t, int64_t n) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, op, ": expected ", name, " of shape [", n, "], got ",
              t.sizes());
}

// The seven weights of one DASP stage whose input has `cin` channels, in dasp_stage's order
// (dw_weight, dw_scale, dw_shift, pw_weight, pw_scale, pw_shift, ppm_weight). `where` names the
// stage in errors: "dasp_stage", or "dasp_spatial_path: stage 2". Returns its output channels.
inline int64_t check_stage_params(const char* where, const at::Tensor& x, int64_t cin,
                                  const at::Tensor* p) {
  static const char* names[7] = {"dw_weight", "dw_scale", "dw_shift", "pw_weight",
                                 "pw_scale",  "pw_shift", "ppm_weight"};
  for (int i = 0; i < 7; ++i) check_like_x(where, x, names[i], p[i]);
  const at::Tensor& dw = p[0];
  TORCH_CHECK(dw.dim() == 4 && dw.size(0) == cin && dw.size(1) == 1 && dw.size(2) == dw.size(3),
              where, ": expected dw_weight of shape [Cin, 1, K, K] with Cin = ", cin, ", got ",
              dw.sizes());
  const int64_t k = dw.size(2);
  TORCH_CHECK(k == 1 || k == 3 || k == 5 || k == 7, where,
              ": expected an odd kernel size K in 1, 3, 5, 7, got K = ", k);
  check_vector(where, "dw_scale", p[1], cin);
  check_vector(where, "dw_shift", p[2], cin);
  const at::Tensor& pw = p[3];
  TORCH_CHECK(pw.dim() == 4 && pw.size(1) == cin && pw.size(2) == 1 && pw.size(3) == 1, where,
              ": expected pw_weight of shape [Cout, Cin, 1, 1] with Cin = ", cin, ", got ",
              pw.sizes());
  const int64_t cout = pw.size(0);
  check_vector(where, "pw_scale", p[4], cout);
  check_vector(where, "pw_shift", p[5], cout);
  std::vector<int64_t> expected = {cout, cin, 1, 1};
  TORCH_CHECK(p[6].sizes() == at::IntArrayRef(expected), where, ": expected ppm_weight of shape ",
              at::IntArrayRef(expected), ", got ", p[6].sizes());
  return cout;
}

inline void check_dasp_stage(const at::Tensor& x, const at::Tensor& dw_weight,
                             const at::Tensor& dw_scale, const at::Tensor& dw_shift,
                             const at::Tensor& pw_weight, const at::Tensor& pw_scale,
                             const at::Tensor& pw_shift, const at::Tensor& ppm_weight) {
  const char* op = "dasp_stage";
  check_rank4_floating(op, x);
  const at::Tensor params[7] = {dw_weight, dw_scale, dw_shift, pw_weight,
                                pw_scale,  pw_shift, ppm_weight};
  check_stage_params(op, x, x.size(1), params);
}

// dasp_spatial_path: 7 tensors per stage, each stage checked as dasp_stage checks it, with the
// input channels of stage i + 1 being the output channels of stage i.
inline void check_dasp_spatial_path(const at::Tensor& x, at::TensorList params) {
  const char* op = "dasp_spatial_path";
  check_rank4_floating(op, x);
  const int64_t n = static_cast<int64_t>(params.size());
  TORCH_CHECK(n > 0 && n % 7 == 0, op,
              ": expected stage_params to hold 7 tensors per stage (dw_weight, dw_scale, "
              "dw_shift, pw_weight, pw_scale, pw_shift, ppm_weight), got ", n);
  int64_t cin = x.size(1);
  for (int64_t s = 0; s < n / 7; ++s) {
    const std::string where = std::string(op) + ": stage " + std::to_string(s + 1);
    cin = check_stage_params(where.c_str(), x, cin, params.data() + 7 * s);
  }
}

}  // namespace dasp_kernels
