// opir's CPU kernels for the gated-MLP activation family (ops/activations.py).
//
// Contract (the native functions): the activation is computed in fp64 and
// converted to x's dtype T as torch converts (fp64 -> fp32 -> T); the product
// act * up is computed in T (an exact fp32 product, rounded once).
//
// How the kernels match it bit for bit in bf16 and fp16:
//  * silu / gelu / gelu-tanh of a 16-bit input have only 65536 possible
//    arguments. The first call per (activation, dtype) builds a table of all of
//    them with the native formula itself (ATen's fp64 silu/gelu, or the native's
//    gelu-tanh op sequence, on every bit pattern, converted to T and stored as
//    fp32, 256 KiB); the row loop then
//    looks the activation up and multiplies in fp32. No error analysis, no
//    fallback: the table *is* the native function.
//  * swigluoai's activation g * sigmoid(alpha * g) depends on alpha and limit,
//    so it is computed in fp32 with ATen's Vectorized math; a lane whose fp32
//    result lies within the formula's error bound of a rounding boundary of T
//    is recomputed in fp64 (scalar std::exp). The bound is 8 + 4|alpha*g| fp32
//    ulps (the exp argument's rounding error grows with it); `fallback_lanes()`
//    counts the recomputed lanes.
//  * fatrelu has no transcendental; gelu_and_mul_sparse computes its per-row
//    statistics in fp64, rounds relu(gate - cutoff) to T, and looks up GELU.
// In fp32 the activation is computed in fp32 (silu and gelu-tanh through
// exp_u20, gelu through erfc) and held to the op's fp32 tolerance.
//
// Rows: any leading dims with any strides, last dim contiguous; nothing is
// copied. Outputs are new contiguous tensors. Rows are split over threads with
// at::parallel_for. Invalid arguments raise ValueError (TORCH_CHECK_VALUE).
// The torch custom ops (namespace opir_cpu) that wrap these pybind functions
// are defined in Python (activation_impls.py).

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/extension.h>

#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace {

using at::BFloat16;
using at::Half;
using fVec = at::vec::Vectorized<float>;
using iVec = at::vec::Vectorized<int32_t>;
constexpr int64_t kLanes = fVec::size();
constexpr int64_t kStep = 2 * kLanes;  // one Vectorized<BFloat16/Half> = two fVec

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
    // Not AVX512-BF16's vcvtne2ps2bf16: it flushes subnormals to zero, torch does not.
    at::vec::convert_from_float<T>(a, b).store(p);
  }
}

// Round every lane to T and back (T's round to nearest even), staying fp32.
template <typename T>
inline void round2(fVec& a, fVec& b) {
  if constexpr (!std::is_same_v<T, float>) {
    std::tie(a, b) = at::vec::convert_to_float<T>(at::vec::convert_from_float<T>(a, b));
  }
}

template <typename T>
inline float round_to(double v) {  // fp64 -> fp32 -> T, as torch's .to(T) converts
  return static_cast<float>(static_cast<T>(static_cast<float>(v)));
}

// ----------------------------------------------------------------------------
// Row addressing: offset (in elements) of row r of a tensor viewed as [rows, C].

struct Rows {
  int64_t count = 0;
  int64_t uniform_stride = -1;  // >= 0 when the leading dims collapse to one stride
  std::vector<int64_t> sizes, strides;

  explicit Rows(const at::Tensor& t) {
    int64_t cols = t.size(-1);
    count = 1;
    for (int64_t d = 0; d + 1 < t.dim(); ++d) count *= t.size(d);
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

inline int64_t grain_for(int64_t cols) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(cols, 1));
}

// ----------------------------------------------------------------------------
// Activations.

enum Act : int { kSilu = 0, kGelu = 1, kGeluTanh = 2 };

Act gelu_kind(const std::string& approximate, const char* op) {
  TORCH_CHECK_VALUE(approximate == "none" || approximate == "tanh", op,
                    ": approximate must be one of ('none', 'tanh') (GELU erf or tanh), got '",
                    approximate, "'");
  return approximate == "none" ? kGelu : kGeluTanh;
}

