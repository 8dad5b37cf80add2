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

/* -- vectors of VW float32 lanes --------------------------------------------------------------------------
   The same source builds twice (cpu_decode.py picks the build by the CPU): with AVX-512 (VW = 16, tails by mask
   registers) and with AVX2 + FMA (VW = 8; a tail `vm` is its lane count, read and written through a masked
   load or a small copy). Everything below the layer is written once against v_* and the ld_/store helpers. */
static inline float sum8(__m256 v) {  /* both builds: the AVX2 build's v_sum, and the int8 products' */
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

#if defined(__AVX512F__)
#define VW 16
#define BF16_DOTS 1 /* avx512_bf16 tiles (PAIRS layout, the bfloat16 head), used where the CPU has them */
typedef __m512 vf;
typedef __mmask16 vm;
static inline vm tail(int64_t n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }
#define v_zero _mm512_setzero_ps
#define v_set1 _mm512_set1_ps
#define v_loadu _mm512_loadu_ps
#define v_storeu _mm512_storeu_ps
#define v_add _mm512_add_ps
#define v_sub _mm512_sub_ps
#define v_mul _mm512_mul_ps
#define v_div _mm512_div_ps
#define v_max _mm512_max_ps
#define v_fmadd _mm512_fmadd_ps
#define v_fnmadd _mm512_fnmadd_ps
#define v_abs _mm512_abs_ps
#define v_sum _mm512_reduce_add_ps
static inline vf v_load_m(const float* p, vm m) { return _mm512_maskz_loadu_ps(m, p); }
static inline void v_store_m(float* p, vm m, vf v) { _mm512_mask_storeu_ps(p, m, v); }
static inline vf v_sub_m(vm m, vf a, vf b) { return _mm512_maskz_sub_ps(m, a, b); }  /* 0 outside m */
static inline vf v_keep_m(vm m, vf a) { return _mm512_maskz_mov_ps(m, a); }
static inline vf v_neg_where_negative(vf e, vf z) {  /* -e where z < 0 */
  return _mm512_mask_sub_ps(e, _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_setzero_ps(), e);
}
static inline vf v_round(vf x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vf v_scale2(vf p, vf n) { return _mm512_scalef_ps(p, n); }  /* p 2^n */
#define EXP_MIN -104.0f /* scalef reaches 2^-150 and below, to 0 */
/* 16 values of type T as float32; _m: the lanes of mask m (others 0) */
static inline vf ld_f32(const void* p) { return _mm512_loadu_ps(p); }
static inline vf ld_bf16(const void* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p)), 16));
}
static inline vf ld_i8(const void* p) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p))); }
static inline vf ld_f32_m(const void* p, vm m) { return _mm512_maskz_loadu_ps(m, p); }
static inline vf ld_bf16_m(const void* p, vm m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}
static inline vf ld_i8_m(const void* p, vm m) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)));
}
static inline void st_bf16_m(uint16_t* p, vm m, __m512i u) {  /* the high halves of u's lanes */
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16)));
}
#define v_i _mm512_castps_si512
#define vi_and _mm512_and_si512
#define vi_add _mm512_add_epi32
#define vi_srli _mm512_srli_epi32
#define vi_set1 _mm512_set1_epi32
#else /* AVX2 + FMA */
#define VW 8
#define BF16_DOTS 0
typedef __m256 vf;
typedef int vm; /* lanes 0 .. vm-1 */
static inline vm tail(int64_t n) { return n >= 8 ? 8 : (int)n; }
#define v_zero _mm256_setzero_ps
#define v_set1 _mm256_set1_ps
#define v_loadu _mm256_loadu_ps
#define v_storeu _mm256_storeu_ps
#define v_add _mm256_add_ps
#define v_sub _mm256_sub_ps
#define v_mul _mm256_mul_ps
#define v_div _mm256_div_ps
#define v_max _mm256_max_ps
#define v_fmadd _mm256_fmadd_ps
#define v_fnmadd _mm256_fnmadd_ps
static inline __m256i lanes(vm m) {  /* the mask of lanes 0 .. m-1 */
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(m), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline vf v_abs(vf x) { return _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))); }
#define v_sum sum8
static inline vf v_load_m(const float* p, vm m) {
  return m == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lanes(m));
}
static inline void v_store_m(float* p, vm m, vf v) {
  if (m == 8) _mm256_storeu_ps(p, v);
  else _mm256_maskstore_ps(p, lanes(m), v);
}
static inline vf v_keep_m(vm m, vf a) { return m == 8 ? a : _mm256_and_ps(a, _mm256_castsi256_ps(lanes(m))); }
static inline vf v_sub_m(vm m, vf a, vf b) { return v_keep_m(m, _mm256_sub_ps(a, b)); }
static inline vf v_neg_where_negative(vf e, vf z) {  /* e >= 0 here: take z's sign */
  return _mm256_or_ps(e, _mm256_and_ps(z, _mm256_set1_ps(-0.0f)));
}
static inline vf v_round(vf x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vf v_scale2(vf p, vf n) {  /* p 2^n for integral n in [-126, 127], through the exponent bits */
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#define EXP_MIN -87.0f /* keeps 2^n a normal float32; e^-87 ~ 1.6e-38 */
static inline vf ld_f32(const void* p) { return _mm256_loadu_ps(p); }
static inline vf ld_bf16(const void* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p)), 16));
}
static inline vf ld_i8(const void* p) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p))); }
static inline vf ld_f32_m(const void* p, vm m) { return v_load_m(p, m); }
static inline vf ld_bf16_m(const void* p, vm m) {  /* a tail: through a zeroed copy, never reading past it */
  if (m == 8) return ld_bf16(p);
  uint16_t t[8] = {0};
  memcpy(t, p, (size_t)m * 2);
  return ld_bf16(t);
}
static inline vf ld_i8_m(const void* p, vm m) {
  if (m == 8) return ld_i8(p);
  int8_t t[8] = {0};
  memcpy(t, p, (size_t)m);
  return ld_i8(t);
}
static inline void st_bf16_m(uint16_t* p, vm m, __m256i u) {  /* the high halves of u's lanes */
  u = _mm256_srli_epi32(u, 16);
  __m128i h = _mm_packus_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1));
  if (m == 8) _mm_storeu_si128((__m128i*)p, h);
  else {
    uint16_t t[8];
    _mm_storeu_si128((__m128i*)t, h);
    memcpy(p, t, (size_t)m * 2);
  }
}
#define v_i _mm256_castps_si256
#define vi_and _mm256_and_si256
#define vi_add _mm256_add_epi32
#define vi_srli _mm256_srli_epi32
#define vi_set1 _mm256_set1_epi32
#endif

static inline vf load(const void* p, int64_t i, int type, vm m) {  /* float32 or bfloat16 */
  return type == F32 ? ld_f32_m((const float*)p + i, m) : ld_bf16_m((const uint16_t*)p + i, m);
}
static inline void store(void* p, int64_t i, int type, vf v, vm m) {
  if (type == F32) { v_store_m((float*)p + i, m, v); return; }
  __typeof__(v_i(v)) u = v_i(v);  /* round to nearest even, as torch's float -> bfloat16 */
  __typeof__(u) lsb = vi_and(vi_srli(u, 16), vi_set1(1));
  u = vi_add(u, vi_add(lsb, vi_set1(0x7fff)));
  st_bf16_m((uint16_t*)p + i, m, u);
}

static inline vf vexp(vf x) {  /* e^x to ~2e-7 relative: 2^n e^r, |r| <= ln2/2, degree-7 Taylor */
  x = v_max(x, v_set1(EXP_MIN));
#if VW == 8
  x = _mm256_min_ps(x, v_set1(88.0f));  /* 2^n stays finite: e^88 ~ 1.7e38 */
#endif
  vf n = v_round(v_mul(x, v_set1(1.44269504088896341f)));
  vf r = v_fnmadd(n, v_set1(0.693145751953125f), x);
  r = v_fnmadd(n, v_set1(1.428606765330187e-06f), r);
  vf p = v_set1(1.0f / 5040);
  const float c[7] = {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};
  for (int i = 0; i < 7; i++) p = v_fmadd(p, r, v_set1(c[i]));
  return v_scale2(p, n);
}

static inline vf activate(vf v, int act) {
  if (act == ACT_GELU_TANH) {  /* 0.5 v (1 + tanh u) = v (1 - 1 / (1 + e^2u)), u = sqrt(2/pi) (v + 0.044715 v^3) */
    vf u = v_mul(v_set1(0.7978845608028654f), v_fmadd(v_mul(v_set1(0.044715f), v), v_mul(v, v), v));
    vf d = v_add(vexp(v_add(u, u)), v_set1(1.0f));
    return v_mul(v, v_sub(v_set1(1.0f), v_div(v_set1(1.0f), d)));
  }
  if (act == ACT_GELU_ERF) {  /* 0.5 v (1 + erf(v / sqrt 2)), erf by Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7) */
    vf z = v_mul(v, v_set1(0.7071067811865476f)), a = v_abs(z);
    vf t = v_div(v_set1(1.0f), v_fmadd(a, v_set1(0.3275911f), v_set1(1.0f)));
    vf p = v_set1(1.061405429f);
    const float c[4] = {-1.453152027f, 1.421413741f, -0.284496736f, 0.254829592f};
    for (int i = 0; i < 4; i++) p = v_fmadd(p, t, v_set1(c[i]));
    vf e = v_fnmadd(v_mul(p, t), vexp(v_mul(v_sub(v_zero(), a), a)), v_set1(1.0f));  /* erf |z| */
    e = v_neg_where_negative(e, z);
    return v_mul(v_mul(v_set1(0.5f), v), v_add(v_set1(1.0f), e));
  }
  if (act == ACT_RELU) return v_max(v, v_zero());
  return v;
}

