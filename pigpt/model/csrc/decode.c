/* The C decode kernels behind pigpt/model/cpu_decode.py (see its docstring for what they do and why): all blocks
   of a GPT-2 decode step for a few rows in one call, and the LM head in a second. Built by cpu_decode.load() with
   gcc and OpenMP into a per-user cache; the interface to Python is decode.h. */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>

#include "decode.h"

enum { STORE = 0, ADD = 1 };  /* y = act(xW + b), or y += xW + b (the residual stream) */

typedef float f32_t;
typedef uint16_t bf16_t;
typedef int8_t i8_t;

static inline __mmask16 tail(int64_t n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }

/* 16 values of type T as float32; _m: the lanes of mask m (others 0) */
static inline __m512 ld_f32(const void* p) { return _mm512_loadu_ps(p); }
static inline __m512 ld_bf16(const void* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p)), 16));
}
static inline __m512 ld_i8(const void* p) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p))); }
static inline __m512 ld_f32_m(const void* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
static inline __m512 ld_bf16_m(const void* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}
static inline __m512 ld_i8_m(const void* p, __mmask16 m) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)));
}
static inline __m512 load(const void* p, int64_t i, int type, __mmask16 m) {  /* float32 or bfloat16 */
  return type == F32 ? ld_f32_m((const float*)p + i, m) : ld_bf16_m((const uint16_t*)p + i, m);
}
static inline void store(void* p, int64_t i, int type, __m512 v, __mmask16 m) {
  if (type == F32) { _mm512_mask_storeu_ps((float*)p + i, m, v); return; }
  __m512i u = _mm512_castps_si512(v);  /* round to nearest even, as torch's float -> bfloat16 */
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  u = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  _mm256_mask_storeu_epi16((uint16_t*)p + i, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16)));
}

static inline __m512 exp512(__m512 x) {  /* e^x to ~2e-7 relative: 2^n e^r, |r| <= ln2/2, degree-7 Taylor */
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  const float c[7] = {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};
  for (int i = 0; i < 7; i++) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c[i]));
  return _mm512_scalef_ps(p, n);
}

static inline __m512 activate(__m512 v, int act) {
  if (act == ACT_GELU_TANH) {  /* 0.5 v (1 + tanh u) = v (1 - 1 / (1 + e^2u)), u = sqrt(2/pi) (v + 0.044715 v^3) */
    __m512 u = _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f),
                             _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), v), _mm512_mul_ps(v, v), v));
    __m512 d = _mm512_add_ps(exp512(_mm512_add_ps(u, u)), _mm512_set1_ps(1.0f));
    return _mm512_mul_ps(v, _mm512_sub_ps(_mm512_set1_ps(1.0f), _mm512_div_ps(_mm512_set1_ps(1.0f), d)));
  }
  if (act == ACT_GELU_ERF) {  /* 0.5 v (1 + erf(v / sqrt 2)), erf by Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7) */
    __m512 z = _mm512_mul_ps(v, _mm512_set1_ps(0.7071067811865476f)), a = _mm512_abs_ps(z);
    __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(a, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f)));
    __m512 p = _mm512_set1_ps(1.061405429f);
    const float c[4] = {-1.453152027f, 1.421413741f, -0.284496736f, 0.254829592f};
    for (int i = 0; i < 4; i++) p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(c[i]));
    __m512 e = _mm512_fnmadd_ps(_mm512_mul_ps(p, t), exp512(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), a), a)),
                                _mm512_set1_ps(1.0f));  /* erf |z| */
    e = _mm512_mask_sub_ps(e, _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_setzero_ps(), e);
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
  }
  if (act == ACT_RELU) return _mm512_max_ps(v, _mm512_setzero_ps());
  return v;
}

/* -- products for up to 8 rows ------------------------------------------------------------------------
   Weights stream from memory once a step. The hardware prefetcher alone leaves these short, strided streams
   at ~60% of the bandwidth (measured), so the loops prefetch PF_ROWS rows (KN) / PF_BYTES bytes (NK) ahead.
   A tile is R rows of x against 16V output columns (KN) or NB output rows (NK); R*V, R*NB <= 16 keeps every
   accumulator in a register. Rows past M repeat row M-1; their results are dropped. */
#define PF_ROWS 16
#define PF_BYTES 4096

