// opir's CPU kernels for the rotary family (ops/rotary.py): rotary_embedding and
// qk_norm_rope (vLLM form, in place), rotary_pos_emb and qk_norm_rotary_pos_emb
// (Hugging Face form, new outputs).
//
// Contract (the native functions): with T the query's dtype, cos and sin are
// first rounded to T (an fp32 cache with a bf16 query behaves as the cache
// rounded to bf16), then
//     o1 = T(T(x1 * cos) - T(x2 * sin)),   o2 = T(T(x2 * cos) + T(x1 * sin))
// every product and every sum rounded to T (torch's bf16/fp16 ops compute in
// fp32 and round), in fp32 two separate fp32 operations. The kernels do exactly
// that, in fp32 registers: each product is rounded to T before the add. This
// file is compiled with -ffp-contract=off (build.py) so that no product and
// add are fused into one FMA, which would round once where torch rounds twice
// (fp32 included). Hugging Face's `q*cos + rotate_half(q)*sin` is the same
// arithmetic: rotate_half negates, and T(-a*b) = -T(a*b) exactly.
//
// The q/k norm ops normalise each head row first, as opir's rms_norm native
// does (fp32 sum of squares, 1/sqrt(mean + eps), the weight multiply in
// promote_types(T, weight) with weight_bias making the weight fp32), round the
// normalised row to T and rotate it. The sum of squares runs in another order
// than torch's reduction, so these two ops are held to rms_norm's tolerance,
// not bit-identical (the rotation itself is exact).
//
// Layouts: the vLLM form takes query/key [tokens, heads * head_size] or
// [tokens, heads, head_size] whose last dim is contiguous, any token and head
// strides (column views of a qkv buffer are written in place, the rest of the
// buffer untouched). The Hugging Face form takes 4-D q/k with a contiguous last
// dim and any other strides, cos/sin [batch, seq, rotary_dim] broadcast by
// unsqueeze_dim 1 ([b, h, s, d]) or 2 ([b, s, h, d]).
//
// Safety: positions are checked to lie in [0, max_position) before any
// memory is written or the cache is read; every other invalid argument raises
// ValueError before anything runs (the launcher then re-raises the native's
// own message). Rows are split over threads with at::parallel_for when there
// is enough work.

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

namespace {

using at::BFloat16;
using at::Half;
using fVec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = fVec::size();
// Elements per at::parallel_for task: below this a call runs on the calling thread.
constexpr int64_t kGrainElements = 32768;
// Row functions are inlined into the row loop, so their constants and pointers
// are set up once per task rather than once per head.
#define OPIR_ROW inline __attribute__((always_inline))

// ----------------------------------------------------------------------------
// Loads, stores and roundings of kLanes (or 2 * kLanes) values.

template <typename T>
inline fVec load1(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return fVec::loadu(p);
  } else {
    fVec v;
    at::vec::load_to_float<T>(p, v);
    return v;
  }
}

template <typename T>
inline void load2(const T* p, fVec& a, fVec& b) {
  if constexpr (std::is_same_v<T, float>) {
    a = fVec::loadu(p);
    b = fVec::loadu(p + kLanes);
  } else {
    std::tie(a, b) = at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(p));
  }
}

// Stores round to nearest even as torch's conversions do (not AVX512-BF16's
// vcvtne2ps2bf16, which flushes subnormals to zero).
template <typename T>
inline void store1(T* p, const fVec& v) {
  if constexpr (std::is_same_v<T, float>) {
    v.store(p);
  } else {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, BFloat16>) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), at::vec::cvtfp32_bf16(__m512(v)));
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), at::vec::cvtfp32_fp16(__m512(v)));
    }
#elif defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<T, BFloat16>) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), at::vec::cvtfp32_bf16(__m256(v)));
    } else {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), at::vec::cvtfp32_fp16(__m256(v)));
    }
#else
    at::vec::convert_from_float<T>(v, v).store(p, kLanes);
#endif
  }
}

template <typename T>
inline void store2(T* p, const fVec& a, const fVec& b) {
  if constexpr (std::is_same_v<T, float>) {
    a.store(p);
    b.store(p + kLanes);
  } else {
    at::vec::convert_from_float<T>(a, b).store(p);
  }
}

// fp32 lanes rounded to bfloat16 (nearest even), staying fp32; NaN kept.
inline fVec round_bf16(const fVec& v) {
  using iVec = at::vec::Vectorized<int32_t>;
  const iVec bits = at::vec::cast<int32_t>(v);
  const iVec lsb = (bits >> iVec(16)) & iVec(1);
  const iVec rounded = (bits + iVec(0x7FFF) + lsb) & iVec(static_cast<int32_t>(0xFFFF0000u));
  return fVec::blendv(at::vec::cast<float>(rounded), v, v.isnan());
}

