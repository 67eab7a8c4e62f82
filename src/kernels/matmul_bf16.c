/* matmul_bf16.c: dense layers over frozen bf16 weights with AVX512-BF16 (vdpbf16ps).
 *
 * Packed layout ("VNNI" panels, produced once at load time by bf16_pack_weight*): the logical
 * operand is Bt[ncol][K] (ncol output columns, K reduction length). Columns are grouped in panels
 * of BF16_NR = 64; K is padded to an even Kp = K + (K & 1). Panel p holds, for each k-pair kp in
 * [0, Kp/2) and each of its 64 columns c, the two values Bt[64p + c][2kp], Bt[64p + c][2kp + 1]:
 *     packed[((size_t)p * (Kp/2) + kp) * 128 + 2*c + t] = bf16(Bt[64p + c][2kp + t])
 * Padding (columns past ncol, k = K when K is odd) is zero. Size: ceil(ncol/64)*64 * Kp elements.
 *   forward  (out = inp @ W^T):  Bt = W        [OC][C]: ncol = OC, K = C   (bf16_pack_weight)
 *   backward (dinp += dout @ W): Bt = W^T      [C][OC]: ncol = C,  K = OC  (bf16_pack_weight_t)
 * One 64-column row of a k-pair is 4 zmm registers of 16 interleaved pairs: exactly the B operand
 * of vdpbf16ps, so the micro-kernel needs no shuffles.
 *
 * Compute: the f32 input rows are rounded to bf16 (round to nearest even) into a scratch
 * [N][Kp] (malloc'ed per call, N*Kp*2 bytes); tasks are (panel, block of BF16_MC rows), run
 * panel-major under OpenMP so a thread reuses one panel (Kp*128 bytes, <= 196 KB for K = 1536)
 * from L2 across row blocks. The micro-kernel keeps a 6 x 64 f32 tile in 24 zmm accumulators over
 * a K chunk of up to 2048 (the 256 KB panel chunk stays in L2, the 6 A rows in L1; K <= 2048 is
 * one chunk, larger K such as the lm_head's dx accumulates chunk by chunk into the output), A
 * pairs are broadcast from memory.
 *
 * Without __AVX512BF16__ the same packed data is unpacked to f32 and multiplied with cblas_sgemm
 * (inputs rounded to bf16 as well, so both paths multiply the same bf16 operands), so callers can
 * use one code path everywhere. */
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512BF16__
#include <immintrin.h>
#endif

#include "core/dtype.h"
#include "kernels.h"

#define BF16_NR 64 /* columns per panel */
#define BF16_MR 6  /* rows per micro-tile */
#define BF16_MC 96 /* rows per task */
#define BF16_KCP 1024 /* k-pairs per K chunk: a 256 KB panel chunk stays in L2 (large K, e.g. lm_head dx) */

static size_t packed_size_(int ncol, int K) {
    if (ncol <= 0 || K <= 0) return 0;
    size_t np = ((size_t)ncol + BF16_NR - 1) / BF16_NR;
    return np * BF16_NR * (size_t)(K + (K & 1));
}

size_t bf16_packed_size(int OC, int C) { return packed_size_(OC, C); }
size_t bf16_packed_t_size(int OC, int C) { return packed_size_(C, OC); }

/* Bt(col, k) = src[col * scol + k * sk] */
static void pack_(uint16_t *packed, const float *src, int ncol, int K, size_t scol, size_t sk) {
    if (ncol <= 0 || K <= 0) return;
    const int np = (ncol + BF16_NR - 1) / BF16_NR, kp2 = (K + 1) / 2;
#pragma omp parallel for schedule(static)
    for (int p = 0; p < np; p++) {
        for (int kp = 0; kp < kp2; kp++) {
            uint16_t *dst = packed + ((size_t)p * kp2 + kp) * (2 * BF16_NR);
            for (int c = 0; c < BF16_NR; c++) {
                const int col = p * BF16_NR + c;
                for (int t = 0; t < 2; t++) {
                    const int kk = 2 * kp + t;
                    dst[2 * c + t] = (col < ncol && kk < K) ? peft_f32_to_bf16(src[(size_t)col * scol + (size_t)kk * sk]) : 0;
                }
            }
        }
    }
}