// GELU-tanh in fp64 as the native (ops/activations.py gelu_tanh_f64) computes it, op
// for op: g / (1 + exp(-2y)), y = sqrt(2/pi) (g + 0.044715 g^3). Not at::gelu(g, "tanh"):
// its 0.5 g (1 + tanh y) cancels for g below about -5, and ATen's vector and scalar
// fp64 tanh disagree there.
at::Tensor gelu_tanh_f64(const at::Tensor& g) {
  at::Tensor cube = g * 0.044715;
  cube = cube * g;
  cube = cube * g;
  at::Tensor y = (g + cube) * 0.7978845608028654;
  return g / (at::exp(y * -2.0) + 1.0);
}

// The table of a 16-bit dtype: entry b is float(T(act_fp64(value with bits b))),
// built once by ATen's fp64 kernels, i.e. by the native function's own formula.
template <typename T>
const float* act_table(Act act) {
  static std::array<std::once_flag, 3> once;
  static std::array<std::unique_ptr<float[]>, 3> tables;
  std::call_once(once[act], [act] {
    auto dtype = std::is_same_v<T, BFloat16> ? at::kBFloat16 : at::kHalf;
    auto bits = at::arange(65536, at::kInt).to(at::kShort);  // wraps to every 16-bit pattern
    auto g = bits.view(dtype).to(at::kDouble);
    at::Tensor a = act == kSilu   ? at::silu(g)
                   : act == kGelu ? at::gelu(g, "none")
                                  : gelu_tanh_f64(g);
    auto values = a.to(dtype).to(at::kFloat).contiguous();
    auto table = std::make_unique<float[]>(65536);
    std::memcpy(table.get(), values.template data_ptr<float>(), 65536 * sizeof(float));
    tables[act] = std::move(table);
  });
  return tables[act].get();
}

constexpr float kSqrt1_2 = 0.70710678118654752440f;
constexpr float kBeta2 = 2.0f * 0.79788456080286535588f;  // 2 * sqrt(2 / pi)
constexpr float kKappa = 0.044715f;

// fp32 activations (the fp32 dtype's path). gelu-tanh as x * sigmoid(2u), which
// equals 0.5 x (1 + tanh u) without tanh's cancellation for negative u.
template <int A>
inline fVec act_vec(const fVec& v) {
  if constexpr (A == kSilu) {
    return v / (fVec(1.0f) + v.neg().exp_u20());
  } else if constexpr (A == kGelu) {
    // 0.5 x erfc(-x / sqrt 2): no cancellation in 1 + erf(.) for negative x.
    return v * fVec(0.5f) * (v * fVec(-kSqrt1_2)).erfc();
  } else {
    fVec u2 = v * fVec(kBeta2) * (fVec(1.0f) + fVec(kKappa) * v * v);
    return v / (fVec(1.0f) + u2.neg().exp_u20());
  }
}

// ----------------------------------------------------------------------------
// Row loops. `a` holds the activation's argument, `m` the other factor.

// 16-bit: the activation from the table, times m, rounded once to T.
template <typename T>
inline void table_row(const T* a, const T* m, T* o, int64_t d, const float* table) {
  const auto* bits = reinterpret_cast<const uint16_t*>(a);
  alignas(64) float act[kStep];
  int64_t j = 0;
  for (; j + kStep <= d; j += kStep) {
    for (int64_t k = 0; k < kStep; ++k) act[k] = table[bits[j + k]];
    fVec m0, m1;
    load2(m + j, m0, m1);
    store2(o + j, fVec::loadu(act) * m0, fVec::loadu(act + kLanes) * m1);
  }
  for (; j < d; ++j) o[j] = static_cast<T>(table[bits[j]] * static_cast<float>(m[j]));
}

template <int A>
inline void fp32_row(const float* a, const float* m, float* o, int64_t d) {
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes) {
    (act_vec<A>(fVec::loadu(a + j)) * fVec::loadu(m + j)).store(o + j);
  }
  if (j < d) {
    int n = static_cast<int>(d - j);
    (act_vec<A>(fVec::loadu(a + j, n)) * fVec::loadu(m + j, n)).store(o + j, n);
  }
}

template <typename T>
inline void act_mul_row(const T* a, const T* m, T* o, int64_t d, int act, const float* table) {
  if constexpr (std::is_same_v<T, float>) {
    if (act == kSilu) return fp32_row<kSilu>(a, m, o, d);
    if (act == kGelu) return fp32_row<kGelu>(a, m, o, d);
    return fp32_row<kGeluTanh>(a, m, o, d);
  } else {
    table_row(a, m, o, d, table);
  }
}

