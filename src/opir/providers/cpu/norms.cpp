// opir's CPU kernels for the RMSNorm family (the numerics of the native functions in ops/norms.py).
//
// Every kernel reads rows whose last dimension is contiguous but whose leading
// dimensions may have any strides (slices of a larger buffer are not copied),
// accumulates in fp32 with ATen's Vectorized<float>, and splits rows over
// threads with at::parallel_for. Weights are 1-D, converted once per call to
// contiguous fp32 (plus weight_bias, if any). Rounding follows the native
// functions: the multiply runs in promote_types(x, effective weight), so with
// a weight of x's dtype the normalised value is rounded to that dtype before
// the multiply, and with any other weight (or a bias) the product is rounded once;
// fp32_multiply (the contract's "multiply in fp32, round once") takes that path
// for any weight dtype.
// Invalid arguments raise ValueError (TORCH_CHECK_VALUE), as the native ops do.
//
// These are pybind functions; the torch custom ops (namespace opir_cpu) that
// wrap them for make_fx / Dynamo are defined in Python (ops.py).

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/MemoryOverlap.h>
#include <torch/library.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

namespace {

using at::BFloat16;
using at::Half;
using fVec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = fVec::size();

// ----------------------------------------------------------------------------
// Chunks of kStep = 2 * kLanes elements: one full Vectorized<BFloat16/Half>
// load or store is two Vectorized<float>. Working in whole chunks avoids
// partial-vector stores, which ATen implements through a temporary buffer.

constexpr int64_t kStep = 2 * kLanes;

template <typename T>
inline void load2(const T* p, fVec& a, fVec& b) {
  if constexpr (std::is_same_v<T, float>) {
    a = fVec::loadu(p);
    b = fVec::loadu(p + kLanes);
  } else {
    std::tie(a, b) = at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(p));
  }
}

template <typename T>
inline void store2(T* p, const fVec& a, const fVec& b) {
  if constexpr (std::is_same_v<T, float>) {
    a.store(p);
    b.store(p + kLanes);
  } else {
    // ATen's integer rounding, as torch's own fp32 -> bf16/fp16 cast. Not AVX512-BF16's
    // vcvtne2ps2bf16: it flushes fp32 subnormals to zero, torch keeps them.
    at::vec::convert_from_float<T>(a, b).store(p);
  }
}

// fp32 lanes rounded to bfloat16 precision, staying fp32: round to nearest
// even on the upper 16 bits with integer ops (no pack/unpack); NaN kept.
inline fVec round_bf16(const fVec& v) {
  using iVec = at::vec::Vectorized<int32_t>;
  const iVec bits = at::vec::cast<int32_t>(v);
  const iVec lsb = (bits >> iVec(16)) & iVec(1);
  const iVec rounded = (bits + iVec(0x7FFF) + lsb) & iVec(static_cast<int32_t>(0xFFFF0000u));
  return fVec::blendv(at::vec::cast<float>(rounded), v, v.isnan());
}

// Round every lane to T and back: "y.to(T)" inside an fp32 computation.
template <typename T>
inline void round2(fVec& a, fVec& b) {
  if constexpr (std::is_same_v<T, BFloat16>) {
    a = round_bf16(a);
    b = round_bf16(b);
  } else if constexpr (!std::is_same_v<T, float>) {
    std::tie(a, b) = at::vec::convert_to_float<T>(at::vec::convert_from_float<T>(a, b));
  }
}

template <typename T>
inline float round_to(float v) {
  return static_cast<float>(static_cast<T>(v));
}

inline fVec silu(const fVec& v) {
  return v / (fVec(1.0f) + v.neg().exp_u20());
}

inline float silu(float v) {
  return v / (1.0f + std::exp(-v));
}

// ----------------------------------------------------------------------------
// Row addressing: offset (in elements) of row r of a tensor viewed as [rows, H].

struct Rows {
  int64_t count = 0;
  int64_t cols = 0;
  int64_t uniform_stride = -1;  // >= 0 when leading dims collapse to one stride
  std::vector<int64_t> sizes, strides;  // leading dims, outermost first

  explicit Rows(const at::Tensor& t) {
    cols = t.size(-1);
    count = cols == 0 ? 0 : t.numel() / cols;
    for (int64_t d = 0; d + 1 < t.dim(); ++d) {
      if (t.size(d) != 1) {
        sizes.push_back(t.size(d));
        strides.push_back(t.stride(d));
      }
    }
    if (sizes.empty()) {
      uniform_stride = cols;
    } else {
      bool collapsible = true;
      for (size_t d = 0; d + 1 < sizes.size(); ++d) {
        collapsible &= strides[d] == strides[d + 1] * sizes[d + 1];
      }
      if (collapsible) uniform_stride = strides.back();
    }
  }