// "t.to(T)" inside an fp32 computation: every lane rounded to T, staying fp32.
template <typename T>
inline fVec rnd(const fVec& v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else if constexpr (std::is_same_v<T, BFloat16>) {
    return round_bf16(v);
  } else {
#if defined(CPU_CAPABILITY_AVX512)
    return _mm512_cvtph_ps(_mm512_cvtps_ph(__m512(v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(CPU_CAPABILITY_AVX2)
    return _mm256_cvtph_ps(_mm256_cvtps_ph(__m256(v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
    return std::get<0>(at::vec::convert_to_float<T>(at::vec::convert_from_float<T>(v, v)));
#endif
  }
}

template <typename T>
inline float rnd(float v) {
  return static_cast<float>(static_cast<T>(v));
}

// A cos/sin value: either of the query's dtype T (Hugging Face form) or an fp32
// value already rounded to T (the vLLM form's per-token buffers): exact in fp32.
template <typename T, typename C>
inline fVec load_cs(const C* p) {
  return load1<C>(p);
}

template <typename T, typename C>
inline float cs(C v) {
  return static_cast<float>(v);
}

// ----------------------------------------------------------------------------
// One head row. x (read) and o (written) may be the same row: each step reads
// its elements before it writes them.

// Neox: x1 = x[0, half), x2 = x[half, 2 half).
//   o[j]        = T(T(x1 * c1[j]) - T(x2 * s1[j]))
//   o[half + j] = T(T(x2 * c2[j]) + T(x1 * s2[j]))
// vLLM passes c1 = c2 and s1 = s2 (one cos/sin per pair); Hugging Face passes
// the two halves of its full-width cos/sin.
template <typename T, typename C>
OPIR_ROW void neox_row(const T* x, T* o, const C* c1, const C* s1, const C* c2, const C* s2,
                     int64_t n, int64_t half) {
  // pairs (x[j], x[half + j]) for j < n
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const fVec a = load1<T>(x + j), b = load1<T>(x + half + j);
    const fVec cv1 = load_cs<T>(c1 + j), sv1 = load_cs<T>(s1 + j);
    const fVec cv2 = load_cs<T>(c2 + j), sv2 = load_cs<T>(s2 + j);
    const fVec o1 = rnd<T>(a * cv1) - rnd<T>(b * sv1);
    const fVec o2 = rnd<T>(b * cv2) + rnd<T>(a * sv2);
    store1<T>(o + j, o1);
    store1<T>(o + half + j, o2);
  }
  for (; j < n; ++j) {
    const float a = static_cast<float>(x[j]), b = static_cast<float>(x[half + j]);
    const float o1 = rnd<T>(a * cs<T>(c1[j])) - rnd<T>(b * cs<T>(s1[j]));
    const float o2 = rnd<T>(b * cs<T>(c2[j])) + rnd<T>(a * cs<T>(s2[j]));
    o[j] = static_cast<T>(o1);
    o[half + j] = static_cast<T>(o2);
  }
}

// GPT-J: pairs (x[2i], x[2i + 1]) rotated by c[i], s[i], i < half.
template <typename T, typename C>
OPIR_ROW void gptj_row(const T* x, T* o, const C* c, const C* s, int64_t half) {
  int64_t i = 0;
  for (; i + kLanes <= half; i += kLanes) {
    fVec a, b;
    load2<T>(x + 2 * i, a, b);
    const auto [x1, x2] = at::vec::deinterleave2(a, b);
    const fVec cv = load_cs<T>(c + i), sv = load_cs<T>(s + i);
    const fVec o1 = rnd<T>(x1 * cv) - rnd<T>(x2 * sv);
    const fVec o2 = rnd<T>(x2 * cv) + rnd<T>(x1 * sv);
    const auto [p, q] = at::vec::interleave2(o1, o2);
    store2<T>(o + 2 * i, p, q);
  }
  for (; i < half; ++i) {
    const float a = static_cast<float>(x[2 * i]), b = static_cast<float>(x[2 * i + 1]);
    const float cv = cs<T>(c[i]), sv = cs<T>(s[i]);
    const float o1 = rnd<T>(a * cv) - rnd<T>(b * sv);
    const float o2 = rnd<T>(b * cv) + rnd<T>(a * sv);
    o[2 * i] = static_cast<T>(o1);
    o[2 * i + 1] = static_cast<T>(o2);
  }
}

// ----------------------------------------------------------------------------
// bfloat16 with AVX-512: 32 values per load, split without a permute into the
// even-indexed and odd-indexed ones (shift / mask: a bf16 is the upper half of
// its fp32), and joined back the same way. Roundings use the integer form of
// round-to-nearest-even (add 0x7FFF plus the lowest kept bit, drop the low 16
// bits), exact for subnormals too; it needs no NaN case here because every
// value rounded is a product or sum of bf16 values (x and the pre-rounded
// cos/sin), and such NaNs have low 16 bits of zero (the quieted NaN of an
// operand, or the default NaN), which rounding leaves unchanged.

#if defined(CPU_CAPABILITY_AVX512)
constexpr bool kSplitBf16 = true;

inline __m512i bf16_bias(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  return _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7FFF)), lsb);
}

inline __m512 bf16_round(__m512 v) {  // "v.to(bfloat16)" staying fp32
  return _mm512_castsi512_ps(
      _mm512_and_si512(bf16_bias(v), _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u))));
}

inline __m512 bf16_even(__m512i raw) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
}

inline __m512 bf16_odd(__m512i raw) {
  return _mm512_castsi512_ps(
      _mm512_and_si512(raw, _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u))));
}

// 32 bf16: even-indexed from `even`, odd-indexed from `odd` (both rounded here).
inline void bf16_store_split(BFloat16* p, __m512 even, __m512 odd) {
  const __m512i lo = _mm512_srli_epi32(bf16_bias(even), 16);
  // (bias(odd) & 0xFFFF0000) | lo
  const __m512i joined = _mm512_ternarylogic_epi32(
      bf16_bias(odd), lo, _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u)), 0xEC);
  _mm512_storeu_si512(p, joined);
}

// o1 = R(R(a*c) - R(b*s)), o2 = R(R(b*c) + R(a*s)) before the final rounding.
inline void bf16_rotate(__m512 a, __m512 b, __m512 c, __m512 s, __m512& o1, __m512& o2) {
  o1 = _mm512_sub_ps(bf16_round(_mm512_mul_ps(a, c)), bf16_round(_mm512_mul_ps(b, s)));
  o2 = _mm512_add_ps(bf16_round(_mm512_mul_ps(b, c)), bf16_round(_mm512_mul_ps(a, s)));
}

#if defined(__AVX512BF16__)
// The AVX512-BF16 conversion rounds to nearest even in one instruction but treats
// subnormal inputs and outputs as zero. It is used only where no value it rounds
// can be subnormal: every nonzero |x| >= 2^-60 (checked per 32 values, bf16_tiny)
// and every nonzero |cos|, |sin| >= 2^-40 (checked per token). Then each nonzero
// product is >= 2^-100, its bf16 rounding a multiple of 2^-107, and so is every
// nonzero sum of two: all far above 2^-126. Elsewhere the integer rounding runs.
constexpr bool kFastBf16 = true;

inline __mmask32 bf16_tiny(__m512i raw) {  // lanes with 0 < |x| < 2^-60
  const __m512i mag = _mm512_and_si512(raw, _mm512_set1_epi16(0x7FFF));
  return _mm512_cmplt_epu16_mask(_mm512_sub_epi16(mag, _mm512_set1_epi16(1)),
                                 _mm512_set1_epi16((67 << 7) - 1));
}

