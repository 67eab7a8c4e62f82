/* test_kernels_bf16.c: the bf16 frozen-weight matmuls (matmul_bf16.c) against double-precision
 * references. Two checks per case:
 *  - vs the exact f32 product: ||c - ref||_F / ||ref||_F <= 1e-2 (bf16 has 8 mantissa bits);
 *  - vs a double product of the bf16-ROUNDED operands (what both the AVX512-BF16 kernel and the
 *    sgemm fallback multiply): <= 1e-5, which pins down the packed layout, padding and f32
 *    accumulation.
 * Shapes cover odd C/OC (K padding), OC not a multiple of 64 (panel tails), N not a multiple of
 * the 6-row micro-tile, bias / no bias, and the += contract of backward_input. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kernels/kernels.h"

static uint64_t rng_ = 0x9E3779B97F4A7C15ull;
static float frand_(void) {
    rng_ ^= rng_ << 13, rng_ ^= rng_ >> 7, rng_ ^= rng_ << 17;
    return (float)((rng_ >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}
static float *rand_buf_(size_t n, float amp) {
    float *p = malloc((n + 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = amp * frand_();
    return p;
}
static float bf16r_(float f) {  // round to nearest even bf16, back to float
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    u &= 0xFFFF0000u;
    memcpy(&f, &u, 4);
    return f;
}
static double rel_fro_(const float *a, const double *b, size_t n) {
    double d2 = 0, b2 = 0;
    for (size_t i = 0; i < n; i++) d2 += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), b2 += b[i] * b[i];
    return sqrt(d2) / (sqrt(b2) > 1e-30 ? sqrt(b2) : 1e-30);
}

static void run_case_(int N, int C, int OC, int with_bias) {
    float *x = rand_buf_((size_t)N * C, 1.0f), *w = rand_buf_((size_t)OC * C, 0.05f);
    float *bias = with_bias ? rand_buf_(OC, 0.5f) : NULL;
    float *dout = rand_buf_((size_t)N * OC, 1.0f), *dinp0 = rand_buf_((size_t)N * C, 0.3f);
    CHECK(bf16_packed_size(OC, C) == (size_t)((OC + 63) / 64 * 64) * (size_t)(C + (C & 1)));
    CHECK(bf16_packed_t_size(OC, C) == (size_t)((C + 63) / 64 * 64) * (size_t)(OC + (OC & 1)));
    uint16_t *pw = malloc(bf16_packed_size(OC, C) * 2), *pwt = malloc(bf16_packed_t_size(OC, C) * 2);
    bf16_pack_weight(pw, w, OC, C);
    bf16_pack_weight_t(pwt, w, OC, C);

    // forward
    float *out = malloc((size_t)N * OC * sizeof(float));
    for (size_t i = 0; i < (size_t)N * OC; i++) out[i] = NAN;  // must be overwritten
    matmul_bf16_forward(out, x, pw, bias, N, C, OC);
    double *ref = malloc((size_t)N * OC * sizeof(double)), *refr = malloc((size_t)N * OC * sizeof(double));
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = bias ? bias[o] : 0.0, sr = s;
            for (int c = 0; c < C; c++) {
                s += (double)x[(size_t)n * C + c] * w[(size_t)o * C + c];
                sr += (double)bf16r_(x[(size_t)n * C + c]) * bf16r_(w[(size_t)o * C + c]);
            }
            ref[(size_t)n * OC + o] = s, refr[(size_t)n * OC + o] = sr;
        }
    double e = rel_fro_(out, ref, (size_t)N * OC), er = rel_fro_(out, refr, (size_t)N * OC);
    printf("  bf16 fwd N=%d C=%d OC=%d bias=%d: rel err %.3g (vs rounded operands %.3g)\n", N, C, OC, with_bias, e, er);
    CHECK(e < 1e-2);
    CHECK(er < 1e-5);

    // backward input, accumulating into dinp0
    float *dinp = malloc((size_t)N * C * sizeof(float));
    memcpy(dinp, dinp0, (size_t)N * C * sizeof(float));
    matmul_bf16_backward_input(dinp, dout, pwt, N, C, OC);
    double *dref = malloc((size_t)N * C * sizeof(double)), *drefr = malloc((size_t)N * C * sizeof(double));
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            double s = dinp0[(size_t)n * C + c], sr = s;
            for (int o = 0; o < OC; o++) {
                s += (double)dout[(size_t)n * OC + o] * w[(size_t)o * C + c];
                sr += (double)bf16r_(dout[(size_t)n * OC + o]) * bf16r_(w[(size_t)o * C + c]);
            }
            dref[(size_t)n * C + c] = s, drefr[(size_t)n * C + c] = sr;
        }
    // the error is judged on the added product, not on the (exact) initial content
    for (size_t i = 0; i < (size_t)N * C; i++) dinp[i] -= dinp0[i], dref[i] -= dinp0[i], drefr[i] -= dinp0[i];
    e = rel_fro_(dinp, dref, (size_t)N * C), er = rel_fro_(dinp, drefr, (size_t)N * C);
    printf("  bf16 bwd N=%d C=%d OC=%d: rel err %.3g (vs rounded operands %.3g)\n", N, C, OC, e, er);
    CHECK(e < 1e-2);
    CHECK(er < 1e-5);
    free(x), free(w), free(bias), free(dout), free(dinp0), free(pw), free(pwt), free(out), free(ref), free(refr);
    free(dinp), free(dref), free(drefr);
}

int main(void) {
    run_case_(1, 1, 1, 0);
    run_case_(7, 33, 65, 1);      // odd C, OC one past a panel, N past a 6-row tile
    run_case_(13, 130, 192, 0);   // N past two tiles, OC = 3 panels
    run_case_(100, 576, 70, 1);   // N over one 96-row task block
    run_case_(64, 577, 131, 0);   // odd K in both directions
    run_case_(203, 96, 576, 1);
    run_case_(53, 2051, 70, 1);   // K > 2048: chunked-K path (forward), odd K, partial last chunk
    run_case_(50, 40, 4501, 0);   // chunked-K path in backward (K = OC = 4501), 48-row task tail
    return check_report("test_kernels_bf16");
}