  int64_t offset(int64_t r) const {
    if (uniform_stride >= 0) return r * uniform_stride;
    int64_t off = 0;
    for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
      off += (r % sizes[d]) * strides[d];
      r /= sizes[d];
    }
    return off;
  }
};

// ----------------------------------------------------------------------------
// Overlap checks for the in-place kernel (cheap: a few strides, no allocation).

// True when no two elements of t share memory (sufficient test: sorted by stride,
// each dim must step past everything the smaller dims reach).
inline bool no_internal_overlap(const at::Tensor& t) {
  if (t.is_contiguous()) return true;
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size) of dims with size > 1
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) > 1) dims.emplace_back(t.stride(d), t.size(d));
  }
  std::sort(dims.begin(), dims.end());
  int64_t reach = 0;  // the largest offset the smaller dims address
  for (const auto& [stride, size] : dims) {
    if (stride <= reach) return false;
    reach += stride * (size - 1);
  }
  return true;
}

// The bytes [first, last) that t may touch.
inline std::pair<uintptr_t, uintptr_t> byte_extent(const at::Tensor& t) {
  int64_t span = 1;
  for (int64_t d = 0; d < t.dim(); ++d) span += t.stride(d) * (t.size(d) - 1);
  auto first = reinterpret_cast<uintptr_t>(t.data_ptr());
  return {first, first + static_cast<uintptr_t>(span * t.element_size())};
}

// Conservative: true when the byte extents of a and b intersect. By address, not
// by storage: two storages can hold one memory (torch.from_numpy twice on one
// array, torch.frombuffer), and every tensor here is on the CPU.
inline bool may_overlap(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  auto [a0, a1] = byte_extent(a);
  auto [b0, b1] = byte_extent(b);
  return a0 < b1 && b0 < a1;
}

inline int64_t grain_for(int64_t cols) {
  // Enough work per task that threads do not fight over tiny rows.
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1));
}

// ----------------------------------------------------------------------------
// Shared row pieces.

// Sum of squares of the first n values of row, in fp32 (any T).
template <typename T>
inline float sum_squares(const T* row, int64_t n) {
  fVec acc_a(0.0f), acc_b(0.0f), a, b;
  int64_t j = 0;
  for (; j + kStep <= n; j += kStep) {
    load2(row + j, a, b);
    acc_a = at::vec::fmadd(a, a, acc_a);
    acc_b = at::vec::fmadd(b, b, acc_b);
  }
  float s = at::vec::vec_reduce_all<float>(
      [](fVec& x, fVec& y) { return x + y; }, acc_a + acc_b);
  for (; j < n; ++j) {
    float v = static_cast<float>(row[j]);
    s += v * v;
  }
  return s;
}

// out[j] = ((y[j] * inv).to(W) * w[j]).to(T), or (y[j] * inv).to(T) without weight.
// Y is the type of the unnormalised values (x's dtype, or float for scratch);
// w holds the weight's values as fp32 (exact for any W), W its real dtype.
template <typename T, typename W, typename Y>
inline void scale_row(const Y* y, float inv, const float* w, T* out, int64_t n) {
  const fVec vinv(inv);
  fVec a, b, wa, wb;
  int64_t j = 0;
  for (; j + kStep <= n; j += kStep) {
    load2(y + j, a, b);
    a = a * vinv;
    b = b * vinv;
    if (w != nullptr) {
      round2<W>(a, b);
      load2(w + j, wa, wb);
      a = a * wa;
      b = b * wb;
    }
    store2(out + j, a, b);
  }
  for (; j < n; ++j) {
    float v = static_cast<float>(y[j]) * inv;
    if (w != nullptr) v = round_to<W>(v) * w[j];
    out[j] = static_cast<T>(v);
  }
}

// ----------------------------------------------------------------------------
// Argument checks: inputs no provider can run get a clear error here (the Python
// predicates only reject what another provider could still run).

