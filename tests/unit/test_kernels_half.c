/* test_kernels_half.c: the 16-bit frozen-weight matmuls (matmul_bf16.c, matmul_f16.c, through
 * their peft_half_matmul tables) against double-precision references. Two checks per case:
 *  - vs the exact product: ||c - ref||_F / ||ref||_F <= 1e-2 for bf16 (8 mantissa bits),
 *    <= 2.5e-3 for f16 (11 bits, f16 runs of 64 products);
 *  - vs a double product of the ROUNDED operands (what the kernel multiplies: bf16 rounding;
 *    for f16 each input row and weight column scaled by a power of two into [0.5, 1) and
 *    rounded): <= 1e-5 for bf16 (f32 accumulation), <= 2e-3 for f16 (its f16 partial sums).
 *    A wrong packed layout, padding or scale gives errors of order 1.
 * Shapes cover odd C/OC (K padding), OC not a multiple of 64 (panel tails), N not a multiple of
 * the 6- and 12-row micro-tiles, K chunking (> 2048), bias / no bias, the += contract of
 * backward_input, and (f16) inputs of size 1e-9 and 1e4, outside f16's range unless scaled. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "core/dtype.h"
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
/* f16 round to nearest even and back, of x * s (s a power of two), then / s */
static float f16r_scaled_(float x, float s) { return peft_f16_to_f32(peft_f32_to_f16(x * s)) / s; }
static float p2_(const float *v, size_t n, size_t stride) {
    float mx = 0.0f;
    for (size_t i = 0; i < n; i++) mx = fmaxf(mx, fabsf(v[i * stride]));
    int e;
    frexpf(mx, &e);
    return mx > 0 ? ldexpf(1.0f, e < -100 ? 100 : -e) : 1.0f;
}
/* a[R][K] rounded as the kernel does: row by row (rows of w for the weight columns) */
static float *round_rows_(const peft_half_matmul *H, const float *a, int R, int K, size_t rs, size_t ks) {
    float *r = malloc(((size_t)R * K + 1) * sizeof(float));
    for (int i = 0; i < R; i++) {
        const float s = p2_(a + i * rs, (size_t)K, ks);
        for (int k = 0; k < K; k++) {
            const float x = a[i * rs + k * ks];
            r[(size_t)i * K + k] = H == &peft_half_bf16 ? bf16r_(x) : f16r_scaled_(x, s);
        }
    }
    return r;
}

static double rel_fro_(const float *a, const double *b, size_t n) {
    double d2 = 0, b2 = 0;
    for (size_t i = 0; i < n; i++) d2 += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), b2 += b[i] * b[i];
    return sqrt(d2) / (sqrt(b2) > 1e-30 ? sqrt(b2) : 1e-30);
}

static void run_case_(const peft_half_matmul *H, int N, int C, int OC, int with_bias, float x_amp) {
    const int is_f16 = H == &peft_half_f16;
    const double tol = is_f16 ? 2.5e-3 : 1e-2, tol_r = is_f16 ? 2e-3 : 1e-5;
    float *x = rand_buf_((size_t)N * C, x_amp), *w = rand_buf_((size_t)OC * C, 0.05f);
    float *bias = with_bias ? rand_buf_(OC, 0.5f * x_amp) : NULL;
    float *dout = rand_buf_((size_t)N * OC, x_amp), *dinp0 = rand_buf_((size_t)N * C, 0.3f * x_amp);
    if (!is_f16) {
        CHECK(H->packed_size(OC, C) == (size_t)((OC + 63) / 64 * 64) * (size_t)(C + (C & 1)));
        CHECK(H->packed_t_size(OC, C) == (size_t)((C + 63) / 64 * 64) * (size_t)(OC + (OC & 1)));
    } else {
        CHECK(H->packed_size(OC, C) == (size_t)((OC + 63) / 64 * 64) * (size_t)(C + 2));
        CHECK(H->packed_t_size(OC, C) == (size_t)((C + 63) / 64 * 64) * (size_t)(OC + 2));
    }
    uint16_t *pw = malloc(H->packed_size(OC, C) * 2), *pwt = malloc(H->packed_t_size(OC, C) * 2);
    H->pack_weight(pw, w, OC, C);
    H->pack_weight_t(pwt, w, OC, C);

    // forward: the operands as rounded by the kernel: x by rows, w by its rows (output columns)
    float *out = malloc((size_t)N * OC * sizeof(float));
    for (size_t i = 0; i < (size_t)N * OC; i++) out[i] = NAN;  // must be overwritten
    H->forward(out, x, pw, bias, N, C, OC);
    float *xr = round_rows_(H, x, N, C, (size_t)C, 1), *wr = round_rows_(H, w, OC, C, (size_t)C, 1);
    double *ref = malloc((size_t)N * OC * sizeof(double)), *refr = malloc((size_t)N * OC * sizeof(double));
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = bias ? bias[o] : 0.0, sr = s;
            for (int c = 0; c < C; c++) {
                s += (double)x[(size_t)n * C + c] * w[(size_t)o * C + c];
                sr += (double)xr[(size_t)n * C + c] * wr[(size_t)o * C + c];
            }
            ref[(size_t)n * OC + o] = s, refr[(size_t)n * OC + o] = sr;
        }
    double e = rel_fro_(out, ref, (size_t)N * OC), er = rel_fro_(out, refr, (size_t)N * OC);
    printf("  %s fwd N=%d C=%d OC=%d bias=%d amp=%g: rel err %.3g (vs rounded operands %.3g)\n", H->name, N, C, OC,
           with_bias, x_amp, e, er);
    CHECK(e < tol);
    CHECK(er < tol_r);

    // backward input, accumulating into dinp0: dout by rows, w by its columns (w^T's rows)
    float *dinp = malloc((size_t)N * C * sizeof(float));
    memcpy(dinp, dinp0, (size_t)N * C * sizeof(float));
    H->backward_input(dinp, dout, pwt, N, C, OC);
    float *dr = round_rows_(H, dout, N, OC, (size_t)OC, 1), *wtr = round_rows_(H, w, C, OC, 1, (size_t)C);
    double *dref = malloc((size_t)N * C * sizeof(double)), *drefr = malloc((size_t)N * C * sizeof(double));
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            double s = dinp0[(size_t)n * C + c], sr = s;
            for (int o = 0; o < OC; o++) {
                s += (double)dout[(size_t)n * OC + o] * w[(size_t)o * C + c];
                sr += (double)dr[(size_t)n * OC + o] * wtr[(size_t)c * OC + o];
            }
            dref[(size_t)n * C + c] = s, drefr[(size_t)n * C + c] = sr;
        }
    // the error is judged on the added product, not on the (exact) initial content
    for (size_t i = 0; i < (size_t)N * C; i++) dinp[i] -= dinp0[i], dref[i] -= dinp0[i], drefr[i] -= dinp0[i];
    e = rel_fro_(dinp, dref, (size_t)N * C), er = rel_fro_(dinp, drefr, (size_t)N * C);
    printf("  %s bwd N=%d C=%d OC=%d amp=%g: rel err %.3g (vs rounded operands %.3g)\n", H->name, N, C, OC, x_amp, e, er);
    CHECK(e < tol);
    CHECK(er < tol_r);
    free(x), free(w), free(bias), free(dout), free(dinp0), free(pw), free(pwt), free(out), free(ref), free(refr);
    free(dinp), free(dref), free(drefr), free(xr), free(wr), free(dr), free(wtr);
}