inline __m512 bf16_round_fast(__m512 v) {
  const __m256i h = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

inline void bf16_store_split_fast(BFloat16* p, __m512 even, __m512 odd) {
  const __m512i e = _mm512_castsi256_si512(reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(even)));
  const __m512i o = _mm512_castsi256_si512(reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(odd)));
  // out[2k] = e[k], out[2k + 1] = o[k] (o's lanes are 32 + k in the pair)
  const __m512i idx = _mm512_set_epi16(
      47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
      39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  _mm512_storeu_si512(p, _mm512_permutex2var_epi16(e, idx, o));
}

// Neox, 16 pairs (a = x1, b = x2 lanes) in one go, rounding two products per
// instruction: P = cvt(a*c | b*c), Q = cvt(b*s | a*s) hold, after the shift / mask
// unpack, R(b*c) and R(a*s) aligned in lanes 0-7 and R(a*c) and R(b*s) in lanes
// 8-15 (even lanes of the 16 from the shift, odd ones from the mask), so one add
// and one masked subtract give o2 and o1 side by side. The result: 32 bf16 words,
// lane m meaning lane m of a/b: words 0-7 o2 at m = 2k, 8-15 o1 at m = 2k, 16-23 o2
// at m = 2k + 1, 24-31 o1 at m = 2k + 1 (k the word's index in its group of 8).
inline __m512i bf16_rotate_packed(__m512 a, __m512 b, __m512 c, __m512 s) {
  const __m512i mask = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  const __m512i p = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(_mm512_mul_ps(a, c),
                                                                  _mm512_mul_ps(b, c)));
  const __m512i q = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(_mm512_mul_ps(b, s),
                                                                  _mm512_mul_ps(a, s)));
  const __m512 p_lo = _mm512_castsi512_ps(_mm512_slli_epi32(p, 16));
  const __m512 q_lo = _mm512_castsi512_ps(_mm512_slli_epi32(q, 16));
  const __m512 p_hi = _mm512_castsi512_ps(_mm512_and_si512(p, mask));
  const __m512 q_hi = _mm512_castsi512_ps(_mm512_and_si512(q, mask));
  const __m512 z_lo = _mm512_mask_sub_ps(_mm512_add_ps(p_lo, q_lo), 0xFF00, p_lo, q_lo);
  const __m512 z_hi = _mm512_mask_sub_ps(_mm512_add_ps(p_hi, q_hi), 0xFF00, p_hi, q_hi);
  return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(z_hi, z_lo));
}

// Word indices that gather o1 (first) or o2 of 32 neighbouring positions from the
// packed results of their even (e) and odd (o, +32) positions in the split layout.
struct PackedIndex {
  alignas(64) int16_t o1[32];
  alignas(64) int16_t o2[32];
  constexpr PackedIndex() : o1{}, o2{} {
    for (int q = 0; q < 8; ++q) {
      o1[4 * q] = static_cast<int16_t>(8 + q);
      o1[4 * q + 1] = static_cast<int16_t>(32 + 8 + q);
      o1[4 * q + 2] = static_cast<int16_t>(24 + q);
      o1[4 * q + 3] = static_cast<int16_t>(32 + 24 + q);
      o2[4 * q] = static_cast<int16_t>(q);
      o2[4 * q + 1] = static_cast<int16_t>(32 + q);
      o2[4 * q + 2] = static_cast<int16_t>(16 + q);
      o2[4 * q + 3] = static_cast<int16_t>(32 + 16 + q);
    }
  }
};
constexpr PackedIndex kPacked{};

inline void bf16_rotate_fast(__m512 a, __m512 b, __m512 c, __m512 s, __m512& o1, __m512& o2) {
  o1 = _mm512_sub_ps(bf16_round_fast(_mm512_mul_ps(a, c)), bf16_round_fast(_mm512_mul_ps(b, s)));
  o2 = _mm512_add_ps(bf16_round_fast(_mm512_mul_ps(b, c)), bf16_round_fast(_mm512_mul_ps(a, s)));
}
#else
constexpr bool kFastBf16 = false;
#endif
#else
constexpr bool kSplitBf16 = false;
constexpr bool kFastBf16 = false;
#endif

// The cos and sin of one token as the query dtype T sees them (rounded to T),
// in fp32: natural order (cn, sn: half values each) and, for the bf16 neox
// kernel, split per 32-block into even-indexed then odd-indexed (ce, se).
struct TokenCs {
  std::vector<float> buf;
  float *cn = nullptr, *sn = nullptr, *ce = nullptr, *se = nullptr;
  bool fast = false;  // every nonzero |cos|, |sin| >= 2^-40 (see kFastBf16)
  explicit TokenCs(int64_t half) : buf(4 * half + 1) {
    cn = buf.data();
    sn = cn + half;
    ce = sn + half;
    se = ce + half;
  }
};

template <typename T, typename C>
inline void load_token(const C* row, int64_t col_stride, int64_t half, TokenCs& t) {
  if constexpr (std::is_same_v<C, double>) {
    for (int64_t i = 0; i < half; ++i) {  // torch converts fp64 -> fp32 -> T
      t.cn[i] = rnd<T>(static_cast<float>(row[i * col_stride]));
      t.sn[i] = rnd<T>(static_cast<float>(row[(half + i) * col_stride]));
    }
  } else {
    int64_t i = 0;
    if (col_stride == 1) {
      for (; i + kLanes <= half; i += kLanes) {
        fVec c = load1<C>(row + i), s = load1<C>(row + half + i);
        if constexpr (!std::is_same_v<C, T> && !std::is_same_v<T, float>) {
          c = rnd<T>(c);  // the cache cast to the query's dtype (NaN kept)
          s = rnd<T>(s);
        }
        c.store(t.cn + i);
        s.store(t.sn + i);
      }
    }
    for (; i < half; ++i) {
      t.cn[i] = rnd<T>(static_cast<float>(row[i * col_stride]));
      t.sn[i] = rnd<T>(static_cast<float>(row[(half + i) * col_stride]));
    }
  }
  if constexpr (std::is_same_v<T, BFloat16> && kSplitBf16) {
    for (int64_t j = 0; j + 2 * kLanes <= half; j += 2 * kLanes) {
      auto [ce, co] = at::vec::deinterleave2(fVec::loadu(t.cn + j), fVec::loadu(t.cn + j + kLanes));
      auto [se, so] = at::vec::deinterleave2(fVec::loadu(t.sn + j), fVec::loadu(t.sn + j + kLanes));
      ce.store(t.ce + j);
      co.store(t.ce + j + kLanes);
      se.store(t.se + j);
      so.store(t.se + j + kLanes);
    }
  }
  if constexpr (std::is_same_v<T, BFloat16> && kFastBf16) {
    // cn and sn are adjacent: 2 * half values
    const fVec zero(0.0f), lo(0x1p-40f);
    fVec bad(0.0f);
    int64_t i = 0;
    for (; i + kLanes <= 2 * half; i += kLanes) {
      const fVec m = fVec::loadu(t.cn + i).abs();
      bad = bad | ((m < lo) & (m != zero));
    }
    bool fast = bad.zero_mask() == (1 << kLanes) - 1;
    for (; i < 2 * half; ++i) {
      const float m = std::fabs(t.cn[i]);
      fast &= m == 0.0f || m >= 0x1p-40f;
    }
    t.fast = fast;
  }
}