#define KN_TILE(T, R, V)                                                                                   \
  static void kn_##T##_##R##_##V(const Linear* L, const float* x, int M, int64_t n0, __mmask16 mlast,     \
                                 float* out) {                                                             \
    const int64_t es = sizeof(T##_t), K = L->K, N = L->N;                                                  \
    __m512 acc[R][V];                                                                                      \
    const float* xr[R];                                                                                    \
    for (int i = 0; i < R; i++) {                                                                          \
      xr[i] = x + (int64_t)(i < M ? i : M - 1) * K;                                                        \
      for (int j = 0; j < V; j++) acc[i][j] = _mm512_setzero_ps();                                         \
    }                                                                                                      \
    const char* row = (const char*)L->w + n0 * es;                                                         \
    for (int64_t k = 0; k < K; k++, row += N * es) {                                                       \
      if (k + PF_ROWS < K)                                                                                 \
        for (int b = 0; b < 16 * V * es; b += 64) _mm_prefetch(row + PF_ROWS * N * es + b, _MM_HINT_T0);  \
      __m512 w[V];                                                                                         \
      for (int j = 0; j < V - 1; j++) w[j] = ld_##T(row + 16 * j * es);                                    \
      w[V - 1] = ld_##T##_m(row + 16 * (V - 1) * es, mlast);                                               \
      for (int i = 0; i < R; i++) {                                                                        \
        __m512 a = _mm512_set1_ps(xr[i][k]);                                                               \
        for (int j = 0; j < V; j++) acc[i][j] = _mm512_fmadd_ps(a, w[j], acc[i][j]);                       \
      }                                                                                                    \
    }                                                                                                      \
    for (int i = 0; i < R; i++)                                                                            \
      for (int j = 0; j < V; j++) _mm512_storeu_ps(out + i * 256 + 16 * j, acc[i][j]);                     \
  }
#define KN_ALL(T) KN_TILE(T, 1, 16) KN_TILE(T, 1, 8) KN_TILE(T, 1, 4) KN_TILE(T, 1, 2) KN_TILE(T, 1, 1) \
  KN_TILE(T, 2, 8) KN_TILE(T, 2, 4) KN_TILE(T, 2, 2) KN_TILE(T, 2, 1) KN_TILE(T, 4, 4) KN_TILE(T, 4, 2)  \
  KN_TILE(T, 4, 1) KN_TILE(T, 8, 2) KN_TILE(T, 8, 1)
KN_ALL(f32)
KN_ALL(bf16)
typedef void (*kn_fn)(const Linear*, const float*, int, int64_t, __mmask16, float*);
#define KN_TABLE(T)                                                                                         \
  {{0, kn_##T##_1_1, kn_##T##_1_2, 0, kn_##T##_1_4, 0, 0, 0, kn_##T##_1_8, 0, 0, 0, 0, 0, 0, 0, kn_##T##_1_16}, \
   {0, kn_##T##_2_1, kn_##T##_2_2, 0, kn_##T##_2_4, 0, 0, 0, kn_##T##_2_8},                                 \
   {0, kn_##T##_4_1, kn_##T##_4_2, 0, kn_##T##_4_4},                                                        \
   {0, kn_##T##_8_1, kn_##T##_8_2}}
static const kn_fn KN_TILES[2][4][17] = {KN_TABLE(f32), KN_TABLE(bf16)}; /* [type][log2 R][V] */

#define NK_TILE(T, R, NB)                                                                                  \
  static void nk_##T##_##R##_##NB(const Linear* L, const float* x, int M, int64_t n0, float* out) {       \
    const int64_t es = sizeof(T##_t), K = L->K, K16 = K & ~(int64_t)15;                                    \
    __m512 acc[R][NB];                                                                                     \
    const float* xr[R];                                                                                    \
    for (int i = 0; i < R; i++) {                                                                          \
      xr[i] = x + (int64_t)(i < M ? i : M - 1) * K;                                                        \
      for (int j = 0; j < NB; j++) acc[i][j] = _mm512_setzero_ps();                                        \
    }                                                                                                      \
    const char* wb = (const char*)L->w + n0 * K * es;                                                      \
    for (int64_t k = 0; k < K16; k += 16) {                                                                \
      if (k * es % 64 == 0)                                                                                \
        for (int j = 0; j < NB; j++) _mm_prefetch(wb + (j * K + k) * es + PF_BYTES, _MM_HINT_T0);         \
      __m512 w[NB];                                                                                        \
      for (int j = 0; j < NB; j++) w[j] = ld_##T(wb + (j * K + k) * es);                                   \
      for (int i = 0; i < R; i++) {                                                                        \
        __m512 a = _mm512_loadu_ps(xr[i] + k);                                                             \
        for (int j = 0; j < NB; j++) acc[i][j] = _mm512_fmadd_ps(a, w[j], acc[i][j]);                      \
      }                                                                                                    \
    }                                                                                                      \
    if (K16 < K) {                                                                                         \
      __mmask16 m = tail(K - K16);                                                                         \
      __m512 w[NB];                                                                                        \
      for (int j = 0; j < NB; j++) w[j] = ld_##T##_m(wb + (j * K + K16) * es, m);                          \
      for (int i = 0; i < R; i++) {                                                                        \
        __m512 a = _mm512_maskz_loadu_ps(m, xr[i] + K16);                                                  \
        for (int j = 0; j < NB; j++) acc[i][j] = _mm512_fmadd_ps(a, w[j], acc[i][j]);                      \
      }                                                                                                    \
    }                                                                                                      \
    for (int i = 0; i < R; i++)                                                                            \
      for (int j = 0; j < NB; j++) out[i * 256 + j] = _mm512_reduce_add_ps(acc[i][j]);                     \
  }
#define NK_ALL(T) NK_TILE(T, 1, 8) NK_TILE(T, 1, 1) NK_TILE(T, 2, 4) NK_TILE(T, 2, 1) NK_TILE(T, 4, 4) \
  NK_TILE(T, 4, 1) NK_TILE(T, 8, 2) NK_TILE(T, 8, 1)
NK_ALL(f32)
NK_ALL(bf16)
NK_ALL(i8)
typedef void (*nk_fn)(const Linear*, const float*, int, int64_t, float*);
#define NK_TABLE(T) {{nk_##T##_1_1, nk_##T##_1_8}, {nk_##T##_2_1, nk_##T##_2_4}, {nk_##T##_4_1, nk_##T##_4_4}, \
                     {nk_##T##_8_1, nk_##T##_8_2}}
static const nk_fn NK_TILES[3][4][2] = {NK_TABLE(f32), NK_TABLE(bf16), NK_TABLE(i8)}; /* [type][log2 R][whole] */

/* bfloat16 NK weights on CPUs with avx512_bf16 (the LM head of a bfloat16 model): x rounded to bfloat16 once
   (xb, as torch's bfloat16 path rounds it), then one dot-product instruction per 32 weights instead of
   a load, a widening and an FMA per 16. */
#define DP_TILE(R, NB)                                                                                     \
  __attribute__((target("avx512bf16"))) static void dp_##R##_##NB(const Linear* L, const uint16_t* xb,    \
                                                                    int M, int64_t n0, float* out) {       \
    const int64_t K = L->K, K32 = K & ~(int64_t)31;                                                        \
    __m512 acc[R][NB];                                                                                     \
    const uint16_t* xr[R];                                                                                 \
    for (int i = 0; i < R; i++) {                                                                          \
      xr[i] = xb + (int64_t)(i < M ? i : M - 1) * K;                                                       \
      for (int j = 0; j < NB; j++) acc[i][j] = _mm512_setzero_ps();                                        \
    }                                                                                                      \
    const uint16_t* wb = (const uint16_t*)L->w + n0 * K;                                                   \
    for (int64_t k = 0; k < K; k += 32) {                                                                  \
      __mmask32 m = k < K32 ? 0xffffffffu : (__mmask32)((1ull << (K - k)) - 1);                           \
      for (int j = 0; j < NB; j++) _mm_prefetch((const char*)(wb + j * K + k) + PF_BYTES, _MM_HINT_T0);   \
      __m512i w[NB];                                                                                       \
      for (int j = 0; j < NB; j++) w[j] = _mm512_maskz_loadu_epi16(m, wb + j * K + k);                     \
      for (int i = 0; i < R; i++) {                                                                        \
        __m512i a = _mm512_maskz_loadu_epi16(m, xr[i] + k);                                                \
        for (int j = 0; j < NB; j++) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)a, (__m512bh)w[j]); \
      }                                                                                                    \
    }                                                                                                      \
    for (int i = 0; i < R; i++)                                                                            \
      for (int j = 0; j < NB; j++) out[i * 256 + j] = _mm512_reduce_add_ps(acc[i][j]);                     \
  }
DP_TILE(1, 8) DP_TILE(1, 1) DP_TILE(2, 4) DP_TILE(2, 1) DP_TILE(4, 4) DP_TILE(4, 1) DP_TILE(8, 2) DP_TILE(8, 1)
typedef void (*dp_fn)(const Linear*, const uint16_t*, int, int64_t, float*);
static const dp_fn DP_TILES[4][2] = {{dp_1_1, dp_1_8}, {dp_2_1, dp_2_4}, {dp_4_1, dp_4_4}, {dp_8_1, dp_8_2}};

/* bfloat16 PAIRS weights (CPUs with avx512_bf16): W blocked as [N/64][K/2][64][2] (K padded to even, N to a
   multiple of 64, with zeros), so that a tile of 64 output columns reads one contiguous stream, and each 64-byte
   load holds 16 columns x 2 consecutive k, which one dot-product instruction takes against x[k], x[k+1] (xb,
   rounded to bfloat16 once per product). Against the [K, N] widen-and-FMA tiles: 1.27x at 1 row, 3.5x at 8
   (measured on the 2-vCPU EPYC: a strided 512-byte chunk of each row of W, and half the multiply-adds). */
#define PB_TILE(R)                                                                                         \
  __attribute__((target("avx512bf16"))) static void pb_##R(const Linear* L, const uint16_t* xb, int M,    \
                                                             int64_t n0, float* out) {                     \
    const int64_t Kp = (L->K + 1) & ~(int64_t)1;                                                           \
    __m512 acc[R][4];                                                                                      \
    const uint16_t* xr[R];                                                                                 \
    for (int i = 0; i < R; i++) {                                                                          \
      xr[i] = xb + (int64_t)(i < M ? i : M - 1) * Kp;                                                      \
      for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_ps();                                         \
    }                                                                                                      \
    const uint16_t* wb = (const uint16_t*)L->w + n0 * Kp; /* block n0 / 64 */                              \
    for (int64_t k = 0; k < Kp; k += 2, wb += 128) {                                                       \
      for (int b = 0; b < 256; b += 64) _mm_prefetch((const char*)wb + PF_BYTES + b, _MM_HINT_T0);        \
      __m512i w[4];                                                                                        \
      for (int j = 0; j < 4; j++) w[j] = _mm512_loadu_si512(wb + 32 * j);                                  \
      for (int i = 0; i < R; i++) {                                                                        \
        __m512i a = _mm512_set1_epi32(*(const int32_t*)(xr[i] + k));                                       \
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)a, (__m512bh)w[j]);  \
      }                                                                                                    \
    }                                                                                                      \
    for (int i = 0; i < R; i++)                                                                            \
      for (int j = 0; j < 4; j++) _mm512_storeu_ps(out + i * 256 + 16 * j, acc[i][j]);                     \
  }
PB_TILE(1) PB_TILE(2) PB_TILE(4) PB_TILE(8)
static const dp_fn PB_TILES[4] = {pb_1, pb_2, pb_4, pb_8};

__attribute__((target("avx512bf16"))) static void round_bf16(const float* x, int64_t n, uint16_t* xb) {
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = tail(n - i);
    _mm256_mask_storeu_epi16(xb + i, m, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

static void round_rows(const float* x, int M, int64_t K, uint16_t* xb) {  /* rows of K -> rows of K padded to even */
  const int64_t Kp = (K + 1) & ~(int64_t)1;
  for (int m = 0; m < M; m++) {
    round_bf16(x + m * K, K, xb + m * Kp);
    if (Kp != K) xb[m * Kp + K] = 0;
  }
}

/* y[i, n0 + j] for tile results out[i, j] (row stride 256): scale, bias, then act or the residual add */
static void finish(const Linear* L, int ptype, const float* out, int r, int64_t n0, int64_t cols, float* y,
                   int64_t ldy, int mode) {
  for (int i = 0; i < r; i++)
    for (int64_t j = 0; j < cols; j += 16) {
      __mmask16 m = tail(cols - j);
      __m512 v = _mm512_maskz_loadu_ps(m, out + i * 256 + j);
      if (L->scale) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, L->scale + n0 + j));
      if (L->bias) v = _mm512_add_ps(v, load(L->bias, n0 + j, ptype, m));
      float* dst = y + i * ldy + n0 + j;
      v = mode == ADD ? _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, dst)) : activate(v, L->act);
      _mm512_mask_storeu_ps(dst, m, v);
    }
}