void check_common(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                  std::optional<int64_t> variance_size, const char* op) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": x must be on the CPU, got ", x.device());
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have at least one dimension");
  auto dt = x.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op,
              ": x must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK_VALUE(x.size(-1) <= 1 || x.stride(-1) == 1, op,
              ": the last dimension of x must be contiguous (stride 1), got stride ", x.stride(-1));
  if (weight.has_value()) {
    const auto& w = *weight;
    TORCH_CHECK_VALUE(w.device().is_cpu(), op, ": weight must be on the CPU, got ", w.device());
    TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == x.size(-1), op, ": weight must have shape [",
                x.size(-1), "], got ", w.sizes());
    TORCH_CHECK_VALUE(w.is_floating_point(), op, ": weight must be floating point, got ",
                w.scalar_type());
  }
  if (variance_size.has_value()) {
    TORCH_CHECK_VALUE(*variance_size >= 1 && *variance_size <= x.size(-1), op,
                ": variance_size must be in [1, ", x.size(-1), "], got ", *variance_size);
  }
}

// Calls f.template operator()<T, W>() for x's dtype T and the weight's dtype W.
template <typename F>
void dispatch_types(const at::Tensor& x, const std::optional<at::Tensor>& weight, F&& f,
                    double weight_bias = 0.0, bool fp32_multiply = false) {
  // promote_types(x, effective weight): x's dtype only when the weight has it and
  // no bias turns it into an fp32 tensor; otherwise the multiply runs in fp32.
  bool fp32_weight = weight.has_value() && (weight->scalar_type() != x.scalar_type() ||
                                            weight_bias != 0.0 || fp32_multiply);
  switch (x.scalar_type()) {
    case at::kFloat:
      return f.template operator()<float, float>();
    case at::kBFloat16:
      return fp32_weight ? f.template operator()<BFloat16, float>()
                         : f.template operator()<BFloat16, BFloat16>();
    case at::kHalf:
      return fp32_weight ? f.template operator()<Half, float>()
                         : f.template operator()<Half, Half>();
    default:
      TORCH_CHECK(false, "unsupported dtype ", x.scalar_type());
  }
}

// The weight is only H values: it is converted once per call to contiguous
// fp32 (exact for bf16/fp16), so the row loops never convert or stride it.
// The kernels still round through the weight's real dtype W where the
// contract multiplies in W.
std::optional<at::Tensor> fp32_weight(const std::optional<at::Tensor>& weight,
                                      double weight_bias = 0.0) {
  if (!weight.has_value()) return weight;
  auto w = weight->to(at::kFloat).contiguous();
  if (weight_bias == 0.0) return w;
  // The effective weight f32(weight) + bias, per call; never written into the caller's.
  return w.is_same(*weight) ? w.add(weight_bias) : w.add_(weight_bias);
}

inline const float* weight_ptr(const std::optional<at::Tensor>& weight) {
  return weight.has_value() ? weight->data_ptr<float>() : nullptr;
}

// ----------------------------------------------------------------------------
// rms_norm(x, weight?, eps, variance_size?) -> out (contiguous, x's dtype)

at::Tensor rms_norm(const at::Tensor& x, const std::optional<at::Tensor>& weight_in,
                    double epsilon, std::optional<int64_t> variance_size,
                    double weight_bias, bool fp32_multiply) {
  check_common(x, weight_in, variance_size, "opir_cpu::rms_norm");
  const auto weight = fp32_weight(weight_in, weight_bias);
  auto out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const Rows rows(x);
  const int64_t cols = rows.cols;
  const int64_t vs = variance_size.value_or(cols);
  const float eps = static_cast<float>(epsilon);
  dispatch_types(x, weight_in, [&]<typename T, typename W>() {
    const T* xp = x.data_ptr<T>();
    T* op = out.data_ptr<T>();
    const float* wp = weight_ptr(weight);
    at::parallel_for(0, rows.count, grain_for(cols), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = xp + rows.offset(r);
        float inv = 1.0f / std::sqrt(sum_squares(xr, vs) / static_cast<float>(vs) + eps);
        scale_row<T, W>(xr, inv, wp, op + r * cols, cols);
      }
    });
  }, weight_bias, fp32_multiply);
  return out;
}

// ----------------------------------------------------------------------------
// fused_add_rms_norm_(x, residual, weight?, eps, variance_size?): in place.
// residual <- (x + residual).to(T); x <- rms_norm(unrounded fp32 sum).

