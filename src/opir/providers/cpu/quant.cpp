// opir's CPU kernels for int8 and fp8 (float8_e4m3fn) activation quantization (the
// natives in ops/quant.py; float8_e4m3fnuz falls through to native).
//
// Contract (the native functions), with inv = f32(1 / f32(scale)):
//   int8: q = int8(clamp(nearbyint(f32(v) * inv), -128, 127)), NaN -> 0
//         (round half to even: the default FE_TONEAREST mode, what torch.round does)
//   fp8:  q = e4m3fn(clamp(f32(v) * inv, -448, 448)), torch's RNE conversion (NaN kept)
// a dynamic scale is max(min(absmax, scale_ub) / MAX, 1 / (MAX * 512)) in fp32, per
// token or per tensor (MAX 127 or 448). The fused ops quantize the value the unfused native sequence
// would have produced, rounded to x's dtype T:
//  * norm -> quant: opir's rms_norm native. Bit for bit, including the fp32
//    sum of squares: the native's `s.pow(2).mean(-1)` is torch's cascade sum
//    (aten/src/ATen/native/cpu/SumKernel.cpp, which torch runs with its AVX2
//    kernel: 8-lane vectors), a fixed summation order that `cascade_sum_sq`
//    repeats on every row, squares rounded to fp32 before they are added (this
//    family is compiled with -ffp-contract=off, so no multiply-add fuses them).
//    The one case it cannot repeat: a tensor that is a single row of 32768 or
//    more elements, which torch splits over threads (the sum then depends on
//    the thread count); such a row may differ in the last bit of its rms.
//  * silu_and_mul -> quant: opir's activation: silu in fp64 rounded once to T
//    (a table over every 16-bit input, built by ATen's fp64 silu), times up in
//    fp32 rounded to T. bf16/fp16 only (fp32 x falls through to native).
// NaN and inf follow the native (see `quantize1`).
//
// Rows: any leading dims with any strides, last dim contiguous; nothing is
// copied. Outputs are new contiguous tensors (the residual of the in-place
// fused_add kernels is written in place). Rows are split over threads with
// at::parallel_for. Invalid arguments raise ValueError (TORCH_CHECK_VALUE).

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/Float8_e4m3fn.h>
#include <torch/extension.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace {

using at::BFloat16;
using at::Half;
using fVec = at::vec::Vectorized<float>;
using iVec = at::vec::Vectorized<int32_t>;
constexpr int64_t kLanes = fVec::size();
constexpr int64_t kStep = 2 * kLanes;  // one Vectorized<BFloat16/Half> = two fVec

// The quantized formats. Each: its largest magnitude, its smallest dynamic scale
// (1 / (MAX * 512), an fp32 division as the native computes it), and the
// conversion of one fp32 value y = v * inv.
struct Int8 {
  static constexpr float kMax = 127.0f;
  static inline float min_scale() { return 1.0f / (127.0f * 512.0f); }
  // round half to even, clamp to [-128, 127], NaN -> 0
  static inline uint8_t convert1(float y) {
    if (y != y) return 0;
    y = std::min(std::max(std::nearbyint(y), -128.0f), 127.0f);
    return static_cast<uint8_t>(static_cast<int8_t>(static_cast<int32_t>(y)));
  }
};

struct Fp8 {  // float8_e4m3fn
  static constexpr float kMax = 448.0f;
  static inline float min_scale() { return 1.0f / (448.0f * 512.0f); }
  // clamp to [-448, 448] (NaN stays NaN), then torch's (c10's) RNE conversion
  static inline uint8_t convert1(float y) {
    y = std::min(std::max(y, -kMax), kMax);
    return c10::Float8_e4m3fn(y).x;
  }
};

template <typename T>
inline void load2(const T* p, fVec& a, fVec& b) {
  if constexpr (std::is_same_v<T, float>) {
    a = fVec::loadu(p);
    b = fVec::loadu(p + kLanes);
  } else {
    std::tie(a, b) = at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(p));
  }
}

// fp32 lanes rounded to bfloat16 precision, staying fp32 (nearest even, NaN kept,
// subnormals kept, overflow to inf): what c10's float -> BFloat16 conversion does.
inline fVec round_bf16(const fVec& v) {
  const iVec bits = at::vec::cast<int32_t>(v);
  const iVec lsb = (bits >> iVec(16)) & iVec(1);
  const iVec rounded = (bits + iVec(0x7FFF) + lsb) & iVec(static_cast<int32_t>(0xFFFF0000u));
  return fVec::blendv(at::vec::cast<float>(rounded), v, v.isnan());
}

// Round every lane to T and back: "y.to(T)" inside an fp32 computation.
template <typename T>
inline void round2(fVec& a, fVec& b) {
  if constexpr (std::is_same_v<T, BFloat16>) {
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
    // One instruction rounds 32 lanes to bf16 (nearest even), but it flushes subnormal
    // inputs and results to zero, which torch does not: a pair with a subnormal lane
    // (fpclass 0x20) takes the integer path instead.
    if ((_mm512_fpclass_ps_mask(a, 0x20) | _mm512_fpclass_ps_mask(b, 0x20)) == 0) {
      const __m512i packed = (__m512i)_mm512_cvtne2ps_pbh(__m512(b), __m512(a));
      a = _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(packed)), 16));
      b = _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(packed, 1)), 16));
      return;
    }
#endif
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

// ----------------------------------------------------------------------------
// Quantization of fp32 values (already rounded to x's dtype) to int8.

template <typename F>
inline uint8_t quantize1(float v, float inv) {
  return F::convert1(v * inv);
}