// vLLM-form rows from a token's buffers.
template <typename T>
OPIR_ROW void neox_row_vllm(const T* x, T* o, const TokenCs& t, int64_t half) {
  int64_t j = 0;
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, BFloat16>) {
    for (; j + 2 * kLanes <= half; j += 2 * kLanes) {
      const __m512i r1 = _mm512_loadu_si512(x + j), r2 = _mm512_loadu_si512(x + half + j);
      const __m512 ce = _mm512_loadu_ps(t.ce + j), co = _mm512_loadu_ps(t.ce + j + kLanes);
      const __m512 se = _mm512_loadu_ps(t.se + j), so = _mm512_loadu_ps(t.se + j + kLanes);
      __m512 o1e, o2e, o1o, o2o;
#if defined(__AVX512BF16__)
      if (t.fast && (bf16_tiny(r1) | bf16_tiny(r2)) == 0) {
        const __m512i fe = bf16_rotate_packed(bf16_even(r1), bf16_even(r2), ce, se);
        const __m512i fo = bf16_rotate_packed(bf16_odd(r1), bf16_odd(r2), co, so);
        _mm512_storeu_si512(o + j, _mm512_permutex2var_epi16(fe, _mm512_load_si512(kPacked.o1), fo));
        _mm512_storeu_si512(o + half + j,
                            _mm512_permutex2var_epi16(fe, _mm512_load_si512(kPacked.o2), fo));
        continue;
      }
#endif
      bf16_rotate(bf16_even(r1), bf16_even(r2), ce, se, o1e, o2e);
      bf16_rotate(bf16_odd(r1), bf16_odd(r2), co, so, o1o, o2o);
      bf16_store_split(o + j, o1e, o1o);
      bf16_store_split(o + half + j, o2e, o2o);
    }
  }
#endif
  if (j < half) {
    neox_row<T, float>(x + j, o + j, t.cn + j, t.sn + j, t.cn + j, t.sn + j, half - j, half);
  }
}

template <typename T>
OPIR_ROW void gptj_row_vllm(const T* x, T* o, const TokenCs& t, int64_t half) {
  int64_t i = 0;
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, BFloat16>) {
    for (; i + kLanes <= half; i += kLanes) {
      const __m512i r = _mm512_loadu_si512(x + 2 * i);
      __m512 o1, o2;
#if defined(__AVX512BF16__)
      if (t.fast && bf16_tiny(r) == 0) {
        bf16_rotate_fast(bf16_even(r), bf16_odd(r), _mm512_loadu_ps(t.cn + i),
                         _mm512_loadu_ps(t.sn + i), o1, o2);
        bf16_store_split_fast(o + 2 * i, o1, o2);
        continue;
      }
#endif
      bf16_rotate(bf16_even(r), bf16_odd(r), _mm512_loadu_ps(t.cn + i), _mm512_loadu_ps(t.sn + i),
                  o1, o2);
      bf16_store_split(o + 2 * i, o1, o2);
    }
  }
#endif
  if (i < half) gptj_row<T, float>(x + 2 * i, o + 2 * i, t.cn + i, t.sn + i, half - i);
}

// ----------------------------------------------------------------------------
// Per-head RMSNorm of one row into z (T): the rms_norm native's rounding.
// w: the effective weight as fp32 (exact for any W); round_w: the native
// multiplies in T (a weight of T's dtype and no bias), so the normalised value
// is rounded to T before the multiply.

template <typename T>
inline float sum_squares(const T* row, int64_t n) {
  fVec acc_a(0.0f), acc_b(0.0f);
  int64_t j = 0;
  for (; j + 2 * kLanes <= n; j += 2 * kLanes) {
    fVec a, b;
    load2<T>(row + j, a, b);
    acc_a = acc_a + a * a;
    acc_b = acc_b + b * b;
  }
  float s = at::vec::vec_reduce_all<float>([](fVec& x, fVec& y) { return x + y; },
                                           acc_a + acc_b);
  for (; j < n; ++j) {
    const float v = static_cast<float>(row[j]);
    s += v * v;
  }
  return s;
}

template <typename T>
OPIR_ROW void norm_row(const T* x, T* z, const float* w, bool round_w, float eps, int64_t n) {
  const float inv = 1.0f / std::sqrt(sum_squares(x, n) / static_cast<float>(n) + eps);
  const fVec vinv(inv);
  int64_t j = 0;
  for (; j + 2 * kLanes <= n; j += 2 * kLanes) {
    fVec a, b;
    load2<T>(x + j, a, b);
    a = a * vinv;
    b = b * vinv;
    if (round_w) {
      a = rnd<T>(a);
      b = rnd<T>(b);
    }
    store2<T>(z + j, a * fVec::loadu(w + j), b * fVec::loadu(w + j + kLanes));
  }
  for (; j < n; ++j) {
    float v = static_cast<float>(x[j]) * inv;
    if (round_w) v = rnd<T>(v);
    z[j] = static_cast<T>(v * w[j]);
  }
}