bool fused_add_rms_norm_(at::Tensor& x, at::Tensor& residual,
                         const std::optional<at::Tensor>& weight_in, double epsilon,
                         std::optional<int64_t> variance_size, double weight_bias,
                         bool fp32_multiply) {
  const char* op = "opir_cpu::fused_add_rms_norm_";
  check_common(x, weight_in, variance_size, op);
  TORCH_CHECK_VALUE(residual.sizes() == x.sizes() && residual.scalar_type() == x.scalar_type(), op,
              ": residual must match x's shape and dtype, got ", residual.sizes(), " ",
              residual.scalar_type(), " vs ", x.sizes(), " ", x.scalar_type());
  TORCH_CHECK_VALUE(residual.device().is_cpu(), op, ": residual must be on the CPU");
  TORCH_CHECK_VALUE(x.size(-1) <= 1 || residual.stride(-1) == 1, op,
              ": the last dimension of residual must be contiguous");
  // Overlapping outputs cannot be written in place correctly: report it, write
  // nothing, and let the caller run on private copies (impls.py).
  if (x.numel() > 0 && (!no_internal_overlap(x) || !no_internal_overlap(residual) ||
                        may_overlap(x, residual))) {
    return false;
  }
  // fp32_weight() does not copy an fp32 weight; one that is a view of x or the
  // residual would be overwritten by earlier rows, so take a private copy then.
  auto weight = fp32_weight(weight_in, weight_bias);
  if (weight.has_value() && weight->is_same(*weight_in) &&
      (may_overlap(*weight, x) || may_overlap(*weight, residual))) {
    weight = weight->clone();
  }
  const Rows xrows(x), rrows(residual);
  const int64_t cols = xrows.cols;
  const int64_t vs = variance_size.value_or(cols);
  const float eps = static_cast<float>(epsilon);
  dispatch_types(x, weight_in, [&]<typename T, typename W>() {
    T* xp = x.data_ptr<T>();
    T* rp = residual.data_ptr<T>();
    const float* wp = weight_ptr(weight);
    at::parallel_for(0, xrows.count, grain_for(cols), [&](int64_t begin, int64_t end) {
      std::vector<float> sum(cols);  // the unrounded fp32 sum of one row
      for (int64_t r = begin; r < end; ++r) {
        T* xr = xp + xrows.offset(r);
        T* rr = rp + rrows.offset(r);
        fVec xa, xb, ra, rb;
        int64_t j = 0;
        for (; j + kStep <= cols; j += kStep) {
          load2(xr + j, xa, xb);
          load2(rr + j, ra, rb);
          xa = xa + ra;
          xb = xb + rb;
          store2(sum.data() + j, xa, xb);
          store2(rr + j, xa, xb);
        }
        for (; j < cols; ++j) {
          float s = static_cast<float>(xr[j]) + static_cast<float>(rr[j]);
          sum[j] = s;
          rr[j] = static_cast<T>(s);
        }
        float inv = 1.0f / std::sqrt(sum_squares(sum.data(), vs) / static_cast<float>(vs) + eps);
        scale_row<T, W>(sum.data(), inv, wp, xr, cols);
      }
    });
  }, weight_bias, fp32_multiply);
  return true;
}

// ----------------------------------------------------------------------------
// rms_norm_gated(x, gate, weight?, eps, group_size?, norm_before_gate) -> out
//   gate then norm:  y = x * silu(gate); out = (rms_g(y) * y).to(W) * w
//   norm before gate: out = ((rms_g(x) * x).to(W) * w) * silu(gate)
// rms_g is taken per group of group_size columns (whole row when absent).

