/* test_kernels_decoder_grad.c: the kernel the decoder families added, rmsnorm_offset (Gemma's
 * x * rstd * (1 + w)), against a naive double-precision loop (forward) and central finite
 * differences of its own float forward (backward), with the loss L = sum(out * R) accumulated in
 * double; offset 0 must be bit-identical to rmsnorm_forward / rmsnorm_backward. The gradient
 * buffers start at G0, so the accumulate (+=) contract is checked by subtracting it. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kernels/kernels.h"

#define N 6
#define C 130 /* > 64: the dweight column blocks */
#define EPS 1e-6f
#define G0 0.25f
#define FD_EPS 1e-2f

static uint64_t rng_ = 0x2545F4914F6CDD1Dull;
static float urand_(void) { /* uniform [-1, 1) */
    rng_ ^= rng_ << 13, rng_ ^= rng_ >> 7, rng_ ^= rng_ << 17;
    return (float)((double)(rng_ >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float x[N * C], w[C], R[N * C], out[N * C], rstd[N];

static double loss_(float offset) {
    rmsnorm_offset_forward(out, rstd, x, w, offset, EPS, N, C);
    double s = 0;
    for (int i = 0; i < N * C; i++) s += (double)out[i] * R[i];
    return s;
}

/* ||numeric - analytic|| / ||numeric|| over every entry of p (g holds G0 + dL/dp). */
static double gradcheck_(float *p, const float *g, int n, float offset) {
    double num2 = 0, diff2 = 0;
    for (int i = 0; i < n; i++) {
        float keep = p[i];
        p[i] = keep + FD_EPS;
        double lp = loss_(offset);
        p[i] = keep - FD_EPS;
        double lm = loss_(offset);
        p[i] = keep;
        double num = (lp - lm) / (2.0 * FD_EPS), ana = (double)g[i] - G0;
        num2 += num * num;
        diff2 += (num - ana) * (num - ana);
    }
    loss_(offset); /* rstd of the unperturbed input again */
    return sqrt(diff2 / (num2 > 1e-30 ? num2 : 1e-30));
}

static void test_offset(float offset) {
    loss_(offset);
    double worst = 0;
    for (int r = 0; r < N; r++) {
        double ss = 0;
        for (int i = 0; i < C; i++) ss += (double)x[r * C + i] * x[r * C + i];
        double rs = 1.0 / sqrt(ss / C + EPS);
        CHECK_CLOSE(rstd[r], rs, 1e-6);
        for (int i = 0; i < C; i++) {
            double ref = ((double)w[i] + offset) * x[r * C + i] * rs;
            worst = fmax(worst, fabs(out[r * C + i] - ref));
        }
    }
    CHECK_MSG(worst < 1e-5, "offset %g: forward off by %.3g", offset, worst);
    float dx[N * C], dw[C];
    for (int i = 0; i < N * C; i++) dx[i] = G0;
    for (int i = 0; i < C; i++) dw[i] = G0;
    rmsnorm_offset_backward(dx, dw, R, x, w, offset, rstd, N, C);
    double ex = gradcheck_(x, dx, N * C, offset), ew = gradcheck_(w, dw, C, offset);
    CHECK_MSG(ex < 3e-3, "offset %g: dinp relative error %.3g", offset, ex);
    CHECK_MSG(ew < 3e-3, "offset %g: dweight relative error %.3g", offset, ew);
    printf("rmsnorm_offset %g: forward %.2e, dinp %.2e, dweight %.2e (finite differences)\n", offset, worst, ex, ew);
}

/* offset 0 is exactly the Llama kernel (rmsnorm_forward calls it with 0: check the values) */
static void test_offset0_is_rmsnorm(void) {
    float o0[N * C], r0[N], dx0[N * C] = {0}, dw0[C] = {0}, dx1[N * C] = {0}, dw1[C] = {0};
    rmsnorm_forward(o0, r0, x, w, EPS, N, C);
    rmsnorm_offset_forward(out, rstd, x, w, 0.0f, EPS, N, C);
    CHECK(!memcmp(o0, out, sizeof o0) && !memcmp(r0, rstd, sizeof r0));
    rmsnorm_backward(dx0, dw0, R, x, w, r0, N, C);
    rmsnorm_offset_backward(dx1, dw1, R, x, w, 0.0f, rstd, N, C);
    CHECK(!memcmp(dx0, dx1, sizeof dx0) && !memcmp(dw0, dw1, sizeof dw0));
}

int main(void) {
    for (int i = 0; i < N * C; i++) x[i] = 2 * urand_(), R[i] = urand_();
    for (int i = 0; i < C; i++) w[i] = 0.3f * urand_(); /* Gemma's w is near 0: 1 + w near 1 */
    test_offset(1.0f);
    test_offset(0.0f);
    test_offset0_is_rmsnorm();
    return check_report("test_kernels_decoder_grad");
}
