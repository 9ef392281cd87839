// Fused TAPA attention for CPUs: forward, backward and split-key decoding in one pass per tile.
//
// Scores (Eq. 12, from pre-scaled parts, see tapa/attention/phase.py):
//     a = qa . ka,  p = qp . kp,  c(m, n) = |m - n|^alpha,  s = a * cos(2 pi c p)
// (c p is the phase in turns: reducing it to [-1/2, 1/2] is an exact subtraction)
// Forward: online softmax over key blocks (flash attention); stores O and the row
// log-sum-exp L. Backward recomputes each tile from L:
//     P = exp(s - L),  dS = P * (dO . v - rowsum(dO * O))
//     da = dS * cos(2 pi c p),  dp = -dS * a * 2 pi c * sin(2 pi c p)
//     dqa = da ka, dka = da^T qa, dqp = dp kp, dkp = dp^T qp, dv = P^T dO
// Each tile costs matrix products (BLAS sgemm/dgemm from libtorch, one thread per task)
// and one vectorised elementwise pass (AVX-512 or AVX2 polynomial cos/sin/exp), so the
// scores never leave the cache. The distance factor c is read from a 1-D table indexed
// by the signed distance n - m, contiguous along a row of a tile.
//
// Parallelism: forward over (batch, head, query block, key split); backward over
// (batch, kv head, key block), which owns its dk, dv rows, with per-thread dq buffers
// (statically assigned, so results are bit-identical from run to run at a given thread count).
// Memory is O((Lq + Lk) * D) plus O(threads * block^2): linear in the sequence length.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <omp.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(TAPA_AVX512) || defined(TAPA_AVX2)
#include <immintrin.h>
#endif

extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*);
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*, const int*,
            const double*, const int*, const double*, double*, const int*);
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
}

namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;
constexpr float kLog2e = 1.44269504088896341f;

// the phase in radians of c (turns per unit of p) and p
template <typename T>
inline T radians(T c, T p) {
  return static_cast<T>(kTwoPi) * (c * p);
}
// lazy rescaling: exp(s - m) with a stale max m is exact math and safe in float32 while s - m
// stays below this margin (e^20 ~ 5e8); beyond it the row is redone with its new max
constexpr double kLazyMargin = 20.0;

// Row-major C = alpha op(A) op(B) + beta C, through column-major BLAS (C^T = op(B)^T op(A)^T).
void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b, int ldb,
          float beta, float* c, int ldc) {
  const char ca = ta ? 'T' : 'N', cb = tb ? 'T' : 'N';
  sgemm_(&cb, &ca, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc);
}

void gemm(bool ta, bool tb, int m, int n, int k, double alpha, const double* a, int lda, const double* b, int ldb,
          double beta, double* c, int ldc) {
  const char ca = ta ? 'T' : 'N', cb = tb ? 'T' : 'N';
  dgemm_(&cb, &ca, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc);
}

// Decoding (at most this many queries per head) has its own kernel; for few rows per task
// its products are plain vector loops: BLAS's gemv path costs more than the memory traffic
// it has to do, which is all there is to a decoding step.
constexpr int64_t kFewRows = 4;

// s[i][j] = qa_i . ka_j and p[i][j] = qp_i . kp_j in one pass over the keys: a key's amplitude
// and phase halves are read together (the two parts are usually adjacent slices of one key
// row), so the keys are one sequential stream from memory, read once for all the rows.
// qa[i], qp[i]: the query rows (of one head, or of the heads that share a key head). K: the
// keys' storage type (T, or bfloat16 for a bfloat16 cache read in place).
template <typename T, typename K>
void few_rows_scores(int64_t rows, int64_t cols, int64_t da, int64_t dp, const T* const* qa, const T* const* qp,
                     const K* ka, int64_t ldka, const K* kp, int64_t ldkp, T* s, T* p, int64_t ldo) {
  for (int64_t j = 0; j < cols; ++j) {
    const K* kaj = ka + j * ldka;
    const K* kpj = kp + j * ldkp;
    for (int64_t i = 0; i < rows; ++i) {
      const T* qai = qa[i];
      const T* qpi = qp[i];
      T sa = 0, sp = 0;
#pragma omp simd reduction(+ : sa)
      for (int64_t t = 0; t < da; ++t) sa += qai[t] * static_cast<T>(kaj[t]);
#pragma omp simd reduction(+ : sp)
      for (int64_t t = 0; t < dp; ++t) sp += qpi[t] * static_cast<T>(kpj[t]);
      s[i * ldo + j] = sa;
      p[i * ldo + j] = sp;
    }
  }
}

// acc[i] += sum_j p[i][j] v_j, reading each value row once, in order.
template <typename T, typename K>
void few_rows_accumulate(int64_t rows, int64_t cols, int64_t dv, const T* p, int64_t ldp, const K* v, int64_t ldv,
                         T* acc) {
  for (int64_t j = 0; j < cols; ++j) {
    const K* vj = v + j * ldv;
    for (int64_t i = 0; i < rows; ++i) {
      const T w = p[i * ldp + j];
      T* a = acc + i * dv;
#pragma omp simd
      for (int64_t t = 0; t < dv; ++t) a[t] += w * static_cast<T>(vj[t]);
    }
  }
}

// dst[0 .. n) = src[0 .. n) as T (a bfloat16 cache row widened for BLAS)
template <typename T, typename K>
void convert_row(const K* src, T* dst, int64_t n) {
  for (int64_t t = 0; t < n; ++t) dst[t] = static_cast<T>(src[t]);
}

// One BLAS thread inside each of our OpenMP threads (MKL; other BLAS run serially here anyway).
struct SerialBlas {
  int previous = 0;
  SerialBlas() {
    if (MKL_Set_Num_Threads_Local) previous = MKL_Set_Num_Threads_Local(1);
  }
  ~SerialBlas() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous);
  }
};

// ---- elementwise passes over one row of a tile: n visible columns of bk ----

// s[j] = a[j] * cos(2 pi c[j] p[j]) written over a; returns the row max (NaN may win: it propagates).
template <typename T>
T scores_row(T* a, const T* p, const T* c, int n) {
  T mx = -std::numeric_limits<T>::infinity();
  for (int j = 0; j < n; ++j) {
    a[j] = a[j] * std::cos(radians(c[j], p[j]));
    mx = (a[j] > mx || std::isnan(a[j])) ? a[j] : mx;
  }
  return mx;
}

// out[j] = exp(s[j] - m) for j < n, 0 for n <= j < bk; returns the sum.
template <typename T>
T exp_row(const T* s, T* out, int n, int bk, T m) {
  T sum = 0;
  for (int j = 0; j < n; ++j) {
    out[j] = std::exp(s[j] - m);
    sum += out[j];
  }
  for (int j = n; j < bk; ++j) out[j] = 0;
  return sum;
}

// One pass for a row whose running max m is already finite: out[j] = exp(a[j] cos(2 pi c[j] p[j]) - m)
// for j < n, 0 up to bk; returns the sum and sets *max to the row's largest score. The caller
// redoes the row with a larger m when that max exceeds m by too much (lazy rescaling: after
// the first key block this is rare, and it saves a pass over the tile and the rescaling of
// the accumulator).
template <typename T>
T scores_exp_row(const T* a, const T* p, const T* c, int n, int bk, T m, T* out, T* max) {
  T sum = 0, mx = -std::numeric_limits<T>::infinity();
  for (int j = 0; j < n; ++j) {
    const T s = a[j] * std::cos(radians(c[j], p[j]));
    mx = s > mx ? s : mx;
    out[j] = std::exp(s - m);
    sum += out[j];
  }
  for (int j = n; j < bk; ++j) out[j] = 0;
  *max = mx;
  return sum;
}

