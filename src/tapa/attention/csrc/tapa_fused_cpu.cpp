// Fused TAPA attention for CPUs: forward, backward and split-key decoding in one pass per tile.
//
// Scores (Eq. 12, from pre-scaled parts, see tapa/attention/phase.py):
//     a = qa . ka,  p = qp . kp,  c(m, n) = 2 pi |m - n|^alpha,  s = a * cos(c p)
// Forward: online softmax over key blocks (flash attention); stores O and the row
// log-sum-exp L. Backward recomputes each tile from L:
//     P = exp(s - L),  dS = P * (dO . v - rowsum(dO * O))
//     da = dS * cos(c p),  dp = -dS * a * c * sin(c p)
//     dqa = da ka, dka = da^T qa, dqp = dp kp, dkp = dp^T qp, dv = P^T dO
// Each tile costs matrix products (BLAS sgemm/dgemm from libtorch, one thread per task)
// and one vectorised elementwise pass (AVX2 polynomial cos/sin/exp), so the
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
#include <vector>

#if defined(TAPA_AVX2)
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

// Few query rows (decoding): products as plain vector loops. BLAS's gemv path costs more
// than the memory traffic it has to do, which is all there is to a decoding step.
constexpr int64_t kFewRows = 4;

template <typename T>
void few_rows_scores(int64_t rows, int64_t cols, int64_t d, const T* q, int64_t ldq, const T* k, int64_t ldk, T* out,
                     int64_t ldo) {
  for (int64_t i = 0; i < rows; ++i) {
    const T* qi = q + i * ldq;
    for (int64_t j = 0; j < cols; ++j) {
      const T* kj = k + j * ldk;
      T sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t t = 0; t < d; ++t) sum += qi[t] * kj[t];
      out[i * ldo + j] = sum;
    }
  }
}