void bf16_pack_weight(uint16_t *packed, const float *w, int OC, int C) { pack_(packed, w, OC, C, (size_t)C, 1); }
void bf16_pack_weight_t(uint16_t *packed_t, const float *w, int OC, int C) {
    pack_(packed_t, w, C, OC, 1, (size_t)C);
}

#ifdef __AVX512BF16__
/* nrows rows of src (stride lds, K valid values each) -> dst (stride ldd) bf16, round to nearest
 * even, zero padded to Kp values */
static void round_rows_(uint16_t *dstb, size_t ldd, const float *srcb, size_t lds, int nrows, int K, int Kp) {
    for (int n = 0; n < nrows; n++) {
        const float *src = srcb + (size_t)n * lds;
        uint16_t *dst = dstb + (size_t)n * ldd;
        int k = 0;
        for (; k + 32 <= K; k += 32) {
            __m512bh h = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + k + 16), _mm512_loadu_ps(src + k));
            _mm512_storeu_si512((void *)(dst + k), (__m512i)h);
        }
        for (; k < K; k++) dst[k] = peft_f32_to_bf16(src[k]);
        for (; k < Kp; k++) dst[k] = 0;
    }
}

/* Store one accumulated row: C[0:64] (masked by mk) = (acc_mode ? C : bias/0) + c0..c3. */
static inline __attribute__((always_inline)) void store_row_(float *dst, const float *bias, const __mmask16 mk[4],
                                                             int acc_mode, __m512 c0, __m512 c1, __m512 c2,
                                                             __m512 c3) {
    __m512 c[4] = {c0, c1, c2, c3};
    for (int x = 0; x < 4; x++) {
        __m512 init = acc_mode ? _mm512_maskz_loadu_ps(mk[x], dst + 16 * x)
                      : bias   ? _mm512_maskz_loadu_ps(mk[x], bias + 16 * x)
                               : _mm512_setzero_ps();
        _mm512_mask_storeu_ps(dst + 16 * x, mk[x], _mm512_add_ps(init, c[x]));
    }
}

#define BF16_LOADB(bp)                                                                  \
    __m512bh b0 = (__m512bh)_mm512_loadu_si512((const void *)(bp));                     \
    __m512bh b1 = (__m512bh)_mm512_loadu_si512((const void *)((bp) + 32));              \
    __m512bh b2 = (__m512bh)_mm512_loadu_si512((const void *)((bp) + 64));              \
    __m512bh b3 = (__m512bh)_mm512_loadu_si512((const void *)((bp) + 96))
#define BF16_ROW(r, ar)                                                                 \
    do {                                                                                \
        __m512bh a_ = (__m512bh)_mm512_set1_epi32((int)(ar)[kp]);                       \
        c##r##0 = _mm512_dpbf16_ps(c##r##0, a_, b0);                                    \
        c##r##1 = _mm512_dpbf16_ps(c##r##1, a_, b1);                                    \
        c##r##2 = _mm512_dpbf16_ps(c##r##2, a_, b2);                                    \
        c##r##3 = _mm512_dpbf16_ps(c##r##3, a_, b3);                                    \
    } while (0)
#define BF16_ZERO(r) __m512 c##r##0 = _mm512_setzero_ps(), c##r##1 = c##r##0, c##r##2 = c##r##0, c##r##3 = c##r##0