// ----------------------------------------------------------------------------
// Checks and dispatch.

void check_x(const at::Tensor& x, const char* op, bool merged = true) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": x must be on the CPU, got ", x.device());
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have at least one dimension ([..., 2 * d])");
  auto dt = x.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op,
                    ": x must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK_VALUE(x.size(-1) <= 1 || x.stride(-1) == 1, op,
                    ": the last dimension of x must be contiguous (stride 1), got stride ",
                    x.stride(-1), "; pass x.contiguous()");
  if (merged) {
    TORCH_CHECK_VALUE(x.size(-1) % 2 == 0, op,
                      ": x's last dim must be even (gate and up halves of d each), got ",
                      x.size(-1), "; pass x of shape [..., 2 * d]");
  }
}

template <typename F>
void dispatch(at::ScalarType dt, F&& f) {
  switch (dt) {
    case at::kFloat:
      return f.template operator()<float>();
    case at::kBFloat16:
      return f.template operator()<BFloat16>();
    case at::kHalf:
      return f.template operator()<Half>();
    default:
      TORCH_CHECK(false, "unsupported dtype ", dt);
  }
}

// Outputs of a few MiB and more come from fresh mmap'd memory whose first touch
// page-faults every 4 KiB: measured 50 ms for a 64 MiB output on this machine,
// more than the kernel itself. Asking for transparent huge pages on the
// 2 MiB-aligned interior cuts the faults 512-fold (about 15 ms); failure (no
// THP, another OS) only loses the speed-up. The memory is the caller's tensor,
// written in full by the kernel, so nothing is over-committed.
void advise_huge_pages(const at::Tensor& out) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  const size_t bytes = out.nbytes();
  if (bytes < (size_t{4} << 20)) return;
  const auto p = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t first = (p + kHuge - 1) & ~(kHuge - 1), last = (p + bytes) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
}

at::Tensor empty_out(const at::Tensor& x, int64_t d) {
  auto sizes = x.sizes().vec();
  sizes.back() = d;
  auto out = at::empty(sizes, x.options().memory_format(at::MemoryFormat::Contiguous));
  advise_huge_pages(out);
  return out;
}

// Shared by the merged ops: act on the first half (or the second, act_first=false).
at::Tensor merged_act_mul(const at::Tensor& x, int act, bool act_first, const char* op) {
  check_x(x, op);
  int64_t d = x.size(-1) / 2;
  auto out = empty_out(x, d);
  Rows rows(x);
  if (rows.count == 0 || d == 0) return out;
  dispatch(x.scalar_type(), [&]<typename T>() {
    const float* table = nullptr;
    if constexpr (!std::is_same_v<T, float>) table = act_table<T>(static_cast<Act>(act));
    const T* xp = x.const_data_ptr<T>();
    T* op_ = out.data_ptr<T>();
    int64_t a_off = act_first ? 0 : d, m_off = act_first ? d : 0;
    at::parallel_for(0, rows.count, grain_for(d), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* row = xp + rows.offset(r);
        act_mul_row<T>(row + a_off, row + m_off, op_ + r * d, d, act, table);
      }
    });
  });
  return out;
}

at::Tensor silu_and_mul(const at::Tensor& x) {
  return merged_act_mul(x, kSilu, true, "silu_and_mul");
}

at::Tensor mul_and_silu(const at::Tensor& x) {
  return merged_act_mul(x, kSilu, false, "mul_and_silu");
}

at::Tensor gelu_and_mul(const at::Tensor& x, const std::string& approximate) {
  return merged_act_mul(x, gelu_kind(approximate, "gelu_and_mul"), true, "gelu_and_mul");
}

