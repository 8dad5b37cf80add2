/* Batch-invariant kernels: every output element is a fixed sequence of float32 operations on its own row's
 * inputs, whatever M, T, padding, threads or tiling are around it (model/invariant.py says what that buys).
 *
 * How the guarantee is kept:
 * - A product y[m][n] = b[n] + sum_k x[m][k] W[k][n] is one chain of fused multiply-adds in k order, started
 *   at 0, then the bias added. Vectorising across n (or m) never reorders a chain, and fmaf is exactly
 *   rounded, so the AVX2 path and the plain-C path give the same bits: tiles, threads and the row count only
 *   decide which chains run side by side.
 * - No -ffast-math, and -ffp-contract=off: the compiler may neither reassociate nor fuse on its own.
 * - Reductions over a row (layer norm, attention) run in a fixed order that depends on the row's length only.
 * - Elementwise functions (GELU, exp) are computed by one function here, used by every path, from +, *, fmaf
 *   and bit operations only: vectorised or not, the same bits (libm's scalar calls would be slow, and a vector
 *   libm may round differently from the scalar one).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#define VW 16
typedef __m512 vec;
#define VLOAD(p) _mm512_loadu_ps(p)
#define VSTORE(p, a) _mm512_storeu_ps(p, a)
#define VSET1(x) _mm512_set1_ps(x)
#define VZERO() _mm512_setzero_ps()
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define VW 8
typedef __m256 vec;
#define VLOAD(p) _mm256_loadu_ps(p)
#define VSTORE(p, a) _mm256_storeu_ps(p, a)
#define VSET1(x) _mm256_set1_ps(x)
#define VZERO() _mm256_setzero_ps()
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#else
#define VW 8
typedef struct { float f[VW]; } vec;
static inline vec VLOAD(const float *p) { vec r; memcpy(r.f, p, sizeof r.f); return r; }
static inline void VSTORE(float *p, vec a) { memcpy(p, a.f, sizeof a.f); }
static inline vec VSET1(float x) { vec r; for (int i = 0; i < VW; i++) r.f[i] = x; return r; }
static inline vec VZERO(void) { return VSET1(0.0f); }
static inline vec VFMA(vec a, vec b, vec c) { for (int i = 0; i < VW; i++) c.f[i] = fmaf(a.f[i], b.f[i], c.f[i]); return c; }
#endif

#define NR (2 * VW) /* columns per weight panel: two vectors */
#define MR 6  /* rows per tile: 12 accumulators */
#define MC 96 /* rows per task: a multiple of MR */
#define PG 4  /* panels per task */

enum { ACT_NONE = 0, ACT_GELU_TANH = 1, ACT_GELU_ERF = 2, ACT_RELU = 3 };

int pgi_version(void) { return 1; }
int pgi_panel_width(void) { return NR; }

/* exp(x) from +, *, fmaf and bit operations only (Cephes' expf: range reduction by ln 2, a degree-6 polynomial,
 * scaling by 2^n; ~1 ulp), so that the compiler may vectorise it without changing a bit, unlike libm's expf. */
static inline float exp_fixed(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = floorf(fmaf(x, 1.44269504088896341f, 0.5f));
    float r = fmaf(n, -0.693359375f, x);
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p, r * r, r) + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* GPT-2's GELU, 0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3))), with tanh(u) = 1 - 2 / (exp(2u) + 1) (u clamped
 * to +-10, where tanh rounds to +-1 anyway). */
static inline float gelu_tanh(float v) {
    float u = 0.7978845608028654f * (v + 0.044715f * (v * v * v));
    u = u < -10.0f ? -10.0f : (u > 10.0f ? 10.0f : u);
    float t = 1.0f - 2.0f / (exp_fixed(2.0f * u) + 1.0f);
    return 0.5f * v * (1.0f + t);
}

/* y[i] = act(y[i]), i < n: one loop per activation, each vectorisable */
static void act_inplace(float *y, int64_t n, int act) {
    switch (act) {
    case ACT_GELU_TANH:
        for (int64_t i = 0; i < n; i++) y[i] = gelu_tanh(y[i]);
        break;
    case ACT_GELU_ERF:
        for (int64_t i = 0; i < n; i++) y[i] = 0.5f * y[i] * (1.0f + erff(y[i] * 0.7071067811865476f));
        break;
    case ACT_RELU:
        for (int64_t i = 0; i < n; i++) y[i] = y[i] > 0.0f ? y[i] : 0.0f;
        break;
    default:
        break;
    }
}

