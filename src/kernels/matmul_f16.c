/* matmul_f16.c: dense layers over frozen f16 weights with AVX512-FP16 (vfmadd231ph).
 *
 * Why f16 and not bf16: on Intel Sapphire/Emerald Rapids vfmadd231ph retires at the rate of
 * vfmadd231ps with twice the lanes (one core: 359 vs 167 GFLOP/s, bench/bench_peak.c), while
 * vdpbf16ps is half that (85). f16 also keeps 11 significant bits against bf16's 8.
 *
 * The two costs of f16 and how they are paid:
 *  - range (6e-8 .. 65504): every operand row is scaled by a power of two so that its largest
 *    magnitude lies in [0.5, 1): weights per output column at pack time, inputs per row on the
 *    fly. Products then stay below 1 and any gradient size survives; the scales are exact and
 *    are undone on the f32 result.
 *  - accumulation: vfmadd231ph accumulates in f16. The micro-kernel runs F16_KB = 64 steps in
 *    f16 registers, then adds the partial sums into an f32 tile (vcvtph2ps). Measured relative
 *    Frobenius error vs float64 at K = 576..49152: 1.2e-3, half of what rounding the operands
 *    to bf16 alone gives (2.3e-3, i.e. PyTorch's bf16 autocast) (tests/unit/test_kernels_half.c).
 *
 * Packed layout (f16_pack_weight*, once at load time): logical operand Bt[ncol][K], columns in
 * panels of F16_NR = 64; panel p holds for each k the 64 scaled values of its columns:
 *     packed[((size_t)p * K + k) * 64 + c] = f16(Bt[64p + c][k] * colscale[64p + c])
 * followed (after all panels) by the f32 inverse scales 1/colscale[np * 64] (padding columns:
 * zeros, inverse scale 1). Size in uint16_t: np * 64 * K + np * 64 * 2.
 *   forward  (out = inp @ W^T):  Bt = W   [OC][C]: ncol = OC, K = C   (f16_pack_weight)
 *   backward (dinp += dout @ W): Bt = W^T [C][OC]: ncol = C,  K = OC  (f16_pack_weight_t)
 *
 * Compute: the f32 input rows are scaled and rounded to f16, 12 rows (one micro-tile) at a
 * time, into a scratch in [tile][k][12] order (pack_tile_: 16 k at a time through a 12 x 16
 * transpose of halves), so a k step's 12 inputs are one 24-byte run; the scratch is malloc'ed
 * per call. Tasks are (panel, block of up to 8 row tiles), run panel-major under OpenMP so a
 * thread reuses one panel from L2; within a task K is walked in chunks of F16_KC = 128, whose
 * panel part (16 KB) stays in L1 across the task's tiles (partial sums wait in an f32
 * accumulator per tile). The micro-tile is 12 rows x 64 columns: 24 f16 accumulators; the
 * input value is broadcast from memory by the FMA itself ({1to32}, inline asm: written as a
 * separate broadcast, GCC spends a port-5 shuffle per row, a third of the throughput).
 * Measured (bench_train_parts --mm 1, 2 threads): 470-530 GFLOP/s on SmolLM2's shapes, 65-75 %
 * of the vfmadd231ph peak, 1.6-1.8x OpenBLAS's f32 sgemm on the same call.
 *
 * Without __AVX512FP16__ the same packed data is unpacked to f32 and multiplied with
 * cblas_sgemm after the inputs are scaled and rounded the same way (f32 accumulation), so
 * callers use one code path everywhere. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "core/dtype.h"
#include "kernels.h"

#define F16_NR 64   /* columns per panel */
#define F16_MR 12   /* rows per micro-tile */
#define F16_KB 64   /* k steps accumulated in f16 before the f32 flush */
#define F16_KC 128  /* k per chunk: the 16 KB panel chunk stays in L1 */
#define F16_TILES 8 /* row tiles per task, at most */

static size_t n_panels_(int ncol) { return ((size_t)ncol + F16_NR - 1) / F16_NR; }

static size_t packed_size_(int ncol, int K) {
    if (ncol <= 0 || K <= 0) return 0;
    return n_panels_(ncol) * F16_NR * ((size_t)K + 2);
}

size_t f16_packed_size(int OC, int C) { return packed_size_(OC, C); }
size_t f16_packed_t_size(int OC, int C) { return packed_size_(C, OC); }