/* y[:, n_begin:n_end] = act(x (M, K) W + b)[:, n_begin:n_end], or += (x W + b)[...]: output columns (KN) or rows
   of W (NK) n_begin..n_end, tiled; n_begin a multiple of 16 (KN), of the row group (NK) or of 64 (PAIRS) unless at
   the end. xb: x rounded to bfloat16, for NK bfloat16 weights on CPUs with avx512_bf16 and for PAIRS (rows padded to
   even K there), else NULL. */
static void linear_cols(const Linear* L, int ptype, const float* x, const uint16_t* xb, int M, float* y, int mode,
                        int64_t n_begin, int64_t n_end) {
  int R = M == 1 ? 1 : M == 2 ? 2 : M <= 4 ? 4 : 8, lg = R == 1 ? 0 : R == 2 ? 1 : R == 4 ? 2 : 3;
  const int64_t K = L->K, N = L->N;
  float out[8 * 256] __attribute__((aligned(64)));
  if (L->layout == PAIRS) {
    const int64_t Kp = (K + 1) & ~(int64_t)1;
    for (int64_t n0 = n_begin; n0 < n_end; n0 += 64) {
      int64_t cols = n_end - n0 < 64 ? n_end - n0 : 64;
      for (int m0 = 0; m0 < M; m0 += R) {
        int r = M - m0 < R ? M - m0 : R;
        PB_TILES[lg](L, xb + m0 * Kp, r, n0, out);
        finish(L, ptype, out, r, n0, cols, y + m0 * N, N, mode);
      }
    }
  } else if (L->layout == KN) {  /* tiles of up to 16 * 16 / R columns, halving towards the end of the range */
    for (int64_t n0 = n_begin; n0 < n_end;) {
      int64_t vecs = (n_end - n0 + 15) / 16;
      int V = 16 / R;
      while (V > vecs) V >>= 1;
      int64_t cols = n0 + 16 * V <= n_end ? 16 * V : n_end - n0;
      for (int m0 = 0; m0 < M; m0 += R) {
        int r = M - m0 < R ? M - m0 : R;
        KN_TILES[L->wtype][lg][V](L, x + m0 * K, r, n0, tail(cols - 16 * (V - 1)), out);
        finish(L, ptype, out, r, n0, cols, y + m0 * N, N, mode);
      }
      n0 += cols;
    }
  } else {  /* groups of NB rows of W, up to 256 outputs of `out` at a time */
    int NB = R == 1 ? 8 : R == 8 ? 2 : 4;
    for (int64_t n0 = n_begin; n0 < n_end;) {
      int64_t cols = n_end - n0 < 256 ? n_end - n0 : 256;
      for (int m0 = 0; m0 < M; m0 += R) {
        int r = M - m0 < R ? M - m0 : R;
        for (int64_t c = 0; c < cols;) {
          float part[8 * 256] __attribute__((aligned(64)));
          int whole = c + NB <= cols, nb = whole ? NB : 1;
          if (xb) DP_TILES[lg][whole](L, xb + m0 * K, r, n0 + c, part);  /* bfloat16 x: bfloat16 weights */
          else NK_TILES[L->wtype][lg][whole](L, x + m0 * K, r, n0 + c, part);
          for (int i = 0; i < r; i++)
            for (int j = 0; j < nb; j++) out[i * 256 + c + j] = part[i * 256 + j];
          c += nb;
        }
        finish(L, ptype, out, r, n0, cols, y + m0 * N, N, mode);
      }
      n0 += cols;
    }
  }
}