// Separate gate and up tensors (Hugging Face MLPs).
at::Tensor separate_act_mul(const at::Tensor& gate, const at::Tensor& up, int act,
                            const char* op) {
  check_x(gate, op, false);
  TORCH_CHECK_VALUE(gate.sizes() == up.sizes() && gate.scalar_type() == up.scalar_type() &&
                        up.device() == gate.device(),
                    op, ": gate and up must have the same shape, dtype and device; got ",
                    gate.sizes(), " ", gate.scalar_type(), " vs ", up.sizes(), " ",
                    up.scalar_type(), " ", up.device());
  TORCH_CHECK_VALUE(up.size(-1) <= 1 || up.stride(-1) == 1, op,
                    ": the last dimension of up must be contiguous (stride 1), got stride ",
                    up.stride(-1), "; pass up.contiguous()");
  int64_t d = gate.size(-1);
  auto out = empty_out(gate, d);
  Rows grows(gate), urows(up);
  if (grows.count == 0 || d == 0) return out;
  dispatch(gate.scalar_type(), [&]<typename T>() {
    const float* table = nullptr;
    if constexpr (!std::is_same_v<T, float>) table = act_table<T>(static_cast<Act>(act));
    const T* gp = gate.const_data_ptr<T>();
    const T* upp = up.const_data_ptr<T>();
    T* op_ = out.data_ptr<T>();
    at::parallel_for(0, grows.count, grain_for(d), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        act_mul_row<T>(gp + grows.offset(r), upp + urows.offset(r), op_ + r * d, d, act, table);
      }
    });
  });
  return out;
}

at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up) {
  return separate_act_mul(gate, up, kSilu, "silu_mul");
}

at::Tensor gelu_mul(const at::Tensor& gate, const at::Tensor& up,
                    const std::string& approximate) {
  return separate_act_mul(gate, up, gelu_kind(approximate, "gelu_mul"), "gelu_mul");
}

// ----------------------------------------------------------------------------
// fatrelu_and_mul: (g > threshold ? g : 0) * up. For an fp32 g, "g > threshold"
// (exact, fp64) equals "g > t" with t the largest float <= threshold.

float float_floor(double threshold) {
  float t = static_cast<float>(threshold);
  if (static_cast<double>(t) > threshold) t = std::nextafter(t, -INFINITY);
  return t;
}

at::Tensor fatrelu_and_mul(const at::Tensor& x, double threshold) {
  check_x(x, "fatrelu_and_mul");
  int64_t d = x.size(-1) / 2;
  auto out = empty_out(x, d);
  Rows rows(x);
  if (rows.count == 0 || d == 0) return out;
  const float t = float_floor(threshold);
  dispatch(x.scalar_type(), [&]<typename T>() {
    const T* xp = x.const_data_ptr<T>();
    T* op_ = out.data_ptr<T>();
    at::parallel_for(0, rows.count, grain_for(d), [&](int64_t begin, int64_t end) {
      const fVec tv(t), zero(0.0f);
      for (int64_t r = begin; r < end; ++r) {
        const T* g = xp + rows.offset(r);
        const T* u = g + d;
        T* o = op_ + r * d;
        int64_t j = 0;
        for (; j + kStep <= d; j += kStep) {
          fVec g0, g1, u0, u1;
          load2(g + j, g0, g1);
          load2(u + j, u0, u1);
          g0 = fVec::blendv(zero, g0, g0 > tv);
          g1 = fVec::blendv(zero, g1, g1 > tv);
          store2(o + j, g0 * u0, g1 * u1);
        }
        for (; j < d; ++j) {
          float gv = static_cast<float>(g[j]);
          o[j] = static_cast<T>((gv > t ? gv : 0.0f) * static_cast<float>(u[j]));
        }
      }
    });
  });
  return out;
}

// ----------------------------------------------------------------------------
// gelu_and_mul_sparse: per row, cutoff = mean + std * k (fp64, population std);
// s = T(relu(g - cutoff)); out = T(gelu(s)) * up.

template <typename T>
double row_mean(const T* g, int64_t d) {
  double acc[4] = {0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 4 <= d; j += 4) {
    for (int k = 0; k < 4; ++k) acc[k] += static_cast<double>(static_cast<float>(g[j + k]));
  }
  for (; j < d; ++j) acc[0] += static_cast<double>(static_cast<float>(g[j]));
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) / static_cast<double>(d);
}

template <typename T>
double row_std(const T* g, int64_t d, double mean) {
  double acc[4] = {0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 4 <= d; j += 4) {
    for (int k = 0; k < 4; ++k) {
      double v = static_cast<double>(static_cast<float>(g[j + k])) - mean;
      acc[k] += v * v;
    }
  }
  for (; j < d; ++j) {
    double v = static_cast<double>(static_cast<float>(g[j])) - mean;
    acc[0] += v * v;
  }
  return std::sqrt(((acc[0] + acc[1]) + (acc[2] + acc[3])) / static_cast<double>(d));
}