/* 2^-e with max * 2^-e in [0.5, 1); 1 for an all-zero (or non-finite) row. The scale stops at
 * 2^100 so that it and its inverse stay finite: a row below 2^-100 (f32 denormals included)
 * keeps values under f16's smallest subnormal, i.e. rounds to zero, as it contributes nothing. */
static float pow2_scale_(float max_abs) {
    if (!(max_abs > 0.0f) || !isfinite(max_abs)) return 1.0f;
    int e;
    frexpf(max_abs, &e);
    return ldexpf(1.0f, e < -100 ? 100 : -e);
}

/* the f32 inverse column scales after the panels */
static const float *inv_scales_(const uint16_t *packed, int ncol, int K) {
    return (const float *)(packed + n_panels_(ncol) * F16_NR * (size_t)K);
}

/* Bt(col, k) = src[col * scol + k * sk] */
static void pack_(uint16_t *packed, const float *src, int ncol, int K, size_t scol, size_t sk) {
    if (ncol <= 0 || K <= 0) return;
    const int np = (int)n_panels_(ncol);
    float *inv = (float *)inv_scales_(packed, ncol, K); /* written here, read by the products */
#pragma omp parallel for schedule(static)
    for (int p = 0; p < np; p++) {
        float scale[F16_NR], row[F16_NR];
        for (int c = 0; c < F16_NR; c++) {
            const int col = p * F16_NR + c;
            float mx = 0.0f;
            const float *v = src + (size_t)(col < ncol ? col : 0) * scol;
#pragma omp simd reduction(max : mx)
            for (int k = 0; k < K; k++) mx = mx > fabsf(v[(size_t)k * sk]) ? mx : fabsf(v[(size_t)k * sk]);
            scale[c] = col < ncol ? pow2_scale_(mx) : 0.0f; // padding columns pack as zeros
            inv[col] = col < ncol ? 1.0f / scale[c] : 1.0f;
        }
        const int nc = ncol - p * F16_NR < F16_NR ? ncol - p * F16_NR : F16_NR;
        for (int k = 0; k < K; k++) {
            for (int c = 0; c < F16_NR; c++)
                row[c] = c < nc ? src[(size_t)(p * F16_NR + c) * scol + (size_t)k * sk] * scale[c] : 0.0f;
            uint16_t *dst = packed + ((size_t)p * K + k) * F16_NR;
#ifdef __AVX512F__
            for (int c = 0; c < F16_NR; c += 16)
                _mm256_storeu_si256((__m256i *)(dst + c), _mm512_cvtps_ph(_mm512_loadu_ps(row + c), _MM_FROUND_TO_NEAREST_INT));
#else
            for (int c = 0; c < F16_NR; c++) dst[c] = peft_f32_to_f16(row[c]);
#endif
        }
    }
}

void f16_pack_weight(uint16_t *packed, const float *w, int OC, int C) { pack_(packed, w, OC, C, (size_t)C, 1); }
void f16_pack_weight_t(uint16_t *packed_t, const float *w, int OC, int C) { pack_(packed_t, w, C, OC, 1, (size_t)C); }

#ifdef __AVX512FP16__
/* Index vectors of the 12 x 16 -> 16 x 12 transpose in pack_tile_: the 16-k block of a tile is
 * held as 6 source registers S_p = [row 2p: 16 halves | row 2p+1: 16 halves]; output register j
 * holds the halves 32j .. 32j+31 of the block in [k][12] order, i.e. element i = k * 12 + r
 * comes from S_{r/2}, lane (r % 2) * 16 + k. Each output is three two-source permutes (sources
 * 0-1, 2-3, 4-5) blended by which pair a lane needs. */
typedef struct f16_transpose {
    __m512i idx[6][3];
    __mmask32 from[6][3];
} f16_transpose;

static void transpose_init_(f16_transpose *tr) {
    for (int j = 0; j < 6; j++) {
        uint16_t idx[3][32] = {{0}};
        uint32_t from[3] = {0, 0, 0};
        for (int t = 0; t < 32; t++) {
            const int i = 32 * j + t, k = i / 12, r = i % 12, p = r / 2;
            idx[p / 2][t] = (uint16_t)((p % 2) * 32 + (r % 2) * 16 + k);
            from[p / 2] |= 1u << t;
        }
        for (int q = 0; q < 3; q++) tr->idx[j][q] = _mm512_loadu_si512(idx[q]), tr->from[j][q] = from[q];
    }
}