/* -- products for up to 8 rows ------------------------------------------------------------------------
   Weights stream from memory once a step. The hardware prefetcher alone leaves these short, strided streams
   at ~60% of the bandwidth (measured), so the loops prefetch PF_ROWS rows (KN) / PF_BYTES bytes (NK) ahead.
   A tile is R rows of x against VW*V output columns (KN) or NB output rows (NK), sized per build so that the
   accumulators, the weights they share and the broadcast x fit the registers: AVX-512 has 32, R*V, R*NB <= 16;
   AVX2 has 16, and tiles sized as for AVX-512 spilled accumulators and weights to the stack on every k (gcc 12,
   objdump), so there R*V, R*NB <= 8, except that KN at R = 1 keeps V = 16 (512-byte reads of each row of W; V = 8
   and reads of 256 columns with the sums in L1 were no faster), and 8 rows run as two KN tiles of 4 over the same
   columns (an 8 x 1 tile reads half a cache line of each row of W). Rows past M repeat row M-1; their results are
   dropped. A decode step's KN products run as split products instead (below); these column tiles serve the LM head
   (NK) and single products of a few rows (`pigpt_linear`).
   NK_PF_ONE_ROW: an NK tile of one row of float32 weights prefetches too. On the Zen 3 EPYC (AVX2) the prefetchers
   alone stream its rows faster (GPT-2 small's head at one row 5.9 -> 4.7 ms; at 4 and 8 rows prefetch still wins,
   6.6 vs 7.6 ms); AVX-512 builds keep the prefetch they were measured with.
   PF_HINT, PF_BYTES: on the AVX-512 EPYC (Zen 4) prefetches go into L2 (prefetcht1), 8 KB ahead, rather than into
   L1 (prefetcht0) 4 KB ahead. In-process A/B of two builds, GPT-2 small's decode steps, median of 5 rounds: int8
   1.52x / 1.69x / 1.26x / 0.99x at 1 / 2 / 4 / 8 rows (6.5 -> 4.4 ms at one row: the int8 tiles use up a line in a
   few instructions, and prefetches into L1 held its few miss buffers); 4 KB ahead into L2: 0.79x of 8 KB; 16 KB:
   the same. bfloat16's pair-blocked tiles 1.07x at one row and 1.08x at 8, but 0.86x at 2 (where 4 KB ahead into
   L2 won 1.13x and lost 0.88-0.95x at 1 and 8 rows); one setting for all. KS_PF_F32: float32 split products
   prefetch too, into L2 (with it, float32 steps 1.12x-1.27x at 1-8 rows), where prefetch into L1 had only slowed
   them (Zen 3). The AVX2 build keeps what was measured on Zen 3. */
#define PF_ROWS 16
#if VW == 16
#define PF_BYTES 8192
#define PF_HINT _MM_HINT_T1
#define KS_PF_F32 1
#else
#define PF_BYTES 4096
#define PF_HINT _MM_HINT_T0
#define KS_PF_F32 0
#endif
#define NK_PF_ONE_ROW (VW == 16)