/* -- layer norm, attention ------------------------------------------------------------------------- */
static void layer_norm(const float* x, const void* w, const void* b, int ptype, int64_t C, float eps, float* y) {
  __m512 s = _mm512_setzero_ps(), q = _mm512_setzero_ps();
  for (int64_t i = 0; i < C; i += 16) s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(tail(C - i), x + i));
  __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(s) / C);
  for (int64_t i = 0; i < C; i += 16) {
    __mmask16 m = tail(C - i);
    __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, x + i), mean);
    q = _mm512_fmadd_ps(d, d, q);
  }
  __m512 rstd = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(q) / C + eps));
  for (int64_t i = 0; i < C; i += 16) {
    __mmask16 m = tail(C - i);
    __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mean), rstd);
    _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(d, load(w, i, ptype, m), load(b, i, ptype, m)));
  }
}

/* sc[s] = scale * q.k_s for n keys of width hs; returns max(mx, max_s sc[s]) */
static float scores(const float* q, const void* k, int type, int64_t n, int hs, float scale, float* sc, float mx) {
  for (int64_t s = 0; s < n; s++) {
    __m512 acc = _mm512_setzero_ps();
    for (int d = 0; d < hs; d += 16) {
      __mmask16 m = tail(hs - d);
      acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + d), load(k, s * hs + d, type, m), acc);
    }
    sc[s] = _mm512_reduce_add_ps(acc) * scale;
    mx = sc[s] > mx ? sc[s] : mx;
  }
  return mx;
}

