/* attention.c: causal grouped-query attention, flash-attention style on the CPU.
 *
 * Forward streams over the keys of each query row in blocks with an online softmax
 * (running max m, running sum l, unnormalised accumulator), so the T x T score matrix is
 * never stored; it saves lse = m + log(l) per row. Backward recomputes
 *   P_ij = exp(s_ij - lse_i),  dP_ij = dout_i . v_j,  D_i = dout_i . out_i,
 *   dS_ij = P_ij * (dP_ij - D_i),  dq_i += scale * sum_j dS_ij k_j,
 *   dk_j += scale * sum_i dS_ij q_i,  dv_j += sum_i P_ij dout_i
 * in two race-free passes: one parallel over query rows (dq), one parallel over blocks
 * of keys of a kv head (dk, dv summed over the query heads of the group). This costs the
 * scores twice but needs no scratch memory and no atomics, and keeps every core busy
 * even when B * n_kv_head is small.
 *
 * Masking: query row i of a sequence sits at absolute index a = Tk - Tq + i and sees keys
 * [a - pos_i, a]; pos_i is clamped to [0, a] (so a negative pos sees only itself). */
#include <assert.h>
#include <math.h>
#include <string.h>

#include "kernels.h"

#define ATTN_MAX_HD 256 /* per-thread accumulators live on the stack */
#define ATTN_KBLOCK 32  /* keys scored per online-softmax step */
#define ATTN_QTILE 4    /* query rows per forward task (the code below is unrolled for 4) */
#define ATTN_BWD_KB 16  /* keys per backward dk/dv task */