#define KN_TILE(T, R, V)                                                                                   \
  static void kn_##T##_##R##_##V(const Linear* L, const float* x, int M, int64_t n0, vm mlast,     \
                                 float* out) {                                                             \
    const int64_t es = sizeof(T##_t), K = L->K, N = L->N;                                                  \
    vf acc[R][V];                                                                                      \
    const float* xr[R];                                                                                    \
    for (int i = 0; i < R; i++) {                                                                          \
      xr[i] = x + (int64_t)(i < M ? i : M - 1) * K;                                                        \
      for (int j = 0; j < V; j++) acc[i][j] = v_zero();                                         \
    }                                                                                                      \
    const char* row = (const char*)L->w + n0 * es;                                                         \
    for (int64_t k = 0; k < K; k++, row += N * es) {                                                       \
      if (k + PF_ROWS < K)                                                                                 \
        for (int b = 0; b < VW * V * es; b += 64) _mm_prefetch(row + PF_ROWS * N * es + b, PF_HINT);  \
      vf w[V];                                                                                         \
      for (int j = 0; j < V - 1; j++) w[j] = ld_##T(row + VW * j * es);                                    \
      w[V - 1] = ld_##T##_m(row + VW * (V - 1) * es, mlast);                                               \
      for (int i = 0; i < R; i++) {                                                                        \
        vf a = v_set1(xr[i][k]);                                                               \
        for (int j = 0; j < V; j++) acc[i][j] = v_fmadd(a, w[j], acc[i][j]);                       \
      }                                                                                                    \
    }                                                                                                      \
    for (int i = 0; i < R; i++)                                                                            \
      for (int j = 0; j < V; j++) v_storeu(out + i * 256 + VW * j, acc[i][j]);                     \
  }
#if VW == 16
static const int KN_V[4] = {16, 8, 4, 2};
#define KN_R 8
#define KN_LG 3
#define KN_ALL(T) KN_TILE(T, 1, 16) KN_TILE(T, 1, 8) KN_TILE(T, 1, 4) KN_TILE(T, 1, 2) KN_TILE(T, 1, 1) \
  KN_TILE(T, 2, 8) KN_TILE(T, 2, 4) KN_TILE(T, 2, 2) KN_TILE(T, 2, 1) KN_TILE(T, 4, 4) KN_TILE(T, 4, 2)  \
  KN_TILE(T, 4, 1) KN_TILE(T, 8, 2) KN_TILE(T, 8, 1)
#define KN_TABLE(T)                                                                                         \
  {{0, kn_##T##_1_1, kn_##T##_1_2, 0, kn_##T##_1_4, 0, 0, 0, kn_##T##_1_8, 0, 0, 0, 0, 0, 0, 0, kn_##T##_1_16}, \
   {0, kn_##T##_2_1, kn_##T##_2_2, 0, kn_##T##_2_4, 0, 0, 0, kn_##T##_2_8},                                 \
   {0, kn_##T##_4_1, kn_##T##_4_2, 0, kn_##T##_4_4},                                                        \
   {0, kn_##T##_8_1, kn_##T##_8_2}}
#else
static const int KN_V[4] = {16, 4, 2, 1};
#define KN_R 4
#define KN_LG 2
#define KN_ALL(T) KN_TILE(T, 1, 16) KN_TILE(T, 1, 8) KN_TILE(T, 1, 4) KN_TILE(T, 1, 2) KN_TILE(T, 1, 1) KN_TILE(T, 2, 4) \
  KN_TILE(T, 2, 2) KN_TILE(T, 2, 1) KN_TILE(T, 4, 2) KN_TILE(T, 4, 1)
#define KN_TABLE(T)                                                                                         \
  {{0, kn_##T##_1_1, kn_##T##_1_2, 0, kn_##T##_1_4, 0, 0, 0, kn_##T##_1_8, 0, 0, 0, 0, 0, 0, 0, kn_##T##_1_16}, \
   {0, kn_##T##_2_1, kn_##T##_2_2, 0, kn_##T##_2_4},                                                        \
   {0, kn_##T##_4_1, kn_##T##_4_2},                                                                         \
   {0}} /* 8 rows: two tiles of 4 (KN_R) */
#endif
KN_ALL(f32)
KN_ALL(bf16)
typedef void (*kn_fn)(const Linear*, const float*, int, int64_t, vm, float*);
static const kn_fn KN_TILES[2][4][17] = {KN_TABLE(f32), KN_TABLE(bf16)}; /* [type][log2 R][V] */

/* -- split products: a decode step's products of 1 .. SPLIT_ROWS rows on [K, N] weights --------------------------
   Column tiles read W down a column range: a short run of each row of W, then a jump of N values, which the hardware
   prefetchers follow only in part. Here a tile is SPLIT_K whole rows of W instead, one contiguous stretch. It adds
   x[:, k0:k1] W[k0:k1, :] into a buffer of its own (the partial sums stay in L1/L2), and the thread that finishes a
   phase's last tile adds the partials in tile order, then bias and activation or the residual (`split_reduce`). The
   tiles depend on K alone, so a step's sums are the same whichever thread runs which tile, and on any number of
   threads. U rows of W a pass share each load and store of the partial sums; R rows of x, U broadcasts each, fit the
   16 AVX2 registers beside them (bfloat16 at one row: U = 8, spilling the broadcasts, ~8% faster than 4). Rows past
   M repeat row M-1; their sums are never read. Software prefetch, KS_PF rows ahead, helps bfloat16, and float32
   where it goes to L2 (KS_PF_F32).
   Measured on the 2-vCPU EPYC (Zen 3), 2 threads: GPT-2 small's 48 block products at one row streamed float32 at
   ~28 GB/s in column tiles with 2 MB pages (~20 with 4 KB pages), ~36 GB/s split (either page size). Decode steps
   of its blocks, column tiles -> split: float32 1 row ~14.5 -> ~11 ms, 2 rows 23 -> 16, 4 rows 31 -> 22, 8 rows 40 ->
   33 (LM head included from 2 rows); bfloat16 (widened) 1 row 7.6 -> 5.8 ms (1 thread 10.8 -> 8.3), 4 rows 25 -> 17,
   8 rows 35 -> 26-34. */
#define SPLIT_K 128
#define SPLIT_ROWS 8
#define KS_PF 8
#define KS_SUB 16 /* 8 rows: the two passes of 4 take 16 rows of W at a time, so the second finds them in L2 */

#define KS_TILE(T, R, U)                                                                                   \
  static void ks_##T##_##R(const Linear* L, const float* x, int M, int64_t k0, int64_t k1, float* part) {  \
    const int64_t es = sizeof(T##_t), K = L->K, N = L->N, NV = N / VW * VW;                              \
    const vm mt = tail(N - NV);                                                                            \
    for (int64_t k = k0; k < k1; k += U) {                                                                 \
      const char* w[U];                                                                                    \
      vf a[R][U];                                                                                          \
      for (int u = 0; u < U; u++) {  /* past k1: the last row again, times zero */                        \
        w[u] = (const char*)L->w + (k + u < k1 ? k + u : k1 - 1) * N * es;                                 \
        for (int i = 0; i < R; i++)                                                                        \
          a[i][u] = k + u < k1 ? v_set1(x[(int64_t)(i < M ? i : M - 1) * K + k + u]) : v_zero();           \
      }                                                                                                    \
      for (int64_t j = 0; j < NV; j += VW) {                                                               \
        vf wv[U];                                                                                          \
        if (es == 2 || KS_PF_F32) for (int u = 0; u < U; u++) _mm_prefetch(w[u] + (j + KS_PF * N) * es, PF_HINT);  \
        for (int u = 0; u < U; u++) wv[u] = ld_##T(w[u] + j * es);                                         \
        for (int i = 0; i < R; i++) {                                                                      \
          vf s = v_loadu(part + i * N + j);                                                                \
          for (int u = 0; u < U; u++) s = v_fmadd(a[i][u], wv[u], s);                                      \
          v_storeu(part + i * N + j, s);                                                                   \
        }                                                                                                  \
      }                                                                                                    \
      if (NV < N) {                                                                                        \
        vf wv[U];                                                                                          \
        for (int u = 0; u < U; u++) wv[u] = ld_##T##_m(w[u] + NV * es, mt);                                \
        for (int i = 0; i < R; i++) {                                                                      \
          vf s = v_load_m(part + i * N + NV, mt);                                                          \
          for (int u = 0; u < U; u++) s = v_fmadd(a[i][u], wv[u], s);                                      \
          v_store_m(part + i * N + NV, mt, s);                                                             \
        }                                                                                                  \
      }                                                                                                    \
    }                                                                                                      \
  }
#if VW == 16  /* 32 registers: float32 takes 8 rows of W a pass at every R (Zen 4, 2 threads, GPT-2 small's blocks at
                 1 / 2 / 4 / 8 rows: U = 4, 4, 2, 2 (the AVX2 sizes) 11.1 / 12.7 / 20.4 / 28.1 ms, U = 8 ~10.9 / ~11.4 /
                 ~14 / ~20; U = 16 no faster). Each output still sums over k in order: the same bits at any U. */
KS_TILE(f32, 1, 8) KS_TILE(f32, 2, 8) KS_TILE(f32, 4, 8)
#else
KS_TILE(f32, 1, 4) KS_TILE(f32, 2, 4) KS_TILE(f32, 4, 2)
#endif
KS_TILE(bf16, 1, 8) KS_TILE(bf16, 2, 4) KS_TILE(bf16, 4, 2)
typedef void (*ks_fn)(const Linear*, const float*, int, int64_t, int64_t, float*);
static const ks_fn KS_TILES[2][3] = {{ks_f32_1, ks_f32_2, ks_f32_4}, {ks_bf16_1, ks_bf16_2, ks_bf16_4}}; /* R 1, 2, 4 */

static int split_rows(int M) { return M == 1 ? 1 : M == 2 ? 2 : M <= 4 ? 4 : 8; }  /* the tile's R: rows of each partial */
static int is_split(const Linear* L, int M) { return L->layout == KN && M <= SPLIT_ROWS; }
static int64_t split_tiles(int64_t K) { return (K + SPLIT_K - 1) / SPLIT_K; }

static void split_tile(const Linear* L, const float* x, int M, int64_t i, float* parts) {
  const int R = split_rows(M);
  const int64_t k0 = i * SPLIT_K, k1 = k0 + SPLIT_K < L->K ? k0 + SPLIT_K : L->K;
  float* part = parts + i * R * L->N;
  memset(part, 0, sizeof(float) * R * L->N);
  if (R == 8) {  /* two passes of 4 rows, the second over rows of W in cache (an 8 x 1 tile: ~1.5x slower; GPT-2 small's
                    blocks at 8 rows, bfloat16: 25.5 ms a step with passes over all 128 rows, ~22.5 ms over 16) */
    for (int64_t k = k0; k < k1; k += KS_SUB) {
      const int64_t ke = k + KS_SUB < k1 ? k + KS_SUB : k1;
      KS_TILES[L->wtype][2](L, x, 4, k, ke, part);
      KS_TILES[L->wtype][2](L, x + 4 * L->K, M - 4, k, ke, part + 4 * L->N);
    }
  } else KS_TILES[L->wtype][R == 1 ? 0 : R == 2 ? 1 : 2](L, x, M, k0, k1, part);
}

/* y = act(sum of the partials + b), or y += sum + b: the tiles' partials added in tile order */
static void split_reduce(const Linear* L, int ptype, const float* parts, int M, float* y, int mode) {
  const int64_t N = L->N, tiles = split_tiles(L->K), stride = split_rows(M) * N;
  for (int i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j += VW) {
      vm m = tail(N - j);
      const float* p = parts + i * N + j;
      vf v = v_load_m(p, m);
      for (int64_t t = 1; t < tiles; t++) v = v_add(v, v_load_m(p + t * stride, m));
      if (L->bias) v = v_add(v, load(L->bias, j, ptype, m));
      float* dst = y + i * N + j;
      v = mode == ADD ? v_add(v, v_load_m(dst, m)) : activate(v, L->act);
      v_store_m(dst, m, v);
    }
}

#define NK_TILE(T, R, NB)                                                                                  \
  static void nk_##T##_##R##_##NB(const Linear* L, const float* x, int M, int64_t n0, float* out) {       \
    const int64_t es = sizeof(T##_t), K = L->K, KV = K & ~(int64_t)(VW - 1);                                    \
    vf acc[R][NB];                                                                                     \
    const float* xr[R];                                                                                    \
    for (int i = 0; i < R; i++) {                                                                          \
      xr[i] = x + (int64_t)(i < M ? i : M - 1) * K;                                                        \
      for (int j = 0; j < NB; j++) acc[i][j] = v_zero();                                        \
    }                                                                                                      \
    const char* wb = (const char*)L->w + n0 * K * es;                                                      \
    for (int64_t k = 0; k < KV; k += VW) {                                                                \
      if ((NK_PF_ONE_ROW || R > 1 || es < 4) && k * es % 64 == 0)                                                                        \
        for (int j = 0; j < NB; j++) _mm_prefetch(wb + (j * K + k) * es + PF_BYTES, PF_HINT);         \
      vf w[NB];                                                                                        \
      for (int j = 0; j < NB; j++) w[j] = ld_##T(wb + (j * K + k) * es);                                   \
      for (int i = 0; i < R; i++) {                                                                        \
        vf a = v_loadu(xr[i] + k);                                                             \
        for (int j = 0; j < NB; j++) acc[i][j] = v_fmadd(a, w[j], acc[i][j]);                      \
      }                                                                                                    \
    }                                                                                                      \
    if (KV < K) {                                                                                         \
      vm m = tail(K - KV);                                                                         \
      vf w[NB];                                                                                        \
      for (int j = 0; j < NB; j++) w[j] = ld_##T##_m(wb + (j * K + KV) * es, m);                          \
      for (int i = 0; i < R; i++) {                                                                        \
        vf a = v_load_m(xr[i] + KV, m);                                                  \
        for (int j = 0; j < NB; j++) acc[i][j] = v_fmadd(a, w[j], acc[i][j]);                      \
      }                                                                                                    \
    }                                                                                                      \
    for (int i = 0; i < R; i++)                                                                            \
      for (int j = 0; j < NB; j++) out[i * 256 + j] = v_sum(acc[i][j]);                     \
  }
#if VW == 16
static const int NK_NB[4] = {8, 4, 4, 2};
/* One row of x (a decode step at batch 1: the LM head) reads its 8 rows of W one after another, in memory order:
   one stream, where the tiles above read NB rows side by side (NB streams K values apart). The sums run in the same
   order as there, so the bits are the same. GPT-2 small's head in a decode step (Zen 4, 2 threads, interleaved):
   float32 3.7 -> 2.9 ms (the step 13.5 -> 13.0 ms), bfloat16 widened 2.5 -> 2.1. Prefetches go NK1_PF ahead (2 KB
   and 4 KB alike for float32, 4 KB better for bfloat16). */
#define NK1_PF 4096
#define NK_ROWS(T)                                                                                         \
  static void nk_##T##_1_8(const Linear* L, const float* x, int M, int64_t n0, float* out) {              \
    const int64_t es = sizeof(T##_t), K = L->K, K2 = K & ~(int64_t)(2 * VW - 1);                            \
    (void)M;                                                                                               \
    for (int j = 0; j < 8; j++) {                                                                          \
      const char* w = (const char*)L->w + (n0 + j) * K * es;                                               \
      vf s = v_zero();                                                                                     \
      int64_t k = 0;                                                                                       \
      for (; k < K2; k += 2 * VW) {                                                                        \
        for (int64_t b = 0; b < 2 * VW * es; b += 64) _mm_prefetch(w + k * es + b + NK1_PF, PF_HINT);     \
        s = v_fmadd(v_loadu(x + k), ld_##T(w + k * es), s);                                                 \
        s = v_fmadd(v_loadu(x + k + VW), ld_##T(w + (k + VW) * es), s);                                     \
      }                                                                                                    \
      for (; k < K; k += VW) {                                                                             \
        vm m = k + VW <= K ? tail(VW) : tail(K - k);                                                       \
        s = v_fmadd(v_load_m(x + k, m), ld_##T##_m(w + k * es, m), s);                                      \
      }                                                                                                    \
      out[j] = v_sum(s);                                                                                   \
    }                                                                                                      \
  }
#define NK_ALL(T) NK_ROWS(T) NK_TILE(T, 1, 1) NK_TILE(T, 2, 4) NK_TILE(T, 2, 1) NK_TILE(T, 4, 4) \
  NK_TILE(T, 4, 1) NK_TILE(T, 8, 2) NK_TILE(T, 8, 1)
#define NK_TABLE(T) {{nk_##T##_1_1, nk_##T##_1_8}, {nk_##T##_2_1, nk_##T##_2_4}, {nk_##T##_4_1, nk_##T##_4_4}, \
                     {nk_##T##_8_1, nk_##T##_8_2}}
#else
static const int NK_NB[4] = {4, 4, 2, 1};
#define NK_ALL(T) NK_TILE(T, 1, 4) NK_TILE(T, 1, 1) NK_TILE(T, 2, 4) NK_TILE(T, 2, 1) NK_TILE(T, 4, 2) \
  NK_TILE(T, 4, 1) NK_TILE(T, 8, 1)
#define NK_TABLE(T) {{nk_##T##_1_1, nk_##T##_1_4}, {nk_##T##_2_1, nk_##T##_2_4}, {nk_##T##_4_1, nk_##T##_4_2}, \
                     {nk_##T##_8_1, nk_##T##_8_1}}
#endif
NK_ALL(f32)
NK_ALL(bf16)
NK_ALL(i8)
typedef void (*nk_fn)(const Linear*, const float*, int, int64_t, float*);
static const nk_fn NK_TILES[3][4][2] = {NK_TABLE(f32), NK_TABLE(bf16), NK_TABLE(i8)}; /* [type][log2 R][whole] */


/* -- int8 weights on integer dot products (layout NK_Q8) ---------------------------------------------------
   The activations are quantized per block of 32, as llama.cpp's q8_0 does (d = max |x| / 127 and q = x / d rounded
   to nearest even, x * (1/d) in float32, once per product), but a block is not 32 neighbours: a row of Kq (K rounded
   up to 32) is cut into groups of 512 positions while they last, then 256, 128, 64, 32, and a group of g steps of 64
   bytes (the VNNI tiles' vectors: 16 lanes of 4) has 2g blocks, each 8 / g whole lanes across all g steps. In a
   group of 512 a block is one lane: positions 4l .. 4l + 3 of each of its 8 steps. Why: each lane's integer sum
   then covers one block over the whole group, so the tiles add the group's 8 dot-product instructions in int32 and
   convert and scale once (by a vector of the lanes' block scales), where q8_0's contiguous blocks need a conversion
   and an FMA after every instruction (two blocks to a vector). That was ~2/3 of the instructions per 64 weights and
   row (GPT-2 small int8: batch 1, n = 8, the head). The blocks are as many and as large, so the quantization error
   is q8_0's in distribution (tests/test_quant.py: fake_q8 mirrors this partition); groups of 64 and 32 (rows of 64
   and less, and tails) are q8_0's contiguous blocks exactly. Integer sums are exact: |sum| <= 8 steps x 4 x 255 x 127
   < 2^21, so their conversion too.
   x rows of K become int8 rows of Kq (zero-padded), followed by the rows' block scales, 16 floats a group (lane l:
   its block's d), then one float32 a row: the VNNI tiles' correction c. Written in 256-bit AVX2 for both builds
   (the same bits on every machine without VNNI): per 32 weights a load, two sign flips, vpmaddubsw (|q| <= 127 and
   |w| <= 127, quant.py clamps: no pair saturates 16 bits), vpmaddwd and an add; the low and then the high 32 bytes
   of a group's steps, each half converted and scaled once. On CPUs with AVX-512 VNNI the Q8V tiles below run. */
static inline int64_t q8_width(int64_t K) { return (K + 31) & ~(int64_t)31; }
static inline int64_t q8_group(int64_t Kq, int64_t k) {  /* the size of the group that starts at k */
  const int64_t r = Kq - k;
  return r >= 512 ? 512 : r >= 256 ? 256 : r >= 128 ? 128 : r >= 64 ? 64 : 32;
}
static inline int64_t q8_groups(int64_t Kq) { return Kq / 512 + __builtin_popcountll((uint64_t)(Kq % 512) / 32); }
/* The groups of a row of Kq, in order: positions k0 .. end - 1, the g-th group */
#define FOR_Q8_GROUPS(Kq, k0, end, g) \
  for (int64_t k0 = 0, end = q8_group(Kq, 0), g = 0; k0 < (Kq); g++, k0 = end, end = k0 + q8_group(Kq, k0))

static void quantize_rows(const float* x, int M, int64_t K, int8_t* q) {
  const int64_t Kq = q8_width(K), nG = q8_groups(Kq);
  float *dv = (float*)(q + M * Kq), *corr = dv + M * nG * 16;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int m = 0; m < M; m++) {
    float cm = 0.0f;
    FOR_Q8_GROUPS(Kq, k0, end, g) {
      const int64_t G = end - k0;
      const int steps = G >= 64 ? (int)(G / 64) : 1, nv = G >= 64 ? 8 : 4, per = 8 / steps;  /* per: lanes a block */
      float t[512], lanes[64], dl[16] = {0}, il[16] = {0};
      const float* xs = x + m * K + k0;
      if (k0 + G > K) {  /* the row's last group: through a zeroed copy */
        memset(t, 0, sizeof t);
        memcpy(t, xs, (size_t)(K - k0) * sizeof(float));
        xs = t;
      }
      __m256 mx[8];
      for (int v = 0; v < 8; v++) mx[v] = _mm256_setzero_ps();
      for (int s = 0; s < steps; s++)
        for (int v = 0; v < nv; v++)
          mx[v] = _mm256_max_ps(mx[v], _mm256_andnot_ps(sign, _mm256_loadu_ps(xs + 64 * s + 8 * v)));
      for (int v = 0; v < 8; v++) _mm256_storeu_ps(lanes + 8 * v, mx[v]);
      for (int b = 0; b < (int)(G / 32); b++) {
        float amax = 0.0f;
        for (int i = 4 * b * per; i < 4 * (b + 1) * per; i++) amax = lanes[i] > amax ? lanes[i] : amax;
        const float dd = amax / 127.0f, id = dd != 0.0f ? 1.0f / dd : 0.0f;
        for (int l = b * per; l < (b + 1) * per; l++) dl[l] = dd, il[l] = id;
      }
      memcpy(dv + (m * nG + g) * 16, dl, sizeof dl);
      __m256i sums[8];
      for (int v = 0; v < 8; v++) sums[v] = _mm256_setzero_si256();
      for (int s = 0; s < steps; s++)
        for (int h = 0; h < nv / 4; h++) {  /* 32 positions at a time */
          __m256i r[4];
          for (int i = 0; i < 4; i++) {  /* the default rounding mode: to nearest even */
            const int v = 4 * h + i;
            const __m256 id = _mm256_setr_ps(il[2 * v], il[2 * v], il[2 * v], il[2 * v], il[2 * v + 1], il[2 * v + 1],
                                             il[2 * v + 1], il[2 * v + 1]);
            r[i] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xs + 64 * s + 8 * v), id));
            sums[v] = _mm256_add_epi32(sums[v], r[i]);
          }
          __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
          _mm256_storeu_si256((__m256i*)(q + m * Kq + k0 + 64 * s + 32 * h), _mm256_permutevar8x32_epi32(p, order));
        }
      int32_t ls[64];
      for (int v = 0; v < 8; v++) _mm256_storeu_si256((__m256i*)(ls + 8 * v), sums[v]);
      for (int b = 0; b < (int)(G / 32); b++) {  /* the block's sum of q: exact in float32 (|sum| <= 4064) */
        int32_t sq = 0;
        for (int i = 4 * b * per; i < 4 * (b + 1) * per; i++) sq += ls[i];
        cm += dl[b * per] * (float)sq;
      }
    }
    corr[m] = 128.0f * cm;
  }
}

/* the tiles' loops over their rows and rows of W, unrolled whole: GCC otherwise kept the accumulators of the 8-row
   tiles in memory (a zeroing rep stos and moves per step; GPT-2 small's products at 64 rows ran 1.3-1.4x slower) */
#define UNROLL _Pragma("GCC unroll 16")
#define Q8_TILE(R, NB)                                                                                                 \
  static void q8_##R##_##NB(const Linear* L, const int8_t* q, const float* dv, const float* c, int M,                  \
                            int64_t n0, float* out) {                                                                  \
    const int64_t K = L->K, Kq = q8_width(K), nG = q8_groups(Kq);                                                      \
    __m256 acc[R][NB];                                                                                                 \
    __m256i lo[R][NB], hi[R][NB];                                                                                      \
    const int8_t* qr[R];                                                                                               \
    const float* dr[R];                                                                                                \
    (void)c;                                                                                                           \
    UNROLL for (int i = 0; i < R; i++) {                                                                               \
      qr[i] = q + (int64_t)(i < M ? i : M - 1) * Kq;                                                                   \
      dr[i] = dv + (int64_t)(i < M ? i : M - 1) * nG * 16;                                                             \
      UNROLL for (int j = 0; j < NB; j++) acc[i][j] = _mm256_setzero_ps();                                             \
    }                                                                                                                  \
    const int8_t* wb = (const int8_t*)L->w + n0 * K;                                                                   \
    const __m256i ones = _mm256_set1_epi16(1);                                                                         \
    FOR_Q8_GROUPS(Kq, k0, end, g) {                                                                                    \
      UNROLL for (int i = 0; i < R; i++) UNROLL for (int j = 0; j < NB; j++) {                                         \
        lo[i][j] = _mm256_setzero_si256();                                                                             \
        hi[i][j] = _mm256_setzero_si256();                                                                             \
      }                                                                                                                \
      for (int64_t k = k0; k < end; k += 64) {  /* the low 32 bytes of each step to lo, the high ones to hi */         \
        UNROLL for (int h = 0; h < 2; h++) {                                                                           \
          const int64_t kh = k + 32 * h;                                                                               \
          if (kh >= end) break;  /* a group of 32 */                                                                   \
          __m256i w[NB];                                                                                               \
          if (kh + 32 <= K) {                                                                                          \
            if (!h) UNROLL for (int j = 0; j < NB; j++) _mm_prefetch((const char*)(wb + j * K + k) + PF_BYTES, PF_HINT); \
            UNROLL for (int j = 0; j < NB; j++) w[j] = _mm256_loadu_si256((const __m256i*)(wb + j * K + kh));          \
          } else {                                                                                                     \
            UNROLL for (int j = 0; j < NB; j++) {                                                                      \
              int8_t t[32] = {0};                                                                                      \
              if (kh < K) memcpy(t, wb + j * K + kh, (size_t)(K - kh));                                                \
              w[j] = _mm256_loadu_si256((const __m256i*)t);                                                            \
            }                                                                                                          \
          }                                                                                                            \
          UNROLL for (int i = 0; i < R; i++) {                                                                         \
            __m256i qi = _mm256_loadu_si256((const __m256i*)(qr[i] + kh)), ai = _mm256_sign_epi8(qi, qi);              \
            UNROLL for (int j = 0; j < NB; j++) {                                                                      \
              __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(ai, _mm256_sign_epi8(w[j], qi)), ones);               \
              if (h) hi[i][j] = _mm256_add_epi32(hi[i][j], p);                                                         \
              else lo[i][j] = _mm256_add_epi32(lo[i][j], p);                                                           \
            }                                                                                                          \
          }                                                                                                            \
        }                                                                                                              \
      }                                                                                                                \
      UNROLL for (int i = 0; i < R; i++) {                                                                             \
        const __m256 dl = _mm256_loadu_ps(dr[i] + g * 16), dh = _mm256_loadu_ps(dr[i] + g * 16 + 8);                   \
        UNROLL for (int j = 0; j < NB; j++) {                                                                          \
          acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo[i][j]), dl, acc[i][j]);                                    \
          acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi[i][j]), dh, acc[i][j]);                                    \
        }                                                                                                              \
      }                                                                                                                \
    }                                                                                                                  \
    UNROLL for (int i = 0; i < R; i++)                                                                                 \
      UNROLL for (int j = 0; j < NB; j++) out[i * 256 + j] = sum8(acc[i][j]);                                          \
  }
typedef void (*q8_fn)(const Linear*, const int8_t*, const float*, const float*, int, int64_t, float*);
#if VW == 16
Q8_TILE(1, 8) Q8_TILE(1, 1) Q8_TILE(2, 4) Q8_TILE(2, 1) Q8_TILE(4, 2) Q8_TILE(4, 1) Q8_TILE(8, 1)
static const q8_fn Q8_TILES[4][2] = {{q8_1_1, q8_1_8}, {q8_2_1, q8_2_4}, {q8_4_1, q8_4_2}, {q8_8_1, q8_8_1}};
static const int Q8_NB[4] = {8, 4, 2, 1};

/* The same products with AVX-512 VNNI (vpdpbusd: 64 byte products summed in fours into 16 int32 lanes, one
   instruction), a step of 64 weights a vector, whose 16 lanes are 16 blocks' (or fewer) sums over a group.
   vpdpbusd multiplies unsigned by signed bytes; rather than move q's sign onto every weight (a masked negation per
   vector of W per row of x), the weights get 128 added (w ^ 0x80: 1 .. 255, once per vector of W, shared by the R
   rows) and q stays signed: sum (w + 128) q = sum w q + 128 sum q, whose second term summed over blocks (c = 128
   sum_b d_b sum q, once per row in quantize_rows) comes off at the end. Per 64 weights and row: one vpdpbusd, and
   per group of 8 of them a conversion and an FMA. Each lane's integer sum is the same as the AVX2 tiles'; the float
   sums over lanes and groups run in another order, so the bits differ from theirs (by float rounding; tests hold
   both to the same reference). */
#define Q8V_TILE(R, NB)                                                                                                \
  __attribute__((target("avx512vnni"))) static void q8v_##R##_##NB(                                                    \
      const Linear* L, const int8_t* q, const float* dv, const float* c, int M, int64_t n0, float* out) {              \
    const int64_t K = L->K, Kq = q8_width(K), nG = q8_groups(Kq);                                                      \
    __m512 acc[R][NB];                                                                                                 \
    __m512i s[R][NB];                                                                                                  \
    const int8_t* qr[R];                                                                                               \
    const float* dr[R];                                                                                                \
    UNROLL for (int i = 0; i < R; i++) {                                                                               \
      qr[i] = q + (int64_t)(i < M ? i : M - 1) * Kq;                                                                   \
      dr[i] = dv + (int64_t)(i < M ? i : M - 1) * nG * 16;                                                             \
      UNROLL for (int j = 0; j < NB; j++) acc[i][j] = _mm512_setzero_ps();                                             \
    }                                                                                                                  \
    const int8_t* wb = (const int8_t*)L->w + n0 * K;                                                                   \
    const __m512i flip = _mm512_set1_epi8((char)0x80);                                                                 \
    FOR_Q8_GROUPS(Kq, k0, end, g) {                                                                                    \
      UNROLL for (int i = 0; i < R; i++) UNROLL for (int j = 0; j < NB; j++) s[i][j] = _mm512_setzero_si512();         \
      if (end <= K && end - k0 >= 64) {  /* whole steps: no masks */                                                   \
        for (int64_t k = k0; k < end; k += 64) {                                                                       \
          __m512i w[NB];                                                                                               \
          UNROLL for (int j = 0; j < NB; j++) {                                                                        \
            _mm_prefetch((const char*)(wb + j * K + k) + PF_BYTES, PF_HINT);                                           \
            w[j] = _mm512_xor_si512(_mm512_loadu_si512((const void*)(wb + j * K + k)), flip);                          \
          }                                                                                                            \
          UNROLL for (int i = 0; i < R; i++) {                                                                         \
            const __m512i qi = _mm512_loadu_si512((const void*)(qr[i] + k));                                           \
            UNROLL for (int j = 0; j < NB; j++) s[i][j] = _mm512_dpbusd_epi32(s[i][j], w[j], qi);                      \
          }                                                                                                            \
        }                                                                                                              \
      } else {  /* past K: w = 0 (+128) against q = 0 (the padding of Kq, or masked off) */                            \
        for (int64_t k = k0; k < end; k += 64) {                                                                       \
          const __mmask64 mw = k + 64 <= K ? ~(__mmask64)0 : ((__mmask64)1 << (K - k)) - 1;                            \
          const __mmask64 mq = end - k >= 64 ? ~(__mmask64)0 : 0xffffffffull;                                          \
          __m512i w[NB];                                                                                               \
          UNROLL for (int j = 0; j < NB; j++)                                                                          \
            w[j] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mw, wb + j * K + k), flip);                                \
          UNROLL for (int i = 0; i < R; i++) {                                                                         \
            const __m512i qi = _mm512_maskz_loadu_epi8(mq, qr[i] + k);                                                 \
            UNROLL for (int j = 0; j < NB; j++) s[i][j] = _mm512_dpbusd_epi32(s[i][j], w[j], qi);                      \
          }                                                                                                            \
        }                                                                                                              \
      }                                                                                                                \
      UNROLL for (int i = 0; i < R; i++) {                                                                             \
        const __m512 di = _mm512_loadu_ps(dr[i] + g * 16);                                                             \
        UNROLL for (int j = 0; j < NB; j++) acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[i][j]), di, acc[i][j]);   \
      }                                                                                                                \
    }                                                                                                                  \
    UNROLL for (int i = 0; i < R; i++)                                                                                 \
      UNROLL for (int j = 0; j < NB; j++) out[i * 256 + j] = _mm512_reduce_add_ps(acc[i][j]) - c[i < M ? i : M - 1];   \
  }