static void weighted_sum(const float* p, const void* v, int type, int64_t n, int hs, float* out) {  /* out += */
  for (int d = 0; d < hs; d += 16) {
    __mmask16 m = tail(hs - d);
    __m512 acc = _mm512_maskz_loadu_ps(m, out + d);
    for (int64_t s = 0; s < n; s++) acc = _mm512_fmadd_ps(_mm512_set1_ps(p[s]), load(v, s * hs + d, type, m), acc);
    _mm512_mask_storeu_ps(out + d, m, acc);
  }
}

/* One query (row b, head h): write this step's key and value, then attend over the row's prompt's shared keys
   (if any) and its own, one softmax over both. */
static void attend(const Cache* c, int64_t l, int64_t b, int64_t h, int hs, float scale, const float* qkv,
                   int64_t C, float* out, float* sc) {
  int type = c->kvtype;
  int64_t es = type == F32 ? 4 : 2;
  char* kb = (char*)c->k + (l * c->layer + b * c->row + h * c->head) * es;
  char* vb = (char*)c->v + (l * c->layer + b * c->row + h * c->head) * es;
  for (int d = 0; d < hs; d += 16) {
    __mmask16 m = tail(hs - d);
    store(kb, c->pos * hs + d, type, _mm512_maskz_loadu_ps(m, qkv + C + h * hs + d), m);
    store(vb, c->pos * hs + d, type, _mm512_maskz_loadu_ps(m, qkv + 2 * C + h * hs + d), m);
  }
  int64_t s0 = c->start ? c->start[b] : 0, n_own = c->pos + 1 - s0, n_pre = 0;
  const char *pkb = 0, *pvb = 0;
  if (c->pk) {
    int64_t p = c->prompt[b], p0 = c->p_start ? c->p_start[p] : 0, off = l * c->p_layer + p * c->p_row + h * c->p_head;
    n_pre = c->P - p0;
    pkb = (const char*)c->pk + (off + p0 * hs) * es;
    pvb = (const char*)c->pv + (off + p0 * hs) * es;
  }
  const float* q = qkv + h * hs;
  float mx = n_pre ? scores(q, pkb, type, n_pre, hs, scale, sc, -INFINITY) : -INFINITY;
  mx = scores(q, kb + s0 * hs * es, type, n_own, hs, scale, sc + n_pre, mx);
  __m512 sum = _mm512_setzero_ps(), vmx = _mm512_set1_ps(mx);
  for (int64_t s = 0; s < n_pre + n_own; s += 16) {
    __mmask16 m = tail(n_pre + n_own - s);
    __m512 e = _mm512_maskz_mov_ps(m, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sc + s), vmx)));
    _mm512_mask_storeu_ps(sc + s, m, e);
    sum = _mm512_add_ps(sum, e);
  }
  float inv = 1.0f / _mm512_reduce_add_ps(sum);
  for (int64_t s = 0; s < n_pre + n_own; s++) sc[s] *= inv;
  memset(out, 0, hs * sizeof(float));
  if (n_pre) weighted_sum(sc, pvb, type, n_pre, hs, out);
  weighted_sum(sc + n_pre, vb + s0 * hs * es, type, n_own, hs, out);
}