// fp32 lanes (clamped to +-448, or NaN) to float8_e4m3fn bit patterns in int32 lanes:
// c10's fp8e4m3fn_from_fp32_value, lane by lane (RNE; below 2**-6 through an fp32 add
// of 2**14, which rounds the subnormal mantissa; NaN -> 0x7F; the sign kept).
inline iVec fp8_bits(const fVec& y) {
  const iVec bits = at::vec::cast<int32_t>(y);
  const iVec sign = (bits >> iVec(24)) & iVec(0x80);
  const iVec mag = bits & iVec(0x7FFFFFFF);
  const iVec sub = at::vec::cast<int32_t>(at::vec::cast<float>(mag) + fVec(16384.0f)) -
                   iVec(141 << 23);
  const iVec odd = (mag >> iVec(20)) & iVec(1);
  const iVec bias(static_cast<int32_t>(static_cast<uint32_t>(7 - 127) << 23) + 0x7FFFF);
  const iVec norm = (mag + bias + odd) >> iVec(20);
  iVec r = iVec::blendv(norm, sub, mag < iVec(121 << 23));
  r = iVec::blendv(r, iVec(0x7F), mag >= iVec(1087 << 20));
  return r | sign;
}

// One vector of fp32 values times inv, to kLanes bytes of format F at q.
template <typename F>
struct Quantizer {
  float scalar;
  fVec inv;
  explicit Quantizer(float inv_) : scalar(inv_), inv(inv_) {}

  inline void operator()(const fVec& v, uint8_t* q) const {
    if constexpr (std::is_same_v<F, Fp8>) {
      const fVec y = at::vec::clamp(v * inv, fVec(-F::kMax), fVec(F::kMax));  // NaN stays
      store_bytes(fp8_bits(y), q);
    } else {
#if defined(CPU_CAPABILITY_AVX512)
      // Clamping before rounding equals rounding before clamping (the bounds are
      // integers). max/min return their second operand when one is NaN, so a NaN
      // lane stays NaN, converts to 0x80000000 and truncates to the byte 0.
      __m512 y = _mm512_mul_ps(v, inv);
      y = _mm512_min_ps(_mm512_set1_ps(127.0f), _mm512_max_ps(_mm512_set1_ps(-128.0f), y));
      const __m512i i = _mm512_cvt_roundps_epi32(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtepi32_epi8(i));
#elif defined(CPU_CAPABILITY_AVX2)
      __m256 y = _mm256_mul_ps(v, inv);
      const __m256 ok = _mm256_cmp_ps(y, y, _CMP_ORD_Q);
      y = _mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      y = _mm256_min_ps(_mm256_max_ps(y, _mm256_set1_ps(-128.0f)), _mm256_set1_ps(127.0f));
      const __m256i i = _mm256_cvtps_epi32(_mm256_and_ps(y, ok));
      const __m128i w =
          _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(q), _mm_packs_epi16(w, w));
#else
      alignas(64) float buf[kLanes];
      v.store(buf);
      for (int64_t k = 0; k < kLanes; ++k) q[k] = quantize1<F>(buf[k], scalar);
#endif
    }
  }

  // int32 lanes in [0, 255] to bytes.
  static inline void store_bytes(const iVec& b, uint8_t* q) {
#if defined(CPU_CAPABILITY_AVX512)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtepi32_epi8(b));
#else
    alignas(64) int32_t buf[kLanes];
    b.store(buf);
    for (int64_t k = 0; k < kLanes; ++k) q[k] = static_cast<uint8_t>(buf[k]);
#endif
  }
};

// n values of x (any T) times inv, to format F: one pass.
template <typename F, typename T>
inline void quantize_row(const T* x, float inv, uint8_t* q, int64_t n) {
  const Quantizer<F> quant(inv);
  int64_t j = 0;
  fVec a, b;
  for (; j + kStep <= n; j += kStep) {
    load2(x + j, a, b);
    quant(a, q + j);
    quant(b, q + j + kLanes);
  }
  for (; j < n; ++j) q[j] = quantize1<F>(static_cast<float>(x[j]), inv);
}

// Running max |v| of vectors, and whether any lane was NaN (torch's amax propagates
// NaN; the max instruction alone would drop it).
struct AbsMax {
  fVec m0{0.0f}, m1{0.0f}, nan{0.0f};
  float tail = 0.0f;
  bool tail_nan = false;

  static inline fVec max_raw(const fVec& a, const fVec& b) {
#if defined(CPU_CAPABILITY_AVX512)
    return _mm512_max_ps(a, b);
#elif defined(CPU_CAPABILITY_AVX2)
    return _mm256_max_ps(a, b);
#else
    return at::vec::maximum(a, b);
#endif
  }
  inline void add2(const fVec& a, const fVec& b) {
    nan = nan | a.isnan() | b.isnan();
    m0 = max_raw(m0, a.abs());
    m1 = max_raw(m1, b.abs());
  }
  inline void add1(float v) {
    tail_nan |= v != v;
    tail = std::max(tail, std::abs(v));
  }
  inline float value() const {
    alignas(64) float ml[kLanes], nl[kLanes];
    max_raw(m0, m1).store(ml);
    nan.store(nl);
    float r = tail;
    bool has_nan = tail_nan;
    for (int64_t k = 0; k < kLanes; ++k) {
      r = std::max(r, ml[k]);
      has_nan |= nl[k] != 0.0f;
    }
    return has_nan ? std::numeric_limits<float>::quiet_NaN() : r;
  }
};