Q8V_TILE(1, 1) Q8V_TILE(2, 4) Q8V_TILE(2, 1) Q8V_TILE(4, 2) Q8V_TILE(4, 1) Q8V_TILE(8, 1)
/* One row of x (a decode step at batch 1) reads its 8 rows of W one after another, in memory order, as the NK tiles
   of one row do (above); the same sums in the same order as the tiles of more rows. GPT-2 small int8 at batch 1 (Zen
   4, 2 threads, interleaved, two runs): 5.52-5.74 -> 5.18-5.28 ms a step. Prefetches 1 KB ahead (4 KB about as good,
   2 KB no better than side by side). */
#define Q81_PF 1024
__attribute__((target("avx512vnni"))) static void q8v_1_8(const Linear* L, const int8_t* q, const float* dv,
                                                            const float* c, int M, int64_t n0, float* out) {
  const int64_t K = L->K, Kq = q8_width(K);
  (void)M;
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  for (int j = 0; j < 8; j++) {
    const int8_t* w = (const int8_t*)L->w + (n0 + j) * K;
    __m512 acc = _mm512_setzero_ps();
    FOR_Q8_GROUPS(Kq, k0, end, g) {
      __m512i s = _mm512_setzero_si512();
      for (int64_t k = k0; k < end; k += 64) {
        __m512i wv;
        if (k + 64 <= K) {
          _mm_prefetch((const char*)(w + k) + Q81_PF, PF_HINT);
          wv = _mm512_xor_si512(_mm512_loadu_si512((const void*)(w + k)), flip);
        } else {
          const __mmask64 mw = k < K ? ((__mmask64)1 << (K - k)) - 1 : 0;
          wv = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mw, w + k), flip);
        }
        const __m512i qk = end - k >= 64 ? _mm512_loadu_si512((const void*)(q + k)) : _mm512_maskz_loadu_epi8(0xffffffffull, q + k);
        s = _mm512_dpbusd_epi32(s, wv, qk);
      }
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_loadu_ps(dv + g * 16), acc);
    }
    out[j] = _mm512_reduce_add_ps(acc) - c[0];
  }
}
static const q8_fn Q8V_TILES[4][2] = {{q8v_1_1, q8v_1_8}, {q8v_2_1, q8v_2_4}, {q8v_4_1, q8v_4_2}, {q8v_8_1, q8v_8_1}};
#else
Q8_TILE(1, 4) Q8_TILE(1, 1) Q8_TILE(2, 2) Q8_TILE(2, 1) Q8_TILE(4, 2) Q8_TILE(4, 1) Q8_TILE(8, 1)
static const q8_fn Q8_TILES[4][2] = {{q8_1_1, q8_1_4}, {q8_2_1, q8_2_2}, {q8_4_1, q8_4_2}, {q8_8_1, q8_8_1}};
static const int Q8_NB[4] = {4, 2, 2, 1};
#endif