/* -- threads: torch's own OpenMP pool, claiming tiles of work -----------------------------------------
   A job is a sequence of phases (per block: q/k/v products, attention, projection, MLP up, MLP down); each phase
   is cut into tiles that threads claim from a counter, and a thread starts a phase once every tile of the one
   before is done. No thread waits for another to *arrive* at a phase: on a machine whose cores are shared with
   other processes, a preempted thread's share is simply taken by the others (with OpenMP's static split and
   barriers, a 2-thread step's median was 3-6x its best case under such load; measured).
   The threads are the ones torch's CPU ops run on: this library links libgomp.so.1, which the dynamic linker
   resolves to the copy torch has already loaded. A pool of our own would compete with torch's for the cores:
   after each torch op libgomp's idle threads spin for a while (GOMP_SPINCOUNT), and on 2 cores a decode step
   with its own second thread ran at ~0.75x (measured, 2-vCPU EPYC). The price: OpenMP joins its threads at the
   end of a call, so a thread the OS has descheduled is waited for there, and libgomp's threads spin between
   calls. With one of the 2 cores busy with another process, a float32 batch-1 token took 1.3x as long as with
   that own pool (bench_generate --baseline, one run); on a quiet machine it takes 0.62x as long. */
#define MAX_THREADS 64
#define SPINS 4000
enum { DECODE = 0, LINEAR = 1 };

typedef struct {
  int kind, M, nthreads, nphases;
  /* DECODE */
  float* x;
  const Model* md;
  const Cache* c;
  float* work;
  int64_t S;
  /* LINEAR */
  const Linear* L;
  int ptype;
  const float* lx;
  const uint16_t* lxb;
  float* ly;
} Job;

static int32_t next_tile[MAX_PHASES], done_tiles[MAX_PHASES], tiles[MAX_PHASES];  /* per phase of the job */
static pthread_mutex_t call_lock = PTHREAD_MUTEX_INITIALIZER;  /* one job at a time (ctypes drops the GIL) */

static int64_t tile_count(int64_t n, int nt) {  /* ~256-wide tiles, but >= 3 per thread where n allows */
  int64_t t = (n + 255) / 256, want = 3 * (int64_t)nt, most = (n + 63) / 64;
  return t >= want ? t : want < most ? want : most;
}
static void tile_range(const Linear* L, int64_t tiles, int64_t i, int64_t* n0, int64_t* n1) {  /* aligned for L */
  const int64_t n = L->N, align = L->layout == PAIRS ? 64 : 16;
  *n0 = i * n / tiles / align * align;
  *n1 = i + 1 == tiles ? n : (i + 1) * n / tiles / align * align;
}