template <typename T>
void few_rows_accumulate(int64_t rows, int64_t cols, int64_t dv, const T* p, int64_t ldp, const T* v, int64_t ldv,
                         T* acc) {
  for (int64_t i = 0; i < rows; ++i) {
    T* a = acc + i * dv;
    for (int64_t j = 0; j < cols; ++j) {
      const T w = p[i * ldp + j];
      const T* vj = v + j * ldv;
#pragma omp simd
      for (int64_t t = 0; t < dv; ++t) a[t] += w * vj[t];
    }
  }
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

// s[j] = a[j] * cos(c[j] * p[j]) written over a; returns the row max (NaN may win: it propagates).
template <typename T>
T scores_row(T* a, const T* p, const T* c, int n) {
  T mx = -std::numeric_limits<T>::infinity();
  for (int j = 0; j < n; ++j) {
    a[j] = a[j] * std::cos(c[j] * p[j]);
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

// One pass for a row whose running max m is already finite: out[j] = exp(a[j] cos(c[j] p[j]) - m)
// for j < n, 0 up to bk; returns the sum and sets *max to the row's largest score. The caller
// redoes the row with a larger m when that max exceeds m by too much (lazy rescaling: after
// the first key block this is rare, and it saves a pass over the tile and the rescaling of
// the accumulator).
template <typename T>
T scores_exp_row(const T* a, const T* p, const T* c, int n, int bk, T m, T* out, T* max) {
  T sum = 0, mx = -std::numeric_limits<T>::infinity();
  for (int j = 0; j < n; ++j) {
    const T s = a[j] * std::cos(c[j] * p[j]);
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
    const T ph = c[j] * p[j];
    const T cs = std::cos(ph), sn = std::sin(ph);
    const T pr = std::exp(a[j] * cs - lse);
    const T ds = pr * (g[j] - delta);
    prob[j] = pr;
    p[j] = -ds * a[j] * c[j] * sn;
    a[j] = ds * cs;
  }
  for (int j = n; j < bk; ++j) a[j] = p[j] = prob[j] = 0;
}

#if defined(TAPA_AVX2)
// float32 cos, sin and exp on 8 lanes (Cephes-style minimax polynomials). The phase is
// reduced modulo pi/2 in three FMA steps (Cody-Waite): error ~1e-7 absolute for |x| up to
// ~1e5, past which a float32 phase has no fractional digits left anyway. exp is the
// Cephes expf polynomial (~1 ulp); it gives 0 below -87.3 and keeps NaN.
struct SinCos {
  __m256 sin, cos;
};

inline SinCos sincos8(__m256 x) {
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(0.636619772367581343f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.5703125f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(4.837512969970703125e-4f), r);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(7.54978995489188216e-8f), r);
  const __m256 r2 = _mm256_mul_ps(r, r);
  __m256 ps = _mm256_fmadd_ps(_mm256_set1_ps(-1.9515295891e-4f), r2, _mm256_set1_ps(8.3321608736e-3f));
  ps = _mm256_fmadd_ps(ps, r2, _mm256_set1_ps(-1.6666654611e-1f));
  ps = _mm256_fmadd_ps(_mm256_mul_ps(ps, r2), r, r);  // sin r
  __m256 pc = _mm256_fmadd_ps(_mm256_set1_ps(2.443315711809948e-5f), r2, _mm256_set1_ps(-1.388731625493765e-3f));
  pc = _mm256_fmadd_ps(pc, r2, _mm256_set1_ps(4.166664568298827e-2f));
  pc = _mm256_fmadd_ps(_mm256_mul_ps(pc, r2), r2, _mm256_fnmadd_ps(_mm256_set1_ps(0.5f), r2, _mm256_set1_ps(1.0f)));
  // quadrant q = n mod 4: sin x = (sin r, cos r, -sin r, -cos r)[q], cos x = (cos r, -sin r, -cos r, sin r)[q]
  const __m256i q = _mm256_cvtps_epi32(n);
  const __m256 swap = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(q, _mm256_set1_epi32(1)),
                                                             _mm256_set1_epi32(1)));
  const __m256 sin_sign = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(q, _mm256_set1_epi32(2)), 30));
  const __m256 cos_sign = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_and_si256(_mm256_add_epi32(q, _mm256_set1_epi32(1)), _mm256_set1_epi32(2)), 30));
  const __m256 sin_x = _mm256_xor_ps(_mm256_blendv_ps(ps, pc, swap), sin_sign);
  const __m256 cos_x = _mm256_xor_ps(_mm256_blendv_ps(pc, ps, swap), cos_sign);
  return {sin_x, cos_x};
}

// cos alone (the forward): reduce modulo 2 pi to [-pi, pi] and one even polynomial of
// degree 14 (least-squares minimax; 4.6e-7 absolute error in float32, ~4x the quadrant
// version's, for half its work).
inline __m256 cos8(__m256 x) {
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(0.159154943091895336f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(6.28318548202514648f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-1.74845553146951715e-7f), r);
  const __m256 t = _mm256_mul_ps(r, r);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(-9.659162358843787e-12f), t, _mm256_set1_ps(2.058069270560736e-09f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-2.7531484647624893e-07f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(2.480030889273621e-05f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.0013888853136450052f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.0416666604578495f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.5f));
  return _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.0f));
}