/* Rows of f32 denormals (1e-41) and zeros: finite results, the denormal rows' products
 * (~1e-43) may round to zero, and the other rows are unaffected. */
static void tiny_rows_(const peft_half_matmul *H) {
    const int N = 13, C = 40, OC = 70;
    float *x = rand_buf_((size_t)N * C, 1.0f), *w = rand_buf_((size_t)OC * C, 0.05f), *out = malloc((size_t)N * OC * 4);
    for (int c = 0; c < C; c++) x[3 * C + c] *= 1e-41f, x[5 * C + c] = 0.0f;
    uint16_t *pw = malloc(H->packed_size(OC, C) * 2);
    H->pack_weight(pw, w, OC, C);
    H->forward(out, x, pw, NULL, N, C, OC);
    int finite = 1;
    double worst = 0;
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            const float v = out[(size_t)n * OC + o];
            finite &= isfinite(v);
            double ref = 0;
            for (int c = 0; c < C; c++) ref += (double)x[(size_t)n * C + c] * w[(size_t)o * C + c];
            if (n != 3) worst = fmax(worst, fabs(v - ref));
            else worst = fmax(worst, fabs(v) > 1e-40 ? 1.0 : 0.0); /* tiny, or zero */
        }
    printf("  %s rows of denormals and zeros: finite %d, worst abs err elsewhere %.3g\n", H->name, finite, worst);
    CHECK(finite);
    CHECK(worst < 2e-3);
    free(x), free(w), free(out), free(pw);
}

int main(void) {
    const peft_half_matmul *fmts[2] = {&peft_half_bf16, &peft_half_f16};
    for (int f = 0; f < 2; f++) {
        const peft_half_matmul *H = fmts[f];
        run_case_(H, 1, 1, 1, 0, 1.0f);
        run_case_(H, 7, 33, 65, 1, 1.0f);      // odd C, OC one past a panel, N past a 6-row tile
        run_case_(H, 13, 130, 192, 0, 1.0f);   // N past a 12-row tile, OC = 3 panels
        run_case_(H, 100, 576, 70, 1, 1.0f);   // N over one 96-row task block
        run_case_(H, 64, 577, 131, 0, 1.0f);   // odd K in both directions
        run_case_(H, 203, 96, 576, 1, 1.0f);
        run_case_(H, 53, 2051, 70, 1, 1.0f);   // K > 2048: chunked-K path (forward), odd K, partial last chunk
        run_case_(H, 50, 40, 4501, 0, 1.0f);   // chunked-K path in backward (K = OC = 4501), 48-row task tail
        run_case_(H, 30, 300, 200, 0, 1e-9f);  // gradient-sized inputs: below f16's smallest normal
        run_case_(H, 30, 300, 200, 1, 1e4f);   // products of 1e4-sized inputs overflow f16 unscaled
        tiny_rows_(H);
    }
    return check_report("test_kernels_half");
}