static int64_t count_tiles(const Job* j, int p) {
  if (j->kind == LINEAR) return tile_count(j->L->N, j->nthreads);
  const Model* md = j->md;
  if (p == md->L * PHASES_PER_LAYER) return j->M;  /* ln_f, a row a tile */
  const Layer* ly = md->layers + p / PHASES_PER_LAYER;
  switch (p % PHASES_PER_LAYER) {
    case QKV: return tile_count(ly->qkv.N, j->nthreads);
    case ATTN: return (int64_t)j->M * md->nh;
    case PROJ: return tile_count(ly->proj.N, j->nthreads);
    case FC: return tile_count(ly->fc.N, j->nthreads);
    default: return tile_count(ly->proj2.N, j->nthreads);
  }
}

/* Thread t's private buffers in `work` (per_thread floats each): its layer norm of x (M x C), which it computes
   once per layer norm it needs (`*normed` remembers which), attention scores (S + 16), and a PAIRS product's input
   rounded to bfloat16 (M x (inner + 2) halves), once per phase (`*rounded`). */
static int64_t per_thread(int64_t M, int64_t C, int64_t inner, int64_t S) {
  return M * C + S + 16 + M * ((inner > C ? inner : C) + 2) / 2 + 16;
}

static void run_tile(const Job* j, int p, int64_t i, int t, int* normed, int* rounded) {
  int64_t n0, n1;
  if (j->kind == LINEAR) {
    tile_range(j->L, tiles[p], i, &n0, &n1);
    linear_cols(j->L, j->ptype, j->lx, j->lxb, j->M, j->ly, STORE, n0, n1);
    return;
  }
  const Model* md = j->md;
  const int64_t M = j->M, C = md->C, H = md->nh, hs = C / H, P = md->ptype, L = md->L;
  const int64_t inner = md->layers[0].fc.N;
  float *qkv = j->work, *att = qkv + 3 * M * C, *hid = att + M * C;
  float *a = hid + M * inner + t * per_thread(M, C, inner, j->S), *sc = a + M * C;
  uint16_t* xb = (uint16_t*)(sc + j->S + 16);
  float* x = j->x;
  if (p == L * PHASES_PER_LAYER) {  /* ln_f of row i, in place */
    layer_norm(x + i * C, md->lnf_w, md->lnf_b, P, C, md->eps, a);
    memcpy(x + i * C, a, C * sizeof(float));
    return;
  }
  const Layer* ly = md->layers + p / PHASES_PER_LAYER;
  int kind = p % PHASES_PER_LAYER;
  if ((kind == QKV || kind == FC) && *normed != p) {  /* x is final for this layer norm: the phase before is done */
    for (int m = 0; m < M; m++)
      layer_norm(x + m * C, kind == QKV ? ly->ln1_w : ly->ln2_w, kind == QKV ? ly->ln1_b : ly->ln2_b, P, C, md->eps,
                 a + m * C);
    *normed = p;
  }
  const Linear* lin = kind == QKV ? &ly->qkv : kind == PROJ ? &ly->proj : kind == FC ? &ly->fc : &ly->proj2;
  if (kind == ATTN) {
    attend(j->c, p / PHASES_PER_LAYER, i / H, i % H, hs, ly->attn_scale, qkv + i / H * 3 * C, C,
           att + i / H * C + i % H * hs, sc);
    return;
  }
  const float* in = kind == QKV || kind == FC ? a : kind == PROJ ? att : hid;  /* final: its phase is done */
  if (lin->layout == PAIRS && *rounded != p) {
    round_rows(in, (int)M, lin->K, xb);
    *rounded = p;
  }
  tile_range(lin, tiles[p], i, &n0, &n1);
  linear_cols(lin, P, in, lin->layout == PAIRS ? xb : NULL, (int)M, kind == QKV ? qkv : kind == FC ? hid : x,
              kind == PROJ || kind == PROJ2 ? ADD : STORE, n0, n1);
}

static void wait_phase(int p) {  /* until every tile of phase p is done */
  for (int i = 0; __atomic_load_n(&done_tiles[p], __ATOMIC_ACQUIRE) < tiles[p]; i++) {
    if (i < SPINS) _mm_pause();
    else sched_yield();
  }
}

static void run_job(const Job* j, int t) {  /* a late thread finds the tiles taken and moves on */
  int normed = -1, rounded = -1;
  for (int p = 0; p < j->nphases; p++) {
    if (p) wait_phase(p - 1);
    for (int32_t i; (i = __atomic_fetch_add(&next_tile[p], 1, __ATOMIC_ACQ_REL)) < tiles[p];) {
      run_tile(j, p, i, t, &normed, &rounded);
      __atomic_add_fetch(&done_tiles[p], 1, __ATOMIC_RELEASE);
    }
  }
}

static void run(Job* j) {
  pthread_mutex_lock(&call_lock);
  if (j->nthreads > MAX_THREADS) j->nthreads = MAX_THREADS;
  for (int p = 0; p < j->nphases; p++) {
    next_tile[p] = done_tiles[p] = 0;
    tiles[p] = (int32_t)count_tiles(j, p);
  }
#pragma omp parallel num_threads(j->nthreads)
  run_job(j, omp_get_thread_num());
  pthread_mutex_unlock(&call_lock);
}