// Backward on one row: in a = amplitudes, p = phase products, g = dO . v^T;
// out: prob = exp(a cos(cp) - lse), a <- dS cos(cp), p <- -dS a c sin(cp), zeros past n.
template <typename T>
void backward_row(T* a, T* p, const T* g, T* prob, const T* c, int n, int bk, T lse, T delta) {
  for (int j = 0; j < n; ++j) {
    const T ph = radians(c[j], p[j]);
    const T cs = std::cos(ph), sn = std::sin(ph);
    const T pr = std::exp(a[j] * cs - lse);
    const T ds = pr * (g[j] - delta);
    prob[j] = pr;
    p[j] = -ds * a[j] * static_cast<T>(kTwoPi) * c[j] * sn;
    a[j] = ds * cs;
  }
  for (int j = n; j < bk; ++j) a[j] = p[j] = prob[j] = 0;
}

#if defined(TAPA_AVX512) || defined(TAPA_AVX2)
// One vector ISA per build, chosen from the build machine's CPU flags (fused_cpu.py): the
// polynomials and row passes below are written once against this thin layer.
#if defined(TAPA_AVX512)
struct Simd {  // 16 float32 lanes, masks in k registers
  using V = __m512;
  using I = __m512i;
  using M = __mmask16;
  static constexpr int W = 16;
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  // 16 bfloat16 values as float32: the 16 bits are the float's upper half
  static V load(const c10::BFloat16* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V zero() { return _mm512_setzero_ps(); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }    // a b + c
  static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a b
  static V fmsub(V a, V b, V c) { return _mm512_fmsub_ps(a, b, c); }    // a b - c
  // max/min return their second operand when either is NaN (as SSE/AVX2)
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static V round(V x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static I to_int(V x) { return _mm512_cvtps_epi32(x); }
  static V bits(I i) { return _mm512_castsi512_ps(i); }
  static I and_int(I i, int x) { return _mm512_and_si512(i, _mm512_set1_epi32(x)); }
  static I add_int(I i, int x) { return _mm512_add_epi32(i, _mm512_set1_epi32(x)); }
  template <int n>
  static I shift_left(I i) { return _mm512_slli_epi32(i, n); }
  static V flip(V a, V sign) { return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), _mm512_castps_si512(sign))); }
  static M odd(I q) { return _mm512_test_epi32_mask(q, _mm512_set1_epi32(1)); }
  static V select(M m, V a, V b) { return _mm512_mask_blend_ps(m, a, b); }  // m ? b : a
  static float sum(V v) { return _mm512_reduce_add_ps(v); }
  // lane j = the sum of x[j]'s lanes, j < 16: pairs, then quads within 128-bit lanes, then
  // across lanes (15 adds and 30 shuffles for 16 sums, against 16 full reductions)
  static V transpose_sums(const V* x) {
    V s[8], u[4];
    for (int i = 0; i < 8; ++i)
      s[i] = add(_mm512_unpacklo_ps(x[2 * i], x[2 * i + 1]), _mm512_unpackhi_ps(x[2 * i], x[2 * i + 1]));
    for (int i = 0; i < 4; ++i) {  // per 128-bit lane: the lane's sums of x[4i .. 4i+3]
      const __m512d a = _mm512_castps_pd(s[2 * i]), b = _mm512_castps_pd(s[2 * i + 1]);
      u[i] = add(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    const V w01 = add(_mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                      _mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const V w23 = add(_mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(2, 0, 2, 0)),
                      _mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return add(_mm512_shuffle_f32x4(w01, w23, _MM_SHUFFLE(2, 0, 2, 0)),
               _mm512_shuffle_f32x4(w01, w23, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  // 2^x = p 2^n (n = round(x), p = 2^(x - n)): vscalefps underflows to 0 and overflows to inf
  // by itself; the clamp only keeps x = -inf from becoming -inf - (-inf)
  static V exp2_clamp(V x) { return max(set1(-200.0f), x); }
  static V times_pow2(V p, V n) { return _mm512_scalef_ps(p, n); }
};
#else
struct Simd {  // 8 float32 lanes, masks as all-ones lanes
  using V = __m256;
  using I = __m256i;
  using M = __m256;
  static constexpr int W = 8;
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load(const c10::BFloat16* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V zero() { return _mm256_setzero_ps(); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
  static V fmsub(V a, V b, V c) { return _mm256_fmsub_ps(a, b, c); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V round(V x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static I to_int(V x) { return _mm256_cvtps_epi32(x); }
  static V bits(I i) { return _mm256_castsi256_ps(i); }
  static I and_int(I i, int x) { return _mm256_and_si256(i, _mm256_set1_epi32(x)); }
  static I add_int(I i, int x) { return _mm256_add_epi32(i, _mm256_set1_epi32(x)); }
  template <int n>
  static I shift_left(I i) { return _mm256_slli_epi32(i, n); }
  static V flip(V a, V sign) { return _mm256_xor_ps(a, sign); }
  static M odd(I q) { return bits(_mm256_cmpeq_epi32(and_int(q, 1), _mm256_set1_epi32(1))); }
  static V select(M m, V a, V b) { return _mm256_blendv_ps(a, b, m); }
  static float sum(V v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_hadd_ps(lo, lo);
    lo = _mm_hadd_ps(lo, lo);
    return _mm_cvtss_f32(lo);
  }
  // lane j = the sum of x[j]'s lanes, j < 8 (as the AVX-512 version, one lane level fewer)
  static V transpose_sums(const V* x) {
    V s[4], u[2];
    for (int i = 0; i < 4; ++i)
      s[i] = add(_mm256_unpacklo_ps(x[2 * i], x[2 * i + 1]), _mm256_unpackhi_ps(x[2 * i], x[2 * i + 1]));
    for (int i = 0; i < 2; ++i) {
      const __m256d a = _mm256_castps_pd(s[2 * i]), b = _mm256_castps_pd(s[2 * i + 1]);
      u[i] = add(_mm256_castpd_ps(_mm256_unpacklo_pd(a, b)), _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)));
    }
    return add(_mm256_permute2f128_ps(u[0], u[1], 0x20), _mm256_permute2f128_ps(u[0], u[1], 0x31));
  }
  // 2^n through the exponent field: n = -127 gives the bit pattern of 0 (underflow to 0),
  // n = 128 that of inf
  static V exp2_clamp(V x) { return min(set1(128.0f), max(set1(-127.0f), x)); }
  static V times_pow2(V p, V n) { return mul(p, bits(shift_left<23>(add_int(to_int(n), 127)))); }
};
#endif

using V = Simd::V;
constexpr int W = Simd::W;

// float32 cos, sin and 2^x on W lanes, from phases in turns. Reducing a phase x (turns) to
// r = x - round(x) in [-1/2, 1/2] is an exact float32 subtraction, so no Cody-Waite
// constants are needed: the error is the polynomial's (4e-7 absolute) for any |x| whose
// float32 value still has fractional digits. exp(y) is computed as 2^(y log2 e), the
// log2 e folded by the callers into one FMA with the row max; 2^r on [-1/2, 1/2] is a
// degree-5 minimax polynomial (2.3e-7 relative), scaled by 2^n.
struct SinCos {
  V sin, cos;
};

// sin(2 pi x), cos(2 pi x): quarter turns n = round(4x), u = 2 pi (x - n/4) in [-pi/4, pi/4],
// then the Cephes sin/cos polynomials and the quadrant's swap and signs.
inline SinCos sincos_turns(V x) {
  using S = Simd;
  const V n = S::round(S::mul(x, S::set1(4.0f)));
  const V u = S::mul(S::fnmadd(n, S::set1(0.25f), x), S::set1(static_cast<float>(kTwoPi)));
  const V u2 = S::mul(u, u);
  V ps = S::fmadd(S::set1(-1.9515295891e-4f), u2, S::set1(8.3321608736e-3f));
  ps = S::fmadd(ps, u2, S::set1(-1.6666654611e-1f));
  ps = S::fmadd(S::mul(ps, u2), u, u);  // sin u
  V pc = S::fmadd(S::set1(2.443315711809948e-5f), u2, S::set1(-1.388731625493765e-3f));
  pc = S::fmadd(pc, u2, S::set1(4.166664568298827e-2f));
  pc = S::fmadd(S::mul(pc, u2), u2, S::fnmadd(S::set1(0.5f), u2, S::set1(1.0f)));  // cos u
  // quadrant q = n mod 4: sin = (sin u, cos u, -sin u, -cos u)[q], cos = (cos u, -sin u, -cos u, sin u)[q]
  const Simd::I q = S::to_int(n);
  const Simd::M swap = S::odd(q);
  const V sin_sign = S::bits(S::shift_left<30>(S::and_int(q, 2)));
  const V cos_sign = S::bits(S::shift_left<30>(S::and_int(S::add_int(q, 1), 2)));
  return {S::flip(S::select(swap, ps, pc), sin_sign), S::flip(S::select(swap, pc, ps), cos_sign)};
}

// cos(2 pi x) alone (the forward): r = x - round(x), one even polynomial of degree 12 in r
// (near-minimax fit of cos(2 pi r) on [-1/2, 1/2]; 4.0e-7 absolute error in float32).
inline V cos_turns(V x) {
  using S = Simd;
  const V r = S::sub(x, S::round(x));
  const V t = S::mul(r, r);
  V p = S::fmadd(S::set1(6.529609680175781f), t, S::set1(-25.968313217163086f));
  p = S::fmadd(p, t, S::set1(60.16783142089844f));
  p = S::fmadd(p, t, S::set1(-85.45016479492188f));
  p = S::fmadd(p, t, S::set1(64.93911743164062f));
  p = S::fmadd(p, t, S::set1(-19.73920440673828f));
  return S::fmadd(p, t, S::set1(1.0f));
}

// 2^x: n = round(x), 2^(x - n) by the polynomial, times 2^n. Keeps NaN; 0 where float32
// underflows.
inline V exp2_v(V x) {
  using S = Simd;
  x = S::exp2_clamp(x);  // max/min return their second operand when either is NaN: NaN is kept
  const V n = S::round(x);
  const V r = S::sub(x, n);
  V p = S::fmadd(S::set1(0.0013409997336566448f), r, S::set1(0.009676036424934864f));
  p = S::fmadd(p, r, S::set1(0.05550297349691391f));
  p = S::fmadd(p, r, S::set1(0.2402210682630539f));
  p = S::fmadd(p, r, S::set1(0.6931472420692444f));
  p = S::fmadd(p, r, S::set1(1.0000001192092896f));
  return S::times_pow2(p, n);
}

inline float hmax(V v) {
  alignas(64) float x[W];
  Simd::store(x, v);
  float m = x[0];
  for (int i = 1; i < W; ++i) m = (x[i] > m || std::isnan(x[i])) ? x[i] : m;
  return m;
}

// a[j:j+W] * cos(2 pi c[j:j+W] p[j:j+W]): W scores of a tile row
inline V score_v(const float* a, const float* p, const float* c, int j) {
  return Simd::mul(Simd::load(a + j), cos_turns(Simd::mul(Simd::load(c + j), Simd::load(p + j))));
}

template <>
float scores_row<float>(float* a, const float* p, const float* c, int n) {
  // two independent chains per loop for instruction-level parallelism. A NaN score need not
  // reach the max: exp(NaN - max) is NaN and carries it to the output.
  using S = Simd;
  V vmax0 = S::set1(-std::numeric_limits<float>::infinity()), vmax1 = vmax0;
  int j = 0;
  for (; j + 2 * W <= n; j += 2 * W) {
    const V s0 = score_v(a, p, c, j), s1 = score_v(a, p, c, j + W);
    S::store(a + j, s0);
    S::store(a + j + W, s1);
    vmax0 = S::max(s0, vmax0);
    vmax1 = S::max(s1, vmax1);
  }
  for (; j + W <= n; j += W) {
    const V s0 = score_v(a, p, c, j);
    S::store(a + j, s0);
    vmax0 = S::max(s0, vmax0);
  }
  float mx = hmax(S::max(vmax0, vmax1));
  for (; j < n; ++j) {
    a[j] = a[j] * std::cos(radians(c[j], p[j]));
    mx = a[j] > mx ? a[j] : mx;
  }
  return mx;
}

template <>
float exp_row<float>(const float* s, float* out, int n, int bk, float m) {
  using S = Simd;
  const V vl = S::set1(kLog2e), vm = S::set1(m * kLog2e);
  V vsum0 = S::zero(), vsum1 = vsum0;
  int j = 0;
  for (; j + 2 * W <= n; j += 2 * W) {
    const V e0 = exp2_v(S::fmsub(S::load(s + j), vl, vm)), e1 = exp2_v(S::fmsub(S::load(s + j + W), vl, vm));
    S::store(out + j, e0);
    S::store(out + j + W, e1);
    vsum0 = S::add(vsum0, e0);
    vsum1 = S::add(vsum1, e1);
  }
  for (; j + W <= n; j += W) {
    const V e = exp2_v(S::fmsub(S::load(s + j), vl, vm));
    S::store(out + j, e);
    vsum0 = S::add(vsum0, e);
  }
  float sum = S::sum(S::add(vsum0, vsum1));
  for (; j < n; ++j) {
    out[j] = std::exp(s[j] - m);
    sum += out[j];
  }
  for (j = n; j < bk; ++j) out[j] = 0;
  return sum;
}

template <>
float scores_exp_row<float>(const float* a, const float* p, const float* c, int n, int bk, float m, float* out,
                            float* max) {
  using S = Simd;
  const V vl = S::set1(kLog2e), vm = S::set1(m * kLog2e);
  V vmax0 = S::set1(-std::numeric_limits<float>::infinity()), vmax1 = vmax0;
  V vsum0 = S::zero(), vsum1 = vsum0;
  int j = 0;
  for (; j + 2 * W <= n; j += 2 * W) {
    const V s0 = score_v(a, p, c, j), s1 = score_v(a, p, c, j + W);
    vmax0 = S::max(s0, vmax0);
    vmax1 = S::max(s1, vmax1);
    const V e0 = exp2_v(S::fmsub(s0, vl, vm)), e1 = exp2_v(S::fmsub(s1, vl, vm));
    S::store(out + j, e0);
    S::store(out + j + W, e1);
    vsum0 = S::add(vsum0, e0);
    vsum1 = S::add(vsum1, e1);
  }
  for (; j + W <= n; j += W) {
    const V s0 = score_v(a, p, c, j);
    vmax0 = S::max(s0, vmax0);
    const V e0 = exp2_v(S::fmsub(s0, vl, vm));
    S::store(out + j, e0);
    vsum0 = S::add(vsum0, e0);
  }
  float mx = hmax(S::max(vmax0, vmax1));
  float sum = S::sum(S::add(vsum0, vsum1));
  for (; j < n; ++j) {
    const float sc = a[j] * std::cos(radians(c[j], p[j]));
    mx = sc > mx ? sc : mx;
    out[j] = std::exp(sc - m);
    sum += out[j];
  }
  for (; j < bk; ++j) out[j] = 0;
  *max = mx;
  return sum;
}

template <>
void backward_row<float>(float* a, float* p, const float* g, float* prob, const float* c, int n, int bk, float lse,
                         float delta) {
  using S = Simd;
  const V vl = S::set1(kLog2e), vlse = S::set1(lse * kLog2e), vdelta = S::set1(delta);
  const V minus_two_pi = S::set1(-static_cast<float>(kTwoPi));
  int j = 0;
  for (; j + W <= n; j += W) {
    const V vc = S::load(c + j), va = S::load(a + j);
    const SinCos sc = sincos_turns(S::mul(vc, S::load(p + j)));
    const V pr = exp2_v(S::fmsub(S::mul(va, sc.cos), vl, vlse));
    const V ds = S::mul(pr, S::sub(S::load(g + j), vdelta));
    S::store(prob + j, pr);
    S::store(p + j, S::mul(S::mul(S::mul(ds, va), S::mul(vc, sc.sin)), minus_two_pi));
    S::store(a + j, S::mul(ds, sc.cos));
  }
  for (; j < n; ++j) {
    const float ph = radians(c[j], p[j]);
    const float cs = std::cos(ph), sn = std::sin(ph);
    const float pr = std::exp(a[j] * cs - lse);
    const float ds = pr * (g[j] - delta);
    prob[j] = pr;
    p[j] = -ds * a[j] * static_cast<float>(kTwoPi) * c[j] * sn;
    a[j] = ds * cs;
  }
  for (; j < bk; ++j) a[j] = p[j] = prob[j] = 0;
}

// Decoding products in explicit vectors: the generic loops' "omp simd reduction" compiles to
// a spill and sixteen dependent scalar adds per key, and their accumulation to a load and a
// store of the accumulator per key.
template <typename K>
inline float dot(const float* a, const K* b, int64_t d) {
  const int64_t dw = d - d % Simd::W;
  Simd::V acc0 = Simd::zero(), acc1 = Simd::zero();
  int64_t t = 0;
  for (; t + 2 * Simd::W <= dw; t += 2 * Simd::W) {
    acc0 = Simd::fmadd(Simd::load(a + t), Simd::load(b + t), acc0);
    acc1 = Simd::fmadd(Simd::load(a + t + Simd::W), Simd::load(b + t + Simd::W), acc1);
  }
  if (t < dw) acc0 = Simd::fmadd(Simd::load(a + t), Simd::load(b + t), acc0);
  float sum = Simd::sum(Simd::add(acc0, acc1));
  for (t = dw; t < d; ++t) sum += a[t] * static_cast<float>(b[t]);
  return sum;
}

// lane j = q . k_j for W keys k_j = k + j ld, d values each: one accumulator per key and one
// transposing reduction for all W, instead of a full reduction per key
template <typename K>
inline Simd::V dot_keys(const float* q, const K* k, int64_t ld, int64_t d) {
  const int64_t dw = d - d % Simd::W;
  Simd::V acc[Simd::W];
  for (int j = 0; j < Simd::W; ++j) acc[j] = Simd::zero();
  for (int64_t t = 0; t < dw; t += Simd::W) {
    const Simd::V qv = Simd::load(q + t);
    for (int j = 0; j < Simd::W; ++j) acc[j] = Simd::fmadd(qv, Simd::load(k + j * ld + t), acc[j]);
  }
  Simd::V sums = Simd::transpose_sums(acc);
  if (dw < d) {  // scalar tail of a head part that is not a whole number of vectors
    alignas(64) float tail[Simd::W];
    for (int j = 0; j < Simd::W; ++j) {
      float sum = 0.0f;
      for (int64_t t = dw; t < d; ++t) sum += q[t] * static_cast<float>(k[j * ld + t]);
      tail[j] = sum;
    }
    sums = Simd::add(sums, Simd::load(tail));
  }
  return sums;
}

template <typename K>  // float32 queries: more specialised than the generic template, so chosen
void few_rows_scores(int64_t rows, int64_t cols, int64_t da, int64_t dp, const float* const* qa,
                          const float* const* qp, const K* ka, int64_t ldka, const K* kp, int64_t ldkp, float* s,
                          float* p, int64_t ldo) {
  // W keys at a time for every row (the keys stay in L1), except for 2 and 3 rows: with a
  // cache larger than the last-level cache, the grouped loop took 1.12-1.17x the per-key
  // loop's time there, against 0.82-1.03x for 1 row and 0.86x for 8 (docs/benchmarks.md)
  const bool grouped = rows == 1 || rows > 3;
  int64_t j0 = 0;
  for (; grouped && j0 + Simd::W <= cols; j0 += Simd::W) {
    for (int64_t i = 0; i < rows; ++i) {
      Simd::store(s + i * ldo + j0, dot_keys(qa[i], ka + j0 * ldka, ldka, da));
      Simd::store(p + i * ldo + j0, dot_keys(qp[i], kp + j0 * ldkp, ldkp, dp));
    }
  }
  for (int64_t j = j0; j < cols; ++j) {
    const K* kaj = ka + j * ldka;
    const K* kpj = kp + j * ldkp;
    for (int64_t i = 0; i < rows; ++i) {
      s[i * ldo + j] = dot(qa[i], kaj, da);
      p[i * ldo + j] = dot(qp[i], kpj, dp);
    }
  }
}

// acc[0 .. NV W) += sum_j p[j] v_j[0 .. NV W), NV accumulator registers, value rows read in order
template <int NV, typename K>
void accumulate_columns(int64_t cols, const float* p, const K* v, int64_t ldv, float* acc) {
  Simd::V sum[NV];
  for (int c = 0; c < NV; ++c) sum[c] = Simd::load(acc + c * Simd::W);
  for (int64_t j = 0; j < cols; ++j) {
    const Simd::V w = Simd::set1(p[j]);
    const K* vj = v + j * ldv;
    for (int c = 0; c < NV; ++c) sum[c] = Simd::fmadd(w, Simd::load(vj + c * Simd::W), sum[c]);
  }
  for (int c = 0; c < NV; ++c) Simd::store(acc + c * Simd::W, sum[c]);
}

template <typename K>  // float32: chosen over the generic template
void few_rows_accumulate(int64_t rows, int64_t cols, int64_t dv, const float* p, int64_t ldp, const K* v,
                              int64_t ldv, float* acc) {
  constexpr int64_t kChunk = 8;  // vectors per pass: 128 columns (AVX-512), 64 (AVX2)
  const int64_t nv = dv / Simd::W;
  for (int64_t i = 0; i < rows; ++i) {
    float* a = acc + i * dv;
    const float* pi = p + i * ldp;
    for (int64_t c0 = 0; c0 < nv; c0 += kChunk) {
      const int64_t t = c0 * Simd::W;
      switch (std::min(kChunk, nv - c0)) {
        case 1: accumulate_columns<1>(cols, pi, v + t, ldv, a + t); break;
        case 2: accumulate_columns<2>(cols, pi, v + t, ldv, a + t); break;
        case 3: accumulate_columns<3>(cols, pi, v + t, ldv, a + t); break;
        case 4: accumulate_columns<4>(cols, pi, v + t, ldv, a + t); break;
        case 5: accumulate_columns<5>(cols, pi, v + t, ldv, a + t); break;
        case 6: accumulate_columns<6>(cols, pi, v + t, ldv, a + t); break;
        case 7: accumulate_columns<7>(cols, pi, v + t, ldv, a + t); break;
        default: accumulate_columns<8>(cols, pi, v + t, ldv, a + t); break;
      }
    }
    for (int64_t t = nv * Simd::W; t < dv; ++t) {
      float sum = a[t];
      for (int64_t j = 0; j < cols; ++j) sum += pi[j] * static_cast<float>(v[j * ldv + t]);
      a[t] = sum;
    }
  }
}

void convert_row(const c10::BFloat16* src, float* dst, int64_t n) {
  int64_t t = 0;
  for (; t + Simd::W <= n; t += Simd::W) Simd::store(dst + t, Simd::load(src + t));
  for (; t < n; ++t) dst[t] = static_cast<float>(src[t]);
}

#endif

// ---- geometry shared by forward and backward ----

struct Geometry {
  int64_t batch, heads, kv_heads, groups, lq, lk, da, dp, dv;
  int64_t q_offset, k_offset, block_q, block_k;
  bool causal;
  int64_t diff_min;  // smallest signed distance (key position - query position)

  int64_t q_blocks() const { return (lq + block_q - 1) / block_q; }
  int64_t k_blocks() const { return (lk + block_k - 1) / block_k; }
  // keys [0, end) are visible to at least one of the queries qs..qe-1
  int64_t key_end(int64_t qe) const {
    if (!causal) return lk;
    return std::clamp<int64_t>(q_offset + qe - 1 - k_offset + 1, 0, lk);
  }
  // visible columns of a tile row: query at qs + i, keys from ks, tile width bk
  int visible(int64_t q_index, int64_t ks, int64_t bk) const {
    if (!causal) return static_cast<int>(bk);
    return static_cast<int>(std::clamp<int64_t>(q_offset + q_index - (k_offset + ks) + 1, 0, bk));
  }
  // index into the distance table of (query q_index, key ks)
  int64_t table_index(int64_t q_index, int64_t ks) const { return (k_offset + ks) - (q_offset + q_index) - diff_min; }
};

// An input (B, H, L, d) with unit stride along d and any other strides (e.g. a slice of a
// head's dimensions, so the key parts need no copy).
template <typename T>
struct Strided {
  const T* data;
  int64_t sb, sh, sr;
  explicit Strided(const at::Tensor& t)
      : data(t.data_ptr<T>()),
        sb(t.stride(0)),
        sh(t.stride(1)),
        // a single row may carry any stride; BLAS wants a leading dimension >= its width
        sr(t.size(2) == 1 ? std::max<int64_t>(t.stride(2), t.size(3)) : t.stride(2)) {}
  const T* row(int64_t b, int64_t h, int64_t r) const { return data + b * sb + h * sh + r * sr; }
  int ld() const { return static_cast<int>(sr); }
};

// d^alpha for d = 0 .. n-1, kept between calls (decoding would otherwise recompute a
// power per cached token at every step); grown on demand, one table per (dtype, alpha).
template <typename T>
std::shared_ptr<const std::vector<T>> power_table(double alpha, int64_t n) {
  static std::mutex mutex;
  static std::map<double, std::shared_ptr<const std::vector<T>>> tables;
  std::lock_guard<std::mutex> lock(mutex);
  auto& table = tables[alpha];
  if (!table || static_cast<int64_t>(table->size()) < n) {
    auto grown = std::make_shared<std::vector<T>>(static_cast<size_t>(std::max<int64_t>(n, 2 * (table ? table->size() : 0))));
    const T a = static_cast<T>(alpha);
    for (size_t d = 0; d < grown->size(); ++d) (*grown)[d] = std::pow(static_cast<T>(d), a);
    table = grown;
  }
  return table;
}

// The factor of every signed distance (key position - query position) this call meets:
// table[diff - diff_min] = |diff|^alpha, so a tile row reads it contiguously.
template <typename T>
std::vector<T> distance_table(const Geometry& g, double alpha) {
  const int64_t diff_max = (g.k_offset + g.lk - 1) - g.q_offset;
  const int64_t far = std::max<int64_t>(std::abs(g.diff_min), std::abs(diff_max));
  const auto powers = power_table<T>(alpha, far + 1);
  std::vector<T> table(static_cast<size_t>(diff_max - g.diff_min + 1));
  for (int64_t d = g.diff_min; d <= diff_max; ++d) {
    table[static_cast<size_t>(d - g.diff_min)] = (*powers)[static_cast<size_t>(d < 0 ? -d : d)];
  }
  return table;
}

Geometry make_geometry(const at::Tensor& qa, const at::Tensor& ka, const at::Tensor& qp, const at::Tensor& v,
                       bool causal, int64_t q_offset, int64_t k_offset, int64_t block_q, int64_t block_k) {
  Geometry g{};
  g.batch = qa.size(0);
  g.heads = qa.size(1);
  g.kv_heads = ka.size(1);
  g.groups = g.heads / g.kv_heads;
  g.lq = qa.size(2);
  g.lk = ka.size(2);
  g.da = qa.size(3);
  g.dp = qp.size(3);
  g.dv = v.size(3);
  g.q_offset = q_offset;
  g.k_offset = k_offset;
  g.block_q = block_q;
  g.block_k = block_k;
  g.causal = causal;
  g.diff_min = g.k_offset - (g.q_offset + g.lq - 1);
  return g;
}

// ts: query parts first; with `bf16_keys`, ts[1:] (key parts, values) are all bfloat16
void check_inputs(const std::vector<at::Tensor>& ts, int64_t block_q, int64_t block_k, bool bf16_keys = false) {
  const auto dtype = ts[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "tapa fused cpu: float32 or float64 parts expected");
  TORCH_CHECK(!bf16_keys || dtype == at::kFloat, "tapa fused cpu: bfloat16 keys need float32 query parts");
  for (size_t i = 0; i < ts.size(); ++i) {
    const auto& t = ts[i];
    TORCH_CHECK(t.device().is_cpu(), "tapa fused cpu: CPU tensors expected");
    TORCH_CHECK(t.stride(-1) == 1 || t.size(-1) == 1, "tapa fused cpu: unit stride along the last dim expected");
    const bool key_side = i == 1 || i == 3 || i == 4;  // ka, kp, v
    TORCH_CHECK(t.scalar_type() == (bf16_keys && key_side ? at::kBFloat16 : dtype),
                "tapa fused cpu: all tensors must share one dtype (or bfloat16 keys and values when decoding)");
    TORCH_CHECK(t.dim() == 4 || t.dim() == 3, "tapa fused cpu: 4-d tensors expected");
  }
  TORCH_CHECK(block_q > 0 && block_k > 0, "tapa fused cpu: block sizes must be positive");
}

// ---- forward ----

// Running softmax state of one query row: max m, sum l, and acc = sum_j exp(s_j - m) v_j.
template <typename T>
struct RowState {
  T m, l;
};

// One tile row of the online softmax: s (amplitudes in, overwritten), pr (phase products),
// c (distance factors), n visible of bk columns. Writes the row's exp(s - m) to e and
// updates m, l, rescaling the row's accumulator acc (dv values) when m grows; the caller
// then adds e v to acc.
template <typename T>
void online_softmax_row(T* s, const T* pr, const T* c, int n, int bk, RowState<T>& st, T* acc, int64_t dv, T* e) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  if (n == 0) {
    std::fill(e, e + bk, T(0));
    return;
  }
  if (st.m != neg_inf && !std::isnan(st.m)) {
    // the row has a finite max from earlier key blocks: exponentiate against it in the same
    // pass unless this block's scores exceed it by more than kLazyMargin
    T tile_max;
    const T row_sum = scores_exp_row<T>(s, pr, c, n, bk, st.m, e, &tile_max);
    if (!(tile_max > st.m + kLazyMargin)) {
      st.l += row_sum;
      return;
    }
  }
  const T tile_max = scores_row<T>(s, pr, c, n);
  const T m_new = (std::isnan(tile_max) || tile_max > st.m) ? tile_max : st.m;
  const T m_safe = (m_new == neg_inf) ? T(0) : m_new;
  const T row_sum = exp_row<T>(s, e, n, bk, m_safe);
  const T corr = std::exp(st.m - m_safe);
  st.l = st.l * corr + row_sum;
  if (corr != T(1)) {
    for (int64_t d = 0; d < dv; ++d) acc[d] *= corr;
  }
  st.m = m_new;
}

// The row's output acc / l (zeros for a row that saw no key) and its log-sum-exp.
template <typename T>
T finish_row(const T* acc, const RowState<T>& st, int64_t dv, T* dst) {
  const bool any = st.l != T(0);  // NaN counts as "any": it propagates
  for (int64_t d = 0; d < dv; ++d) dst[d] = any ? acc[d] / st.l : T(0);
  return any ? st.m + std::log(st.l) : -std::numeric_limits<T>::infinity();
}

// Partial results of key splits (flash-decoding): per output row, `splits` partial outputs
// and log-sum-exps, combined into out and lse by their softmax weights.
template <typename T>
struct SplitParts {
  int64_t splits, dv;
  std::vector<T> out, lse;
  SplitParts(int64_t rows, int64_t splits_, int64_t dv_) : splits(splits_), dv(dv_) {
    if (splits > 1) {
      out.assign(static_cast<size_t>(rows * dv * splits), 0);
      lse.assign(static_cast<size_t>(rows * splits), -std::numeric_limits<T>::infinity());
    }
  }
  // where split `split` of output row `row` goes
  T* out_row(T* final_out, int64_t row, int64_t split) {
    return splits > 1 ? out.data() + (row * splits + split) * dv : final_out + row * dv;
  }
  void set_lse(T* final_lse, int64_t row, int64_t split, T value) {
    (splits > 1 ? lse[row * splits + split] : final_lse[row]) = value;
  }
  void combine(int64_t rows, T* final_out, T* final_lse) const {
    if (splits == 1) return;
    const T neg_inf = -std::numeric_limits<T>::infinity();
    at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row) {
        const T* pl = lse.data() + row * splits;
        T mx = neg_inf;
        for (int64_t s = 0; s < splits; ++s) mx = (std::isnan(pl[s]) || pl[s] > mx) ? pl[s] : mx;
        T* dst = final_out + row * dv;
        std::fill(dst, dst + dv, T(0));
        if (mx == neg_inf) {
          final_lse[row] = neg_inf;
          continue;
        }
        T total = 0;
        for (int64_t s = 0; s < splits; ++s) {
          if (pl[s] == neg_inf) continue;
          const T w = std::exp(pl[s] - mx);
          total += w;
          const T* src = out.data() + (row * splits + s) * dv;
          for (int64_t d = 0; d < dv; ++d) dst[d] += w * src[d];
        }
        for (int64_t d = 0; d < dv; ++d) dst[d] /= total;
        final_lse[row] = mx + std::log(total);
      }
    });
  }
};

// Key blocks [kb0, kb1) of split `split` when the keys [0, end) are cut into `splits` parts.
inline std::pair<int64_t, int64_t> split_blocks(int64_t end, int64_t block_k, int64_t splits, int64_t split) {
  const int64_t kblocks = (end + block_k - 1) / block_k;
  const int64_t per_split = (kblocks + splits - 1) / splits;
  const int64_t kb0 = split * per_split;
  return {kb0, std::min(kblocks, kb0 + per_split)};
}

// Prefill and training: one task per (batch, head, query block, key split); per tile two
// BLAS products fill the amplitude and phase tiles, one vector pass turns them into
// probabilities, one more product adds them times v.
template <typename T>
void forward_kernel(const Geometry& g, Strided<T> qa, Strided<T> ka, Strided<T> qp, Strided<T> kp, Strided<T> v,
                    T* out, T* lse, int64_t splits, double alpha) {
  const std::vector<T> table = distance_table<T>(g, alpha);
  const int64_t nqb = g.q_blocks();
  const int64_t tasks = g.batch * g.heads * nqb * splits;
  SplitParts<T> parts(g.batch * g.heads * g.lq, splits, g.dv);
  const int threads = std::max(1, std::min<int>(at::get_num_threads(), static_cast<int>(tasks)));

#pragma omp parallel num_threads(threads)
  {
    SerialBlas serial;
    const int64_t BQ = g.block_q, BK = g.block_k;
    std::vector<T> s_buf(BQ * BK), p_buf(BQ * BK), e_buf(BQ * BK), acc(BQ * g.dv);
    std::vector<RowState<T>> state(BQ);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      // largest query blocks (most keys under the causal mask) first
      const int64_t split = t % splits;
      const int64_t qb = nqb - 1 - (t / splits) % nqb;
      const int64_t bh = t / (splits * nqb);
      const int64_t b = bh / g.heads, h = bh % g.heads, hk = h / g.groups;
      const int64_t qs = qb * BQ, qe = std::min(qs + BQ, g.lq), bq = qe - qs;
      const int64_t end = g.key_end(qe);
      const auto [kb0, kb1] = split_blocks(end, BK, splits, split);
      const T* qa_b = qa.row(b, h, qs);
      const T* qp_b = qp.row(b, h, qs);
      std::fill(acc.begin(), acc.end(), T(0));
      std::fill(state.begin(), state.end(), RowState<T>{-std::numeric_limits<T>::infinity(), T(0)});
      for (int64_t kb = kb0; kb < kb1; ++kb) {
        const int64_t ks = kb * BK, bk = std::min(ks + BK, end) - ks;
        gemm(false, true, bq, bk, g.da, T(1), qa_b, qa.ld(), ka.row(b, hk, ks), ka.ld(), T(0), s_buf.data(), BK);
        gemm(false, true, bq, bk, g.dp, T(1), qp_b, qp.ld(), kp.row(b, hk, ks), kp.ld(), T(0), p_buf.data(), BK);
        for (int64_t i = 0; i < bq; ++i) {
          const T* c = table.data() + g.table_index(qs + i, ks);
          online_softmax_row<T>(s_buf.data() + i * BK, p_buf.data() + i * BK, c, g.visible(qs + i, ks, bk),
                                static_cast<int>(bk), state[i], acc.data() + i * g.dv, g.dv, e_buf.data() + i * BK);
        }
        gemm(false, false, bq, g.dv, bk, T(1), e_buf.data(), BK, v.row(b, hk, ks), v.ld(), T(1), acc.data(), g.dv);
      }
      for (int64_t i = 0; i < bq; ++i) {
        const int64_t row = (b * g.heads + h) * g.lq + qs + i;
        const T row_lse = finish_row(acc.data() + i * g.dv, state[i], g.dv, parts.out_row(out, row, split));
        parts.set_lse(lse, row, split, row_lse);
      }
    }
  }
  parts.combine(g.batch * g.heads * g.lq, out, lse);
}

// Decoding (at most kFewRows queries): one task per (batch, key head, key split) holds the
// query rows of every query head that shares the key head, so the cached keys and values
// are read from memory once per key head, not once per query head (grouped-query
// attention). The vector loops read the keys in order and reduce W keys' products at once;
// with a cache larger than the last-level cache (16K keys, D 64, four caches in turn) they
// took 0.50-0.56x BLAS's time for 1-4 rows, 0.67-0.70x for 8, 0.79-0.80x for 16 and 0.90x
// for 32; at 2K keys 0.95x for 32 and 64 rows (docs/benchmarks.md). Above that, and where
// there are no vector loops (float64, builds without AVX2), BLAS.
template <typename T>
constexpr int64_t decode_vector_rows() {
#if defined(TAPA_AVX512) || defined(TAPA_AVX2)
  if constexpr (std::is_same_v<T, float>) return 64;
#endif
  return 3;
}

// `rows` rows of `width` values at stride ld as T: the rows themselves when K is T, else
// converted into buf (contiguous; *ld_out tells the stride)
template <typename T, typename K>
const T* as_compute(const K* src, int64_t ld, int64_t rows, int64_t width, std::vector<T>& buf, int* ld_out) {
  if constexpr (std::is_same_v<T, K>) {
    *ld_out = static_cast<int>(ld);
    return src;
  } else {
    for (int64_t r = 0; r < rows; ++r) convert_row(src + r * ld, buf.data() + r * width, width);
    *ld_out = static_cast<int>(width);
    return buf.data();
  }
}

template <typename T, typename K>
void decode_kernel(const Geometry& g, Strided<T> qa, Strided<K> ka, Strided<T> qp, Strided<K> kp, Strided<K> v,
                   T* out, T* lse, int64_t splits, double alpha) {
  const std::vector<T> table = distance_table<T>(g, alpha);
  const int64_t rows = g.groups * g.lq;  // row r: query head hk * groups + r / lq, query r % lq
  const int64_t tasks = g.batch * g.kv_heads * splits;
  SplitParts<T> parts(g.batch * g.heads * g.lq, splits, g.dv);
  const int threads = std::max(1, std::min<int>(at::get_num_threads(), static_cast<int>(tasks)));
  const int64_t end = g.key_end(g.lq);
  const bool few = rows <= decode_vector_rows<T>();

#pragma omp parallel num_threads(threads)
  {
    SerialBlas serial;
    const int64_t BK = g.block_k;
    std::vector<T> s_buf(rows * BK), p_buf(rows * BK), e_buf(rows * BK), acc(rows * g.dv);
    std::vector<T> qa_buf(rows * g.da), qp_buf(rows * g.dp);  // the task's query rows, contiguous
    // a key block as T for BLAS when the cache is stored narrower (bfloat16)
    std::vector<T> ka_conv, kp_conv, v_conv;
    if (!std::is_same_v<T, K> && !few) ka_conv.resize(BK * g.da), kp_conv.resize(BK * g.dp), v_conv.resize(BK * g.dv);
    std::vector<RowState<T>> state(rows);
    std::vector<const T*> qa_rows(rows), qp_rows(rows);
    for (int64_t r = 0; r < rows; ++r) qa_rows[r] = qa_buf.data() + r * g.da, qp_rows[r] = qp_buf.data() + r * g.dp;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t split = t % splits, bhk = t / splits;
      const int64_t b = bhk / g.kv_heads, hk = bhk % g.kv_heads;
      const auto [kb0, kb1] = split_blocks(end, BK, splits, split);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t h = hk * g.groups + r / g.lq, i = r % g.lq;
        std::copy_n(qa.row(b, h, i), g.da, qa_buf.data() + r * g.da);
        std::copy_n(qp.row(b, h, i), g.dp, qp_buf.data() + r * g.dp);
      }
      std::fill(acc.begin(), acc.end(), T(0));
      std::fill(state.begin(), state.end(), RowState<T>{-std::numeric_limits<T>::infinity(), T(0)});
      for (int64_t kb = kb0; kb < kb1; ++kb) {
        const int64_t ks = kb * BK, bk = std::min(ks + BK, end) - ks;
        const K *ka_b = ka.row(b, hk, ks), *kp_b = kp.row(b, hk, ks), *v_b = v.row(b, hk, ks);
        if (few) {
          few_rows_scores(rows, bk, g.da, g.dp, qa_rows.data(), qp_rows.data(), ka_b, ka.ld(), kp_b, kp.ld(),
                          s_buf.data(), p_buf.data(), BK);
        } else {
          int lda, ldp;
          const T* ka_c = as_compute(ka_b, ka.ld(), bk, g.da, ka_conv, &lda);
          const T* kp_c = as_compute(kp_b, kp.ld(), bk, g.dp, kp_conv, &ldp);
          gemm(false, true, rows, bk, g.da, T(1), qa_buf.data(), g.da, ka_c, lda, T(0), s_buf.data(), BK);
          gemm(false, true, rows, bk, g.dp, T(1), qp_buf.data(), g.dp, kp_c, ldp, T(0), p_buf.data(), BK);
        }
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = r % g.lq;
          const T* c = table.data() + g.table_index(i, ks);
          online_softmax_row<T>(s_buf.data() + r * BK, p_buf.data() + r * BK, c, g.visible(i, ks, bk),
                                static_cast<int>(bk), state[r], acc.data() + r * g.dv, g.dv, e_buf.data() + r * BK);
        }
        if (few) {
          few_rows_accumulate(rows, bk, g.dv, e_buf.data(), BK, v_b, v.ld(), acc.data());
        } else {
          int ldv;
          const T* v_c = as_compute(v_b, v.ld(), bk, g.dv, v_conv, &ldv);
          gemm(false, false, rows, g.dv, bk, T(1), e_buf.data(), BK, v_c, ldv, T(1), acc.data(), g.dv);
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t h = hk * g.groups + r / g.lq, i = r % g.lq;
        const int64_t row = (b * g.heads + h) * g.lq + i;
        const T row_lse = finish_row(acc.data() + r * g.dv, state[r], g.dv, parts.out_row(out, row, split));
        parts.set_lse(lse, row, split, row_lse);
      }
    }
  }
  parts.combine(g.batch * g.heads * g.lq, out, lse);
}