/* 6 x 64 tile over the whole K: 24 accumulators in registers, A pairs broadcast from memory. */
static void tile6_(float *C, size_t ldc, const uint16_t *A, size_t lda, const uint16_t *panel, int kp2,
                   const float *bias, const __mmask16 mk[4], int acc_mode) {
    const uint32_t *a0 = (const uint32_t *)A, *a1 = (const uint32_t *)(A + lda), *a2 = (const uint32_t *)(A + 2 * lda);
    const uint32_t *a3 = (const uint32_t *)(A + 3 * lda), *a4 = (const uint32_t *)(A + 4 * lda);
    const uint32_t *a5 = (const uint32_t *)(A + 5 * lda);
    BF16_ZERO(0);
    BF16_ZERO(1);
    BF16_ZERO(2);
    BF16_ZERO(3);
    BF16_ZERO(4);
    BF16_ZERO(5);
    for (int kp = 0; kp < kp2; kp++) {
        const uint16_t *bp = panel + (size_t)kp * (2 * BF16_NR);
        BF16_LOADB(bp);
        BF16_ROW(0, a0);
        BF16_ROW(1, a1);
        BF16_ROW(2, a2);
        BF16_ROW(3, a3);
        BF16_ROW(4, a4);
        BF16_ROW(5, a5);
    }
    store_row_(C, bias, mk, acc_mode, c00, c01, c02, c03);
    store_row_(C + ldc, bias, mk, acc_mode, c10, c11, c12, c13);
    store_row_(C + 2 * ldc, bias, mk, acc_mode, c20, c21, c22, c23);
    store_row_(C + 3 * ldc, bias, mk, acc_mode, c30, c31, c32, c33);
    store_row_(C + 4 * ldc, bias, mk, acc_mode, c40, c41, c42, c43);
    store_row_(C + 5 * ldc, bias, mk, acc_mode, c50, c51, c52, c53);
}

/* 1 x 64 tile (row tails) */
static void tile1_(float *C, const uint16_t *A, const uint16_t *panel, int kp2, const float *bias,
                   const __mmask16 mk[4], int acc_mode) {
    const uint32_t *a0 = (const uint32_t *)A;
    BF16_ZERO(0);
    for (int kp = 0; kp < kp2; kp++) {
        const uint16_t *bp = panel + (size_t)kp * (2 * BF16_NR);
        BF16_LOADB(bp);
        BF16_ROW(0, a0);
    }
    store_row_(C, bias, mk, acc_mode, c00, c01, c02, c03);
}