at::Tensor gelu_and_mul_sparse(const at::Tensor& x, double std_multiplier,
                               const std::string& approximate) {
  const char* op = "gelu_and_mul_sparse";
  check_x(x, op);
  int act = gelu_kind(approximate, op);
  int64_t d = x.size(-1) / 2;
  auto out = empty_out(x, d);
  Rows rows(x);
  if (rows.count == 0 || d == 0) return out;
  dispatch(x.scalar_type(), [&]<typename T>() {
    const float* table = nullptr;
    if constexpr (!std::is_same_v<T, float>) table = act_table<T>(static_cast<Act>(act));
    const T* xp = x.const_data_ptr<T>();
    T* op_ = out.data_ptr<T>();
    at::parallel_for(0, rows.count, grain_for(d), [&](int64_t begin, int64_t end) {
      std::vector<T> shifted(d);
      for (int64_t r = begin; r < end; ++r) {
        const T* g = xp + rows.offset(r);
        double mean = row_mean(g, d);
        double cutoff = mean + row_std(g, d, mean) * std_multiplier;
        for (int64_t j = 0; j < d; ++j) {
          double v = static_cast<double>(static_cast<float>(g[j])) - cutoff;
          // relu keeps NaN; torch converts fp64 -> fp32 -> T.
          shifted[j] = static_cast<T>(static_cast<float>(v > 0.0 || v != v ? v : 0.0));
        }
        act_mul_row<T>(shifted.data(), g + d, op_ + r * d, d, act, table);
      }
    });
  });
  return out;
}

// ----------------------------------------------------------------------------
// swigluoai_and_mul: interleaved gate/up; g = min(gate, limit);
// glu = T(g * sigmoid(alpha * g)) (fp64 contract); up1 = T(clamp(up) + 1);
// out = T(up1 * glu).

std::atomic<int64_t> g_fallback_lanes{0};

inline double glu_fp64(float gate, double alpha, double limit) {
  double g = std::min(static_cast<double>(gate), limit);
  if (gate != gate) g = gate;  // NaN propagates, as clamp does
  return g * (1.0 / (1.0 + std::exp(-(g * alpha))));
}

// Lanes whose fp32 value r may round to T differently from the fp64 value it
// approximates within `tol` fp32 ulps: near a midpoint of T, outside T's normal
// range, tiny, or not finite.
template <typename T>
inline int risky_lanes(const fVec& r, const fVec& tol) {
  const fVec mag = r.abs();
  // The bits T drops, as a number (a value conversion, not a reinterpretation).
  const fVec bits = at::vec::convert_to_fp_of_same_size<float>(
      at::vec::cast<int32_t>(r) & iVec(std::is_same_v<T, BFloat16> ? 0xFFFF : 0x1FFF));
  const fVec mid(std::is_same_v<T, BFloat16> ? 32768.0f : 4096.0f);
  const float lo = std::is_same_v<T, BFloat16> ? 0x1p-100f : 0x1p-14f;
  const float hi = std::is_same_v<T, BFloat16> ? 0x1p120f : 32768.0f;
  fVec risky = ((bits - mid).abs() <= tol) | (mag < fVec(lo)) | (mag >= fVec(hi)) |
               r.isnan();
  // zero_mask: bit k set where lane k is all-zero, i.e. not risky.
  return ~risky.zero_mask() & ((1 << kLanes) - 1);
}

// One step of kLanes outputs: the activation of gates g, rounded to T.
template <typename T>
inline fVec glu_rounded(const fVec& g_in, float alpha_f, float limit_f, double alpha,
                        double limit) {
  const fVec g = at::vec::minimum(g_in, fVec(limit_f));
  const fVec t = g * fVec(alpha_f);
  fVec r = g / (fVec(1.0f) + t.neg().exp());
  if constexpr (std::is_same_v<T, float>) {
    return r;
  } else {
    const fVec tol = fVec(8.0f) + fVec(4.0f) * t.abs();
    int risky = risky_lanes<T>(r, tol);
    fVec dummy(0.0f);
    round2<T>(r, dummy);
    if (risky) {
      alignas(64) float rv[kLanes], gv[kLanes];
      r.store(rv);
      g_in.store(gv);
      int count = 0;
      for (int k = 0; k < kLanes; ++k) {
        if (risky & (1 << k)) {
          rv[k] = round_to<T>(glu_fp64(gv[k], alpha, limit));
          ++count;
        }
      }
      g_fallback_lanes.fetch_add(count, std::memory_order_relaxed);
      r = fVec::loadu(rv);
    }
    return r;
  }
}