// max |x| over n values of any T; NaN if any is NaN. On the bit patterns: with the
// sign cleared, IEEE values order as their bits do, and every NaN is above +inf, so
// an integer max over (bits & ~sign) is the absmax, or a NaN when there is one (what
// torch's amax returns). No conversion, and 16-bit dtypes 32 or 64 lanes at a time.
template <typename T>
inline float absmax(const T* x, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    const auto* bits = reinterpret_cast<const uint32_t*>(x);
    uint32_t m0 = 0, m1 = 0, m2 = 0, m3 = 0;
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
      m0 = std::max(m0, bits[j] & 0x7FFFFFFFu);
      m1 = std::max(m1, bits[j + 1] & 0x7FFFFFFFu);
      m2 = std::max(m2, bits[j + 2] & 0x7FFFFFFFu);
      m3 = std::max(m3, bits[j + 3] & 0x7FFFFFFFu);
    }
    for (; j < n; ++j) m0 = std::max(m0, bits[j] & 0x7FFFFFFFu);
    const uint32_t m = std::max(std::max(m0, m1), std::max(m2, m3));
    float r;
    std::memcpy(&r, &m, sizeof(r));
    return r;
  } else {
    const auto* bits = reinterpret_cast<const uint16_t*>(x);
    uint16_t m = 0;
#pragma GCC unroll 4
    for (int64_t j = 0; j < n; ++j) m = std::max<uint16_t>(m, bits[j] & 0x7FFF);
    return static_cast<float>(T(m, T::from_bits()));
  }
}

// The dynamic scale of a block whose largest magnitude is amax (NaN stays NaN);
// ub (scale_ub, +inf when absent) clamps amax first (torch.minimum: NaN wins).
template <typename F>
inline float dynamic_scale(float amax, float ub) {
  if (ub == ub && amax == amax) amax = std::min(amax, ub);
  else amax = std::numeric_limits<float>::quiet_NaN();
  float s = amax / F::kMax;
  return s != s ? s : std::max(s, F::min_scale());
}

inline float reciprocal(float scale) {
  return 1.0f / scale;
}

// ----------------------------------------------------------------------------
// Rows: offset (in elements) of row r of a tensor viewed as [rows, C].

struct Rows {
  int64_t count = 0;
  int64_t uniform_stride = -1;
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

// Row of T to fp32 (exact).
template <typename T>
inline void to_float(const T* x, float* out, int64_t n) {
  int64_t j = 0;
  fVec a, b;
  for (; j + kStep <= n; j += kStep) {
    load2(x + j, a, b);
    a.store(out + j);
    b.store(out + j + kLanes);
  }
  for (; j < n; ++j) out[j] = static_cast<float>(x[j]);
}

// ----------------------------------------------------------------------------
// torch's cascade sum (SumKernel.cpp: vectorized_inner_sum / row_sum /
// multi_row_sum, AVX2 kernel: 8 lanes) of the squares of n fp32 values.

typedef float v8f __attribute__((vector_size(32)));

typedef uint16_t v8u16 __attribute__((vector_size(16)));
typedef uint32_t v8u32 __attribute__((vector_size(32)));

// 8 values of T as fp32, squared (each square rounded to fp32 before any add:
// -ffp-contract=off).
template <typename T>
inline v8f sq8(const T* p) {
  v8f a;
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(&a, p, sizeof(a));
  } else if constexpr (std::is_same_v<T, BFloat16>) {
    v8u16 h;
    std::memcpy(&h, p, sizeof(h));
    const v8u32 w = __builtin_convertvector(h, v8u32) << 16;
    std::memcpy(&a, &w, sizeof(a));
  } else {
#if defined(__F16C__)
    const __m256 f = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    std::memcpy(&a, &f, sizeof(a));
#else
    for (int k = 0; k < 8; ++k) a[k] = static_cast<float>(p[k]);
#endif
  }
  return a * a;
}

inline int64_t ceil_log2(int64_t x) {
  if (x <= 2) return 1;
  return 64 - __builtin_clzll(static_cast<uint64_t>(x - 1));
}

// multi_row_sum<A, 4>: load(i, k) is element k of group i.
template <typename A, typename Load>
inline std::array<A, 4> multi_row_sum(const Load& load, int64_t size) {
  constexpr int64_t levels = 4;
  const int64_t power = std::max<int64_t>(4, ceil_log2(size) / levels);
  const int64_t step = int64_t{1} << power;
  const int64_t mask = step - 1;
  A acc[levels][4];
  for (auto& level : acc) {
    for (auto& a : level) a = A{};
  }
  int64_t i = 0;
  for (; i + step <= size;) {
    for (int64_t j = 0; j < step; ++j, ++i) {
      for (int64_t k = 0; k < 4; ++k) acc[0][k] += load(i, k);
    }
    for (int64_t j = 1; j < levels; ++j) {
      for (int64_t k = 0; k < 4; ++k) {
        acc[j][k] += acc[j - 1][k];
        acc[j - 1][k] = A{};
      }
      if ((i & (mask << (j * power))) != 0) break;
    }
  }
  for (; i < size; ++i) {
    for (int64_t k = 0; k < 4; ++k) acc[0][k] += load(i, k);
  }
  for (int64_t j = 1; j < levels; ++j) {
    for (int64_t k = 0; k < 4; ++k) acc[0][k] += acc[j][k];
  }
  return {acc[0][0], acc[0][1], acc[0][2], acc[0][3]};
}

// row_sum<A>: load1(i) is element i (of size).
template <typename A, typename Load1>
inline A row_sum(const Load1& load1, int64_t size) {
  const int64_t size_ilp = size / 4;
  auto partial = multi_row_sum<A>([&](int64_t i, int64_t k) { return load1(i * 4 + k); },
                                  size_ilp);
  for (int64_t i = size_ilp * 4; i < size; ++i) partial[0] += load1(i);
  for (int64_t k = 1; k < 4; ++k) partial[0] += partial[k];
  return partial[0];
}