inline __m256 exp8(__m256 x) {
  const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_LT_OQ);
  // max/min return their second operand when either is NaN: x second keeps NaN
  x = _mm256_min_ps(_mm256_set1_ps(88.3f), _mm256_max_ps(_mm256_set1_ps(-87.3f), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(1.9875691500e-4f), r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

inline float hmax(__m256 v) {
  alignas(32) float x[8];
  _mm256_store_ps(x, v);
  float m = x[0];
  for (int i = 1; i < 8; ++i) m = (x[i] > m || std::isnan(x[i])) ? x[i] : m;
  return m;
}

inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  return _mm_cvtss_f32(lo);
}

// a[j:j+8] * cos(c[j:j+8] * p[j:j+8]): eight scores of a tile row
inline __m256 score8(const float* a, const float* p, const float* c, int j) {
  return _mm256_mul_ps(_mm256_loadu_ps(a + j), cos8(_mm256_mul_ps(_mm256_loadu_ps(c + j), _mm256_loadu_ps(p + j))));
}

template <>
float scores_row<float>(float* a, const float* p, const float* c, int n) {
  // two independent chains per loop for instruction-level parallelism. A NaN score need not
  // reach the max: exp(NaN - max) is NaN and carries it to the output.
  __m256 vmax0 = _mm256_set1_ps(-std::numeric_limits<float>::infinity()), vmax1 = vmax0;
  int j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256 s0 = score8(a, p, c, j), s1 = score8(a, p, c, j + 8);
    _mm256_storeu_ps(a + j, s0);
    _mm256_storeu_ps(a + j + 8, s1);
    vmax0 = _mm256_max_ps(s0, vmax0);
    vmax1 = _mm256_max_ps(s1, vmax1);
  }
  for (; j + 8 <= n; j += 8) {
    const __m256 s0 = score8(a, p, c, j);
    _mm256_storeu_ps(a + j, s0);
    vmax0 = _mm256_max_ps(s0, vmax0);
  }
  float mx = hmax(_mm256_max_ps(vmax0, vmax1));
  for (; j < n; ++j) {
    a[j] = a[j] * std::cos(c[j] * p[j]);
    mx = a[j] > mx ? a[j] : mx;
  }
  return mx;
}

template <>
float exp_row<float>(const float* s, float* out, int n, int bk, float m) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256 vsum0 = _mm256_setzero_ps(), vsum1 = vsum0;
  int j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256 e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
    const __m256 e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j + 8), vm));
    _mm256_storeu_ps(out + j, e0);
    _mm256_storeu_ps(out + j + 8, e1);
    vsum0 = _mm256_add_ps(vsum0, e0);
    vsum1 = _mm256_add_ps(vsum1, e1);
  }
  for (; j + 8 <= n; j += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
    _mm256_storeu_ps(out + j, e);
    vsum0 = _mm256_add_ps(vsum0, e);
  }
  float sum = hsum(_mm256_add_ps(vsum0, vsum1));
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
  const __m256 vm = _mm256_set1_ps(m);
  __m256 vmax0 = _mm256_set1_ps(-std::numeric_limits<float>::infinity()), vmax1 = vmax0;
  __m256 vsum0 = _mm256_setzero_ps(), vsum1 = vsum0;
  int j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256 s0 = score8(a, p, c, j), s1 = score8(a, p, c, j + 8);
    vmax0 = _mm256_max_ps(s0, vmax0);
    vmax1 = _mm256_max_ps(s1, vmax1);
    const __m256 e0 = exp8(_mm256_sub_ps(s0, vm)), e1 = exp8(_mm256_sub_ps(s1, vm));
    _mm256_storeu_ps(out + j, e0);
    _mm256_storeu_ps(out + j + 8, e1);
    vsum0 = _mm256_add_ps(vsum0, e0);
    vsum1 = _mm256_add_ps(vsum1, e1);
  }
  for (; j + 8 <= n; j += 8) {
    const __m256 s0 = score8(a, p, c, j);
    vmax0 = _mm256_max_ps(s0, vmax0);
    const __m256 e0 = exp8(_mm256_sub_ps(s0, vm));
    _mm256_storeu_ps(out + j, e0);
    vsum0 = _mm256_add_ps(vsum0, e0);
  }
  float mx = hmax(_mm256_max_ps(vmax0, vmax1));
  float sum = hsum(_mm256_add_ps(vsum0, vsum1));
  for (; j < n; ++j) {
    const float sc = a[j] * std::cos(c[j] * p[j]);
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
  const __m256 vlse = _mm256_set1_ps(lse), vdelta = _mm256_set1_ps(delta);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 vc = _mm256_loadu_ps(c + j), va = _mm256_loadu_ps(a + j);
    const __m256 ph = _mm256_mul_ps(vc, _mm256_loadu_ps(p + j));
    const SinCos sc = sincos8(ph);
    const __m256 cs = sc.cos, sn = sc.sin;
    const __m256 pr = exp8(_mm256_sub_ps(_mm256_mul_ps(va, cs), vlse));
    const __m256 ds = _mm256_mul_ps(pr, _mm256_sub_ps(_mm256_loadu_ps(g + j), vdelta));
    _mm256_storeu_ps(prob + j, pr);
    const __m256 dp = _mm256_mul_ps(_mm256_mul_ps(ds, va), _mm256_mul_ps(vc, sn));
    _mm256_storeu_ps(p + j, _mm256_xor_ps(dp, sign));
    _mm256_storeu_ps(a + j, _mm256_mul_ps(ds, cs));
  }
  for (; j < n; ++j) {
    const float ph = c[j] * p[j];
    const float cs = std::cos(ph), sn = std::sin(ph);
    const float pr = std::exp(a[j] * cs - lse);
    const float ds = pr * (g[j] - delta);
    prob[j] = pr;
    p[j] = -ds * a[j] * c[j] * sn;
    a[j] = ds * cs;
  }
  for (; j < bk; ++j) a[j] = p[j] = prob[j] = 0;
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