std::tuple<at::Tensor, at::Tensor> tapa_forward(const at::Tensor& qa, const at::Tensor& ka, const at::Tensor& qp,
                                                const at::Tensor& kp, const at::Tensor& v, double alpha, bool causal,
                                                int64_t q_offset, int64_t k_offset, int64_t block_q, int64_t block_k,
                                                int64_t splits) {
  const bool bf16_keys = ka.scalar_type() == at::kBFloat16;
  check_inputs({qa, ka, qp, kp, v}, block_q, block_k, bf16_keys);
  if (bf16_keys && qa.size(2) > kFewRows) {
    // a bfloat16 cache is read in place only by the decoding kernel: widen it for the others
    return tapa_forward(qa, ka.to(at::kFloat), qp, kp.to(at::kFloat), v.to(at::kFloat), alpha, causal, q_offset,
                        k_offset, block_q, block_k, splits);
  }
  const Geometry g = make_geometry(qa, ka, qp, v, causal, q_offset, k_offset, block_q, block_k);
  auto out = at::zeros({g.batch, g.heads, g.lq, g.dv}, qa.options());
  auto lse = at::full({g.batch, g.heads, g.lq}, -std::numeric_limits<double>::infinity(), qa.options());
  if (g.lq == 0 || g.lk == 0) return {out, lse};
  const bool decode = g.lq <= kFewRows;  // decoding: its own kernel
  if (splits <= 0) {
    // flash-decoding: split the keys when there are fewer tasks than threads
    const int64_t row_tasks = decode ? g.batch * g.kv_heads : g.batch * g.heads * g.q_blocks();
    const int64_t threads = at::get_num_threads();
    splits = row_tasks >= threads ? 1 : std::min<int64_t>((threads + row_tasks - 1) / row_tasks, g.k_blocks());
  }
  splits = std::max<int64_t>(1, splits);
  if (bf16_keys) {
    // a bfloat16 KV cache read in place
    decode_kernel<float, c10::BFloat16>(g, Strided<float>(qa), Strided<c10::BFloat16>(ka), Strided<float>(qp),
                                        Strided<c10::BFloat16>(kp), Strided<c10::BFloat16>(v), out.data_ptr<float>(),
                                        lse.data_ptr<float>(), splits, alpha);
    return {out, lse};
  }
  AT_DISPATCH_FLOATING_TYPES(qa.scalar_type(), "tapa_fused_forward", [&] {
    auto kernel = decode ? decode_kernel<scalar_t, scalar_t> : forward_kernel<scalar_t>;
    kernel(g, Strided<scalar_t>(qa), Strided<scalar_t>(ka), Strided<scalar_t>(qp), Strided<scalar_t>(kp),
           Strided<scalar_t>(v), out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), splits, alpha);
  });
  return {out, lse};
}