// row_sum<v8f> of the squares of nv 8-lane vectors, with 16-lane registers: torch's
// four 8-lane accumulators of a group of 32 values sit two by two in two registers
// (lanes 0-7 | 8-15), so every lane sees exactly the adds torch's does, in its order,
// at half the instructions.
template <typename T>
inline v8f row_sum_sq_wide(const T* s, int64_t nv) {
  constexpr int64_t levels = 4;
  const int64_t size = nv / 4;  // groups of 4 vectors (32 values)
  const int64_t power = std::max<int64_t>(4, ceil_log2(size) / levels);
  const int64_t step = int64_t{1} << power;
  const int64_t mask = step - 1;
  fVec acc[levels][2];
  for (auto& level : acc) level[0] = level[1] = fVec(0.0f);
  fVec a, b;
  int64_t i = 0;
  for (; i + step <= size;) {
    for (int64_t j = 0; j < step; ++j, ++i) {
      load2(s + 32 * i, a, b);
      acc[0][0] = acc[0][0] + a * a;
      acc[0][1] = acc[0][1] + b * b;
    }
    for (int64_t j = 1; j < levels; ++j) {
      acc[j][0] = acc[j][0] + acc[j - 1][0];
      acc[j][1] = acc[j][1] + acc[j - 1][1];
      acc[j - 1][0] = acc[j - 1][1] = fVec(0.0f);
      if ((i & (mask << (j * power))) != 0) break;
    }
  }
  for (; i < size; ++i) {
    load2(s + 32 * i, a, b);
    acc[0][0] = acc[0][0] + a * a;
    acc[0][1] = acc[0][1] + b * b;
  }
  for (int64_t j = 1; j < levels; ++j) {
    acc[0][0] = acc[0][0] + acc[j][0];
    acc[0][1] = acc[0][1] + acc[j][1];
  }
  alignas(64) float lanes[32];
  acc[0][0].store(lanes);
  acc[0][1].store(lanes + 16);
  v8f p[4];
  std::memcpy(p, lanes, sizeof(lanes));
  for (int64_t k = size * 4; k < nv; ++k) p[0] += sq8(s + 8 * k);  // row_sum's leftovers
  for (int k = 1; k < 4; ++k) p[0] += p[k];
  return p[0];
}

template <typename T>
inline float cascade_sum_sq(const T* s, int64_t n) {
  if (n < 8) {  // scalar_inner_sum
    return row_sum<float>([&](int64_t i) { float v = static_cast<float>(s[i]); return v * v; }, n);
  }
  const int64_t nv = n / 8;
  v8f acc;
  if constexpr (kLanes == 16) {
    acc = row_sum_sq_wide(s, nv);
  } else {
    acc = row_sum<v8f>([&](int64_t i) { return sq8(s + 8 * i); }, nv);
  }
  float total = 0.0f;
  for (int64_t k = nv * 8; k < n; ++k) {
    const float v = static_cast<float>(s[k]);
    const float sq = v * v;
    total += sq;
  }
  for (int k = 0; k < 8; ++k) total += acc[k];
  return total;
}

// ----------------------------------------------------------------------------
// The norm of one fp32 row s (n values) into out (fp32 values rounded to T):
// opir's rms_norm native: y = s * rsqrt(mean(s^2) + eps), then the weight
// multiply in promote_types(T, W) (W = T: round y to T first), rounded to T.

// Where a fused row's values (fp32, rounded to T) go: quantized at once with a static
// scale (q), or kept in y with their absmax (a dynamic scale needs it first).
template <typename F>
struct Sink {
  uint8_t* q = nullptr;  // static: quantize into q
  Quantizer<F> quant{0.0f};
  float* y = nullptr;  // dynamic: store into y, track the absmax
  AbsMax amax;

  inline void put2(int64_t j, const fVec& a, const fVec& b) {
    if (q != nullptr) {
      quant(a, q + j);
      quant(b, q + j + kLanes);
    } else {
      a.store(y + j);
      b.store(y + j + kLanes);
      amax.add2(a, b);
    }
  }
  inline void put1(int64_t j, float v) {
    if (q != nullptr) {
      q[j] = quantize1<F>(v, quant.scalar);
    } else {
      y[j] = v;
      amax.add1(v);
    }
  }
};

// The row of q (and the scale) of a fused op: quantized directly (static), or
// from y after the row's absmax is known (dynamic, writing the scale to *scale).
template <typename F>
inline Sink<F> make_sink(uint8_t* q, float inv, float* y, bool dynamic) {
  Sink<F> sink;
  if (dynamic) {
    sink.y = y;
  } else {
    sink.q = q;
    sink.quant = Quantizer<F>(inv);
  }
  return sink;
}

template <typename F>
inline void finish_dynamic(Sink<F>& sink, uint8_t* q, float* scale, float ub, int64_t n) {
  const float sc = dynamic_scale<F>(sink.amax.value(), ub);
  *scale = sc;
  quantize_row<F, float>(sink.y, reciprocal(sc), q, n);
}

template <typename T, typename W, typename F, typename S>
inline void norm_row(const S* s, int64_t n, float eps, const float* w, Sink<F>& sink) {
  const float mean = cascade_sum_sq(s, n) / static_cast<float>(n);
  const float inv = 1.0f / std::sqrt(mean + eps);
  const fVec vinv(inv);
  int64_t j = 0;
  fVec a, b, wa, wb;
  for (; j + kStep <= n; j += kStep) {
    load2(s + j, a, b);
    a = a * vinv;
    b = b * vinv;
    if (w != nullptr) {
      round2<W>(a, b);
      load2(w + j, wa, wb);
      a = a * wa;
      b = b * wb;
    }
    round2<T>(a, b);
    sink.put2(j, a, b);
  }
  for (; j < n; ++j) {
    float v = static_cast<float>(s[j]) * inv;
    if (w != nullptr) v = round_to<W>(v) * w[j];
    sink.put1(j, round_to<T>(v));
  }
}

// ----------------------------------------------------------------------------
// silu(gate) * up, rounded to T: the activation from a table of every 16-bit
// input (ATen's fp64 silu rounded to T, i.e. the native's own formula).