/* out[N][ncol] (= or +=) a[N][K] @ Bt^T (+ bias) */
static int gemm_bf16_(float *out, const float *a, const uint16_t *packed, const float *bias, int N, int K, int ncol,
                      int acc_mode) {
    const int Kp = K + (K & 1), kp2 = Kp / 2;
    const int np = (ncol + BF16_NR - 1) / BF16_NR;
    // K <= 2 * BF16_KCP: one K chunk, tasks (panel, 96 rows), panel-major.
    // Larger K: 256-pair chunks, tasks (group of up to 16 panels, 48 rows); per chunk the task's
    // A block (48 x 512 bf16 = 48 KB) is reused across its panels and each panel chunk (64 KB)
    // across its 8 row tiles, both from L2.
    const int big = kp2 > BF16_KCP;
    const int kcp = big ? 256 : kp2, mc = big ? 48 : BF16_MC, pg = big ? (np < 16 ? np : 16) : 1;
    const int nrb = (N + mc - 1) / mc, npg = (np + pg - 1) / pg;
    // small K: all of A rounded once into ab[N][Kp]; big K: each task rounds its A block chunk
    // by chunk into a per-thread buffer (A is read once, no N x K bf16 copy)
    uint16_t *ab = big ? NULL : aligned_alloc(64, (((size_t)N * Kp * 2) + 63) & ~(size_t)63);
    if (!big && !ab) return PEFT_ENOMEM;
    const long ntasks = (long)npg * nrb;
    int oom = 0; /* a thread without its buffer skips its tasks; the result is then not used */
#pragma omp parallel
    {
        uint16_t *abuf = big ? aligned_alloc(64, (size_t)mc * 2 * kcp * 2) : NULL;
        if (big && !abuf) {
#pragma omp atomic write
            oom = 1;
        }
        if (!big) {
#pragma omp for schedule(static)
            for (int rb = 0; rb < nrb; rb++) {
                const int n0 = rb * mc, n1 = n0 + mc < N ? n0 + mc : N;
                round_rows_(ab + (size_t)n0 * Kp, Kp, a + (size_t)n0 * K, K, n1 - n0, K, Kp);
            }
        }
#pragma omp for schedule(static)
        for (long t = 0; t < ntasks; t++) {
            if (big && !abuf) continue;
            const int g = (int)(t / nrb), rb = (int)(t % nrb);
            const int n0 = rb * mc, n1 = n0 + mc < N ? n0 + mc : N;
            const int p1 = (g + 1) * pg < np ? (g + 1) * pg : np;
            for (int k0 = 0; k0 < kp2; k0 += kcp) {
                const int kn = kp2 - k0 < kcp ? kp2 - k0 : kcp, accm = acc_mode || k0 > 0;
                const uint16_t *A = ab ? ab + (size_t)n0 * Kp + 2 * k0 : abuf;
                const size_t lda = ab ? (size_t)Kp : (size_t)2 * kcp;
                if (!ab) {
                    const int kv = K - 2 * k0 < 2 * kn ? K - 2 * k0 : 2 * kn;  // valid k in this chunk
                    round_rows_(abuf, lda, a + (size_t)n0 * K + 2 * k0, K, n1 - n0, kv, 2 * kn);
                }
                for (int p = g * pg; p < p1; p++) {
                    const int col0 = p * BF16_NR;
                    __mmask16 mk[4];
                    for (int x = 0; x < 4; x++) {
                        int rem = ncol - col0 - 16 * x;
                        mk[x] = rem >= 16 ? (__mmask16)0xFFFF : rem > 0 ? (__mmask16)((1u << rem) - 1) : 0;
                    }
                    const uint16_t *pc = packed + ((size_t)p * kp2 + k0) * (2 * BF16_NR);
                    const float *bs = bias ? bias + col0 : NULL;
                    int n = n0;
                    for (; n + BF16_MR <= n1; n += BF16_MR)
                        tile6_(out + (size_t)n * ncol + col0, ncol, A + (size_t)(n - n0) * lda, lda, pc, kn, bs, mk,
                               accm);
                    for (; n < n1; n++)
                        tile1_(out + (size_t)n * ncol + col0, A + (size_t)(n - n0) * lda, pc, kn, bs, mk, accm);
                }
            }
        }
        free(abuf);
    }
    free(ab);
    return oom ? PEFT_ENOMEM : PEFT_OK;
}
#else
/* portable fallback: unpack Bt to f32 [ncol][K] and use sgemm */
static int gemm_bf16_(float *out, const float *a, const uint16_t *packed, const float *bias, int N, int K, int ncol,
                      int acc_mode) {
    const int Kp = K + (K & 1), kp2 = Kp / 2;
    float *bt = malloc((size_t)ncol * K * sizeof(float)), *ar = malloc((size_t)N * K * sizeof(float));
    if (!bt || !ar) {
        free(bt);
        free(ar);
        return PEFT_ENOMEM;
    }
    for (int col = 0; col < ncol; col++)
        for (int k = 0; k < K; k++)
            bt[(size_t)col * K + k] =
                peft_bf16_to_f32(packed[((size_t)(col / BF16_NR) * kp2 + k / 2) * (2 * BF16_NR) + 2 * (col % BF16_NR) + (k & 1)]);
    // round the inputs to bf16 too, so both paths compute the same product of bf16 operands
    for (size_t i = 0; i < (size_t)N * K; i++) ar[i] = peft_bf16_to_f32(peft_f32_to_bf16(a[i]));
    a = ar;
    matmul_rounded_sgemm(out, a, bt, bias, N, K, ncol, acc_mode);
    free(bt);
    free(ar);
    return PEFT_OK;
}
#endif

int matmul_bf16_forward(float *out, const float *inp, const uint16_t *packed_w, const float *bias, int N, int C, int OC) {
    if (N <= 0 || OC <= 0) return PEFT_OK;
    if (C <= 0) {
        matmul_fill_bias(out, bias, N, OC);
        return PEFT_OK;
    }
    return gemm_bf16_(out, inp, packed_w, bias, N, C, OC, 0);
}

int matmul_bf16_backward_input(float *dinp, const float *dout, const uint16_t *packed_wt, int N, int C, int OC) {
    if (N <= 0 || OC <= 0 || C <= 0 || !dinp) return PEFT_OK;
    return gemm_bf16_(dinp, dout, packed_wt, NULL, N, OC, C, 1);
}

#ifdef __AVX512BF16__
#define BF16_NATIVE 1
#else
#define BF16_NATIVE 0
#endif
const peft_half_matmul peft_half_bf16 = {"bf16", BF16_NATIVE, bf16_packed_size, bf16_packed_t_size, bf16_pack_weight,
                                         bf16_pack_weight_t, matmul_bf16_forward, matmul_bf16_backward_input};