/* Rows [n0, n0 + 12) of a[N][K] -> dst[K][12] f16, each row scaled into [0.5, 1) by a power of
 * two (ainv[n] = the inverse scale); rows past N are zeros. The [k][12] order lets the
 * micro-kernel read a k step's 12 inputs from one 24-byte run. */
static void pack_tile_(uint16_t *dst, float *ainv, const float *a, int n0, int N, int K, const f16_transpose *tr) {
    __m512 scale[F16_MR];
    for (int r = 0; r < F16_MR; r++) {
        const int n = n0 + r;
        if (n >= N) {
            scale[r] = _mm512_setzero_ps();
            ainv[n] = 1.0f;
            continue;
        }
        const float *src = a + (size_t)n * K;
        __m512 m = _mm512_setzero_ps();
        int k = 0;
        for (; k + 16 <= K; k += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(src + k)));
        m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_maskz_loadu_ps((__mmask16)((1u << (K - k)) - 1), src + k)));
        const float sc = pow2_scale_(_mm512_reduce_max_ps(m));
        scale[r] = _mm512_set1_ps(sc);
        ainv[n] = 1.0f / sc;
    }
    for (int k0 = 0; k0 < K; k0 += 16) {
        const int kn = K - k0 < 16 ? K - k0 : 16;
        const __mmask16 mk = (__mmask16)((1u << kn) - 1);
        __m256i h[F16_MR];
        for (int r = 0; r < F16_MR; r++) {
            const __m512 v = n0 + r < N ? _mm512_maskz_loadu_ps(mk, a + (size_t)(n0 + r) * K + k0) : _mm512_setzero_ps();
            h[r] = _mm512_cvtps_ph(_mm512_mul_ps(v, scale[r]), _MM_FROUND_TO_NEAREST_INT);
        }
        __m512i S[6];
        for (int p = 0; p < 6; p++) S[p] = _mm512_inserti64x4(_mm512_castsi256_si512(h[2 * p]), h[2 * p + 1], 1);
        const int count = kn * F16_MR; // valid halves of this block
        uint16_t *out = dst + (size_t)k0 * F16_MR;
        for (int j = 0; j < 6 && 32 * j < count; j++) {
            __m512i v = _mm512_permutex2var_epi16(S[0], tr->idx[j][0], S[1]);
            v = _mm512_mask_blend_epi16(tr->from[j][1], v, _mm512_permutex2var_epi16(S[2], tr->idx[j][1], S[3]));
            v = _mm512_mask_blend_epi16(tr->from[j][2], v, _mm512_permutex2var_epi16(S[4], tr->idx[j][2], S[5]));
            const int rem = count - 32 * j;
            _mm512_mask_storeu_epi16(out + 32 * j, rem >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << rem) - 1), v);
        }
    }
}

/* t[0:32] += f32(c) */
static inline __attribute__((always_inline)) void flush_(float *t, __m512h c) {
    const __m512i ci = _mm512_castph_si512(c);
    _mm512_store_ps(t, _mm512_add_ps(_mm512_load_ps(t), _mm512_cvtph_ps(_mm512_castsi512_si256(ci))));
    _mm512_store_ps(t + 16, _mm512_add_ps(_mm512_load_ps(t + 16), _mm512_cvtph_ps(_mm512_extracti64x4_epi64(ci, 1))));
}

/* Six rows of one k step; the inputs of rows r0.. are at pa + 2 * (r0 ..) bytes. */
#define F16_FMA2(r, disp)                                                         \
    "vfmadd231ph " disp "(%[pa])%{1to32%}, %[b0], %[c" #r "0]\n\t"                \
    "vfmadd231ph " disp "(%[pa])%{1to32%}, %[b1], %[c" #r "1]\n\t"