template <typename T>
const float* silu_table() {
  static std::once_flag once;
  static std::unique_ptr<float[]> table;
  std::call_once(once, [] {
    auto dtype = std::is_same_v<T, BFloat16> ? at::kBFloat16 : at::kHalf;
    auto bits = at::arange(65536, at::kInt).to(at::kShort);
    auto g = bits.view(dtype).to(at::kDouble);
    auto values = at::silu(g).to(dtype).to(at::kFloat).contiguous();
    table = std::make_unique<float[]>(65536);
    std::memcpy(table.get(), values.template data_ptr<float>(), 65536 * sizeof(float));
  });
  return table.get();
}

template <typename T, typename F>
inline void silu_mul_row(const T* gate, const T* up, int64_t d, const float* table,
                         Sink<F>& sink) {
  const auto* bits = reinterpret_cast<const uint16_t*>(gate);
  alignas(64) float act[kStep];
  int64_t j = 0;
  for (; j + kStep <= d; j += kStep) {
    for (int64_t k = 0; k < kStep; ++k) act[k] = table[bits[j + k]];
    fVec m0, m1;
    load2(up + j, m0, m1);
    fVec a = fVec::loadu(act) * m0, b = fVec::loadu(act + kLanes) * m1;
    round2<T>(a, b);
    sink.put2(j, a, b);
  }
  for (; j < d; ++j) sink.put1(j, round_to<T>(table[bits[j]] * static_cast<float>(up[j])));
}

// ----------------------------------------------------------------------------
// Checks and dispatch.

void check_x(const at::Tensor& x, const char* op, bool float32_ok = true) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": x must be on the CPU, got ", x.device());
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have at least one dimension");
  auto dt = x.scalar_type();
  TORCH_CHECK_VALUE((float32_ok && dt == at::kFloat) || dt == at::kBFloat16 || dt == at::kHalf,
                    op, ": x must be ", float32_ok ? "float32, " : "", "bfloat16 or float16, got ",
                    dt);
  TORCH_CHECK_VALUE(x.size(-1) <= 1 || x.stride(-1) == 1, op,
                    ": the last dimension of x must be contiguous (stride 1), got stride ",
                    x.stride(-1), "; pass x.contiguous()");
}

// Calls f.template operator()<F>() for the quantized dtype (int8 or float8_e4m3fn).
template <typename Fn>
void dispatch_format(at::ScalarType dtype, const char* op, Fn&& f) {
  if (dtype == at::kChar) return f.template operator()<Int8>();
  if (dtype == at::kFloat8_e4m3fn) return f.template operator()<Fp8>();
  TORCH_CHECK_VALUE(false, op, ": the cpu kernels quantize to torch.int8 or torch.float8_e4m3fn, got ",
                    dtype);
}

float min_scale(at::ScalarType dtype) {
  return dtype == at::kChar ? Int8::min_scale() : Fp8::min_scale();
}

// A static scale: one fp32 value (shape [1] or []), on the CPU.
// A per-tensor scale (or scale_ub): one fp32 value (shape [1] or []) on the CPU; the
// native's checks, in its order and words.
void check_scale(const at::Tensor& scale, const char* op, const char* name) {
  TORCH_CHECK_VALUE(scale.scalar_type() == at::kFloat, op, ": ", name,
                    " must be float32, got ", scale.scalar_type(), "; pass ", name, ".float()");
  TORCH_CHECK_VALUE(scale.numel() == 1 && scale.dim() <= 1, op, ": ", name,
                    " must be a per-tensor scale of shape [1], got ", scale.sizes());
  TORCH_CHECK_VALUE(scale.device().is_cpu(), op, ": ", name, " is on ", scale.device(),
                    " but x is on cpu");
}

float static_inv(const at::Tensor& scale, const char* op) {
  check_scale(scale, op, "scale");
  return reciprocal(*scale.data_ptr<float>());
}

// scale_ub as a value (+inf when absent).
float read_ub(const std::optional<at::Tensor>& scale_ub, const char* op) {
  if (!scale_ub.has_value()) return std::numeric_limits<float>::infinity();
  check_scale(*scale_ub, op, "scale_ub");
  return *scale_ub->data_ptr<float>();
}

void check_weight(const at::Tensor& x, const std::optional<at::Tensor>& weight, const char* op) {
  if (!weight.has_value()) return;
  const auto& w = *weight;
  TORCH_CHECK_VALUE(w.device().is_cpu(), op, ": weight must be on the CPU, got ", w.device());
  TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == x.size(-1), op, ": weight must have shape [",
                    x.size(-1), "], got ", w.sizes());
  auto dt = w.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op,
                    ": weight must be float32, bfloat16 or float16, got ", dt);
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

// Calls f.template operator()<T, W>(): W = T when the weight has x's dtype and no
// bias (the native rounds the normalised value to T, then multiplies in T), else
// float (one multiply in fp32, one rounding).
template <typename F>
void dispatch_norm(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                   double weight_bias, F&& f) {
  const bool fp32_weight =
      weight.has_value() && (weight->scalar_type() != x.scalar_type() || weight_bias != 0.0);
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

// The weight as contiguous fp32 (+ bias), private to this call.
std::optional<at::Tensor> fp32_weight(const std::optional<at::Tensor>& weight,
                                      double weight_bias) {
  if (!weight.has_value()) return weight;
  auto w = weight->to(at::kFloat, /*non_blocking=*/false, /*copy=*/true).contiguous();
  if (weight_bias != 0.0) w.add_(weight_bias);
  return w;
}

at::Tensor empty_q(const at::Tensor& x, int64_t cols, at::ScalarType dtype) {
  auto sizes = x.sizes().vec();
  sizes.back() = cols;
  return at::empty(sizes, x.options().dtype(dtype).memory_format(at::MemoryFormat::Contiguous));
}

at::Tensor empty_token_scales(const at::Tensor& x) {
  auto sizes = x.sizes().vec();
  sizes.back() = 1;
  return at::empty(sizes, x.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous));
}

