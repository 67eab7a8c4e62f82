/* attention.c: grouped-query attention (causal or bidirectional, packed examples, padding,
 * sliding window, score soft-capping), FlashAttention-2 style on the CPU.
 *
 * Both passes work on tiles: a block of ATTN_BQ query rows against a block of ATTN_BK keys.
 * Scores S = Q K^T and the products P V, dS K, P^T dO, dS^T Q are small matmuls done by two
 * register-blocked micro-kernels (AVX-512 intrinsics when __AVX512F__, plain loops otherwise);
 * the key block is transposed once (Kt[hd][ATTN_BK]) so the score kernel streams 64 keys per
 * row in four zmm registers. exp is a vectorised polynomial (Cephes expf, ~1 ulp, scalef for
 * the 2^n) in the AVX-512 path and libm expf in the portable one.
 *
 * Forward: one task per (b, kv head, block of ATTN_BQ rows) covering all query heads of the GQA
 * group (each key block is transposed once for group * ATTN_BQ rows), tasks taken latest-block
 * first (they have the most keys). It streams over key blocks with an online softmax (running max m,
 * running sum l, unnormalised accumulator), so the T x T matrix is never stored, and saves
 * lse = m + log(l) per row.
 *
 * Backward (one pass, P computed once per tile): one task per (b, kv head). For each key block
 * it transposes K and V once and visits every query block of every query head of the GQA group
 * that can see it:
 *   P = exp(S - lse),  dP = dO V^T,  D_i = dO_i . O_i,  dS = scale * P * (dP - D),
 *   dV_blk += P^T dO,  dK_blk += dS^T Q,  dQ += dS K_blk.
 * The task owns dq of its group's heads in its sequence and its own dk/dv rows, so there are no
 * atomics and no races. When B * n_kv_head is smaller than the thread count, each (b, kv head)
 * is further split into ranges of key blocks; those tasks then add dQ into a private scratch
 * that is summed in a fixed order afterwards (the only allocation of size O(T), documented in
 * kernels.h). Results do not depend on the thread count in the unsplit case.
 *
 * Per-thread scratch (key-block transposes, tiles, accumulators) is malloc'ed once per parallel
 * region, O((ATTN_BK + group * ATTN_BQ) * hd) floats. When an allocation fails, the thread
 * skips its tasks (it must still take part in the work-sharing loop) and the kernel returns
 * PEFT_ENOMEM: the outputs are then incomplete and must not be used.
 *
 * Masking (attention_opts, kernels.h): query row i of a sequence sits at absolute index
 * a = Tk - Tq + i and sees one contiguous range of keys [lo, hi] (row_keys_), so every mask kind
 * is the same pair of bounds per row and the tiles never look at a mask matrix: causal gives
 * hi = a, packed positions lo = a - pos_i (pos_i clamped to [0, a]), a sliding window
 * lo >= a - window + 1, padding hi <= kv_len[b] - 1 and an empty range for padded queries (their
 * out rows are 0, lse 0, and they pass no gradient). Soft-capping replaces each scaled score by
 * cap * tanh(score / cap) right after the score tile is computed; the backward keeps the tanh
 * derivative of the tile (G) to chain it into dS. */
#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "kernels.h"
#include "peft.h"
#include "vexp.h"

#define ATTN_MAX_HD 256
#define ATTN_BK 64 /* keys per block (fixed: the score kernel holds 64 columns in 4 zmm) */
#define ATTN_BQ 32 /* query rows per block */

#define AINL static inline __attribute__((always_inline))

/* Keys [*lo, *hi] seen by query row i of sequence b (absolute index a = Tk - Tq + i); the range
 * is empty (*lo > *hi) for a padded query. */
static inline void row_keys_(const attention_opts *o, int b, int i, int Tq, int Tk, int *lo, int *hi) {
    const int a = Tk - Tq + i;
    int l = 0, h = o->causal ? a : Tk - 1;
    if (o->pos) {
        int p = o->pos[(size_t)b * Tq + i];
        p = p < 0 ? 0 : p > a ? a : p;
        l = a - p;
    }
    if (o->window > 0 && a - o->window + 1 > l) l = a - o->window + 1;
    if (o->kv_len) {
        const int len = o->kv_len[b];
        if (a >= len) l = 0, h = -1;  // padded query (also covers len <= 0)
        else if (h > len - 1) h = len - 1;
    }
    *lo = l;
    *hi = h;
}