/* -- entry points --------------------------------------------------------------------------------- */
/* The interface as this compiler laid it out: each struct's size and its fields' offsets and sizes (from the same
   field lists the structs are declared from, decode.h) and the shared constants. cpu_decode.py compares it with its ctypes mirror
   before the first call. */
#define SIZE(S) {"sizeof(" #S ")", (int64_t)sizeof(S)},
#define FIELD(S, f) {#S "." #f, (int64_t)offsetof(S, f)}, {"sizeof(" #S "." #f ")", (int64_t)sizeof(((S*)0)->f)},
#define FIELD_Linear(type, f) FIELD(Linear, f)
#define FIELD_Layer(type, f) FIELD(Layer, f)
#define FIELD_Cache(type, f) FIELD(Cache, f)
#define FIELD_Model(type, f) FIELD(Model, f)
#define VALUE(v) {#v, (int64_t)(v)},
static const InterfaceEntry INTERFACE[] = {
    SIZE(Linear) LINEAR_FIELDS(FIELD_Linear)
    SIZE(Layer) LAYER_FIELDS(FIELD_Layer)
    SIZE(Cache) CACHE_FIELDS(FIELD_Cache)
    SIZE(Model) MODEL_FIELDS(FIELD_Model)
    VALUE(F32) VALUE(BF16) VALUE(I8) VALUE(KN) VALUE(NK) VALUE(PAIRS)
    VALUE(ACT_NONE) VALUE(ACT_GELU_TANH) VALUE(ACT_GELU_ERF) VALUE(ACT_RELU)
    VALUE(PHASES_PER_LAYER) VALUE(MAX_PHASES)
};

int pigpt_interface(const InterfaceEntry** entries) {
  *entries = INTERFACE;
  return (int)(sizeof INTERFACE / sizeof INTERFACE[0]);
}

/* All blocks, then ln_f, for M rows of one token: x (M, C) holds the embeddings in and the final hidden states
   out. work: pigpt_work_floats(M, C, inner, S, nthreads) floats (S: the most keys any row attends to). */
int64_t pigpt_work_floats(int M, int64_t C, int64_t inner, int64_t S, int nthreads) {  /* the size of `work` */
  return M * (5 * C + inner) + nthreads * per_thread(M, C, inner, S);
}

int pigpt_decode(float* x, int M, const Model* md, const Cache* c, float* work, int64_t S, int nthreads) {
  Job j = {DECODE, M, nthreads, md->L * PHASES_PER_LAYER + 1, x, md, c, work, S, NULL, md->ptype, NULL, NULL, NULL};
  if (j.nphases > MAX_PHASES) return -1;
  run(&j);
  return 0;
}

int pigpt_has_avx512bf16(void) {  /* whether PAIRS weights (and the bfloat16 head's dot products) run here */
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16");
}

/* y (M, N) = x (M, K) W^T + b for one linear (the LM head). xb: room for M * (K + 1) bfloat16 values. dot: use
   avx512_bf16 dot products for bfloat16 weights (the caller checked pigpt_has_avx512bf16; PAIRS needs them). */
void pigpt_linear(const Linear* L, int ptype, const float* x, int M, float* y, int nthreads, uint16_t* xb, int dot) {
  int dp = dot && L->wtype == BF16 && L->layout != KN;
  if (dp && L->layout == PAIRS) round_rows(x, M, L->K, xb);
  else if (dp) round_bf16(x, (int64_t)M * L->K, xb);
  Job j = {LINEAR, M, nthreads, 1, NULL, NULL, NULL, NULL, 0, L, ptype, x, dp ? xb : NULL, y};
  run(&j);
}

/* Back the 2 MB blocks that [p, p + bytes) touches with transparent huge pages, now (MADV_COLLAPSE, Linux 6.1+)
   and on later faults (MADV_HUGEPAGE); returns how many blocks were collapsed. Why: these weight streams stride
   across pages (a KN tile reads 1 KB of each row of W), and with 4 KB pages the TLB misses cost ~10% of a float32
   step (measured). The memory is unchanged; neighbours sharing a block with p get huge pages too, which is
   harmless. Where the kernel says no (older kernels, THP off), nothing happens. */
int64_t pigpt_hugepages(const void* p, int64_t bytes) {
  int64_t n = 0;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t H = (uintptr_t)2 << 20;
  for (uintptr_t a = (uintptr_t)p & ~(H - 1); a < (uintptr_t)p + bytes; a += H) {
    madvise((void*)a, H, MADV_HUGEPAGE);
    n += madvise((void*)a, H, 25 /* MADV_COLLAPSE */) == 0;
  }
#endif
  return n;
}