/* Whether the int8 products run on the VNNI tiles: where the CPU has avx512_vnni (the AVX-512 build), unless
   pigpt_int8_vnni(0) turned them off (tests and benchmarks run both paths on one machine). */
static int q8_vnni = -1;
int pigpt_int8_vnni(int on) {
  __builtin_cpu_init();
  if (on >= 0) q8_vnni = VW == 16 && on && __builtin_cpu_supports("avx512vnni");
  else if (q8_vnni < 0) q8_vnni = VW == 16 && __builtin_cpu_supports("avx512vnni");
  return q8_vnni;
}

#if BF16_DOTS
/* A row of K for the pair layouts (PAIRS, kn_many_rows_dots' panels): padded to even K, so that (x[k], x[k + 1]) pairs are whole */
static inline int64_t pair_width(int64_t K) { return (K + 1) & ~(int64_t)1; }

/* bfloat16 NK weights on CPUs with avx512_bf16 (a bfloat16 model's LM head, and its block weights stored [out, in]
   without pair-blocked copies: NK_DOTS): x rounded to bfloat16 once (xb, as torch's bfloat16 path rounds it), then
   one dot-product instruction per 32 weights instead of a load, a widening and an FMA per 16. Whole steps of 32 load
   without a mask: at 8 rows the masked word loads ran the tile at half speed (GPT-2 small's head, Zen 4, 2 threads:
   4.6 -> 2.5 ms). Prefetches go DP_PF bytes ahead, further than the other tiles' PF_BYTES: NB rows are read side by
   side, so the stream moves NB times faster than any one row. */
#define DP_PF (2 * PF_BYTES)
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
      const int whole = k < K32;                                                                           \
      __mmask32 m = whole ? 0xffffffffu : (__mmask32)((1ull << (K - k)) - 1);                              \
      for (int j = 0; j < NB; j++) _mm_prefetch((const char*)(wb + j * K + k) + DP_PF, PF_HINT);       \
      __m512i w[NB];                                                                                       \
      for (int j = 0; j < NB; j++)                                                                         \
        w[j] = whole ? _mm512_loadu_si512(wb + j * K + k) : _mm512_maskz_loadu_epi16(m, wb + j * K + k);   \
      for (int i = 0; i < R; i++) {                                                                        \
        __m512i a = whole ? _mm512_loadu_si512(xr[i] + k) : _mm512_maskz_loadu_epi16(m, xr[i] + k);        \
        for (int j = 0; j < NB; j++) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)a, (__m512bh)w[j]); \
      }                                                                                                    \
    }                                                                                                      \
    for (int i = 0; i < R; i++)                                                                            \
      for (int j = 0; j < NB; j++) out[i * 256 + j] = _mm512_reduce_add_ps(acc[i][j]);                     \
  }