// ---- backward ----

template <typename T>
void backward_kernel(const Geometry& g, Strided<T> qa, Strided<T> ka, Strided<T> qp, Strided<T> kp, Strided<T> v,
                     const T* d_out, const T* lse, const T* delta, T* dqa_all, T* dqp_all, T* dka, T* dkp, T* dv,
                     int threads, double alpha) {
  const std::vector<T> table = distance_table<T>(g, alpha);
  const int64_t nqb = g.q_blocks(), nkb = g.k_blocks();
  const int64_t tasks = g.batch * g.kv_heads * nkb;
  const int64_t q_elems_a = g.batch * g.heads * g.lq * g.da, q_elems_p = g.batch * g.heads * g.lq * g.dp;
  const T neg_inf = -std::numeric_limits<T>::infinity();

#pragma omp parallel num_threads(threads)
  {
    SerialBlas serial;
    const int64_t BQ = g.block_q, BK = g.block_k;
    const int tid = omp_get_thread_num();
    T* dqa = dqa_all + tid * q_elems_a;
    T* dqp = dqp_all + tid * q_elems_p;
    std::vector<T> a_buf(BQ * BK), p_buf(BQ * BK), g_buf(BQ * BK), prob(BQ * BK);
    // static "snake" round-robin: round r hands tasks r*threads .. r*threads + threads-1 to
    // threads 0 .. threads-1, odd rounds in reverse, so under the causal mask (work falling
    // with the key block) no thread always gets the larger task of a round. Which thread adds
    // which key block into its dq buffer, and so the order of the final sum, depends only on
    // the thread count: gradients are bit-reproducible.
    const int64_t rounds = (tasks + threads - 1) / threads;
#pragma omp for schedule(static, 1)
    for (int64_t u = 0; u < rounds * threads; ++u) {
      const int64_t round = u / threads, pos = u % threads;
      const int64_t t = round * threads + (round % 2 == 0 ? pos : threads - 1 - pos);
      if (t >= tasks) continue;
      const int64_t kb = t % nkb, bh = t / nkb;
      const int64_t b = bh / g.kv_heads, hk = bh % g.kv_heads;
      const int64_t ks = kb * BK, bk = std::min(ks + BK, g.lk) - ks;
      const int64_t kv_row = (b * g.kv_heads + hk) * g.lk + ks;
      const T* ka_b = ka.row(b, hk, ks);
      const T* kp_b = kp.row(b, hk, ks);
      const T* v_b = v.row(b, hk, ks);
      T* dka_b = dka + kv_row * g.da;
      T* dkp_b = dkp + kv_row * g.dp;
      T* dv_b = dv + kv_row * g.dv;
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        const int64_t h = hk * g.groups + grp;
        for (int64_t qb = 0; qb < nqb; ++qb) {
          const int64_t qs = qb * BQ, qe = std::min(qs + BQ, g.lq), bq = qe - qs;
          if (g.visible(qe - 1, ks, bk) == 0) continue;  // no query of the block sees these keys
          const int64_t q_row = (b * g.heads + h) * g.lq + qs;
          const T* qa_b = qa.row(b, h, qs);
          const T* qp_b = qp.row(b, h, qs);
          const T* do_b = d_out + q_row * g.dv;
          gemm(false, true, bq, bk, g.da, T(1), qa_b, qa.ld(), ka_b, ka.ld(), T(0), a_buf.data(), BK);
          gemm(false, true, bq, bk, g.dp, T(1), qp_b, qp.ld(), kp_b, kp.ld(), T(0), p_buf.data(), BK);
          gemm(false, true, bq, bk, g.dv, T(1), do_b, g.dv, v_b, v.ld(), T(0), g_buf.data(), BK);
          for (int64_t i = 0; i < bq; ++i) {
            const int64_t off = i * BK;
            const T row_lse = lse[q_row + i];
            int n = g.visible(qs + i, ks, bk);
            if (row_lse == neg_inf) n = 0;  // a row that saw no key has no gradient
            const T* c = table.data() + g.table_index(qs + i, ks);
            backward_row<T>(a_buf.data() + off, p_buf.data() + off, g_buf.data() + off, prob.data() + off, c, n,
                            static_cast<int>(bk), row_lse, delta[q_row + i]);
          }
          gemm(true, false, bk, g.dv, bq, T(1), prob.data(), BK, do_b, g.dv, T(1), dv_b, g.dv);
          gemm(false, false, bq, g.da, bk, T(1), a_buf.data(), BK, ka_b, ka.ld(), T(1), dqa + q_row * g.da, g.da);
          gemm(false, false, bq, g.dp, bk, T(1), p_buf.data(), BK, kp_b, kp.ld(), T(1), dqp + q_row * g.dp, g.dp);
          gemm(true, false, bk, g.da, bq, T(1), a_buf.data(), BK, qa_b, qa.ld(), T(1), dka_b, g.da);
          gemm(true, false, bk, g.dp, bq, T(1), p_buf.data(), BK, qp_b, qp.ld(), T(1), dkp_b, g.dp);
        }
      }
    }
  }
}