// ----------------------------------------------------------------------------
// Base ops.

at::Tensor static_quant(const at::Tensor& x, const at::Tensor& scale, at::ScalarType dtype) {
  const char* op = "static_quant";
  check_x(x, op);
  const float inv = static_inv(scale, op);
  const int64_t cols = x.size(-1);
  auto q = empty_q(x, cols, dtype);
  const Rows rows(x);
  if (rows.count == 0 || cols == 0) return q;
  dispatch_format(dtype, op, [&]<typename F>() { dispatch(x.scalar_type(), [&]<typename T>() {
    const T* xp = x.const_data_ptr<T>();
    uint8_t* qp = static_cast<uint8_t*>(q.data_ptr());
    at::parallel_for(0, rows.count, grain_for(cols), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        quantize_row<F>(xp + rows.offset(r), inv, qp + r * cols, cols);
      }
    });
  }); });
  return q;
}

std::tuple<at::Tensor, at::Tensor> dynamic_quant(const at::Tensor& x, at::ScalarType dtype,
                                                 bool per_token,
                                                 const std::optional<at::Tensor>& scale_ub) {
  const char* op = "dynamic_quant";
  check_x(x, op);
  const float ub = read_ub(scale_ub, op);
  const int64_t cols = x.size(-1);
  auto q = empty_q(x, cols, dtype);
  const Rows rows(x);
  at::Tensor scales = per_token ? empty_token_scales(x) : at::empty({1}, x.options().dtype(at::kFloat));
  if (rows.count == 0 || cols == 0) {
    if (!per_token) scales.fill_(min_scale(dtype));  // amax of nothing is 0
    else if (scales.numel() > 0) scales.fill_(min_scale(dtype));
    return {q, scales};
  }
  dispatch_format(dtype, op, [&]<typename F>() { dispatch(x.scalar_type(), [&]<typename T>() {
    const T* xp = x.const_data_ptr<T>();
    uint8_t* qp = static_cast<uint8_t*>(q.data_ptr());
    float* sp = scales.data_ptr<float>();
    if (per_token) {
      at::parallel_for(0, rows.count, grain_for(cols), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {  // two passes over a row (in L1/L2)
          const T* xr = xp + rows.offset(r);
          const float s = dynamic_scale<F>(absmax(xr, cols), ub);
          sp[r] = s;
          quantize_row<F>(xr, reciprocal(s), qp + r * cols, cols);
        }
      });
      return;
    }
    // Per tensor: the absmax of every row (in parallel), then the same quantization.
    const int64_t chunks = std::min<int64_t>(rows.count, 4 * at::get_num_threads());
    std::vector<float> partial(chunks, 0.0f);
    const int64_t per = (rows.count + chunks - 1) / chunks;
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        float m = 0.0f;
        for (int64_t r = c * per; r < std::min(rows.count, (c + 1) * per); ++r) {
          float a = absmax(xp + rows.offset(r), cols);
          m = (a != a || m != m) ? std::numeric_limits<float>::quiet_NaN() : std::max(m, a);
        }
        partial[c] = m;
      }
    });
    float m = 0.0f;
    for (float a : partial) {
      m = (a != a || m != m) ? std::numeric_limits<float>::quiet_NaN() : std::max(m, a);
    }
    const float s = dynamic_scale<F>(m, ub);
    *sp = s;
    const float inv = reciprocal(s);
    at::parallel_for(0, rows.count, grain_for(cols), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        quantize_row<F>(xp + rows.offset(r), inv, qp + r * cols, cols);
      }
    });
  }); });
  return {q, scales};
}

// ----------------------------------------------------------------------------
// rms_norm -> quant (static scale, or dynamic per token when scale is absent).

std::tuple<at::Tensor, at::Tensor> norm_quant(const at::Tensor& x,
                                              const std::optional<at::Tensor>& weight_in,
                                              double epsilon, const std::optional<at::Tensor>& scale,
                                              double weight_bias, float ub,
                                              at::ScalarType dtype, const char* op) {
  check_x(x, op);
  check_weight(x, weight_in, op);
  const bool dynamic = !scale.has_value();
  const float inv = dynamic ? 0.0f : static_inv(*scale, op);
  const auto weight = fp32_weight(weight_in, weight_bias);
  const int64_t cols = x.size(-1);
  auto q = empty_q(x, cols, dtype);
  at::Tensor scales = dynamic ? empty_token_scales(x) : at::Tensor();
  const Rows rows(x);
  if (rows.count == 0 || cols == 0) {
    if (dynamic && scales.numel() > 0) scales.fill_(min_scale(dtype));
    return {q, scales};
  }
  const float eps = static_cast<float>(epsilon);
  dispatch_format(dtype, op, [&]<typename F>() { dispatch_norm(x, weight_in, weight_bias, [&]<typename T, typename W>() {
    const T* xp = x.const_data_ptr<T>();
    uint8_t* qp = static_cast<uint8_t*>(q.data_ptr());
    float* sp = dynamic ? scales.data_ptr<float>() : nullptr;
    const float* wp = weight.has_value() ? weight->data_ptr<float>() : nullptr;
    at::parallel_for(0, rows.count, grain_for(cols), [&](int64_t begin, int64_t end) {
      std::vector<float> y(dynamic ? cols : 0);
      for (int64_t r = begin; r < end; ++r) {
        uint8_t* qr = qp + r * cols;
        auto sink = make_sink<F>(qr, inv, y.data(), dynamic);
        norm_row<T, W, F>(xp + rows.offset(r), cols, eps, wp, sink);
        if (dynamic) finish_dynamic(sink, qr, sp + r, ub, cols);
      }
    });
  }); });
  return {q, scales};
}