at::Tensor swigluoai_and_mul(const at::Tensor& x, double alpha, double limit) {
  const char* op = "swigluoai_and_mul";
  check_x(x, op);
  int64_t d = x.size(-1) / 2;
  auto out = empty_out(x, d);
  Rows rows(x);
  if (rows.count == 0 || d == 0) return out;
  dispatch(x.scalar_type(), [&]<typename T>() {
    const T* xp = x.const_data_ptr<T>();
    T* op_ = out.data_ptr<T>();
    // clamp(up, -limit, limit) converted to T equals clamping a T value to the
    // converted bounds (the conversion is monotone).
    const float up_lo = round_to<T>(-limit), up_hi = round_to<T>(limit);
    const float alpha_f = static_cast<float>(alpha), limit_f = static_cast<float>(limit);
    at::parallel_for(0, rows.count, grain_for(d), [&](int64_t begin, int64_t end) {
      const fVec lo(up_lo), hi(up_hi), one(1.0f);
      alignas(64) float gbuf[kLanes], ubuf[kLanes];
      for (int64_t r = begin; r < end; ++r) {
        const T* row = xp + rows.offset(r);
        T* o = op_ + r * d;
        int64_t j = 0;  // output index; inputs 2j (gate) and 2j + 1 (up)
        for (; j + kStep <= d; j += kStep) {
          fVec a0, a1, b0, b1;
          load2(row + 2 * j, a0, a1);
          load2(row + 2 * j + kStep, b0, b1);
          auto [g0, u0] = at::vec::deinterleave2(a0, a1);
          auto [g1, u1] = at::vec::deinterleave2(b0, b1);
          fVec glu0 = glu_rounded<T>(g0, alpha_f, limit_f, alpha, limit);
          fVec glu1 = glu_rounded<T>(g1, alpha_f, limit_f, alpha, limit);
          fVec up0 = at::vec::clamp(u0, lo, hi) + one;
          fVec up1 = at::vec::clamp(u1, lo, hi) + one;
          round2<T>(up0, up1);
          store2(o + j, up0 * glu0, up1 * glu1);
        }
        for (; j < d; j += kLanes) {  // the tail, through the same vector code
          int n = static_cast<int>(std::min<int64_t>(kLanes, d - j));
          for (int k = 0; k < kLanes; ++k) {
            gbuf[k] = k < n ? static_cast<float>(row[2 * (j + k)]) : 0.0f;
            ubuf[k] = k < n ? static_cast<float>(row[2 * (j + k) + 1]) : 0.0f;
          }
          fVec glu = glu_rounded<T>(fVec::loadu(gbuf), alpha_f, limit_f, alpha, limit);
          fVec up = at::vec::clamp(fVec::loadu(ubuf), lo, hi) + one;
          fVec dummy(0.0f);
          round2<T>(up, dummy);
          (up * glu).store(gbuf);
          for (int k = 0; k < n; ++k) o[j + k] = static_cast<T>(gbuf[k]);
        }
      }
    });
  });
  return out;
}

int64_t fallback_lanes(bool reset) {
  return reset ? g_fallback_lanes.exchange(0) : g_fallback_lanes.load();
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("silu_and_mul", &silu_and_mul);
  m.def("mul_and_silu", &mul_and_silu);
  m.def("gelu_and_mul", &gelu_and_mul);
  m.def("fatrelu_and_mul", &fatrelu_and_mul);
  m.def("gelu_and_mul_sparse", &gelu_and_mul_sparse);
  m.def("swigluoai_and_mul", &swigluoai_and_mul);
  m.def("silu_mul", &silu_mul);
  m.def("gelu_mul", &gelu_mul);
  m.def("fallback_lanes", &fallback_lanes,
        "swigluoai lanes recomputed in fp64 since the last reset (reset=True clears)");
}