static inline float dot_(const float *a, const float *b, int n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline void axpy_(float *y, float a, const float *x, int n) {
#pragma omp simd
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

/* First key index seen by a query at absolute index a with packed position p (or -1). */
static inline int window_lo_(const int32_t *pos, size_t row, int a) {
    if (!pos) return 0;
    int p = pos[row];
    if (p < 0) p = 0;
    if (p > a) p = a;
    return a - p;
}

void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *pos,
                       int B, int Tq, int Tk, int n_head, int n_kv_head, int hd) {
    // out (B, Tq, n_head*hd), lse (B, n_head, Tq) or NULL
    // q (B, Tq, n_head*hd), k, v (B, Tk, n_kv_head*hd), pos (B, Tq) or NULL
    // One task is a tile of ATTN_QTILE consecutive query rows of one head: every key and
    // value row loaded is used by all rows of the tile (4 independent FMA chains), and
    // each row keeps its own online-softmax state and its own window mask.
    assert(hd <= ATTN_MAX_HD && n_head % n_kv_head == 0 && Tq <= Tk);
    const int group = n_head / n_kv_head;
    const size_t qs = (size_t)n_head * hd, ks = (size_t)n_kv_head * hd;  // row strides
    const float scale = 1.0f / sqrtf((float)hd);
    const int ntiles = (Tq + ATTN_QTILE - 1) / ATTN_QTILE;
#pragma omp parallel for collapse(3) schedule(dynamic, 4)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < n_head; h++) {
            for (int tile = 0; tile < ntiles; tile++) {
                const int i0 = tile * ATTN_QTILE;
                const int nr = Tq - i0 < ATTN_QTILE ? Tq - i0 : ATTN_QTILE;
                const float *kb = k + (size_t)b * Tk * ks + (size_t)(h / group) * hd;
                const float *vb = v + (size_t)b * Tk * ks + (size_t)(h / group) * hd;
                // per-row state; rows past the end of a short tail tile duplicate the last row
                const float *qr[ATTN_QTILE];
                int lo[ATTN_QTILE], hi[ATTN_QTILE];
                float m[ATTN_QTILE], l[ATTN_QTILE];
                float acc[ATTN_QTILE][ATTN_MAX_HD];
                float s[ATTN_QTILE][ATTN_KBLOCK];
                int jlo = Tk, jhi = 0;
                for (int r = 0; r < ATTN_QTILE; r++) {
                    const int i = i0 + (r < nr ? r : nr - 1);
                    hi[r] = Tk - Tq + i;
                    lo[r] = window_lo_(pos, (size_t)b * Tq + i, hi[r]);
                    qr[r] = q + ((size_t)b * Tq + i) * qs + (size_t)h * hd;
                    m[r] = -INFINITY;
                    l[r] = 0.0f;
                    memset(acc[r], 0, (size_t)hd * sizeof(float));
                    jlo = lo[r] < jlo ? lo[r] : jlo;
                    jhi = hi[r] > jhi ? hi[r] : jhi;
                }
                const float *q0 = qr[0], *q1 = qr[1], *q2 = qr[2], *q3 = qr[3];
                for (int j0 = jlo; j0 <= jhi; j0 += ATTN_KBLOCK) {
                    const int nj = jhi - j0 + 1 < ATTN_KBLOCK ? jhi - j0 + 1 : ATTN_KBLOCK;
                    // scores s[r][jj] = q_r . k_j * scale, -inf outside row r's window
                    for (int jj = 0; jj < nj; jj++) {
                        const float *kj = kb + (size_t)(j0 + jj) * ks;
                        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
                        for (int d = 0; d < hd; d++) {
                            s0 += q0[d] * kj[d];
                            s1 += q1[d] * kj[d];
                            s2 += q2[d] * kj[d];
                            s3 += q3[d] * kj[d];
                        }
                        s[0][jj] = s0 * scale, s[1][jj] = s1 * scale, s[2][jj] = s2 * scale, s[3][jj] = s3 * scale;
                        for (int r = 0; r < ATTN_QTILE; r++)
                            if (j0 + jj < lo[r] || j0 + jj > hi[r]) s[r][jj] = -INFINITY;
                    }
                    // online softmax: rescale each row's state to its new max, turn scores into p
                    for (int r = 0; r < ATTN_QTILE; r++) {
                        float bm = -INFINITY;
                        for (int jj = 0; jj < nj; jj++) bm = s[r][jj] > bm ? s[r][jj] : bm;
                        if (bm > m[r]) {
                            const float c = expf(m[r] - bm);  // 0 on the row's first block (m = -inf)
                            l[r] *= c;
                            for (int d = 0; d < hd; d++) acc[r][d] *= c;
                            m[r] = bm;
                        }
                        for (int jj = 0; jj < nj; jj++) {
                            const float p = s[r][jj] == -INFINITY ? 0.0f : expf(s[r][jj] - m[r]);
                            s[r][jj] = p;
                            l[r] += p;
                        }
                    }
                    // acc_r += p_rj * v_j
                    for (int jj = 0; jj < nj; jj++) {
                        const float *vj = vb + (size_t)(j0 + jj) * ks;
                        const float p0 = s[0][jj], p1 = s[1][jj], p2 = s[2][jj], p3 = s[3][jj];
                        float *a0 = acc[0], *a1 = acc[1], *a2 = acc[2], *a3 = acc[3];
#pragma omp simd
                        for (int d = 0; d < hd; d++) {
                            const float vd = vj[d];
                            a0[d] += p0 * vd;
                            a1[d] += p1 * vd;
                            a2[d] += p2 * vd;
                            a3[d] += p3 * vd;
                        }
                    }
                }
                for (int r = 0; r < nr; r++) {
                    const int i = i0 + r;
                    float *oi = out + ((size_t)b * Tq + i) * qs + (size_t)h * hd;
                    const float inv = 1.0f / l[r];
                    for (int d = 0; d < hd; d++) oi[d] = acc[r][d] * inv;
                    if (lse) lse[((size_t)b * n_head + h) * Tq + i] = m[r] + logf(l[r]);
                }
            }
        }
    }
}