// 2 pi d^alpha for d = 0 .. n-1, kept between calls (decoding would otherwise recompute a
// power per cached token at every step); grown on demand, one table per (dtype, alpha).
template <typename T>
std::shared_ptr<const std::vector<T>> power_table(double alpha, int64_t n) {
  static std::mutex mutex;
  static std::map<double, std::shared_ptr<const std::vector<T>>> tables;
  std::lock_guard<std::mutex> lock(mutex);
  auto& table = tables[alpha];
  if (!table || static_cast<int64_t>(table->size()) < n) {
    auto grown = std::make_shared<std::vector<T>>(static_cast<size_t>(std::max<int64_t>(n, 2 * (table ? table->size() : 0))));
    const T two_pi = static_cast<T>(kTwoPi), a = static_cast<T>(alpha);
    for (size_t d = 0; d < grown->size(); ++d) (*grown)[d] = two_pi * std::pow(static_cast<T>(d), a);
    table = grown;
  }
  return table;
}

// The factor of every signed distance (key position - query position) this call meets:
// table[diff - diff_min] = 2 pi |diff|^alpha, so a tile row reads it contiguously.
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

void check_inputs(const std::vector<at::Tensor>& ts, int64_t block_q, int64_t block_k) {
  const auto dtype = ts[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "tapa fused cpu: float32 or float64 parts expected");
  for (const auto& t : ts) {
    TORCH_CHECK(t.device().is_cpu(), "tapa fused cpu: CPU tensors expected");
    TORCH_CHECK(t.stride(-1) == 1 || t.size(-1) == 1, "tapa fused cpu: unit stride along the last dim expected");
    TORCH_CHECK(t.scalar_type() == dtype, "tapa fused cpu: all tensors must share one dtype");
    TORCH_CHECK(t.dim() == 4 || t.dim() == 3, "tapa fused cpu: 4-d tensors expected");
  }
  TORCH_CHECK(block_q > 0 && block_k > 0, "tapa fused cpu: block sizes must be positive");
}

// ---- forward ----