/* rows [m0, m0+mr) of y, columns of panel p: x (M, K) row stride ldx, panel wp (K, NR), bias or NULL. */
static inline __attribute__((always_inline)) void tile(int mr, const float *x, int64_t ldx, int64_t K,
                                                       const float *wp, const float *bias, int64_t n0, int64_t N,
                                                       float *y, int64_t ldy, int act) {
    vec acc[MR][2];
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = VZERO();
    for (int64_t k = 0; k < K; k++) {
        vec w0 = VLOAD(wp + k * NR), w1 = VLOAD(wp + k * NR + VW);
        for (int r = 0; r < mr; r++) {
            vec xv = VSET1(x[r * ldx + k]);
            acc[r][0] = VFMA(xv, w0, acc[r][0]);
            acc[r][1] = VFMA(xv, w1, acc[r][1]);
        }
    }
    float buf[NR];
    int64_t nn = N - n0 < NR ? N - n0 : NR;
    for (int r = 0; r < mr; r++) {
        VSTORE(buf, acc[r][0]);
        VSTORE(buf + VW, acc[r][1]);
        float *out = y + r * ldy + n0;
        for (int64_t j = 0; j < nn; j++) out[j] = bias ? buf[j] + bias[n0 + j] : buf[j];
        act_inplace(out, nn, act);
    }
}

/* One chain for one row against PG panels at once: four panels give eight independent chains, which a single
 * row needs to keep the FMA units busy (same operations per chain as `tile`). */
static inline void row_panels(const float *x, int64_t K, const float *wp, int64_t np, int64_t pstride,
                              const float *bias, int64_t n0, int64_t N, float *y, int act) {
    vec acc[PG][2];
    for (int p = 0; p < PG; p++) acc[p][0] = acc[p][1] = VZERO();
    for (int64_t k = 0; k < K; k++) {
        vec xv = VSET1(x[k]);
        for (int p = 0; p < PG; p++) {
            if (p < np) {
                const float *w = wp + p * pstride + k * NR;
                acc[p][0] = VFMA(xv, VLOAD(w), acc[p][0]);
                acc[p][1] = VFMA(xv, VLOAD(w + VW), acc[p][1]);
            }
        }
    }
    for (int p = 0; p < np; p++) {
        float buf[NR];
        VSTORE(buf, acc[p][0]);
        VSTORE(buf + VW, acc[p][1]);
        int64_t c0 = n0 + p * NR, nn = N - c0 < NR ? N - c0 : NR;
        for (int64_t j = 0; j < nn; j++) y[c0 + j] = bias ? buf[j] + bias[c0 + j] : buf[j];
        act_inplace(y + c0, nn, act);
    }
}

/* y (M, N) row stride ldy = act(x (M, K) @ W + bias); W packed as panels (ceil(N/NR), K, NR), zero-padded. */
void pgi_linear(const float *x, int64_t M, int64_t K, int64_t ldx, const float *wp, int64_t N, const float *bias,
                float *y, int64_t ldy, int act, int threads) {
    int64_t np = (N + NR - 1) / NR, ngroups = (np + PG - 1) / PG, mtasks = (M + MC - 1) / MC;
    int64_t tasks = ngroups * mtasks, pstride = K * NR;
    if (threads < 1) threads = 1;
    if (tasks < threads) threads = (int)tasks;
#pragma omp parallel for schedule(dynamic) num_threads(threads)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t g = t / mtasks, mt = t % mtasks;
        int64_t p0 = g * PG, p1 = p0 + PG < np ? p0 + PG : np;
        int64_t m0 = mt * MC, m1 = m0 + MC < M ? m0 + MC : M;
        if (m1 - m0 < 3) { /* one or two rows: all panels of the group at once */
            for (int64_t m = m0; m < m1; m++)
                row_panels(x + m * ldx, K, wp + p0 * pstride, p1 - p0, pstride, bias, p0 * NR, N, y + m * ldy, act);
            continue;
        }
        for (int64_t p = p0; p < p1; p++) {
            for (int64_t m = m0; m < m1; m += MR) {
                int mr = m1 - m < MR ? (int)(m1 - m) : MR;
                const float *xm = x + m * ldx, *w = wp + p * pstride;
                float *ym = y + m * ldy;
                switch (mr) { /* constant row counts, so each tile keeps its accumulators in registers */
                case 6: tile(6, xm, ldx, K, w, bias, p * NR, N, ym, ldy, act); break;
                case 5: tile(5, xm, ldx, K, w, bias, p * NR, N, ym, ldy, act); break;
                case 4: tile(4, xm, ldx, K, w, bias, p * NR, N, ym, ldy, act); break;
                case 3: tile(3, xm, ldx, K, w, bias, p * NR, N, ym, ldy, act); break;
                case 2: tile(2, xm, ldx, K, w, bias, p * NR, N, ym, ldy, act); break;
                default: tile(1, xm, ldx, K, w, bias, p * NR, N, ym, ldy, act); break;
                }
            }
        }
    }
}