// ----------------------------------------------------------------------------
// Argument checks. Messages are short: the Python launcher re-raises the
// native's own message for any ValueError raised here.

bool float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

template <typename F>
void dispatch2(at::ScalarType x, at::ScalarType c, F&& f) {
  auto with_c = [&]<typename T>() {
    switch (c) {
      case at::kFloat:
        return f.template operator()<T, float>();
      case at::kBFloat16:
        return f.template operator()<T, BFloat16>();
      case at::kHalf:
        return f.template operator()<T, Half>();
      case at::kDouble:
        return f.template operator()<T, double>();
      default:
        TORCH_CHECK_VALUE(false, "unsupported cos/sin dtype ", c);
    }
  };
  switch (x) {
    case at::kFloat:
      return with_c.template operator()<float>();
    case at::kBFloat16:
      return with_c.template operator()<BFloat16>();
    case at::kHalf:
      return with_c.template operator()<Half>();
    default:
      TORCH_CHECK_VALUE(false, "unsupported query dtype ", x);
  }
}

// Heads of a vLLM-form query/key: element (t, h, j) at base + t * tok + h * head + j.
struct Heads {
  int64_t count = 0, tok = 0, head = 0;
  bool unit = true;  // last dim contiguous
};

Heads heads_of(const at::Tensor& x, int64_t head_size, const char* op, const char* name) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": ", name, " must be on the CPU");
  TORCH_CHECK_VALUE(float_dtype(x.scalar_type()), op, ": ", name,
                    " must be float32, bfloat16 or float16");
  Heads h;
  if (x.dim() == 2) {
    TORCH_CHECK_VALUE(x.size(1) % head_size == 0, op, ": head_size must divide ", name,
                      "'s last dim");
    h.count = x.size(1) / head_size;
    h.tok = x.stride(0);
    h.head = head_size;
  } else {
    TORCH_CHECK_VALUE(x.dim() == 3 && x.size(2) == head_size, op, ": ", name,
                      " must be [tokens, heads * head_size] or [tokens, heads, head_size]");
    h.count = x.size(1);
    h.tok = x.stride(0);
    h.head = x.stride(1);
  }
  h.unit = x.size(-1) <= 1 || x.stride(-1) == 1;  // else: run on a contiguous copy
  return h;
}

struct RotaryArgs {
  Heads q, k;
  int64_t tokens = 0, rd = 0;
};

RotaryArgs check_rotary(const at::Tensor& positions, const at::Tensor& query,
                        const std::optional<at::Tensor>& key, int64_t head_size,
                        const at::Tensor& cache, std::optional<int64_t> rotary_dim,
                        const char* op) {
  TORCH_CHECK_VALUE(positions.dim() == 1 && (positions.scalar_type() == at::kLong ||
                                             positions.scalar_type() == at::kInt),
                    op, ": positions must be a 1-D int32 or int64 tensor");
  TORCH_CHECK_VALUE(positions.device().is_cpu(), op, ": positions must be on the CPU");
  TORCH_CHECK_VALUE(head_size > 0, op, ": head_size must be positive");
  RotaryArgs a;
  a.q = heads_of(query, head_size, op, "query");
  a.tokens = query.size(0);
  TORCH_CHECK_VALUE(positions.size(0) == a.tokens, op, ": one position per token");
  if (key.has_value()) {
    TORCH_CHECK_VALUE(key->scalar_type() == query.scalar_type() && key->dim() == query.dim() &&
                          key->size(0) == a.tokens,
                      op, ": key must have query's dtype, layout and tokens");
    a.k = heads_of(*key, head_size, op, "key");
  }
  TORCH_CHECK_VALUE(cache.dim() == 2 && (float_dtype(cache.scalar_type()) ||
                                          cache.scalar_type() == at::kDouble) &&
                        cache.device().is_cpu(),
                    op, ": cos_sin_cache must be a 2-D floating-point CPU tensor");
  a.rd = cache.size(1);
  TORCH_CHECK_VALUE(!rotary_dim.has_value() || *rotary_dim == a.rd, op,
                    ": rotary_dim must be None or cos_sin_cache's last dim");
  TORCH_CHECK_VALUE(a.rd % 2 == 0 && a.rd <= head_size, op,
                    ": rotary_dim must be even and at most head_size");
  // Every position in range before anything reads the cache or writes a row.
  const int64_t n = positions.size(0), ps = positions.stride(0), max_pos = cache.size(0);
  bool ok = true;
  if (positions.scalar_type() == at::kLong) {
    const int64_t* p = positions.const_data_ptr<int64_t>();
    for (int64_t t = 0; t < n; ++t) ok &= static_cast<uint64_t>(p[t * ps]) < static_cast<uint64_t>(max_pos);
  } else {
    const int32_t* p = positions.const_data_ptr<int32_t>();
    for (int64_t t = 0; t < n; ++t) ok &= p[t * ps] >= 0 && p[t * ps] < max_pos;
  }
  TORCH_CHECK_VALUE(ok, op, ": positions must be in [0, ", max_pos, ")");
  return a;
}

inline int64_t position(const at::Tensor& positions, int64_t t) {
  if (positions.scalar_type() == at::kLong) {
    return positions.const_data_ptr<int64_t>()[t * positions.stride(0)];
  }
  return positions.const_data_ptr<int32_t>()[t * positions.stride(0)];
}

// ----------------------------------------------------------------------------
// Overlap: whether rotating query and key in place gives the native's result.

// The bytes [first, last) that t may touch.
inline std::pair<uintptr_t, uintptr_t> byte_extent(const at::Tensor& t) {
  int64_t span = 1;
  for (int64_t d = 0; d < t.dim(); ++d) span += t.stride(d) * (t.size(d) - 1);
  auto first = reinterpret_cast<uintptr_t>(t.data_ptr());
  return {first, first + static_cast<uintptr_t>(span * t.element_size())};
}

inline bool may_overlap(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  auto [a0, a1] = byte_extent(a);
  auto [b0, b1] = byte_extent(b);
  return a0 < b1 && b0 < a1;
}

// True when no two elements of t share memory (sorted by stride, each dim must
// step past everything the smaller dims reach; conservative).
inline bool no_internal_overlap(const at::Tensor& t) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size) of dims with size > 1
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