/* One row of x (a decode step at batch 1) reads its NB = 8 rows of W one after another, in memory order: one
   stream, as the PAIRS copy's tiles read, where the tiles above read NB rows side by side (NB streams 2K bytes
   apart). The sums run in the same order as there (the same bits). GPT-2 small's head in a decode step (Zen 4, 2
   threads, interleaved): 2.3-2.7 ms side by side, ~1.7 in memory order, against 1.8-1.9 for the PAIRS copy.
   Prefetches go DP1_PF ahead (1-3 KB alike, 4 KB slower, 6 KB slower still). */
#define DP1_PF 2048
__attribute__((target("avx512bf16"))) static void dp_1_8(const Linear* L, const uint16_t* xb, int M, int64_t n0,
                                                         float* out) {
  const int64_t K = L->K, K64 = K & ~(int64_t)63;
  (void)M;
  for (int j = 0; j < 8; j++) {
    const uint16_t* w = (const uint16_t*)L->w + (n0 + j) * K;
    __m512 s = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k < K64; k += 64) {
      _mm_prefetch((const char*)(w + k) + DP1_PF, PF_HINT);
      _mm_prefetch((const char*)(w + k) + DP1_PF + 64, PF_HINT);
      s = _mm512_dpbf16_ps(s, (__m512bh)_mm512_loadu_si512(xb + k), (__m512bh)_mm512_loadu_si512(w + k));
      s = _mm512_dpbf16_ps(s, (__m512bh)_mm512_loadu_si512(xb + k + 32), (__m512bh)_mm512_loadu_si512(w + k + 32));
    }
    for (; k < K; k += 32) {
      const __mmask32 m = K - k >= 32 ? 0xffffffffu : (__mmask32)((1ull << (K - k)) - 1);
      s = _mm512_dpbf16_ps(s, (__m512bh)_mm512_maskz_loadu_epi16(m, xb + k), (__m512bh)_mm512_maskz_loadu_epi16(m, w + k));
    }
    out[j] = _mm512_reduce_add_ps(s);
  }
}
DP_TILE(1, 1) DP_TILE(2, 4) DP_TILE(2, 1) DP_TILE(4, 4) DP_TILE(4, 1) DP_TILE(8, 2) DP_TILE(8, 1)
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
    const int64_t Kp = pair_width(L->K);                                                           \
    __m512 acc[R][4];                                                                                      \
    const uint16_t* xr[R];                                                                                 \
    for (int i = 0; i < R; i++) {                                                                          \
      xr[i] = xb + (int64_t)(i < M ? i : M - 1) * Kp;                                                      \
      for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_ps();                                         \
    }                                                                                                      \
    const uint16_t* wb = (const uint16_t*)L->w + n0 * Kp; /* block n0 / 64 */                              \
    for (int64_t k = 0; k < Kp; k += 2, wb += 128) {                                                       \
      for (int b = 0; b < 256; b += 64) _mm_prefetch((const char*)wb + PF_BYTES + b, PF_HINT);        \
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

/* vpermt2w's indices that pair two rows of 32 columns, A and B, into (A[c], B[c]) pairs: c = 0..15 (lo), 16..31 (hi) */
static const uint16_t PAIR_INDEX[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                       8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
__attribute__((target("avx512bf16"))) static void round_bf16(const float* x, int64_t n, uint16_t* xb) {
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = tail(n - i);
    _mm256_mask_storeu_epi16(xb + i, m, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

static void round_rows(const float* x, int M, int64_t K, uint16_t* xb) {  /* rows of K -> rows of K padded to even */
  const int64_t Kp = pair_width(K);
  for (int m = 0; m < M; m++) {
    round_bf16(x + m * K, K, xb + m * Kp);
    if (Kp != K) xb[m * Kp + K] = 0;
  }
}

#endif

/* A product's input in the form its weights need: PAIRS, x rounded to bfloat16 (rows padded to even K); NK_Q8,
   x quantized (quantize_rows). */
static void prepare(const Linear* L, const float* x, int M, uint16_t* xb) {
#if BF16_DOTS
  if (L->layout == PAIRS) round_rows(x, M, L->K, xb);
  if (L->layout == NK_DOTS) round_bf16(x, (int64_t)M * L->K, xb);
#endif
  if (L->layout == NK_Q8) quantize_rows(x, M, L->K, (int8_t*)xb);
}

/* y[i, n0 + j] for tile results out[i, j] (row stride 256): scale, bias, then act or the residual add */
static void finish(const Linear* L, int ptype, const float* out, int r, int64_t n0, int64_t cols, float* y,
                   int64_t ldy, int mode) {
  for (int i = 0; i < r; i++)
    for (int64_t j = 0; j < cols; j += VW) {
      vm m = tail(cols - j);
      vf v = v_load_m(out + i * 256 + j, m);
      if (L->scale) v = v_mul(v, v_load_m(L->scale + n0 + j, m));
      if (L->bias) v = v_add(v, load(L->bias, n0 + j, ptype, m));
      float* dst = y + i * ldy + n0 + j;
      v = mode == ADD ? v_add(v, v_load_m(dst, m)) : activate(v, L->act);
      v_store_m(dst, m, v);
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
#if BF16_DOTS
  if (L->layout == PAIRS) {
    const int64_t Kp = pair_width(K);
    for (int64_t n0 = n_begin; n0 < n_end; n0 += 64) {
      int64_t cols = n_end - n0 < 64 ? n_end - n0 : 64;
      for (int m0 = 0; m0 < M; m0 += R) {
        int r = M - m0 < R ? M - m0 : R;
        PB_TILES[lg](L, xb + m0 * Kp, r, n0, out);
        finish(L, ptype, out, r, n0, cols, y + m0 * N, N, mode);
      }
    }
  } else
#endif
  if (L->layout == KN) {  /* tiles of up to VW * 16 / R columns, halving towards the end */
    if (R > KN_R) R = KN_R, lg = KN_LG;
    for (int64_t n0 = n_begin; n0 < n_end;) {
      int64_t vecs = (n_end - n0 + VW - 1) / VW;
      int V = KN_V[lg];
      while (V > vecs) V >>= 1;
      int64_t cols = n0 + VW * V <= n_end ? VW * V : n_end - n0;
      for (int m0 = 0; m0 < M; m0 += R) {
        int r = M - m0 < R ? M - m0 : R;
        KN_TILES[L->wtype][lg][V](L, x + m0 * K, r, n0, tail(cols - VW * (V - 1)), out);
        finish(L, ptype, out, r, n0, cols, y + m0 * N, N, mode);
      }
      n0 += cols;
    }
  } else {  /* NK, NK_Q8: groups of NB rows of W, up to 256 outputs of `out` at a time */
    int q8 = L->layout == NK_Q8, NB = q8 ? Q8_NB[lg] : NK_NB[lg];
    const int64_t Kq = q8_width(K);
    const int8_t* qx = (const int8_t*)xb;  /* NK_Q8: x quantized (quantize_rows) */
    const float* qd = q8 ? (const float*)(qx + M * Kq) : NULL;
    for (int64_t n0 = n_begin; n0 < n_end;) {
      int64_t cols = n_end - n0 < 256 ? n_end - n0 : 256;
      for (int m0 = 0; m0 < M; m0 += R) {
        int r = M - m0 < R ? M - m0 : R;
        for (int64_t c = 0; c < cols;) {
          float part[8 * 256] __attribute__((aligned(64)));
          int whole = c + NB <= cols, nb = whole ? NB : 1;
          if (q8) {
            const int64_t nG = q8_groups(Kq);  /* the scales, 16 a group, then the corrections */
            const float *qdm = qd + m0 * nG * 16, *qc = qd + M * nG * 16 + m0;
#if VW == 16
            if (q8_vnni > 0) Q8V_TILES[lg][whole](L, qx + m0 * Kq, qdm, qc, r, n0 + c, part);
            else
#endif
              Q8_TILES[lg][whole](L, qx + m0 * Kq, qdm, qc, r, n0 + c, part);
          }
#if BF16_DOTS
          else if (xb) DP_TILES[lg][whole](L, xb + m0 * K, r, n0 + c, part);  /* bfloat16 x: bfloat16 weights */
#endif
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

/* -- products of many rows on [K, N] weights (a prompt's prefill, through cpu_decode.linear) -----------------
   The tiles above serve a decode step: they read W once for up to 8 rows, down its columns, one line per row of W
   per tile (rows of W lie N floats apart, beyond what the hardware prefetchers follow), and at many rows their FMAs
   wait on those reads. Here a thread copies GK rows of W, its columns only, into a panel of groups of GW columns
   that stays in L2 (row after row of W: a stream the prefetchers follow; bfloat16 widened once, there), and
   every tile of GR rows of x then runs over each group of it (GK x GW floats, L1-sized); y accumulates across the
   blocks of GK and gets bias and activation at the end. Each output sums over k in order, as the tiles above do.
   While a panel's tiles run, the next panel's rows of W are prefetched into L2 (prefetcht1; t0 was slower), so its
   copy reads cache instead of waiting on memory. With that, blocks of 256 x 128 (were 64 x 256) and groups outside
   the tiles of rows, one GPT-2 XL block's four products at 64 rows took 24 ms against 35 with weights that come
   from memory, as a decode step's do (2-vCPU Zen 4, float32; small's at 16 rows 2.2 against 2.9, bfloat16 ~15%). */
#define GK 256
#define GCOLS 128
#if VW == 16
#define GR 8
#else
#define GR 6
#endif
#define GV 2
#define GW (GV * VW)
#define GPF 4 /* rows of W ahead that the copy prefetches */

static void kn_pack(const Linear* L, int64_t k0, int64_t kk, int64_t c0, int64_t cols, float* panel) {
  const int64_t N = L->N, es = L->wtype == BF16 ? 2 : 4;
  for (int64_t k = 0; k < kk; k++) {
    const char* src = (const char*)L->w + ((k0 + k) * N + c0) * es;
    if (k0 + k + GPF < L->K)
      for (int64_t b = 0; b < cols * es; b += 64) _mm_prefetch(src + GPF * N * es + b, PF_HINT);
    for (int64_t c = 0; c < cols; c += VW) {
      vm m = tail(cols - c);
      vf v = L->wtype == BF16 ? (cols - c >= VW ? ld_bf16(src + c * es) : ld_bf16_m(src + c * es, m))
                              : (cols - c >= VW ? ld_f32(src + c * es) : ld_f32_m(src + c * es, m));
      v_storeu(panel + (c / GW * GK + k) * GW + c % GW, v);
    }
    for (int64_t c = (cols + VW - 1) / VW * VW; c % GW; c += VW)  /* the last group's columns past N: zeros */
      v_storeu(panel + (c / GW * GK + k) * GW + c % GW, v_zero());
  }
}

/* The next panel's rows of W (k0 + GK, or the next columns' first rows), prefetched a group's share at a time */
typedef struct {
  const char* w;
  int64_t stride, lines, total, per_group;
} NextPanel;

static inline NextPanel kn_next(const Linear* L, int64_t k0, int64_t c0, int64_t n_end, int64_t groups) {
  const int64_t K = L->K, es = L->wtype == BF16 ? 2 : 4;
  const int64_t nk0 = k0 + GK < K ? k0 + GK : 0, nc0 = k0 + GK < K ? c0 : c0 + GCOLS;
  const int64_t nkk = nc0 >= n_end ? 0 : K - nk0 < GK ? K - nk0 : GK;
  const int64_t ncols = nc0 >= n_end ? 0 : n_end - nc0 < GCOLS ? n_end - nc0 : GCOLS;
  NextPanel nx = {(const char*)L->w + (nk0 * L->N + nc0) * es, L->N * es, (ncols * es + 63) / 64, 0, 0};
  nx.total = nkk * nx.lines;
  nx.per_group = (nx.total + groups - 1) / groups;
  return nx;
}

static inline void kn_prefetch(const NextPanel* nx, int64_t g) {
  for (int64_t i = g * nx->per_group; i < (g + 1) * nx->per_group && i < nx->total; i++)
    _mm_prefetch(nx->w + i / nx->lines * nx->stride + i % nx->lines * 64, _MM_HINT_T1);
}

/* A tile's sums so far (zero at the first block of K), and back into y */
static inline __attribute__((always_inline)) void kn_acc_load(vf acc[GR][GV], const float* yg, int64_t N, int r,
                                                              int64_t gc, int first) {
  for (int i = 0; i < GR; i++)
    for (int j = 0; j < GV; j++)
      acc[i][j] = first || i >= r || gc <= j * VW ? v_zero() : v_load_m(yg + i * N + j * VW, tail(gc - j * VW));
}

static inline __attribute__((always_inline)) void kn_acc_store(vf acc[GR][GV], float* yg, int64_t N, int r,
                                                               int64_t gc) {
  for (int i = 0; i < r; i++)
    for (int j = 0; j < GV; j++)
      if (gc > j * VW) v_store_m(yg + i * N + j * VW, tail(gc - j * VW), acc[i][j]);
}

static inline void kn_epilogue(const Linear* L, int ptype, int M, float* y, int64_t c0, int64_t cols) {
  for (int m = 0; m < M; m++)  /* scale, bias, activation */
    for (int64_t c = 0; c < cols; c += VW) {
      vm mk = tail(cols - c);
      float* d = y + m * L->N + c0 + c;
      vf v = v_load_m(d, mk);
      if (L->scale) v = v_mul(v, v_load_m(L->scale + c0 + c, mk));
      if (L->bias) v = v_add(v, load(L->bias, c0 + c, ptype, mk));
      v_store_m(d, mk, activate(v, L->act));
    }
}

static void kn_many_rows(const Linear* L, int ptype, const float* x, int M, float* y, int64_t n_begin,
                         int64_t n_end) {
  const int64_t K = L->K, N = L->N;
  float panel[GCOLS / GW * GK * GW] __attribute__((aligned(64)));
  for (int64_t c0 = n_begin; c0 < n_end; c0 += GCOLS) {
    const int64_t cols = n_end - c0 < GCOLS ? n_end - c0 : GCOLS, groups = (cols + GW - 1) / GW;
    for (int64_t k0 = 0; k0 < K; k0 += GK) {
      const int64_t kk = K - k0 < GK ? K - k0 : GK;
      kn_pack(L, k0, kk, c0, cols, panel);
      const NextPanel nx = kn_next(L, k0, c0, n_end, groups);
      for (int64_t g = 0; g < groups; g++) {  /* a group's panel (GK x GW) stays in L1 over the tiles of rows */
        kn_prefetch(&nx, g);
        const int64_t gc = cols - g * GW;  /* this group's columns: GW, or fewer in the last */
        for (int m0 = 0; m0 < M; m0 += GR) {
          const int r = M - m0 < GR ? M - m0 : GR;
          const float* xr[GR];
          for (int i = 0; i < GR; i++) xr[i] = x + (int64_t)(m0 + (i < r ? i : r - 1)) * K + k0;
          float* yg = y + m0 * N + c0 + g * GW;
          vf acc[GR][GV];
          kn_acc_load(acc, yg, N, r, gc, k0 == 0);
          const float* p = panel + g * GK * GW;
          for (int64_t k = 0; k < kk; k++, p += GW) {
            vf w[GV];
            for (int j = 0; j < GV; j++) w[j] = v_loadu(p + j * VW);
            for (int i = 0; i < GR; i++) {
              vf a = v_set1(xr[i][k]);
              for (int j = 0; j < GV; j++) acc[i][j] = v_fmadd(a, w[j], acc[i][j]);
            }
          }
          kn_acc_store(acc, yg, N, r, gc);
        }
      }
    }
    kn_epilogue(L, ptype, M, y, c0, cols);
  }
}

#if BF16_DOTS
_Static_assert(GW == 32, "kn_many_rows_dots's groups are two vectors of 16 column pairs");
/* kn_many_rows for bfloat16 W on CPUs with avx512_bf16: the panel holds pairs of rows interleaved per column,
   (w[k, c], w[k + 1, c]), as the PAIRS copies are (vpermt2w with PAIR_INDEX), and the tiles multiply them by
   (x[k], x[k + 1]) of x rounded to bfloat16 (xb, rows padded to even K: a bfloat16 model's activations, so exact):
   one dot-product instruction per 16 columns and 2 k where the widened panel takes two FMAs, and half the panel's
   bytes. An odd K's last row pairs with itself, against x's zero padding. */
__attribute__((target("avx512bf16"))) static void kn_pack_pairs(const Linear* L, int64_t k0, int64_t kk, int64_t c0,
                                                                int64_t cols, uint16_t* panel) {
  const int64_t N = L->N;
  const uint16_t* W = (const uint16_t*)L->w;
  const __m512i lo = _mm512_loadu_si512(PAIR_INDEX), hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
  for (int64_t k = 0; k < kk; k += 2) {
    const uint16_t* r0 = W + (k0 + k) * N + c0;
    const uint16_t* r1 = k + 1 < kk ? r0 + N : r0;
    if (k0 + k + GPF + 1 < L->K)
      for (int64_t b = 0; b < cols * 2; b += 64) {
        _mm_prefetch((const char*)(r0 + GPF * N) + b, PF_HINT);
        _mm_prefetch((const char*)(r1 + GPF * N) + b, PF_HINT);
      }
    for (int64_t c = 0; c < cols; c += GW) {  /* a group: 32 columns, two vectors of 16 pairs (past N: zeros) */
      const __mmask32 m = cols - c >= 32 ? ~(__mmask32)0 : (__mmask32)(((uint64_t)1 << (cols - c)) - 1);
      const __m512i A = _mm512_maskz_loadu_epi16(m, r0 + c), B = _mm512_maskz_loadu_epi16(m, r1 + c);
      uint16_t* dst = panel + (c / GW * (GK / 2) + k / 2) * 2 * GW;
      _mm512_storeu_si512(dst, _mm512_permutex2var_epi16(A, lo, B));
      _mm512_storeu_si512(dst + 32, _mm512_permutex2var_epi16(A, hi, B));
    }
  }
}

__attribute__((target("avx512bf16"))) static void kn_many_rows_dots(const Linear* L, int ptype, const uint16_t* xb,
                                                                    int M, float* y, int64_t n_begin, int64_t n_end) {
  const int64_t K = L->K, Kp = pair_width(K), N = L->N;
  uint16_t panel[GCOLS / GW * GK * GW] __attribute__((aligned(64)));
  for (int64_t c0 = n_begin; c0 < n_end; c0 += GCOLS) {
    const int64_t cols = n_end - c0 < GCOLS ? n_end - c0 : GCOLS, groups = (cols + GW - 1) / GW;
    for (int64_t k0 = 0; k0 < K; k0 += GK) {
      const int64_t kk = K - k0 < GK ? K - k0 : GK, pairs = (kk + 1) / 2;
      kn_pack_pairs(L, k0, kk, c0, cols, panel);
      const NextPanel nx = kn_next(L, k0, c0, n_end, groups);
      for (int64_t g = 0; g < groups; g++) {
        kn_prefetch(&nx, g);
        const int64_t gc = cols - g * GW;
        for (int m0 = 0; m0 < M; m0 += GR) {
          const int r = M - m0 < GR ? M - m0 : GR;
          const int32_t* xr[GR];  /* (x[k], x[k + 1]) as one word */
          for (int i = 0; i < GR; i++) xr[i] = (const int32_t*)(xb + (int64_t)(m0 + (i < r ? i : r - 1)) * Kp + k0);
          float* yg = y + m0 * N + c0 + g * GW;
          vf acc[GR][GV];
          kn_acc_load(acc, yg, N, r, gc, k0 == 0);
          const uint16_t* p = panel + g * (GK / 2) * 2 * GW;
          for (int64_t k = 0; k < pairs; k++, p += 2 * GW) {
            const __m512i w0 = _mm512_load_si512(p), w1 = _mm512_load_si512(p + 32);
            for (int i = 0; i < GR; i++) {
              const __m512i a = _mm512_set1_epi32(xr[i][k]);
              acc[i][0] = _mm512_dpbf16_ps(acc[i][0], (__m512bh)a, (__m512bh)w0);
              acc[i][1] = _mm512_dpbf16_ps(acc[i][1], (__m512bh)a, (__m512bh)w1);
            }
          }
          kn_acc_store(acc, yg, N, r, gc);
        }
      }
    }
    kn_epilogue(L, ptype, M, y, c0, cols);
  }
}
#endif

/* -- layer norm, attention ------------------------------------------------------------------------- */
static void layer_norm(const float* x, const void* w, const void* b, int ptype, int64_t C, float eps, float* y) {
  vf s = v_zero(), q = v_zero();
  for (int64_t i = 0; i < C; i += VW) s = v_add(s, v_load_m(x + i, tail(C - i)));
  vf mean = v_set1(v_sum(s) / C);
  for (int64_t i = 0; i < C; i += VW) {
    vm m = tail(C - i);
    vf d = v_sub_m(m, v_load_m(x + i, m), mean);
    q = v_fmadd(d, d, q);
  }
  vf rstd = v_set1(1.0f / sqrtf(v_sum(q) / C + eps));
  for (int64_t i = 0; i < C; i += VW) {
    vm m = tail(C - i);
    vf d = v_mul(v_sub(v_load_m(x + i, m), mean), rstd);
    v_store_m(y + i, m, v_fmadd(d, load(w, i, ptype, m), load(b, i, ptype, m)));
  }
}

/* sc[s] = scale * q.k_s for n keys of width hs; returns max(mx, max_s sc[s]) */
static float scores(const float* q, const void* k, int type, int64_t n, int hs, float scale, float* sc, float mx) {
  for (int64_t s = 0; s < n; s++) {
    vf acc = v_zero();
    for (int d = 0; d < hs; d += VW) {
      vm m = tail(hs - d);
      acc = v_fmadd(v_load_m(q + d, m), load(k, s * hs + d, type, m), acc);
    }
    sc[s] = v_sum(acc) * scale;
    mx = sc[s] > mx ? sc[s] : mx;
  }
  return mx;
}

static void weighted_sum(const float* p, const void* v, int type, int64_t n, int hs, float* out) {  /* out += */
  for (int d = 0; d < hs; d += VW) {
    vm m = tail(hs - d);
    vf acc = v_load_m(out + d, m);
    for (int64_t s = 0; s < n; s++) acc = v_fmadd(v_set1(p[s]), load(v, s * hs + d, type, m), acc);
    v_store_m(out + d, m, acc);
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
  for (int d = 0; d < hs; d += VW) {
    vm m = tail(hs - d);
    store(kb, c->pos * hs + d, type, v_load_m(qkv + C + h * hs + d, m), m);
    store(vb, c->pos * hs + d, type, v_load_m(qkv + 2 * C + h * hs + d, m), m);
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
  vf sum = v_zero(), vmx = v_set1(mx);
  for (int64_t s = 0; s < n_pre + n_own; s += VW) {
    vm m = tail(n_pre + n_own - s);
    vf e = v_keep_m(m, vexp(v_sub(v_load_m(sc + s, m), vmx)));
    v_store_m(sc + s, m, e);
    sum = v_add(sum, e);
  }
  float inv = 1.0f / v_sum(sum);
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
static int32_t reduces[MAX_PHASES];  /* 1 where the phase ends with split_reduce: done_tiles then counts to tiles + 1 */
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

static const Linear* phase_linear(const Layer* ly, int p) {  /* the product of phase p (not ATTN) */
  int kind = p % PHASES_PER_LAYER;
  return kind == QKV ? &ly->qkv : kind == PROJ ? &ly->proj : kind == FC ? &ly->fc : &ly->proj2;
}

static int64_t count_tiles(const Job* j, int p) {
  if (j->kind == LINEAR) return tile_count(j->L->N, j->nthreads);
  const Model* md = j->md;
  if (p == md->L * PHASES_PER_LAYER) return j->M;  /* ln_f, a row a tile */
  const Layer* ly = md->layers + p / PHASES_PER_LAYER;
  if (p % PHASES_PER_LAYER == ATTN) return (int64_t)j->M * md->nh;
  const Linear* lin = phase_linear(ly, p);
  return is_split(lin, j->M) ? split_tiles(lin->K) : tile_count(lin->N, j->nthreads);
}

/* Thread t's private buffers in `work` (per_thread floats each): its layer norm of x (M x C), which it computes
   once per layer norm it needs (`*normed` remembers which), attention scores (S + 16), and a PAIRS product's input
   rounded to bfloat16 (M x (inner + 2) halves), once per phase (`*rounded`). */
static int64_t per_thread(int64_t M, int64_t C, int64_t inner, int64_t S) {
  return M * C + S + 16 + M * ((inner > C ? inner : C) + 64) / 2 + 16;
}

/* The split products' partial sums (shared, after the threads' buffers): room for the largest phase's. */
static int64_t split_floats(int64_t M, int64_t C, int64_t inner) {
  if (M > SPLIT_ROWS) return 0;
  const int64_t wide = 3 * C > inner ? 3 * C : inner, a = split_tiles(C) * wide, b = split_tiles(inner) * C;
  return split_rows((int)M) * (a > b ? a : b);
}

static void run_tile(const Job* j, int p, int64_t i, int t, int* normed, int* rounded) {
  int64_t n0, n1;
  if (j->kind == LINEAR) {
    tile_range(j->L, tiles[p], i, &n0, &n1);
#if BF16_DOTS
    if (j->L->layout == KN && j->M > 8 && j->lxb) kn_many_rows_dots(j->L, j->ptype, j->lxb, j->M, j->ly, n0, n1);
    else
#endif
    if (j->L->layout == KN && j->M > 8) kn_many_rows(j->L, j->ptype, j->lx, j->M, j->ly, n0, n1);
    else linear_cols(j->L, j->ptype, j->lx, j->lxb, j->M, j->ly, STORE, n0, n1);
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
  if (kind == ATTN) {
    attend(j->c, p / PHASES_PER_LAYER, i / H, i % H, hs, ly->attn_scale, qkv + i / H * 3 * C, C,
           att + i / H * C + i % H * hs, sc);
    return;
  }
  const Linear* lin = phase_linear(ly, p);
  const float* in = kind == QKV || kind == FC ? a : kind == PROJ ? att : hid;  /* final: its phase is done */
  const int prepared = lin->layout == PAIRS || lin->layout == NK_Q8 || lin->layout == NK_DOTS;
  if (prepared && *rounded != p) {
    prepare(lin, in, (int)M, xb);
    *rounded = p;
  }
  if (reduces[p]) {
    split_tile(lin, in, (int)M, i, hid + M * inner + j->nthreads * per_thread(M, C, inner, j->S));
    return;
  }
  tile_range(lin, tiles[p], i, &n0, &n1);
  linear_cols(lin, P, in, prepared ? xb : NULL, (int)M, kind == QKV ? qkv : kind == FC ? hid : x,
              kind == PROJ || kind == PROJ2 ? ADD : STORE, n0, n1);
}

/* The end of a split phase, run by the thread that finished its last tile: the partials into the phase's output. */
static void reduce_phase(const Job* j, int p) {
  const Model* md = j->md;
  const int64_t M = j->M, C = md->C, inner = md->layers[0].fc.N;
  const Layer* ly = md->layers + p / PHASES_PER_LAYER;
  const int kind = p % PHASES_PER_LAYER;
  float *qkv = j->work, *hid = qkv + 4 * M * C, *parts = hid + M * inner + j->nthreads * per_thread(M, C, inner, j->S);
  split_reduce(phase_linear(ly, p), md->ptype, parts, (int)M, kind == QKV ? qkv : kind == FC ? hid : j->x,
               kind == PROJ || kind == PROJ2 ? ADD : STORE);
}

static void wait_phase(int p) {  /* until every tile of phase p is done (and its partials added) */
  for (int i = 0; __atomic_load_n(&done_tiles[p], __ATOMIC_ACQUIRE) < tiles[p] + reduces[p]; i++) {
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
      if (__atomic_add_fetch(&done_tiles[p], 1, __ATOMIC_ACQ_REL) == tiles[p] && reduces[p]) {  /* the last tile */
        reduce_phase(j, p);
        __atomic_add_fetch(&done_tiles[p], 1, __ATOMIC_RELEASE);
      }
    }
  }
}

static void run(Job* j) {
  pthread_mutex_lock(&call_lock);
  if (j->nthreads > MAX_THREADS) j->nthreads = MAX_THREADS;
  for (int p = 0; p < j->nphases; p++) {
    next_tile[p] = done_tiles[p] = 0;
    tiles[p] = (int32_t)count_tiles(j, p);
    reduces[p] = j->kind == DECODE && p < j->md->L * PHASES_PER_LAYER && p % PHASES_PER_LAYER != ATTN &&
                 is_split(phase_linear(j->md->layers + p / PHASES_PER_LAYER, p), j->M);
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
    VALUE(F32) VALUE(BF16) VALUE(I8) VALUE(KN) VALUE(NK) VALUE(PAIRS) VALUE(NK_Q8) VALUE(NK_DOTS)
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
  return M * (5 * C + inner) + nthreads * per_thread(M, C, inner, S) + split_floats(M, C, inner);
}

int pigpt_decode(float* x, int M, const Model* md, const Cache* c, float* work, int64_t S, int nthreads) {
  Job j = {DECODE, M, nthreads, md->L * PHASES_PER_LAYER + 1, x, md, c, work, S, NULL, md->ptype, NULL, NULL, NULL};
  if (j.nphases > MAX_PHASES) return -1;
  if (q8_vnni < 0) pigpt_int8_vnni(-1);
  run(&j);
  return 0;
}

int pigpt_has_avx512bf16(void) {  /* whether PAIRS weights (and the bfloat16 head's dot products) run here */
  __builtin_cpu_init();
  return BF16_DOTS && __builtin_cpu_supports("avx512bf16");
}

int pigpt_vector_width(void) { return VW; }  /* 16: the AVX-512 build; 8: the AVX2 build */

/* y (M, N) = x (M, K) W^T + b for one linear (the LM head), or x W + b (KN). xb: room for M * (K + 64) bfloat16
   values. dot: use avx512_bf16 dot products for bfloat16 weights (the caller checked pigpt_has_avx512bf16; PAIRS
   needs them): NK ones, and KN ones at more than 8 rows (kn_many_rows_dots). */
void pigpt_linear(const Linear* L, int ptype, const float* x, int M, float* y, int nthreads, uint16_t* xb, int dot) {
  int dp = BF16_DOTS && dot && L->wtype == BF16 && L->layout != KN;
  int kd = BF16_DOTS && dot && L->wtype == BF16 && L->layout == KN && M > 8;
  if (q8_vnni < 0) pigpt_int8_vnni(-1);
  if (L->layout == NK_Q8 || L->layout == PAIRS) prepare(L, x, M, xb);
#if BF16_DOTS
  else if (dp) round_bf16(x, (int64_t)M * L->K, xb);
  else if (kd) round_rows(x, M, L->K, xb);
#endif
  Job j = {LINEAR, M, nthreads, 1, NULL, NULL, NULL, NULL, 0, L, ptype, x, dp || kd || L->layout == NK_Q8 ? xb : NULL, y};
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
