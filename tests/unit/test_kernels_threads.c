/* test_kernels_threads.c: peft_threads_init (threads.c). matmul_forward / matmul_backward /
 * gemm_acc must give the same results (<= 1e-5 relative) with OpenBLAS's own threads and after
 * switching to one OpenMP pool where peft_sgemm splits the products by rows or columns. Shapes
 * cover both split directions, non-multiple-of-16 edges, transposes and the no-split path. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kernels/kernels.h"

static uint64_t rng_ = 0x243F6A8885A308D3ull;
static float *rnd_(size_t n) {
    float *p = malloc((n + 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        rng_ ^= rng_ << 13, rng_ ^= rng_ >> 7, rng_ ^= rng_ << 17;
        p[i] = (float)((rng_ >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
    }
    return p;
}
static double rel_(const float *a, const float *b, size_t n) {
    double md = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        md = d > md ? d : md, mb = fabs(b[i]) > mb ? fabs(b[i]) : mb;
    }
    return md / (mb > 1e-30 ? mb : 1e-30);
}

#define NCASE 4
static const int shp[NCASE][3] = {{300, 77, 129}, {16, 200, 900}, {5, 7, 3}, {1000, 64, 513}};  // N C OC

static void run_(float *res[NCASE][4]) {
    for (int s = 0; s < NCASE; s++) {
        const int N = shp[s][0], C = shp[s][1], OC = shp[s][2];
        uint64_t save = rng_;
        rng_ = 0x1234567ull + (uint64_t)s;
        float *x = rnd_((size_t)N * C), *w = rnd_((size_t)OC * C), *bias = rnd_(OC), *dout = rnd_((size_t)N * OC);
        rng_ = save;
        float *out = malloc((size_t)N * OC * 4), *dx = calloc((size_t)N * C, 4), *dw = calloc((size_t)OC * C, 4);
        float *g = calloc((size_t)C * OC, 4);
        matmul_forward(out, x, w, bias, N, C, OC);
        matmul_backward(dx, dw, NULL, dout, x, w, N, C, OC);
        gemm_acc(g, x, dout, C, OC, N, 1, 0, 0.5f);  // g[C,OC] += 0.5 x^T dout
        res[s][0] = out, res[s][1] = dx, res[s][2] = dw, res[s][3] = g;
        free(x), free(w), free(bias), free(dout);
    }
}

int main(void) {
    float *a[NCASE][4], *b[NCASE][4];
    CHECK(!peft_threads_single_pool());
    run_(a);
    int nt = peft_threads_init(0);
    printf("  peft_threads_init: %d threads\n", nt);
    CHECK(nt >= 1 && peft_threads_single_pool());
    run_(b);
    for (int s = 0; s < NCASE; s++) {
        const int N = shp[s][0], C = shp[s][1], OC = shp[s][2];
        const size_t n[4] = {(size_t)N * OC, (size_t)N * C, (size_t)OC * C, (size_t)C * OC};
        for (int t = 0; t < 4; t++) {
            double e = rel_(b[s][t], a[s][t], n[t]);
            printf("  case %d out %d: rel diff %.3g\n", s, t, e);
            CHECK(e < 1e-5);
            free(a[s][t]), free(b[s][t]);
        }
    }
    return check_report("test_kernels_threads");
}