/* y = act(x) elementwise, n values (the activation of a product whose pre-activation autograd keeps). */
void pgi_act(const float *x, float *y, int64_t n, int act, int threads) {
    int64_t chunk = 4096, chunks = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) num_threads(threads) if (chunks > 1)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t a = c * chunk, len = n - a < chunk ? n - a : chunk;
        memcpy(y + a, x + a, sizeof(float) * len);
        act_inplace(y + a, len, act);
    }
}

/* A row's sum in a fixed order: eight strided partial sums (element i into lane i % 8), then a fixed tree. */
static inline float row_sum(const float *v, int64_t n) {
    float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) a[l] += v[i + l];
    for (int l = 0; i < n; i++, l++) a[l] += v[i];
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

static inline float row_dot(const float *u, const float *v, int64_t n) {
    float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) a[l] = fmaf(u[i + l], v[i + l], a[l]);
    for (int l = 0; i < n; i++, l++) a[l] = fmaf(u[i], v[i], a[l]);
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

/* Layer norm of M rows of C (row stride ldx), into y (M, C) contiguous; also each row's mean and 1/std. */
void pgi_layernorm(const float *x, int64_t M, int64_t C, int64_t ldx, const float *w, const float *b, float eps,
                   float *y, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (M * C > 32768)
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * ldx;
        float *yr = y + m * C;
        float mean = row_sum(xr, C) / (float)C;
        for (int64_t i = 0; i < C; i++) yr[i] = xr[i] - mean;
        float var = row_dot(yr, yr, C) / (float)C;
        float rstd = 1.0f / sqrtf(var + eps);
        for (int64_t i = 0; i < C; i++) yr[i] = (yr[i] * rstd) * w[i] + b[i];
    }
}

/* Causal attention, one (row, head, query) at a time, over the row's keys in position order: first its shared
 * prompt's (pk, pv: prompt prow[b], slots pstart[p] .. P-1; none if pk is NULL), then its own (k, v: slots
 * kstart[b] .. q0 + t, kstart NULL meaning 0). q is (B, nh, T, hs) by strides, k and v (B, nh, S, hs) by
 * strides, y (B, T, nh * hs) contiguous. A query on a padding slot (before kstart) sees only itself.
 * Scores are dot * scale; weights exp(s - max) summed in key order; the output is sum_j w_j v_j / sum_j w_j,
 * each element a chain in key order. */
void pgi_attention(const float *q, int64_t qb, int64_t qh, int64_t qt, int64_t B, int64_t nh, int64_t T,
                   int64_t hs, const float *k, const float *v, int64_t kb, int64_t kh, int64_t ks,
                   const int64_t *kstart, int64_t q0, const float *pk, const float *pv, int64_t pb, int64_t ph,
                   int64_t ps, const int64_t *prow, const int64_t *pstart, int64_t P, float scale, float *y,
                   int threads) {
    int64_t tasks = B * nh * T;
#pragma omp parallel num_threads(threads) if (tasks > 1)
    {
        int64_t cap = P + q0 + T;
        float *s = malloc(sizeof(float) * (cap > 0 ? cap : 1));
        float *acc = malloc(sizeof(float) * hs);
#pragma omp for schedule(dynamic, 4)
        for (int64_t task = 0; task < tasks; task++) {
            int64_t b = task / (nh * T), h = (task / T) % nh, t = task % T;
            const float *qv = q + b * qb + h * qh + t * qt;
            int64_t slot = q0 + t, lo = kstart ? kstart[b] : 0;
            if (lo > slot) lo = slot;
            int64_t a0 = 0, na = 0;
            const float *pkr = NULL, *pvr = NULL;
            if (pk) {
                int64_t p = prow[b];
                a0 = pstart ? pstart[p] : 0;
                na = P - a0;
                pkr = pk + p * pb + h * ph;
                pvr = pv + p * pb + h * ph;
            }
            int64_t n = na + (slot - lo + 1);
            float mx = -INFINITY;
            for (int64_t j = 0; j < n; j++) {
                const float *kj = j < na ? pkr + (a0 + j) * ps : k + b * kb + h * kh + (lo + j - na) * ks;
                s[j] = row_dot(qv, kj, hs) * scale;
                if (s[j] > mx) mx = s[j];
            }
            float l = 0.0f;
            for (int64_t d = 0; d < hs; d++) acc[d] = 0.0f;
            for (int64_t j = 0; j < n; j++) {
                const float *vj = j < na ? pvr + (a0 + j) * ps : v + b * kb + h * kh + (lo + j - na) * ks;
                float w = exp_fixed(s[j] - mx);
                l += w;
                for (int64_t d = 0; d < hs; d++) acc[d] = fmaf(w, vj[d], acc[d]);
            }
            float *out = y + (b * T + t) * nh * hs + h * hs;
            for (int64_t d = 0; d < hs; d++) out[d] = acc[d] / l;
        }
        free(s);
        free(acc);
    }
}