// No two (token, head, column) elements of x share memory.
inline bool rows_distinct(const at::Tensor& x, const Heads& h, int64_t head_size, int64_t tokens) {
  if (x.numel() == 0 || x.is_contiguous()) return true;
  if (!h.unit) return no_internal_overlap(x);
  // heads within a token: disjoint when the head stride steps past a head
  const int64_t width = h.count <= 1 ? head_size : h.head * (h.count - 1) + head_size;
  if (h.count > 1 && h.head < head_size) return false;
  return tokens <= 1 || h.tok >= width;
}

// Query and key are disjoint column blocks of rows of one common stride (a
// qkv buffer split into views): per token, query covers [0, wq) and key
// [c, c + wk) of a row of `stride` elements, c = offset(key) - offset(query) mod stride.
inline bool disjoint_columns(const at::Tensor& q, const Heads& hq, const at::Tensor& k,
                             const Heads& hk, int64_t head_size) {
  if (hq.tok != hk.tok || hq.tok <= 0) return false;
  const int64_t stride = hq.tok;
  const int64_t wq = hq.count <= 1 ? head_size : hq.head * (hq.count - 1) + head_size;
  const int64_t wk = hk.count <= 1 ? head_size : hk.head * (hk.count - 1) + head_size;
  const auto diff = static_cast<int64_t>(reinterpret_cast<intptr_t>(k.data_ptr()) -
                                         reinterpret_cast<intptr_t>(q.data_ptr()));
  const int64_t esize = q.element_size();
  if (diff % esize != 0) return false;
  int64_t c = (diff / esize) % stride;
  if (c < 0) c += stride;
  // key's block [c, c + wk) and query's [0, wq) (and its copy one row on, [stride, ...))
  return wq <= c && c + wk <= stride;
}

bool in_place_safe(const at::Tensor& positions, const at::Tensor& query,
                   const std::optional<at::Tensor>& key, const at::Tensor& cache,
                   const RotaryArgs& a, int64_t head_size,
                   std::initializer_list<const at::Tensor*> others) {
  if (!rows_distinct(query, a.q, head_size, a.tokens)) return false;
  std::vector<const at::Tensor*> outs{&query};
  if (key.has_value()) {
    if (!rows_distinct(*key, a.k, head_size, a.tokens)) return false;
    if (may_overlap(query, *key) && !disjoint_columns(query, a.q, *key, a.k, head_size)) {
      return false;
    }
    outs.push_back(&*key);
  }
  for (const at::Tensor* out : outs) {
    if (may_overlap(*out, positions) || may_overlap(*out, cache)) return false;
    for (const at::Tensor* other : others) {
      if (may_overlap(*out, *other)) return false;
    }
  }
  return true;
}

inline int64_t grain_rows(int64_t head_size) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(head_size, 1));
}

// ----------------------------------------------------------------------------
// vLLM form, in place.

struct NormArgs {
  const float* qw = nullptr;  // effective weights as fp32 [head_size]
  const float* kw = nullptr;
  bool round_w = false;
  float eps = 0.0f;
};

template <typename T, typename C>
void rotate_in_place(const at::Tensor& positions, const at::Tensor& query,
                     const std::optional<at::Tensor>& key, const at::Tensor& cache,
                     const RotaryArgs& a, int64_t head_size, bool neox, const NormArgs* norm) {
  const int64_t nq = a.q.count, nk = key.has_value() ? a.k.count : 0, nh = nq + nk;
  const int64_t rows = a.tokens * nh;
  if (rows == 0) return;
  T* qp = query.data_ptr<T>();
  T* kp = key.has_value() ? key->data_ptr<T>() : nullptr;
  const C* cp = cache.const_data_ptr<C>();
  const int64_t cs0 = cache.stride(0), cs1 = cache.stride(1), half = a.rd / 2;
  at::parallel_for(0, rows, grain_rows(head_size), [&](int64_t begin, int64_t end) {
    std::vector<T> z(norm != nullptr ? head_size : 0);
    TokenCs cs(half);
    int64_t t = begin / nh, h = begin - t * nh;
    load_token<T, C>(cp + position(positions, t) * cs0, cs1, half, cs);
    for (int64_t r = begin; r < end; ++r) {
      T* row = h < nq ? qp + t * a.q.tok + h * a.q.head : kp + t * a.k.tok + (h - nq) * a.k.head;
      const T* src = row;
      if (norm != nullptr) {
        norm_row<T>(row, z.data(), h < nq ? norm->qw : norm->kw, norm->round_w, norm->eps,
                    head_size);
        std::memcpy(row + a.rd, z.data() + a.rd, (head_size - a.rd) * sizeof(T));
        src = z.data();
      }
      if (neox) {
        neox_row_vllm<T>(src, row, cs, half);
      } else {
        gptj_row_vllm<T>(src, row, cs, half);
      }
      if (++h == nh && r + 1 < end) {
        h = 0;
        ++t;
        load_token<T, C>(cp + position(positions, t) * cs0, cs1, half, cs);
      }
    }
  });
}

// The effective norm weight as fp32 [head_size]; round_w when the native multiplies in T.
at::Tensor effective_weight(const at::Tensor& w, int64_t head_size,
                            double weight_bias, const char* op, const char* name) {
  TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == head_size && w.is_floating_point() &&
                        w.device().is_cpu(),
                    op, ": ", name, " must be a floating-point CPU tensor [head_size]");
  at::Tensor f = w.to(at::kFloat).contiguous();
  if (weight_bias != 0.0) f = f.is_same(w) ? f.add(weight_bias) : f.add_(weight_bias);
  return f;
}

// Copies of query/key when the in-place kernel cannot write them in place.
std::pair<at::Tensor, std::optional<at::Tensor>> private_copies(
    const at::Tensor& query, const std::optional<at::Tensor>& key) {
  std::optional<at::Tensor> k;
  if (key.has_value()) k = key->clone(at::MemoryFormat::Contiguous);
  return {query.clone(at::MemoryFormat::Contiguous), k};
}

// How a call runs: in place; on contiguous copies written back afterwards (a last
// dim with a stride, safe to write); or on copies that are returned (overlap).
enum class Mode { kInPlace, kCopyBack, kCopies };