std::vector<at::Tensor> tapa_backward(const at::Tensor& qa, const at::Tensor& ka, const at::Tensor& qp,
                                      const at::Tensor& kp, const at::Tensor& v, const at::Tensor& d_out,
                                      const at::Tensor& lse, const at::Tensor& delta, double alpha, bool causal,
                                      int64_t q_offset, int64_t k_offset, int64_t block_q, int64_t block_k) {
  check_inputs({qa, ka, qp, kp, v, d_out, lse, delta}, block_q, block_k);
  TORCH_CHECK(d_out.is_contiguous() && lse.is_contiguous() && delta.is_contiguous(), "tapa fused cpu: contiguous grads");
  const Geometry g = make_geometry(qa, ka, qp, v, causal, q_offset, k_offset, block_q, block_k);
  auto dka = at::zeros(ka.sizes(), ka.options()), dkp = at::zeros(kp.sizes(), kp.options());
  auto dv = at::zeros(v.sizes(), v.options());
  if (g.lq == 0 || g.lk == 0) return {at::zeros(qa.sizes(), qa.options()), dka, at::zeros(qp.sizes(), qp.options()), dkp, dv};
  const int64_t tasks = g.batch * g.kv_heads * g.k_blocks();
  const int threads = std::max(1, std::min<int>(at::get_num_threads(), static_cast<int>(tasks)));
  // per-thread dq buffers: key-block tasks of one head write the same dq rows
  auto dqa = at::zeros({threads, g.batch, g.heads, g.lq, g.da}, qa.options());
  auto dqp = at::zeros({threads, g.batch, g.heads, g.lq, g.dp}, qa.options());
  AT_DISPATCH_FLOATING_TYPES(qa.scalar_type(), "tapa_fused_backward", [&] {
    backward_kernel<scalar_t>(g, Strided<scalar_t>(qa), Strided<scalar_t>(ka), Strided<scalar_t>(qp),
                              Strided<scalar_t>(kp), Strided<scalar_t>(v), d_out.data_ptr<scalar_t>(),
                              lse.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), dqa.data_ptr<scalar_t>(),
                              dqp.data_ptr<scalar_t>(), dka.data_ptr<scalar_t>(), dkp.data_ptr<scalar_t>(),
                              dv.data_ptr<scalar_t>(), threads, alpha);
  });
  return {threads == 1 ? dqa[0] : dqa.sum(0), dka, threads == 1 ? dqp[0] : dqp.sum(0), dkp, dv};
}

}  // namespace

TORCH_LIBRARY(tapa_fused_cpu, m) {
  m.def(
      "forward(Tensor qa, Tensor ka, Tensor qp, Tensor kp, Tensor v, float alpha, bool causal, int q_offset, "
      "int k_offset, int block_q, int block_k, int splits) -> (Tensor, Tensor)");
  m.def(
      "backward(Tensor qa, Tensor ka, Tensor qp, Tensor kp, Tensor v, Tensor d_out, Tensor lse, Tensor delta, "
      "float alpha, bool causal, int q_offset, int k_offset, int block_q, int block_k) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(tapa_fused_cpu, CPU, m) {
  m.impl("forward", &tapa_forward);
  m.impl("backward", &tapa_backward);
}