#define F16_SIX(r0, r1, r2, r3, r4, r5, d0, d1, d2, d3, d4, d5)                                            \
    __asm__(F16_FMA2(0, d0) F16_FMA2(1, d1) F16_FMA2(2, d2) F16_FMA2(3, d3) F16_FMA2(4, d4) F16_FMA2(5, d5) \
            : [c00] "+v"(c##r0##0), [c01] "+v"(c##r0##1), [c10] "+v"(c##r1##0), [c11] "+v"(c##r1##1),      \
              [c20] "+v"(c##r2##0), [c21] "+v"(c##r2##1), [c30] "+v"(c##r3##0), [c31] "+v"(c##r3##1),      \
              [c40] "+v"(c##r4##0), [c41] "+v"(c##r4##1), [c50] "+v"(c##r5##0), [c51] "+v"(c##r5##1)       \
            : [pa] "r"(ap), [b0] "v"(b0), [b1] "v"(b1)                                                     \
            : "memory")
#define F16_ZERO(r) __m512h c##r##0 = _mm512_setzero_ph(), c##r##1 = c##r##0
#define F16_FLUSH(r) flush_(tile + (r) * F16_NR, c##r##0), flush_(tile + (r) * F16_NR + 32, c##r##1)

/* tile[12][64] += A[0:kn][12] @ panel[0:kn][64] (A from pack_tile_), f16 products, f32 sums
 * every F16_KB steps. */
static void tile12_(float *tile, const uint16_t *A, const uint16_t *panel, int kn) {
    for (int k0 = 0; k0 < kn; k0 += F16_KB) {
        const int k1 = k0 + F16_KB < kn ? k0 + F16_KB : kn;
        F16_ZERO(0); F16_ZERO(1); F16_ZERO(2); F16_ZERO(3); F16_ZERO(4); F16_ZERO(5);
        F16_ZERO(6); F16_ZERO(7); F16_ZERO(8); F16_ZERO(9); F16_ZERO(10); F16_ZERO(11);
        const uint16_t *ap = A + (size_t)k0 * F16_MR, *bp = panel + (size_t)k0 * F16_NR;
        for (int k = k0; k < k1; k++, ap += F16_MR, bp += F16_NR) {
            const __m512h b0 = _mm512_castsi512_ph(_mm512_loadu_si512((const void *)bp));
            const __m512h b1 = _mm512_castsi512_ph(_mm512_loadu_si512((const void *)(bp + 32)));
            F16_SIX(0, 1, 2, 3, 4, 5, "0", "2", "4", "6", "8", "10");
            F16_SIX(6, 7, 8, 9, 10, 11, "12", "14", "16", "18", "20", "22");
        }
        F16_FLUSH(0); F16_FLUSH(1); F16_FLUSH(2); F16_FLUSH(3); F16_FLUSH(4); F16_FLUSH(5);
        F16_FLUSH(6); F16_FLUSH(7); F16_FLUSH(8); F16_FLUSH(9); F16_FLUSH(10); F16_FLUSH(11);
    }
}

/* out[N][ncol] (= or +=) a[N][K] @ Bt^T (+ bias) */
static int gemm_f16_(float *out, const float *a, const uint16_t *packed, const float *bias, int N, int K, int ncol,
                     int acc_mode) {
    const int np = (int)n_panels_(ncol), Np = (N + F16_MR - 1) / F16_MR * F16_MR, ntiles = Np / F16_MR;
    const float *binv = inv_scales_(packed, ncol, K);
    uint16_t *ah = aligned_alloc(64, ((size_t)Np * K * sizeof(uint16_t) + 63) & ~(size_t)63);
    float *ainv = malloc((size_t)Np * sizeof(float));
    if (!ah || !ainv) {
        free(ah);
        free(ainv);
        return PEFT_ENOMEM;
    }
    int oom = 0; /* a thread without its accumulator skips its tasks; the result is then not used */
    // enough tasks for the team: fewer row tiles per task when there are few panels
    int tiles = F16_TILES;
    while (tiles > 1 && (long)np * ((ntiles + tiles - 1) / tiles) < 32) tiles /= 2;
    const int nrb = (ntiles + tiles - 1) / tiles;
    const long ntasks = (long)np * nrb;
    f16_transpose tr;
    transpose_init_(&tr);
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int t = 0; t < ntiles; t++) pack_tile_(ah + (size_t)t * F16_MR * K, ainv, a, t * F16_MR, N, K, &tr);
        float *acc = aligned_alloc(64, (size_t)F16_TILES * F16_MR * F16_NR * sizeof(float));
        if (!acc) {
#pragma omp atomic write
            oom = 1;
        }
#pragma omp for schedule(static)
        for (long task = 0; task < ntasks; task++) {
            if (!acc) continue;
            const int p = (int)(task / nrb), t0 = (int)(task % nrb) * tiles;
            const int t1 = t0 + tiles < ntiles ? t0 + tiles : ntiles;
            memset(acc, 0, (size_t)(t1 - t0) * F16_MR * F16_NR * sizeof(float));
            for (int k0 = 0; k0 < K; k0 += F16_KC) {
                const int kn = K - k0 < F16_KC ? K - k0 : F16_KC;
                const uint16_t *pc = packed + ((size_t)p * K + k0) * F16_NR;
                for (int t = t0; t < t1; t++)
                    tile12_(acc + (size_t)(t - t0) * F16_MR * F16_NR, ah + ((size_t)t * K + k0) * F16_MR, pc, kn);
            }
            // out = (acc_mode ? out : bias or 0) + tile * rowinv * colinv
            const int col0 = p * F16_NR;
            __mmask16 mk[4];
            for (int x = 0; x < 4; x++) {
                const int rem = ncol - col0 - 16 * x;
                mk[x] = rem >= 16 ? (__mmask16)0xFFFF : rem > 0 ? (__mmask16)((1u << rem) - 1) : 0;
            }
            for (int n = t0 * F16_MR; n < t1 * F16_MR && n < N; n++) {
                const float *sums = acc + (size_t)(n - t0 * F16_MR) * F16_NR;
                float *dst = out + (size_t)n * ncol + col0;
                const __m512 rs = _mm512_set1_ps(ainv[n]);
                for (int x = 0; x < 4; x++) {
                    const __m512 init = acc_mode ? _mm512_maskz_loadu_ps(mk[x], dst + 16 * x)
                                        : bias   ? _mm512_maskz_loadu_ps(mk[x], bias + col0 + 16 * x)
                                                 : _mm512_setzero_ps();
                    const __m512 cs = _mm512_maskz_loadu_ps(mk[x], binv + col0 + 16 * x);
                    const __m512 v = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_load_ps(sums + 16 * x), rs), cs, init);
                    _mm512_mask_storeu_ps(dst + 16 * x, mk[x], v);
                }
            }
        }
        free(acc);
    }
    free(ah);
    free(ainv);
    return oom ? PEFT_ENOMEM : PEFT_OK;
}
#else
/* portable fallback: the same scaled f16 operands, widened to f32, multiplied by sgemm */
static int gemm_f16_(float *out, const float *a, const uint16_t *packed, const float *bias, int N, int K, int ncol,
                     int acc_mode) {
    const float *binv = inv_scales_(packed, ncol, K);
    float *bt = malloc((size_t)ncol * K * sizeof(float)), *ar = malloc((size_t)N * K * sizeof(float));
    if (!bt || !ar) {
        free(bt);
        free(ar);
        return PEFT_ENOMEM;
    }
    for (int col = 0; col < ncol; col++)
        for (int k = 0; k < K; k++)
            bt[(size_t)col * K + k] =
                peft_f16_to_f32(packed[((size_t)(col / F16_NR) * K + k) * F16_NR + col % F16_NR]) * binv[col];
    for (int n = 0; n < N; n++) {
        float mx = 0.0f;
        for (int k = 0; k < K; k++) mx = fmaxf(mx, fabsf(a[(size_t)n * K + k]));
        const float s = pow2_scale_(mx);
        for (int k = 0; k < K; k++) ar[(size_t)n * K + k] = peft_f16_to_f32(peft_f32_to_f16(a[(size_t)n * K + k] * s)) / s;
    }
    matmul_rounded_sgemm(out, ar, bt, bias, N, K, ncol, acc_mode);
    free(bt);
    free(ar);
    return PEFT_OK;
}
#endif

int matmul_f16_forward(float *out, const float *inp, const uint16_t *packed_w, const float *bias, int N, int C, int OC) {
    if (N <= 0 || OC <= 0) return PEFT_OK;
    if (C <= 0) {
        matmul_fill_bias(out, bias, N, OC);
        return PEFT_OK;
    }
    return gemm_f16_(out, inp, packed_w, bias, N, C, OC, 0);
}

int matmul_f16_backward_input(float *dinp, const float *dout, const uint16_t *packed_wt, int N, int C, int OC) {
    if (N <= 0 || OC <= 0 || C <= 0 || !dinp) return PEFT_OK;
    return gemm_f16_(dinp, dout, packed_wt, NULL, N, OC, C, 1);
}

#ifdef __AVX512FP16__
#define F16_NATIVE 1
#else
#define F16_NATIVE 0
#endif
const peft_half_matmul peft_half_f16 = {"f16", F16_NATIVE, f16_packed_size, f16_packed_t_size, f16_pack_weight,
                                        f16_pack_weight_t, matmul_f16_forward, matmul_f16_backward_input};