// gate may be absent (plain grouped norm) or of any float dtype: a gate whose
// dtype differs from x's is converted once to fp32 (exact for bf16/fp16), so
// the row loops read either x's dtype T or float.
at::Tensor rms_norm_gated(const at::Tensor& x, const std::optional<at::Tensor>& gate_in,
                          const std::optional<at::Tensor>& weight_in, double epsilon,
                          std::optional<int64_t> group_size, bool norm_before_gate,
                          bool fp32_multiply) {
  const char* op = "opir_cpu::rms_norm_gated";
  check_common(x, weight_in, std::nullopt, op);
  const auto weight = fp32_weight(weight_in);
  at::Tensor gate;
  if (gate_in.has_value()) {
    gate = *gate_in;
    TORCH_CHECK_VALUE(gate.sizes() == x.sizes() && gate.is_floating_point(), op,
                ": gate must be a floating-point tensor of x's shape, got ", gate.sizes(), " ",
                gate.scalar_type(), " vs ", x.sizes());
    TORCH_CHECK_VALUE(gate.device().is_cpu(), op, ": gate must be on the CPU");
    if (gate.scalar_type() != x.scalar_type()) {
      TORCH_CHECK_VALUE(gate.scalar_type() == at::kFloat || gate.scalar_type() == at::kBFloat16 ||
                      gate.scalar_type() == at::kHalf,
                  op, ": gate must be float32, bfloat16 or float16, got ", gate.scalar_type());
      gate = gate.to(at::kFloat).contiguous();
    }
    TORCH_CHECK_VALUE(x.size(-1) <= 1 || gate.stride(-1) == 1, op,
                ": the last dimension of gate must be contiguous");
  }
  const bool has_gate = gate.defined();
  const bool fp32_gate = has_gate && gate.scalar_type() != x.scalar_type();
  const int64_t cols = x.size(-1);
  const int64_t group = group_size.value_or(cols);
  TORCH_CHECK_VALUE(!group_size.has_value() || (group >= 1 && group <= cols && cols % group == 0),
              op, ": group_size must be a divisor of ", cols, " (x's last dim), got ", group);
  auto out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const Rows xrows(x);
  const Rows grows(has_gate ? gate : x);
  const float eps = static_cast<float>(epsilon);
  dispatch_types(x, weight_in, [&]<typename T, typename W>() {
    auto run = [&]<typename G>() {
      const T* xp = x.data_ptr<T>();
      const G* gp = has_gate ? gate.data_ptr<G>() : nullptr;
      T* op_ = out.data_ptr<T>();
      const float* wp = weight_ptr(weight);
      at::parallel_for(0, xrows.count, grain_for(cols), [&](int64_t begin, int64_t end) {
        std::vector<float> y(cols);
        for (int64_t r = begin; r < end; ++r) {
          const T* xr = xp + xrows.offset(r);
          T* orow = op_ + r * cols;
          if (gp == nullptr) {  // no gate: the grouped norm of x
            for (int64_t g0 = 0; g0 < cols; g0 += group) {
              float inv = 1.0f / std::sqrt(sum_squares(xr + g0, group) / group + eps);
              scale_row<T, W>(xr + g0, inv, wp ? wp + g0 : nullptr, orow + g0, group);
            }
            continue;
          }
          const G* gr = gp + grows.offset(r);
          if (!norm_before_gate) {
            fVec xa, xb, ga, gb;
            int64_t j = 0;
            for (; j + kStep <= cols; j += kStep) {
              load2(xr + j, xa, xb);
              load2(gr + j, ga, gb);
              store2(y.data() + j, xa * silu(ga), xb * silu(gb));
            }
            for (; j < cols; ++j) {
              y[j] = static_cast<float>(xr[j]) * silu(static_cast<float>(gr[j]));
            }
            for (int64_t g0 = 0; g0 < cols; g0 += group) {
              float inv = 1.0f / std::sqrt(sum_squares(y.data() + g0, group) / group + eps);
              scale_row<T, W>(y.data() + g0, inv, wp ? wp + g0 : nullptr, orow + g0, group);
            }
          } else {
            for (int64_t g0 = 0; g0 < cols; g0 += group) {
              float inv = 1.0f / std::sqrt(sum_squares(xr + g0, group) / group + eps);
              // y = (x * inv).to(W) * w, kept in fp32 for now
              scale_row<float, W>(xr + g0, inv, wp ? wp + g0 : nullptr, y.data() + g0, group);
            }
            // "(n.to(W) * w)" is a W tensor: round the product to W, then gate in fp32.
            fVec va, vb, ga, gb;
            int64_t j = 0;
            for (; j + kStep <= cols; j += kStep) {
              load2(y.data() + j, va, vb);
              if (wp != nullptr) round2<W>(va, vb);
              load2(gr + j, ga, gb);
              store2(orow + j, va * silu(ga), vb * silu(gb));
            }
            for (; j < cols; ++j) {
              float v = wp != nullptr ? round_to<W>(y[j]) : y[j];
              orow[j] = static_cast<T>(v * silu(static_cast<float>(gr[j])));
            }
          }
        }
      });
    };
    if (fp32_gate) {
      run.template operator()<float>();
    } else {
      run.template operator()<T>();
    }
  }, 0.0, fp32_multiply);
  return out;
}

}  // namespace

// The torch.ops.opir_cpu schemas are defined from Python (providers/cpu/ops.py)
// so they exist before this library is loaded (Inductor's cached code calls them).

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rms_norm", &rms_norm);
  m.def("fused_add_rms_norm_", &fused_add_rms_norm_);
  m.def("rms_norm_gated", &rms_norm_gated);
}