void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                        const float *v, const float *out, const float *lse, const int32_t *pos, int B, int T,
                        int n_head, int n_kv_head, int hd) {
    // dq (B, T, n_head*hd) +=, dk, dv (B, T, n_kv_head*hd) +=
    // dout, q, out (B, T, n_head*hd), k, v (B, T, n_kv_head*hd), lse (B, n_head, T), pos (B, T)
    assert(hd <= ATTN_MAX_HD && n_head % n_kv_head == 0);
    const int group = n_head / n_kv_head;
    const size_t qs = (size_t)n_head * hd, ks = (size_t)n_kv_head * hd;
    const float scale = 1.0f / sqrtf((float)hd);

    // pass 1: dq, one task per query row
    if (dq) {
#pragma omp parallel for collapse(3) schedule(dynamic, 8)
        for (int b = 0; b < B; b++) {
            for (int h = 0; h < n_head; h++) {
                for (int i = 0; i < T; i++) {
                    const int lo = window_lo_(pos, (size_t)b * T + i, i);
                    const size_t qrow = ((size_t)b * T + i) * qs + (size_t)h * hd;
                    const float *qi = q + qrow, *doi = dout + qrow, *oi = out + qrow;
                    const float *kb = k + (size_t)b * T * ks + (size_t)(h / group) * hd;
                    const float *vb = v + (size_t)b * T * ks + (size_t)(h / group) * hd;
                    const float L = lse[((size_t)b * n_head + h) * T + i];
                    const float D = dot_(doi, oi, hd);
                    float acc[ATTN_MAX_HD];
                    memset(acc, 0, (size_t)hd * sizeof(float));
                    for (int j = lo; j <= i; j++) {
                        const float *kj = kb + (size_t)j * ks;
                        float p = expf(dot_(qi, kj, hd) * scale - L);
                        float ds = p * (dot_(doi, vb + (size_t)j * ks, hd) - D);
                        axpy_(acc, ds, kj, hd);
                    }
                    axpy_(dq + qrow, scale, acc, hd);
                }
            }
        }
    }

    // pass 2: dk and dv, one task per block of ATTN_BWD_KB keys of one kv head;
    // it visits every query row of the group that can see the block
    if (dk || dv) {
        const int nkb = (T + ATTN_BWD_KB - 1) / ATTN_BWD_KB;
#pragma omp parallel for collapse(3) schedule(dynamic, 1)
        for (int b = 0; b < B; b++) {
            for (int kvh = 0; kvh < n_kv_head; kvh++) {
                for (int kbi = 0; kbi < nkb; kbi++) {
                    const int j0 = kbi * ATTN_BWD_KB;
                    const int nj = T - j0 < ATTN_BWD_KB ? T - j0 : ATTN_BWD_KB;
                    const float *kb = k + ((size_t)b * T + j0) * ks + (size_t)kvh * hd;
                    const float *vb = v + ((size_t)b * T + j0) * ks + (size_t)kvh * hd;
                    float dkacc[ATTN_BWD_KB][ATTN_MAX_HD];
                    float dvacc[ATTN_BWD_KB][ATTN_MAX_HD];
                    for (int jj = 0; jj < nj; jj++) {
                        memset(dkacc[jj], 0, (size_t)hd * sizeof(float));
                        memset(dvacc[jj], 0, (size_t)hd * sizeof(float));
                    }
                    for (int h = kvh * group; h < (kvh + 1) * group; h++) {
                        for (int i = j0; i < T; i++) {
                            const int lo = window_lo_(pos, (size_t)b * T + i, i);
                            if (lo > j0 + nj - 1) continue;  // row sees none of this block
                            const size_t qrow = ((size_t)b * T + i) * qs + (size_t)h * hd;
                            const float *qi = q + qrow, *doi = dout + qrow;
                            const float L = lse[((size_t)b * n_head + h) * T + i];
                            const float D = dk ? dot_(doi, out + qrow, hd) : 0.0f;
                            const int jlo = lo > j0 ? lo - j0 : 0;
                            const int jhi = i - j0 < nj - 1 ? i - j0 : nj - 1;
                            for (int jj = jlo; jj <= jhi; jj++) {
                                const float *kj = kb + (size_t)jj * ks;
                                float p = expf(dot_(qi, kj, hd) * scale - L);
                                if (dv) axpy_(dvacc[jj], p, doi, hd);
                                if (dk) {
                                    float ds = p * (dot_(doi, vb + (size_t)jj * ks, hd) - D);
                                    axpy_(dkacc[jj], ds * scale, qi, hd);
                                }
                            }
                        }
                    }
                    for (int jj = 0; jj < nj; jj++) {
                        const size_t krow = ((size_t)b * T + j0 + jj) * ks + (size_t)kvh * hd;
                        if (dk) axpy_(dk + krow, 1.0f, dkacc[jj], hd);
                        if (dv) axpy_(dv + krow, 1.0f, dvacc[jj], hd);
                    }
                }
            }
        }
    }
}