template <typename T>
void forward_kernel(const Geometry& g, Strided<T> qa, Strided<T> ka, Strided<T> qp, Strided<T> kp, Strided<T> v,
                    T* out, T* lse, int64_t splits, double alpha) {
  const std::vector<T> table = distance_table<T>(g, alpha);
  const int64_t nqb = g.q_blocks(), nkb = g.k_blocks();
  const int64_t tasks = g.batch * g.heads * nqb * splits;
  // partial results of the key splits (flash-decoding), combined below
  std::vector<T> part_out, part_lse;
  if (splits > 1) {
    part_out.assign(static_cast<size_t>(g.batch * g.heads * g.lq * g.dv * splits), 0);
    part_lse.assign(static_cast<size_t>(g.batch * g.heads * g.lq * splits), -std::numeric_limits<T>::infinity());
  }
  const int threads = std::max(1, std::min<int>(at::get_num_threads(), static_cast<int>(tasks)));
  const T neg_inf = -std::numeric_limits<T>::infinity();

#pragma omp parallel num_threads(threads)
  {
    SerialBlas serial;
    const int64_t BQ = g.block_q, BK = g.block_k;
    std::vector<T> s_buf(BQ * BK), p_buf(BQ * BK), e_buf(BQ * BK), acc(BQ * g.dv), m(BQ), l(BQ);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      // largest query blocks (most keys under the causal mask) first
      const int64_t split = t % splits;
      const int64_t qb = nqb - 1 - (t / splits) % nqb;
      const int64_t bh = t / (splits * nqb);
      const int64_t b = bh / g.heads, h = bh % g.heads, hk = h / g.groups;
      const int64_t qs = qb * BQ, qe = std::min(qs + BQ, g.lq), bq = qe - qs;
      const int64_t end = g.key_end(qe);
      const int64_t kblocks = (end + BK - 1) / BK;
      const int64_t per_split = (kblocks + splits - 1) / splits;
      const int64_t kb0 = split * per_split, kb1 = std::min(kblocks, kb0 + per_split);
      const T* qa_b = qa.row(b, h, qs);
      const T* qp_b = qp.row(b, h, qs);
      std::fill(acc.begin(), acc.end(), T(0));
      std::fill(m.begin(), m.end(), neg_inf);
      std::fill(l.begin(), l.end(), T(0));
      for (int64_t kb = kb0; kb < kb1; ++kb) {
        const int64_t ks = kb * BK, bk = std::min(ks + BK, end) - ks;
        if (bq <= kFewRows) {
          few_rows_scores(bq, bk, g.da, qa_b, qa.ld(), ka.row(b, hk, ks), ka.ld(), s_buf.data(), BK);
          few_rows_scores(bq, bk, g.dp, qp_b, qp.ld(), kp.row(b, hk, ks), kp.ld(), p_buf.data(), BK);
        } else {
          gemm(false, true, bq, bk, g.da, T(1), qa_b, qa.ld(), ka.row(b, hk, ks), ka.ld(), T(0), s_buf.data(), BK);
          gemm(false, true, bq, bk, g.dp, T(1), qp_b, qp.ld(), kp.row(b, hk, ks), kp.ld(), T(0), p_buf.data(), BK);
        }
        for (int64_t i = 0; i < bq; ++i) {
          T* s = s_buf.data() + i * BK;
          const int n = g.visible(qs + i, ks, bk);
          if (n == 0) {
            std::fill(e_buf.data() + i * BK, e_buf.data() + i * BK + bk, T(0));
            continue;
          }
          const T* c = table.data() + g.table_index(qs + i, ks);
          const T* pr = p_buf.data() + i * BK;
          T* out_row = e_buf.data() + i * BK;
          if (m[i] != neg_inf && !std::isnan(m[i])) {
            // the row has a finite max from earlier key blocks: exponentiate against it in the
            // same pass unless this block's scores exceed it by more than kLazyMargin
            T tile_max;
            const T row_sum = scores_exp_row<T>(s, pr, c, n, static_cast<int>(bk), m[i], out_row, &tile_max);
            if (!(tile_max > m[i] + kLazyMargin)) {
              l[i] += row_sum;
              continue;
            }
          }
          const T tile_max = scores_row<T>(s, pr, c, n);
          const T m_new = (std::isnan(tile_max) || tile_max > m[i]) ? tile_max : m[i];
          const T m_safe = (m_new == neg_inf) ? T(0) : m_new;
          const T row_sum = exp_row<T>(s, out_row, n, static_cast<int>(bk), m_safe);
          const T corr = std::exp(m[i] - m_safe);
          l[i] = l[i] * corr + row_sum;
          if (corr != T(1)) {
            T* a = acc.data() + i * g.dv;
            for (int64_t d = 0; d < g.dv; ++d) a[d] *= corr;
          }
          m[i] = m_new;
        }
        if (bq <= kFewRows) {
          few_rows_accumulate(bq, bk, g.dv, e_buf.data(), BK, v.row(b, hk, ks), v.ld(), acc.data());
        } else {
          gemm(false, false, bq, g.dv, bk, T(1), e_buf.data(), BK, v.row(b, hk, ks), v.ld(), T(1), acc.data(), g.dv);
        }
      }
      for (int64_t i = 0; i < bq; ++i) {
        const int64_t row = (b * g.heads + h) * g.lq + qs + i;
        T* dst = splits > 1 ? part_out.data() + (row * splits + split) * g.dv : out + row * g.dv;
        const T* a = acc.data() + i * g.dv;
        const bool any = l[i] != T(0);  // NaN counts as "any": it propagates
        for (int64_t d = 0; d < g.dv; ++d) dst[d] = any ? a[d] / l[i] : T(0);
        const T row_lse = any ? m[i] + std::log(l[i]) : neg_inf;
        if (splits > 1) {
          part_lse[row * splits + split] = row_lse;
        } else {
          lse[row] = row_lse;
        }
      }
    }
  }
  if (splits == 1) return;
  const int64_t rows = g.batch * g.heads * g.lq;
  at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row) {
      const T* pl = part_lse.data() + row * splits;
      T mx = neg_inf;
      for (int64_t s = 0; s < splits; ++s) mx = (std::isnan(pl[s]) || pl[s] > mx) ? pl[s] : mx;
      T* dst = out + row * g.dv;
      std::fill(dst, dst + g.dv, T(0));
      if (mx == neg_inf) {
        lse[row] = neg_inf;
        continue;
      }
      T total = 0;
      for (int64_t s = 0; s < splits; ++s) {
        if (pl[s] == neg_inf) continue;
        const T w = std::exp(pl[s] - mx);
        total += w;
        const T* src = part_out.data() + (row * splits + s) * g.dv;
        for (int64_t d = 0; d < g.dv; ++d) dst[d] += w * src[d];
      }
      for (int64_t d = 0; d < g.dv; ++d) dst[d] /= total;
      lse[row] = mx + std::log(total);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> tapa_forward(const at::Tensor& qa, const at::Tensor& ka, const at::Tensor& qp,
                                                const at::Tensor& kp, const at::Tensor& v, double alpha, bool causal,
                                                int64_t q_offset, int64_t k_offset, int64_t block_q, int64_t block_k,
                                                int64_t splits) {
  check_inputs({qa, ka, qp, kp, v}, block_q, block_k);
  const Geometry g = make_geometry(qa, ka, qp, v, causal, q_offset, k_offset, block_q, block_k);
  auto out = at::zeros({g.batch, g.heads, g.lq, g.dv}, qa.options());
  auto lse = at::full({g.batch, g.heads, g.lq}, -std::numeric_limits<double>::infinity(), qa.options());
  if (g.lq == 0 || g.lk == 0) return {out, lse};
  if (splits <= 0) {
    // flash-decoding: split the keys when there are fewer (row block) tasks than threads
    const int64_t row_tasks = g.batch * g.heads * g.q_blocks();
    const int64_t threads = at::get_num_threads();
    splits = row_tasks >= threads ? 1 : std::min<int64_t>((threads + row_tasks - 1) / row_tasks, g.k_blocks());
  }
  AT_DISPATCH_FLOATING_TYPES(qa.scalar_type(), "tapa_fused_forward", [&] {
    forward_kernel<scalar_t>(g, Strided<scalar_t>(qa), Strided<scalar_t>(ka), Strided<scalar_t>(qp),
                             Strided<scalar_t>(kp), Strided<scalar_t>(v), out.data_ptr<scalar_t>(),
                             lse.data_ptr<scalar_t>(), std::max<int64_t>(1, splits), alpha);
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
    // static round-robin: which thread adds which key block into its dq buffer, and so the
    // order of the final sum, depends only on the thread count: gradients are bit-reproducible
#pragma omp for schedule(static, 1)
    for (int64_t t = 0; t < tasks; ++t) {
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