at::Tensor rms_norm_quant(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                          double epsilon, const at::Tensor& scale, at::ScalarType dtype,
                          double weight_bias) {
  return std::get<0>(
      norm_quant(x, weight, epsilon, scale, weight_bias, 0.0f, dtype, "rms_norm_quant"));
}

std::tuple<at::Tensor, at::Tensor> rms_norm_dynamic_quant(
    const at::Tensor& x, const std::optional<at::Tensor>& weight, double epsilon,
    at::ScalarType dtype, const std::optional<at::Tensor>& scale_ub, double weight_bias) {
  const char* op = "rms_norm_dynamic_quant";
  return norm_quant(x, weight, epsilon, std::nullopt, weight_bias, read_ub(scale_ub, op), dtype,
                    op);
}

// ----------------------------------------------------------------------------
// fused_add_rms_norm -> quant: s = x + residual (fp32); residual_out = s.to(T)
// (written into residual_out, which may be the residual itself); q = quant(norm(s)).

// True when no two elements of t share memory.
bool no_internal_overlap(const at::Tensor& t) {
  if (t.is_contiguous()) return true;
  std::vector<std::pair<int64_t, int64_t>> dims;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) > 1) dims.emplace_back(t.stride(d), t.size(d));
  }
  std::sort(dims.begin(), dims.end());
  int64_t reach = 0;
  for (const auto& [stride, size] : dims) {
    if (stride <= reach) return false;
    reach += stride * (size - 1);
  }
  return true;
}

std::pair<uintptr_t, uintptr_t> byte_extent(const at::Tensor& t) {
  int64_t span = 1;
  for (int64_t d = 0; d < t.dim(); ++d) span += t.stride(d) * (t.size(d) - 1);
  auto first = reinterpret_cast<uintptr_t>(t.data_ptr());
  return {first, first + static_cast<uintptr_t>(span * t.element_size())};
}

bool may_overlap(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  auto [a0, a1] = byte_extent(a);
  auto [b0, b1] = byte_extent(b);
  return a0 < b1 && b0 < a1;
}

std::vector<at::Tensor> add_norm_quant(const at::Tensor& x_in, const at::Tensor& residual,
                                       const std::optional<at::Tensor>& weight_in,
                                       double epsilon, const std::optional<at::Tensor>& scale,
                                       double weight_bias, float ub, at::ScalarType dtype,
                                       const char* op) {
  check_x(x_in, op);
  check_weight(x_in, weight_in, op);
  TORCH_CHECK_VALUE(residual.sizes() == x_in.sizes() &&
                        residual.scalar_type() == x_in.scalar_type() &&
                        residual.device() == x_in.device(),
                    op, ": x_residual must match x's shape, dtype and device, got ",
                    residual.sizes(), " ", residual.scalar_type(), " vs ", x_in.sizes(), " ",
                    x_in.scalar_type());
  TORCH_CHECK_VALUE(residual.size(-1) <= 1 || residual.stride(-1) == 1, op,
                    ": the last dimension of x_residual must be contiguous (stride 1), got "
                    "stride ", residual.stride(-1), "; pass x_residual.contiguous()");
  const bool dynamic = !scale.has_value();
  const float inv = dynamic ? 0.0f : static_inv(*scale, op);
  const auto weight = fp32_weight(weight_in, weight_bias);  // always a private copy
  const int64_t cols = x_in.size(-1);
  auto q = empty_q(x_in, cols, dtype);
  at::Tensor scales = dynamic ? empty_token_scales(x_in) : at::Tensor();
  // Where the new residual goes: in place when it can be written row by row
  // without clobbering what later rows read; otherwise a fresh tensor.
  at::Tensor x = x_in;
  at::Tensor res_out = residual;
  if (!no_internal_overlap(residual)) {
    res_out = at::empty(residual.sizes(),
                        residual.options().memory_format(at::MemoryFormat::Contiguous));
  } else if (may_overlap(x_in, residual) &&
             !(x_in.data_ptr() == residual.data_ptr() && x_in.strides() == residual.strides())) {
    x = x_in.clone();  // x is read after earlier rows' residuals are written
  }
  const Rows rows(x);
  if (rows.count == 0 || cols == 0) {
    if (dynamic && scales.numel() > 0) scales.fill_(min_scale(dtype));
    std::vector<at::Tensor> result{q};
    if (dynamic) result.push_back(scales);
    result.push_back(res_out);
    return result;
  }
  const Rows rrows(residual), orows(res_out);
  const float eps = static_cast<float>(epsilon);
  dispatch_format(dtype, op, [&]<typename F>() { dispatch_norm(x, weight_in, weight_bias, [&]<typename T, typename W>() {
    const T* xp = x.const_data_ptr<T>();
    const T* rp = residual.const_data_ptr<T>();
    T* op_ = res_out.data_ptr<T>();
    uint8_t* qp = static_cast<uint8_t*>(q.data_ptr());
    float* sp = dynamic ? scales.data_ptr<float>() : nullptr;
    const float* wp = weight.has_value() ? weight->data_ptr<float>() : nullptr;
    at::parallel_for(0, rows.count, grain_for(cols), [&](int64_t begin, int64_t end) {
      std::vector<float> s(cols), y(dynamic ? cols : 0);
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = xp + rows.offset(r);
        const T* rr = rp + rrows.offset(r);
        T* orow = op_ + orows.offset(r);
        int64_t j = 0;
        fVec xa, xb, ra, rb;
        // one pass: a chunk of x and of the residual is read before that chunk of the
        // new residual is written (so x may be the residual itself)
        for (; j + kStep <= cols; j += kStep) {
          load2(xr + j, xa, xb);
          load2(rr + j, ra, rb);
          xa = xa + ra;
          xb = xb + rb;
          xa.store(s.data() + j);
          xb.store(s.data() + j + kLanes);
          if constexpr (std::is_same_v<T, float>) {
            xa.store(orow + j);
            xb.store(orow + j + kLanes);
          } else {
            at::vec::convert_from_float<T>(xa, xb).store(orow + j);
          }
        }
        for (; j < cols; ++j) {
          const float v = static_cast<float>(xr[j]) + static_cast<float>(rr[j]);
          s[j] = v;
          orow[j] = static_cast<T>(v);
        }
        uint8_t* qr = qp + r * cols;
        auto sink = make_sink<F>(qr, inv, y.data(), dynamic);
        norm_row<T, W, F>(s.data(), cols, eps, wp, sink);
        if (dynamic) finish_dynamic(sink, qr, sp + r, ub, cols);
      }
    });
  }); });
  std::vector<at::Tensor> result{q};
  if (dynamic) result.push_back(scales);
  result.push_back(res_out);
  return result;
}