Mode mode_of(bool safe, const RotaryArgs& a, bool has_key) {
  if (!safe) return Mode::kCopies;
  return a.q.unit && (!has_key || a.k.unit) ? Mode::kInPlace : Mode::kCopyBack;
}

void write_back(Mode mode, const at::Tensor& query, const std::optional<at::Tensor>& key,
                at::Tensor& q, std::optional<at::Tensor>& k) {
  if (mode != Mode::kCopyBack) return;
  const_cast<at::Tensor&>(query).copy_(q);
  if (key.has_value()) const_cast<at::Tensor&>(*key).copy_(*k);
  q = query;
  k = key;
}

std::vector<at::Tensor> rotary_embedding(const at::Tensor& positions, const at::Tensor& query,
                                         const std::optional<at::Tensor>& key,
                                         int64_t head_size, const at::Tensor& cache,
                                         bool is_neox_style, std::optional<int64_t> rotary_dim) {
  const char* op = "rotary_embedding";
  RotaryArgs a = check_rotary(positions, query, key, head_size, cache, rotary_dim, op);
  at::Tensor q = query;
  std::optional<at::Tensor> k = key;
  const Mode mode = mode_of(in_place_safe(positions, query, key, cache, a, head_size, {}), a,
                            key.has_value());
  if (mode != Mode::kInPlace) {
    std::tie(q, k) = private_copies(query, key);
    a = check_rotary(positions, q, k, head_size, cache, rotary_dim, op);
  }
  dispatch2(q.scalar_type(), cache.scalar_type(), [&]<typename T, typename C>() {
    rotate_in_place<T, C>(positions, q, k, cache, a, head_size, is_neox_style, nullptr);
  });
  write_back(mode, query, key, q, k);
  if (k.has_value()) return {q, *k};
  return {q};
}

std::tuple<at::Tensor, at::Tensor> qk_norm_rope(
    const at::Tensor& positions, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& q_weight, const at::Tensor& k_weight, double epsilon, int64_t head_size,
    const at::Tensor& cache, bool is_neox_style, std::optional<int64_t> rotary_dim,
    double weight_bias) {
  const char* op = "qk_norm_rope";
  std::optional<at::Tensor> key_opt = key;
  RotaryArgs a = check_rotary(positions, query, key_opt, head_size, cache, rotary_dim, op);
  const at::Tensor qw = effective_weight(q_weight, head_size, weight_bias,
                                         op, "q_weight");
  const at::Tensor kw = effective_weight(k_weight, head_size, weight_bias,
                                         op, "k_weight");
  at::Tensor q = query;
  std::optional<at::Tensor> k = key;
  // qw/kw are fresh fp32 copies unless the weight was fp32 already: check those too.
  const Mode mode = mode_of(
      in_place_safe(positions, query, key_opt, cache, a, head_size, {&qw, &kw}), a, true);
  if (mode != Mode::kInPlace) {
    std::tie(q, k) = private_copies(query, key_opt);
    a = check_rotary(positions, q, k, head_size, cache, rotary_dim, op);
  }
  NormArgs norm;
  norm.qw = qw.const_data_ptr<float>();
  norm.kw = kw.const_data_ptr<float>();
  norm.eps = static_cast<float>(epsilon);
  dispatch2(q.scalar_type(), cache.scalar_type(), [&]<typename T, typename C>() {
    // rms_norm multiplies in promote_types(T, weight): in T only for weights of T's
    // dtype without a bias (q and k weights alike, or each its own rule).
    const bool q_round = q_weight.scalar_type() == q.scalar_type() && weight_bias == 0.0;
    const bool k_round = k_weight.scalar_type() == q.scalar_type() && weight_bias == 0.0;
    if (q_round == k_round) {
      norm.round_w = q_round;
      rotate_in_place<T, C>(positions, q, k, cache, a, head_size, is_neox_style, &norm);
    } else {  // mixed weight dtypes: one pass per tensor
      norm.round_w = q_round;
      rotate_in_place<T, C>(positions, q, std::nullopt, cache, a, head_size, is_neox_style,
                            &norm);
      NormArgs knorm = norm;
      knorm.qw = norm.kw;
      knorm.round_w = k_round;
      RotaryArgs ka = a;
      ka.q = a.k;
      rotate_in_place<T, C>(positions, *k, std::nullopt, cache, ka, head_size, is_neox_style,
                            &knorm);
    }
  });
  write_back(mode, query, key_opt, q, k);
  return {q, *k};
}

// ----------------------------------------------------------------------------
// Hugging Face form: q/k 4-D, cos/sin [b, s, rd] unsqueezed at 1 or 2; new outputs.

struct Rows4 {
  int64_t n1 = 0, n2 = 0, count = 0;  // dims 1 and 2 (dim 0 = count / (n1 * n2))
  int64_t x0 = 0, x1 = 0, x2 = 0;      // input strides
  int64_t o0 = 0, o1 = 0, o2 = 0;      // output strides
  int64_t c0 = 0, c1 = 0, c2 = 0;      // cos/sin strides, broadcast
};

Rows4 rows4(const at::Tensor& x, const at::Tensor& out, const at::Tensor& cos,
            int64_t unsqueeze_dim) {
  Rows4 r;
  r.n1 = x.size(1);
  r.n2 = x.size(2);
  r.count = x.size(0) * r.n1 * r.n2;
  r.x0 = x.stride(0), r.x1 = x.stride(1), r.x2 = x.stride(2);
  r.o0 = out.stride(0), r.o1 = out.stride(1), r.o2 = out.stride(2);
  const at::Tensor c = cos.unsqueeze(unsqueeze_dim).expand({x.size(0), x.size(1), x.size(2),
                                                            cos.size(-1)});
  r.c0 = c.stride(0), r.c1 = c.stride(1), r.c2 = c.stride(2);
  return r;
}