static inline float attn_scale_(const attention_opts *o, int hd) {
    return o->scale > 0.0f ? o->scale : 1.0f / sqrtf((float)hd);
}

/* 64-byte aligned scratch of nfloats; NULL (and *oom set) when out of memory. */
static float *scratch_alloc_(size_t nfloats, int *oom) {
    size_t bytes = (nfloats * sizeof(float) + 63) & ~(size_t)63;
    float *p = aligned_alloc(64, bytes ? bytes : 64);
    if (!p) {
#pragma omp atomic write
        *oom = 1;
    }
    return p;
}

/* Kt[d][jj] = k[jj][d] for jj < nk, 0 for nk <= jj < ATTN_BK. */
static void transpose_block_(float *Kt, const float *kb, size_t ks, int nk, int hd) {
    for (int d = 0; d < hd; d++) {
        float *row = Kt + (size_t)d * ATTN_BK;
        for (int jj = 0; jj < nk; jj++) row[jj] = kb[(size_t)jj * ks + d];
        for (int jj = nk; jj < ATTN_BK; jj++) row[jj] = 0.0f;
    }
}

#ifdef __AVX512F__
/* Micro-kernels with named accumulators (gcc keeps arrays of __m512 indexed in loops in memory). */
#define ATT_Z4(r) __m512 c##r##0 = _mm512_setzero_ps(), c##r##1 = c##r##0, c##r##2 = c##r##0, c##r##3 = c##r##0
#define ATT_FMA4(r, s)                                     \
    do {                                                   \
        const __m512 a_ = _mm512_set1_ps(s);               \
        c##r##0 = _mm512_fmadd_ps(a_, b0, c##r##0);        \
        c##r##1 = _mm512_fmadd_ps(a_, b1, c##r##1);        \
        c##r##2 = _mm512_fmadd_ps(a_, b2, c##r##2);        \
        c##r##3 = _mm512_fmadd_ps(a_, b3, c##r##3);        \
    } while (0)