std::vector<at::Tensor> fused_add_rms_norm_quant(const at::Tensor& x, const at::Tensor& residual,
                                                 const std::optional<at::Tensor>& weight,
                                                 double epsilon, const at::Tensor& scale,
                                                 at::ScalarType dtype, double weight_bias) {
  const char* op = "fused_add_rms_norm_quant";
  return add_norm_quant(x, residual, weight, epsilon, scale, weight_bias, 0.0f, dtype, op);
}

std::vector<at::Tensor> fused_add_rms_norm_dynamic_quant(
    const at::Tensor& x, const at::Tensor& residual, const std::optional<at::Tensor>& weight,
    double epsilon, at::ScalarType dtype, const std::optional<at::Tensor>& scale_ub,
    double weight_bias) {
  const char* op = "fused_add_rms_norm_dynamic_quant";
  return add_norm_quant(x, residual, weight, epsilon, std::nullopt, weight_bias,
                        read_ub(scale_ub, op), dtype, op);
}

// ----------------------------------------------------------------------------
// silu_and_mul -> quant (x = [gate | up], bf16/fp16).

std::tuple<at::Tensor, at::Tensor> act_quant(const at::Tensor& x,
                                             const std::optional<at::Tensor>& scale,
                                             float ub, at::ScalarType dtype, const char* op) {
  check_x(x, op, /*float32_ok=*/false);
  TORCH_CHECK_VALUE(x.size(-1) % 2 == 0, op,
                    ": x's last dim must be even (gate and up halves of d each), got ",
                    x.size(-1), "; pass x of shape [..., 2 * d]");
  const bool dynamic = !scale.has_value();
  const float inv = dynamic ? 0.0f : static_inv(*scale, op);
  const int64_t d = x.size(-1) / 2;
  auto q = empty_q(x, d, dtype);
  at::Tensor scales = dynamic ? empty_token_scales(x) : at::Tensor();
  const Rows rows(x);
  if (rows.count == 0 || d == 0) {
    if (dynamic && scales.numel() > 0) scales.fill_(min_scale(dtype));
    return {q, scales};
  }
  dispatch_format(dtype, op, [&]<typename F>() { dispatch(x.scalar_type(), [&]<typename T>() {
    if constexpr (!std::is_same_v<T, float>) {
      const float* table = silu_table<T>();
      const T* xp = x.const_data_ptr<T>();
      uint8_t* qp = static_cast<uint8_t*>(q.data_ptr());
      float* sp = dynamic ? scales.data_ptr<float>() : nullptr;
      at::parallel_for(0, rows.count, grain_for(2 * d), [&](int64_t begin, int64_t end) {
        std::vector<float> y(dynamic ? d : 0);
        for (int64_t r = begin; r < end; ++r) {
          const T* row = xp + rows.offset(r);
          uint8_t* qr = qp + r * d;
          auto sink = make_sink<F>(qr, inv, y.data(), dynamic);
          silu_mul_row<T, F>(row, row + d, d, table, sink);
          if (dynamic) finish_dynamic(sink, qr, sp + r, ub, d);
        }
      });
    }
  }); });
  return {q, scales};
}

at::Tensor silu_and_mul_quant(const at::Tensor& x, const at::Tensor& scale,
                              at::ScalarType dtype) {
  return std::get<0>(act_quant(x, scale, 0.0f, dtype, "silu_and_mul_quant"));
}

std::tuple<at::Tensor, at::Tensor> silu_and_mul_dynamic_quant(
    const at::Tensor& x, at::ScalarType dtype, const std::optional<at::Tensor>& scale_ub) {
  const char* op = "silu_and_mul_dynamic_quant";
  return act_quant(x, std::nullopt, read_ub(scale_ub, op), dtype, op);
}

// For tests: torch's cascade sum of squares as this file repeats it.
double sum_squares(const at::Tensor& row) {
  auto r = row.to(at::kFloat).contiguous();
  return cascade_sum_sq(r.data_ptr<float>(), r.numel());
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("static_quant", &static_quant);
  m.def("dynamic_quant", &dynamic_quant);
  m.def("rms_norm_quant", &rms_norm_quant);
  m.def("rms_norm_dynamic_quant", &rms_norm_dynamic_quant);
  m.def("fused_add_rms_norm_quant", &fused_add_rms_norm_quant);
  m.def("fused_add_rms_norm_dynamic_quant", &fused_add_rms_norm_dynamic_quant);
  m.def("silu_and_mul_quant", &silu_and_mul_quant);
  m.def("silu_and_mul_dynamic_quant", &silu_and_mul_dynamic_quant);
  m.def("sum_squares", &sum_squares, "torch's fp32 cascade sum of the squares of a 1-D tensor");
}