template <typename T>
void pos_emb_one(const at::Tensor& x, const at::Tensor& out, const at::Tensor& cos,
                 const at::Tensor& sin, int64_t unsqueeze_dim, const float* w, bool round_w,
                 float eps) {
  const Rows4 r = rows4(x, out, cos, unsqueeze_dim);
  if (r.count == 0) return;
  const int64_t d = x.size(3), rd = cos.size(-1), half = rd / 2;
  const T* xp = x.const_data_ptr<T>();
  T* op = out.data_ptr<T>();
  const T* cp = cos.const_data_ptr<T>();
  const T* sp = sin.const_data_ptr<T>();
  // cos and sin have one shape; their strides may differ
  const Rows4 rs = rows4(x, out, sin, unsqueeze_dim);
  at::parallel_for(0, r.count, grain_rows(d), [&](int64_t begin, int64_t end) {
    std::vector<T> z(w != nullptr ? d : 0);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t i2 = i % r.n2, i01 = i / r.n2, i1 = i01 % r.n1, i0 = i01 / r.n1;
      const T* src = xp + i0 * r.x0 + i1 * r.x1 + i2 * r.x2;
      T* dst = op + i0 * r.o0 + i1 * r.o1 + i2 * r.o2;
      const T* c = cp + i0 * r.c0 + i1 * r.c1 + i2 * r.c2;
      const T* s = sp + i0 * rs.c0 + i1 * rs.c1 + i2 * rs.c2;
      if (w != nullptr) {
        norm_row<T>(src, z.data(), w, round_w, eps, d);
        src = z.data();
      }
      neox_row<T, T>(src, dst, c, s, c + half, s + half, half, half);
      if (rd < d) std::memcpy(dst + rd, src + rd, (d - rd) * sizeof(T));
    }
  });
}

void check_pos_emb(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                   const at::Tensor& sin, int64_t unsqueeze_dim, const char* op) {
  for (const at::Tensor* t : {&q, &k, &cos, &sin}) {
    TORCH_CHECK_VALUE(t->device().is_cpu() && t->scalar_type() == q.scalar_type(), op,
                      ": q, k, cos and sin must be CPU tensors of one dtype");
    TORCH_CHECK_VALUE(t->size(-1) <= 1 || t->stride(-1) == 1, op,
                      ": the last dimension of q, k, cos and sin must be contiguous");
  }
  TORCH_CHECK_VALUE(float_dtype(q.scalar_type()), op, ": q must be float32, bfloat16 or float16");
  TORCH_CHECK_VALUE(q.dim() == 4 && k.dim() == 4 && cos.dim() == 3 && cos.sizes() == sin.sizes(),
                    op, ": q/k must be 4-D and cos/sin 3-D of one shape");
  TORCH_CHECK_VALUE(unsqueeze_dim == 1 || unsqueeze_dim == 2, op, ": unsqueeze_dim must be 1 or 2");
  const int64_t rd = cos.size(-1);
  TORCH_CHECK_VALUE(k.size(3) == q.size(3) && rd % 2 == 0 && rd <= q.size(3), op,
                    ": rotary dim must be even and at most head_dim");
  const int64_t seq_dim = unsqueeze_dim == 1 ? 2 : 1;
  for (const at::Tensor* t : {&q, &k}) {
    TORCH_CHECK_VALUE((cos.size(0) == 1 || cos.size(0) == t->size(0)) &&
                          (cos.size(1) == 1 || cos.size(1) == t->size(seq_dim)),
                      op, ": cos/sin do not broadcast to q/k");
  }
}

at::Tensor empty_out(const at::Tensor& x) {
  // x's layout when it is dense (a transposed [b, s, h, d] view stays one), else contiguous
  return at::empty_like(x, at::MemoryFormat::Preserve);
}

std::tuple<at::Tensor, at::Tensor> rotary_pos_emb(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& cos, const at::Tensor& sin,
                                                  int64_t unsqueeze_dim) {
  check_pos_emb(q, k, cos, sin, unsqueeze_dim, "rotary_pos_emb");
  at::Tensor qo = empty_out(q), ko = empty_out(k);
  dispatch2(q.scalar_type(), q.scalar_type(), [&]<typename T, typename C>() {
    if constexpr (std::is_same_v<T, C>) {
      pos_emb_one<T>(q, qo, cos, sin, unsqueeze_dim, nullptr, false, 0.0f);
      pos_emb_one<T>(k, ko, cos, sin, unsqueeze_dim, nullptr, false, 0.0f);
    }
  });
  return {qo, ko};
}

std::tuple<at::Tensor, at::Tensor> qk_norm_rotary_pos_emb(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_weight,
    const at::Tensor& k_weight, double epsilon, const at::Tensor& cos, const at::Tensor& sin,
    int64_t unsqueeze_dim, double weight_bias) {
  const char* op = "qk_norm_rotary_pos_emb";
  check_pos_emb(q, k, cos, sin, unsqueeze_dim, op);
  const int64_t d = q.size(3);
  const at::Tensor qw = effective_weight(q_weight, d, weight_bias, op, "q_weight");
  const at::Tensor kw = effective_weight(k_weight, d, weight_bias, op, "k_weight");
  const bool q_round = q_weight.scalar_type() == q.scalar_type() && weight_bias == 0.0;
  const bool k_round = k_weight.scalar_type() == q.scalar_type() && weight_bias == 0.0;
  at::Tensor qo = empty_out(q), ko = empty_out(k);
  const float eps = static_cast<float>(epsilon);
  dispatch2(q.scalar_type(), q.scalar_type(), [&]<typename T, typename C>() {
    if constexpr (std::is_same_v<T, C>) {
      pos_emb_one<T>(q, qo, cos, sin, unsqueeze_dim, qw.const_data_ptr<float>(), q_round, eps);
      pos_emb_one<T>(k, ko, cos, sin, unsqueeze_dim, kw.const_data_ptr<float>(), k_round, eps);
    }
  });
  return {qo, ko};
}

}  // namespace

// The torch.ops.opir_cpu schemas are defined from Python (rotary_kernels.py) so
// they exist before this library is loaded (Inductor's cached code calls them).

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rotary_embedding", &rotary_embedding,
        "in place (private copies when query/key overlap in a way in-place cannot serve)");
  m.def("qk_norm_rope", &qk_norm_rope, "in place, as rotary_embedding");
  m.def("rotary_pos_emb", &rotary_pos_emb);
  m.def("qk_norm_rotary_pos_emb", &qk_norm_rotary_pos_emb);
}