#define ATT_ST4(r, dst)                                    \
    do {                                                   \
        _mm512_store_ps((dst), c##r##0);                   \
        _mm512_store_ps((dst) + 16, c##r##1);              \
        _mm512_store_ps((dst) + 32, c##r##2);              \
        _mm512_store_ps((dst) + 48, c##r##3);              \
    } while (0)

/* S[r][0:64] = sum_d A[r*lda + d] * Bt[d][0:64], 4 rows / 1 row. */
static void scores4_(float *S, const float *A, size_t lda, const float *Bt, int hd) {
    ATT_Z4(0);
    ATT_Z4(1);
    ATT_Z4(2);
    ATT_Z4(3);
    const float *A0 = A, *A1 = A + lda, *A2 = A + 2 * lda, *A3 = A + 3 * lda;
    for (int d = 0; d < hd; d++) {
        const float *b = Bt + (size_t)d * ATTN_BK;
        const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16), b2 = _mm512_load_ps(b + 32),
                     b3 = _mm512_load_ps(b + 48);
        ATT_FMA4(0, A0[d]);
        ATT_FMA4(1, A1[d]);
        ATT_FMA4(2, A2[d]);
        ATT_FMA4(3, A3[d]);
    }
    ATT_ST4(0, S);
    ATT_ST4(1, S + ATTN_BK);
    ATT_ST4(2, S + 2 * ATTN_BK);
    ATT_ST4(3, S + 3 * ATTN_BK);
}
static void scores1_(float *S, const float *A, const float *Bt, int hd) {
    ATT_Z4(0);
    for (int d = 0; d < hd; d++) {
        const float *b = Bt + (size_t)d * ATTN_BK;
        const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16), b2 = _mm512_load_ps(b + 32),
                     b3 = _mm512_load_ps(b + 48);
        ATT_FMA4(0, A[d]);
    }
    ATT_ST4(0, S);
}

#define ATT_LD4(r, src)                                                                         \
    __m512 c##r##0 = _mm512_maskz_loadu_ps(m0, (src)), c##r##1 = _mm512_maskz_loadu_ps(m1, (src) + 16), \
           c##r##2 = _mm512_maskz_loadu_ps(m2, (src) + 32), c##r##3 = _mm512_maskz_loadu_ps(m3, (src) + 48)
#define ATT_MST4(r, dst)                                   \
    do {                                                   \
        _mm512_mask_storeu_ps((dst), m0, c##r##0);         \
        _mm512_mask_storeu_ps((dst) + 16, m1, c##r##1);    \
        _mm512_mask_storeu_ps((dst) + 32, m2, c##r##2);    \
        _mm512_mask_storeu_ps((dst) + 48, m3, c##r##3);    \
    } while (0)

static inline __mmask16 lane_mask_(int rem) {
    return rem >= 16 ? (__mmask16)0xFFFF : rem > 0 ? (__mmask16)((1u << rem) - 1) : 0;
}

/* C[r][0:hd] += sum_k P[r*psm + k*psk] * X[k*ldx + 0:hd], 4 rows / 1 row, 64-column chunks
 * (masked at the end of hd). */
static void pv4_(float *C, size_t ldc, const float *P, size_t psm, size_t psk, const float *X, size_t ldx, int nk,
                 int hd) {
    for (int d0 = 0; d0 < hd; d0 += 64) {
        const __mmask16 m0 = lane_mask_(hd - d0), m1 = lane_mask_(hd - d0 - 16), m2 = lane_mask_(hd - d0 - 32),
                        m3 = lane_mask_(hd - d0 - 48);
        float *C0 = C + d0, *C1 = C0 + ldc, *C2 = C1 + ldc, *C3 = C2 + ldc;
        const float *P0 = P, *P1 = P + psm, *P2 = P + 2 * psm, *P3 = P + 3 * psm;
        ATT_LD4(0, C0);
        ATT_LD4(1, C1);
        ATT_LD4(2, C2);
        ATT_LD4(3, C3);
        for (int k = 0; k < nk; k++) {
            const float *xr = X + (size_t)k * ldx + d0;
            const __m512 b0 = _mm512_maskz_loadu_ps(m0, xr), b1 = _mm512_maskz_loadu_ps(m1, xr + 16),
                         b2 = _mm512_maskz_loadu_ps(m2, xr + 32), b3 = _mm512_maskz_loadu_ps(m3, xr + 48);
            const size_t o = (size_t)k * psk;
            ATT_FMA4(0, P0[o]);
            ATT_FMA4(1, P1[o]);
            ATT_FMA4(2, P2[o]);
            ATT_FMA4(3, P3[o]);
        }
        ATT_MST4(0, C0);
        ATT_MST4(1, C1);
        ATT_MST4(2, C2);
        ATT_MST4(3, C3);
    }
}
static void pv1_(float *C, const float *P, size_t psk, const float *X, size_t ldx, int nk, int hd) {
    for (int d0 = 0; d0 < hd; d0 += 64) {
        const __mmask16 m0 = lane_mask_(hd - d0), m1 = lane_mask_(hd - d0 - 16), m2 = lane_mask_(hd - d0 - 32),
                        m3 = lane_mask_(hd - d0 - 48);
        float *C0 = C + d0;
        ATT_LD4(0, C0);
        for (int k = 0; k < nk; k++) {
            const float *xr = X + (size_t)k * ldx + d0;
            const __m512 b0 = _mm512_maskz_loadu_ps(m0, xr), b1 = _mm512_maskz_loadu_ps(m1, xr + 16),
                         b2 = _mm512_maskz_loadu_ps(m2, xr + 32), b3 = _mm512_maskz_loadu_ps(m3, xr + 48);
            ATT_FMA4(0, P[(size_t)k * psk]);
        }
        ATT_MST4(0, C0);
    }
}

static void scores_(float *S, const float *A, size_t lda, const float *Bt, int nrows, int hd) {
    int r = 0;
    for (; r + 4 <= nrows; r += 4) scores4_(S + (size_t)r * ATTN_BK, A + (size_t)r * lda, lda, Bt, hd);
    for (; r < nrows; r++) scores1_(S + (size_t)r * ATTN_BK, A + (size_t)r * lda, Bt, hd);
}

static void pv_(float *C, size_t ldc, const float *P, size_t psm, size_t psk, const float *X, size_t ldx, int nrows,
                int nk, int hd) {
    int r = 0;
    for (; r + 4 <= nrows; r += 4) pv4_(C + (size_t)r * ldc, ldc, P + (size_t)r * psm, psm, psk, X, ldx, nk, hd);
    for (; r < nrows; r++) pv1_(C + (size_t)r * ldc, P + (size_t)r * psm, psk, X, ldx, nk, hd);
}

/* p[jj] = exp(s[jj] * scale - off) for jj in [jlo, jhi], 0 elsewhere (jj < ATTN_BK); returns the sum. */
AINL float exp_row_(float *p, const float *s, float scale, float off, int jlo, int jhi) {
    __m512 acc = _mm512_setzero_ps();
    const __m512 vs = _mm512_set1_ps(scale), vo = _mm512_set1_ps(off);
    for (int x = 0; x < ATTN_BK; x += 16) {
        int a = jlo - x, b = jhi - x + 1;  // valid lanes [a, b)
        a = a < 0 ? 0 : a;
        b = b > 16 ? 16 : b;
        __mmask16 m = a < b ? (__mmask16)((((1u << b) - 1)) & ~((1u << a) - 1)) : 0;
        __m512 e = _mm512_maskz_mov_ps(m, exp512(_mm512_fmsub_ps(_mm512_load_ps(s + x), vs, vo)));
        _mm512_store_ps(p + x, e);
        acc = _mm512_add_ps(acc, e);
    }
    return _mm512_reduce_add_ps(acc);
}
/* max of s[jlo..jhi] (jlo <= jhi < ATTN_BK) */
AINL float max_row_(const float *s, int jlo, int jhi) {
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int x = (jlo / 16) * 16; x <= jhi; x += 16) {
        int a = jlo - x, b = jhi - x + 1;
        a = a < 0 ? 0 : a;
        b = b > 16 ? 16 : b;
        __mmask16 m = (__mmask16)((((1u << b) - 1)) & ~((1u << a) - 1));
        mx = _mm512_mask_max_ps(mx, m, mx, _mm512_loadu_ps(s + x));
    }
    return _mm512_reduce_max_ps(mx);
}
#else  /* portable path: same blocking, plain loops */
static inline float max_row_(const float *s, int jlo, int jhi) {
    float bm = -INFINITY;
    for (int jj = jlo; jj <= jhi; jj++) bm = s[jj] > bm ? s[jj] : bm;
    return bm;
}

static void scores_(float *S, const float *A, size_t lda, const float *Bt, int nrows, int hd) {
    for (int r = 0; r < nrows; r++) {
        float *s = S + (size_t)r * ATTN_BK;
        for (int jj = 0; jj < ATTN_BK; jj++) s[jj] = 0.0f;
        for (int d = 0; d < hd; d++) {
            const float a = A[(size_t)r * lda + d];
            const float *b = Bt + (size_t)d * ATTN_BK;
#pragma omp simd
            for (int jj = 0; jj < ATTN_BK; jj++) s[jj] += a * b[jj];
        }
    }
}

static void pv_(float *C, size_t ldc, const float *P, size_t psm, size_t psk, const float *X, size_t ldx, int nrows,
                int nk, int hd) {
    for (int r = 0; r < nrows; r++) {
        float *c = C + (size_t)r * ldc;
        for (int k = 0; k < nk; k++) {
            const float p = P[(size_t)r * psm + (size_t)k * psk];
            const float *x = X + (size_t)k * ldx;
#pragma omp simd
            for (int d = 0; d < hd; d++) c[d] += p * x[d];
        }
    }
}

static inline float exp_row_(float *p, const float *s, float scale, float off, int jlo, int jhi) {
    float sum = 0.0f;
    for (int jj = 0; jj < ATTN_BK; jj++) {
        float e = (jj >= jlo && jj <= jhi) ? expf(s[jj] * scale - off) : 0.0f;
        p[jj] = e;
        sum += e;
    }
    return sum;
}
#endif

int attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *pos,
                      int B, int Tq, int Tk, int n_head, int n_kv_head, int hd) {
    const attention_opts o = {.causal = 1, .pos = pos};
    return attention_forward_opts(out, lse, q, k, v, &o, B, Tq, Tk, n_head, n_kv_head, hd);
}

int attention_forward_opts(float *out, float *lse, const float *q, const float *k, const float *v,
                           const attention_opts *o, int B, int Tq, int Tk, int n_head, int n_kv_head, int hd) {
    // out (B, Tq, n_head*hd), lse (B, n_head, Tq) or NULL
    // q (B, Tq, n_head*hd), k, v (B, Tk, n_kv_head*hd); o->pos (B, Tq), o->kv_len (B) or NULL
    assert(hd <= ATTN_MAX_HD && n_head % n_kv_head == 0 && Tq <= Tk); /* the model's config guarantees these */
    if (B <= 0 || Tq <= 0 || n_head <= 0 || hd <= 0) return PEFT_OK;
    int oom = 0;
    const int group = n_head / n_kv_head;
    const size_t qs = (size_t)n_head * hd, ks = (size_t)n_kv_head * hd;  // row strides
    const float scale = attn_scale_(o, hd), cap = o->softcap;
    const float sc = cap > 0.0f ? 1.0f : scale;  // capped scores are already scaled
    const int ntiles = (Tq + ATTN_BQ - 1) / ATTN_BQ;
    // one task = (b, kv head, query tile) for all heads of the group: each key block is
    // transposed once and used by group * ATTN_BQ query rows
    const long ntasks = (long)B * n_kv_head * ntiles;
#pragma omp parallel
    {
        const size_t gq = (size_t)group * ATTN_BQ;
        float *Kt = scratch_alloc_((size_t)hd * ATTN_BK + 2 * ATTN_BQ * ATTN_BK + gq * hd + 2 * gq, &oom);
        float *S = Kt + (size_t)hd * ATTN_BK, *P = S + ATTN_BQ * ATTN_BK, *acc = P + ATTN_BQ * ATTN_BK;
        float *m = acc + gq * hd, *l = m + gq;  // [group][ATTN_BQ]
#pragma omp for schedule(dynamic, 1)
        for (long task = 0; task < ntasks; task++) {
            if (!Kt) continue;
            const int tile = ntiles - 1 - (int)(task % ntiles);  // longest tiles first
            const int kvh = (int)((task / ntiles) % n_kv_head), b = (int)(task / ((long)ntiles * n_kv_head));
            const int i0 = tile * ATTN_BQ, nr = Tq - i0 < ATTN_BQ ? Tq - i0 : ATTN_BQ;
            const float *kb = k + (size_t)b * Tk * ks + (size_t)kvh * hd;
            const float *vb = v + (size_t)b * Tk * ks + (size_t)kvh * hd;
            int lo[ATTN_BQ], hi[ATTN_BQ];
            int jlo = Tk, jhi = 0;
            for (int r = 0; r < nr; r++) {
                row_keys_(o, b, i0 + r, Tq, Tk, &lo[r], &hi[r]);
                if (lo[r] > hi[r]) continue;
                jlo = lo[r] < jlo ? lo[r] : jlo;
                jhi = hi[r] > jhi ? hi[r] : jhi;
            }
            for (size_t x = 0; x < gq; x++) m[x] = -INFINITY, l[x] = 0.0f;
            memset(acc, 0, gq * hd * sizeof(float));
            for (int j0 = jlo; j0 <= jhi; j0 += ATTN_BK) {
                const int nj = jhi - j0 + 1 < ATTN_BK ? jhi - j0 + 1 : ATTN_BK;
                transpose_block_(Kt, kb + (size_t)j0 * ks, ks, nj, hd);
                for (int g = 0; g < group; g++) {
                    const int h = kvh * group + g;
                    const float *qb = q + ((size_t)b * Tq + i0) * qs + (size_t)h * hd;
                    float *mg = m + (size_t)g * ATTN_BQ, *lg = l + (size_t)g * ATTN_BQ;
                    float *ag = acc + (size_t)g * ATTN_BQ * hd;
                    scores_(S, qb, qs, Kt, nr, hd);
                    if (cap > 0.0f) softcap_span_(S, NULL, S, scale, cap, (size_t)nr * ATTN_BK);
                    for (int r = 0; r < nr; r++) {
                        // valid keys of row r in this block, block-relative
                        const int a = lo[r] - j0 > 0 ? lo[r] - j0 : 0;
                        const int e = hi[r] - j0 < nj - 1 ? hi[r] - j0 : nj - 1;
                        float *pr = P + (size_t)r * ATTN_BK;
                        if (a > e) {
                            memset(pr, 0, ATTN_BK * sizeof(float));
                            continue;
                        }
                        const float *sr = S + (size_t)r * ATTN_BK;
                        const float bm = max_row_(sr, a, e) * sc;
                        if (bm > mg[r]) {
                            const float c = expf(mg[r] - bm);  // 0 on the row's first block (m = -inf)
                            lg[r] *= c;
                            float *ar = ag + (size_t)r * hd;
#pragma omp simd
                            for (int d = 0; d < hd; d++) ar[d] *= c;
                            mg[r] = bm;
                        }
                        lg[r] += exp_row_(pr, sr, sc, mg[r], a, e);
                    }
                    pv_(ag, hd, P, ATTN_BK, 1, vb + (size_t)j0 * ks, ks, nr, nj, hd);
                }
            }
            for (int g = 0; g < group; g++) {
                const int h = kvh * group + g;
                for (int r = 0; r < nr; r++) {
                    const int i = i0 + r;
                    const size_t x = (size_t)g * ATTN_BQ + r;
                    float *oi = out + ((size_t)b * Tq + i) * qs + (size_t)h * hd;
                    const float inv = l[x] > 0.0f ? 1.0f / l[x] : 0.0f;  // 0: a padded query, no keys
                    for (int d = 0; d < hd; d++) oi[d] = acc[x * hd + d] * inv;
                    if (lse) lse[((size_t)b * n_head + h) * Tq + i] = l[x] > 0.0f ? m[x] + logf(l[x]) : 0.0f;
                }
            }
        }
        free(Kt);
    }
    return oom ? PEFT_ENOMEM : PEFT_OK;
}

/* One backward task: sequence b, kv head kvh, key blocks [kb0, kb1). dq rows of the group's
 * heads go to dqbase (row stride qs, head h at column h*hd), which is either dq itself or a
 * private scratch. scr holds ATTN_BWD_SCRATCH(hd) floats. */
#define ATTN_BWD_SCRATCH(hd) (4 * (size_t)(hd) * ATTN_BK + 3 * ATTN_BQ * ATTN_BK)
static void attn_bwd_task_(float *dqbase, float *dk, float *dv, const float *dout, const float *q, const float *k,
                           const float *v, const float *out, const float *lse, const attention_opts *o, int b,
                           int kvh, int kb0, int kb1, int T, int n_head, int n_kv_head, int hd, float *scr) {
    const int group = n_head / n_kv_head;
    const size_t qs = (size_t)n_head * hd, ks = (size_t)n_kv_head * hd;
    const float scale = attn_scale_(o, hd), cap = o->softcap;
    const float sc = cap > 0.0f ? 1.0f : scale;
    float *Kt = scr, *Vt = Kt + (size_t)hd * ATTN_BK, *dKa = Vt + (size_t)hd * ATTN_BK;
    float *dVa = dKa + (size_t)hd * ATTN_BK, *P = dVa + (size_t)hd * ATTN_BK, *dP = P + ATTN_BQ * ATTN_BK;
    float *G = cap > 0.0f ? dP + ATTN_BQ * ATTN_BK : NULL;  // d capped / d raw score, [ATTN_BQ][ATTN_BK]
    const int need_dp = dqbase || dk;
    const int kend = o->kv_len ? (o->kv_len[b] < T ? o->kv_len[b] : T) : T;  // keys past kv_len are never seen
    for (int kbi = kb0; kbi < kb1; kbi++) {
        const int j0 = kbi * ATTN_BK, nj = T - j0 < ATTN_BK ? T - j0 : ATTN_BK;
        if (j0 >= kend) break;
        const float *kb = k + ((size_t)b * T + j0) * ks + (size_t)kvh * hd;
        const float *vb = v + ((size_t)b * T + j0) * ks + (size_t)kvh * hd;
        transpose_block_(Kt, kb, ks, nj, hd);
        if (need_dp) transpose_block_(Vt, vb, ks, nj, hd);
        if (dk) memset(dKa, 0, (size_t)nj * hd * sizeof(float));
        if (dv) memset(dVa, 0, (size_t)nj * hd * sizeof(float));
        for (int h = kvh * group; h < (kvh + 1) * group; h++) {
            // causal: rows before the key block see none of it
            for (int i0 = o->causal ? (j0 / ATTN_BQ) * ATTN_BQ : 0; i0 < T; i0 += ATTN_BQ) {
                const int nr = T - i0 < ATTN_BQ ? T - i0 : ATTN_BQ;
                int a[ATTN_BQ], e[ATTN_BQ], any = 0;
                for (int r = 0; r < nr; r++) {
                    int lo, hi;
                    row_keys_(o, b, i0 + r, T, T, &lo, &hi);
                    a[r] = lo - j0 > 0 ? lo - j0 : 0;
                    e[r] = hi - j0 < nj - 1 ? hi - j0 : nj - 1;
                    any |= a[r] <= e[r];
                }
                if (!any) continue;
                const size_t row0 = ((size_t)b * T + i0) * qs + (size_t)h * hd;
                const float *qb = q + row0, *dob = dout + row0, *ob = out + row0;
                const float *Lb = lse + ((size_t)b * n_head + h) * T + i0;
                scores_(P, qb, qs, Kt, nr, hd);
                if (G) softcap_span_(P, G, P, scale, cap, (size_t)nr * ATTN_BK);
                for (int r = 0; r < nr; r++) {
                    float *pr = P + (size_t)r * ATTN_BK;
                    if (a[r] > e[r]) memset(pr, 0, ATTN_BK * sizeof(float));
                    else exp_row_(pr, pr, sc, Lb[r], a[r], e[r]);
                }
                if (dv) pv_(dVa, hd, P, 1, ATTN_BK, dob, qs, nj, nr, hd);  // dV += P^T dO
                if (!need_dp) continue;
                scores_(dP, dob, qs, Vt, nr, hd);  // dP = dO V^T
                for (int r = 0; r < nr; r++) {
                    const float *dor = dob + (size_t)r * qs, *orr = ob + (size_t)r * qs;
                    float D = 0.0f;
#pragma omp simd reduction(+ : D)
                    for (int d = 0; d < hd; d++) D += dor[d] * orr[d];
                    float *pr = P + (size_t)r * ATTN_BK, *dpr = dP + (size_t)r * ATTN_BK;
                    if (G) {
                        const float *gr = G + (size_t)r * ATTN_BK;
#pragma omp simd
                        for (int jj = 0; jj < ATTN_BK; jj++) dpr[jj] = gr[jj] * pr[jj] * (dpr[jj] - D);  // dS
                    } else {
#pragma omp simd
                        for (int jj = 0; jj < ATTN_BK; jj++) dpr[jj] = scale * pr[jj] * (dpr[jj] - D);  // dS
                    }
                }
                if (dk) pv_(dKa, hd, dP, 1, ATTN_BK, qb, qs, nj, nr, hd);  // dK += dS^T Q
                if (dqbase) pv_(dqbase + ((size_t)i0 * qs + (size_t)h * hd), qs, dP, ATTN_BK, 1, kb, ks, nr, nj, hd);
            }
        }
        for (int jj = 0; jj < nj; jj++) {
            const size_t krow = ((size_t)b * T + j0 + jj) * ks + (size_t)kvh * hd;
            if (dk) {
                float *dst = dk + krow, *src = dKa + (size_t)jj * hd;
#pragma omp simd
                for (int d = 0; d < hd; d++) dst[d] += src[d];
            }
            if (dv) {
                float *dst = dv + krow, *src = dVa + (size_t)jj * hd;
#pragma omp simd
                for (int d = 0; d < hd; d++) dst[d] += src[d];
            }
        }
    }
}

/* Rows that see key block kbi, about: the split path's balance. */
static double kblock_work_(const attention_opts *o, int T, int kbi) {
    double w = o->causal ? (double)(T - kbi * ATTN_BK) : (double)T;
    if (o->window > 0 && w > (double)o->window + ATTN_BK) w = (double)o->window + ATTN_BK;
    return w;
}

int attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                       const float *v, const float *out, const float *lse, const int32_t *pos, int B, int T,
                       int n_head, int n_kv_head, int hd) {
    const attention_opts o = {.causal = 1, .pos = pos};
    return attention_backward_opts(dq, dk, dv, dout, q, k, v, out, lse, &o, B, T, n_head, n_kv_head, hd);
}

int attention_backward_opts(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                            const float *v, const float *out, const float *lse, const attention_opts *o, int B, int T,
                            int n_head, int n_kv_head, int hd) {
    // dq (B, T, n_head*hd) +=, dk, dv (B, T, n_kv_head*hd) +=
    // dout, q, out (B, T, n_head*hd), k, v (B, T, n_kv_head*hd), lse (B, n_head, T); o as in the forward
    assert(hd <= ATTN_MAX_HD && n_head % n_kv_head == 0); /* the model's config guarantees these */
    if (B <= 0 || T <= 0 || n_head <= 0 || hd <= 0 || (!dq && !dk && !dv)) return PEFT_OK;
    int oom = 0;
    const size_t qs = (size_t)n_head * hd;
    const int nkb = (T + ATTN_BK - 1) / ATTN_BK;
    const size_t scr_floats = ATTN_BWD_SCRATCH(hd);
    int nthr = 1;
#ifdef _OPENMP
    nthr = omp_get_max_threads();
#endif
    const int base = B * n_kv_head;
    // split each (b, kv head) into nsplit key-block ranges when there are fewer tasks than threads
    int nsplit = base >= nthr ? 1 : (nthr + base - 1) / base;
    if (nsplit > nkb) nsplit = nkb;
    if (nsplit <= 1) {
#pragma omp parallel
        {
            float *scr = scratch_alloc_(scr_floats, &oom);
#pragma omp for schedule(dynamic, 1)
            for (int t = 0; t < base; t++) {
                if (!scr) continue;
                const int b = t / n_kv_head, kvh = t % n_kv_head;
                attn_bwd_task_(dq ? dq + (size_t)b * T * qs : NULL, dk, dv, dout, q, k, v, out, lse, o, b, kvh, 0,
                               nkb, T, n_head, n_kv_head, hd, scr);
            }
            free(scr);
        }
        return oom ? PEFT_ENOMEM : PEFT_OK;
    }
    // split path: causal rows make late key blocks cheap, so ranges are balanced by work
    // (key block kbi is seen by about T - kbi*BK causal rows, by about window + BK rows in a sliding
    // window, by all T rows otherwise); task s of a (b, kvh) gets [cut[s], cut[s+1]).
    int cut[65];
    if (nsplit > 64) nsplit = 64;
    {
        double total = 0;
        for (int kbi = 0; kbi < nkb; kbi++) total += kblock_work_(o, T, kbi);
        int s = 1;
        double accw = 0;
        cut[0] = 0;
        for (int kbi = 0; kbi < nkb && s < nsplit; kbi++) {
            accw += kblock_work_(o, T, kbi);
            if (accw >= total * s / nsplit) cut[s++] = kbi + 1;
        }
        while (s <= nsplit) cut[s++] = nkb;
    }
    const size_t dq_slab = (size_t)T * qs;  // one sequence of dq
    float *dqs = NULL;
    if (dq && !(dqs = calloc((size_t)base * nsplit * dq_slab, sizeof(float)))) return PEFT_ENOMEM;
    const int ntasks = base * nsplit;
#pragma omp parallel
    {
        float *scr = scratch_alloc_(scr_floats, &oom);
#pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < ntasks; t++) {
            if (!scr) continue;
            const int s = t % nsplit, bk = t / nsplit, b = bk / n_kv_head, kvh = bk % n_kv_head;
            if (cut[s] >= cut[s + 1]) continue;
            // dk/dv rows of disjoint key ranges: no race; dq goes to this task's slab
            attn_bwd_task_(dq ? dqs + (size_t)t * dq_slab : NULL, dk, dv, dout, q, k, v, out, lse, o, b, kvh,
                           cut[s], cut[s + 1], T, n_head, n_kv_head, hd, scr);
        }
        free(scr);
    }
    if (dq && !oom) {
        // dq[b] += sum over (kvh, s) slabs, fixed order (each slab only touches its group's columns)
#pragma omp parallel for schedule(static)
        for (int b = 0; b < B; b++) {
            float *dst = dq + (size_t)b * dq_slab;
            for (int t = b * n_kv_head * nsplit; t < (b + 1) * n_kv_head * nsplit; t++) {
                const float *src = dqs + (size_t)t * dq_slab;
                for (size_t x = 0; x < dq_slab; x++) dst[x] += src[x];
            }
        }
    }
    free(dqs);
    return oom ? PEFT_ENOMEM : PEFT_OK;
}
