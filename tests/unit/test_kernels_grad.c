/* test_kernels_grad.c: every kernel of kernels.h against naive double-precision reference
 * loops (forward), and every backward against central finite differences of the float
 * forward kernels (ggml MODE_GRAD style). The loss is L = sum(out * R) for a fixed random
 * R, evaluated in double. Backward calls start from random gradient buffers so the
 * accumulate (+=) contract is checked at the same time, and NULL gradient pointers are
 * checked to leave the other gradients unchanged. A negative control checks that the
 * gradient checker itself rejects a corrupted gradient. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kernels/kernels.h"

/* ---- helpers ---------------------------------------------------------------------- */

static uint64_t rng_state_ = 0x9E3779B97F4A7C15ull;
static float frand_(void) {  // uniform [-1, 1)
    rng_state_ ^= rng_state_ << 13;
    rng_state_ ^= rng_state_ >> 7;
    rng_state_ ^= rng_state_ << 17;
    return (float)((rng_state_ >> 40) * (1.0 / 16777216.0) * 2.0 - 1.0);
}
static int irand_(int n) { return (int)((frand_() * 0.5f + 0.5f) * n) % n; }

static float *rand_buf_(size_t n, float amp) {
    float *p = malloc(n * sizeof(float) + 1);
    for (size_t i = 0; i < n; i++) p[i] = amp * frand_();
    return p;
}
static float *zero_buf_(size_t n) { return calloc(n + 1, sizeof(float)); }
static float *copy_buf_(const float *x, size_t n) {
    float *p = malloc(n * sizeof(float) + 1);
    memcpy(p, x, n * sizeof(float));
    return p;
}

/* max |a - b| / max(max |b|, 1e-30) */
static double rel_err_(const float *a, const double *b, size_t n) {
    double md = 0.0, mb = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        md = d > md ? d : md;
        mb = fabs(b[i]) > mb ? fabs(b[i]) : mb;
    }
    return md / (mb > 1e-30 ? mb : 1e-30);
}
static double rel_err_ff_(const float *a, const float *b, size_t n) {
    double md = 0.0, mb = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        md = d > md ? d : md;
        mb = fabs((double)b[i]) > mb ? fabs((double)b[i]) : mb;
    }
    return md / (mb > 1e-30 ? mb : 1e-30);
}

static double dot_fd_(const float *out, const float *R, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)out[i] * (double)R[i];
    return s;
}

/* The scalar loss of one test case, evaluated by the float forward kernel. */
typedef double (*loss_fn)(void *ctx);

/* Central differences of f with respect to x (sampled at up to max_samples entries),
 * compared with the analytic gradient g. Returns ||num - g|| / ||num|| over the samples. */
static double gradcheck_(loss_fn f, void *ctx, float *x, const float *g, size_t n, float eps, size_t max_samples) {
    double num2 = 0.0, diff2 = 0.0;
    size_t stride = n > max_samples ? n / max_samples : 1;
    for (size_t i = (stride > 1 ? (size_t)irand_((int)stride) : 0); i < n; i += stride) {
        float x0 = x[i];
        float xp = x0 + eps, xm = x0 - eps;
        x[i] = xp;
        double lp = f(ctx);
        x[i] = xm;
        double lm = f(ctx);
        x[i] = x0;
        double num = (lp - lm) / ((double)xp - (double)xm);
        num2 += num * num;
        diff2 += (num - g[i]) * (num - g[i]);
    }
    return sqrt(diff2) / (sqrt(num2) > 1e-12 ? sqrt(num2) : 1e-12);
}

/* analytic gradient = (buffer after backward) - (random initial contents) */
static void sub_init_(float *g, const float *g0, size_t n) {
    for (size_t i = 0; i < n; i++) g[i] -= g0[i];
}

#define GRAD_TOL 2e-3 /* observed <= 2e-4 with eps = 1e-2 */
#define FWD_TOL 1e-5

#define REPORT_GRAD(name, expr)                                      \
    do {                                                             \
        double e_ = (expr);                                          \
        printf("  %-32s grad rel err %.3g\n", name, e_);             \
        CHECK_MSG(e_ < GRAD_TOL, "%s gradcheck %.3g", name, e_);     \
    } while (0)
#define REPORT_FWD(name, expr)                                       \
    do {                                                             \
        double e_ = (expr);                                          \
        printf("  %-32s fwd  rel err %.3g\n", name, e_);             \
        CHECK_MSG(e_ < FWD_TOL, "%s forward %.3g", name, e_);        \
    } while (0)

/* ---- matmul ----------------------------------------------------------------------- */

typedef struct {
    int N, C, OC;
    float *inp, *w, *bias, *out, *R;
} MatmulCase;

static double matmul_loss_(void *p) {
    MatmulCase *c = p;
    matmul_forward(c->out, c->inp, c->w, c->bias, c->N, c->C, c->OC);
    return dot_fd_(c->out, c->R, (size_t)c->N * c->OC);
}

static void test_matmul(int with_bias) {
    MatmulCase c = {.N = 7, .C = 13, .OC = 9};
    size_t ni = (size_t)c.N * c.C, nw = (size_t)c.OC * c.C, no = (size_t)c.N * c.OC;
    c.inp = rand_buf_(ni, 1.0f);
    c.w = rand_buf_(nw, 1.0f);
    c.bias = with_bias ? rand_buf_(c.OC, 1.0f) : NULL;
    c.out = zero_buf_(no);
    c.R = rand_buf_(no, 1.0f);

    // forward vs naive
    matmul_forward(c.out, c.inp, c.w, c.bias, c.N, c.C, c.OC);
    double *ref = calloc(no, sizeof(double));
    for (int n = 0; n < c.N; n++)
        for (int o = 0; o < c.OC; o++) {
            double s = c.bias ? c.bias[o] : 0.0;
            for (int i = 0; i < c.C; i++) s += (double)c.inp[n * c.C + i] * c.w[o * c.C + i];
            ref[n * c.OC + o] = s;
        }
    REPORT_FWD(with_bias ? "matmul+bias" : "matmul", rel_err_(c.out, ref, no));

    // backward from random initial gradients (checks +=)
    float *di0 = rand_buf_(ni, 1.0f), *dw0 = rand_buf_(nw, 1.0f), *db0 = rand_buf_(c.OC, 1.0f);
    float *di = copy_buf_(di0, ni), *dw = copy_buf_(dw0, nw), *db = copy_buf_(db0, c.OC);
    matmul_backward(di, dw, with_bias ? db : NULL, c.R, c.inp, c.w, c.N, c.C, c.OC);
    sub_init_(di, di0, ni);
    sub_init_(dw, dw0, nw);
    sub_init_(db, db0, c.OC);
    REPORT_GRAD("matmul dinp", gradcheck_(matmul_loss_, &c, c.inp, di, ni, 1e-2f, 1000));
    REPORT_GRAD("matmul dweight", gradcheck_(matmul_loss_, &c, c.w, dw, nw, 1e-2f, 1000));
    if (with_bias) REPORT_GRAD("matmul dbias", gradcheck_(matmul_loss_, &c, c.bias, db, c.OC, 1e-2f, 1000));

    // NULL pointers: each gradient alone equals the full result
    float *di2 = zero_buf_(ni), *dw2 = zero_buf_(nw), *db2 = zero_buf_(c.OC);
    matmul_backward(di2, NULL, NULL, c.R, c.inp, c.w, c.N, c.C, c.OC);
    matmul_backward(NULL, dw2, NULL, c.R, c.inp, c.w, c.N, c.C, c.OC);
    matmul_backward(NULL, NULL, db2, c.R, c.inp, c.w, c.N, c.C, c.OC);
    CHECK(rel_err_ff_(di2, di, ni) < 1e-5);
    CHECK(rel_err_ff_(dw2, dw, nw) < 1e-5);
    if (with_bias) CHECK(rel_err_ff_(db2, db, c.OC) < 1e-5);

    // negative control: the checker must reject a wrong gradient
    di[3] += 0.5f;
    double bad = gradcheck_(matmul_loss_, &c, c.inp, di, ni, 1e-2f, 1000);
    CHECK_MSG(bad > GRAD_TOL, "gradcheck accepted a corrupted gradient (%.3g)", bad);

    free(c.inp), free(c.w), free(c.bias), free(c.out), free(c.R), free(ref);
    free(di0), free(dw0), free(db0), free(di), free(dw), free(db), free(di2), free(dw2), free(db2);
}

/* ---- rmsnorm ---------------------------------------------------------------------- */

typedef struct {
    int N, C;
    float eps;
    float *x, *w, *out, *rstd, *R;
} RmsCase;

static double rms_loss_(void *p) {
    RmsCase *c = p;
    rmsnorm_forward(c->out, c->rstd, c->x, c->w, c->eps, c->N, c->C);
    return dot_fd_(c->out, c->R, (size_t)c->N * c->C);
}

static void test_rmsnorm(void) {
    RmsCase c = {.N = 5, .C = 150, .eps = 1e-5f};  // C > 64 exercises the column blocks
    size_t n = (size_t)c.N * c.C;
    c.x = rand_buf_(n, 2.0f);
    c.w = rand_buf_(c.C, 1.0f);
    c.out = zero_buf_(n);
    c.rstd = zero_buf_(c.N);
    c.R = rand_buf_(n, 1.0f);

    rmsnorm_forward(c.out, c.rstd, c.x, c.w, c.eps, c.N, c.C);
    double *ref = malloc(n * sizeof(double)), *rref = malloc(c.N * sizeof(double));
    for (int r = 0; r < c.N; r++) {
        double ss = 0.0;
        for (int i = 0; i < c.C; i++) ss += (double)c.x[r * c.C + i] * c.x[r * c.C + i];
        double rs = 1.0 / sqrt(ss / c.C + c.eps);
        rref[r] = rs;
        for (int i = 0; i < c.C; i++) ref[r * c.C + i] = c.w[i] * c.x[r * c.C + i] * rs;
    }
    REPORT_FWD("rmsnorm out", rel_err_(c.out, ref, n));
    REPORT_FWD("rmsnorm rstd", rel_err_(c.rstd, rref, c.N));

    float *dx0 = rand_buf_(n, 1.0f), *dw0 = rand_buf_(c.C, 1.0f);
    float *dx = copy_buf_(dx0, n), *dw = copy_buf_(dw0, c.C);
    rmsnorm_backward(dx, dw, c.R, c.x, c.w, c.rstd, c.N, c.C);
    sub_init_(dx, dx0, n);
    sub_init_(dw, dw0, c.C);
    REPORT_GRAD("rmsnorm dinp", gradcheck_(rms_loss_, &c, c.x, dx, n, 1e-2f, 1000));
    rms_loss_(&c);  // restore rstd after the perturbations
    REPORT_GRAD("rmsnorm dweight", gradcheck_(rms_loss_, &c, c.w, dw, c.C, 1e-2f, 1000));
    rms_loss_(&c);

    float *dx2 = zero_buf_(n), *dw2 = zero_buf_(c.C);
    rmsnorm_backward(dx2, NULL, c.R, c.x, c.w, c.rstd, c.N, c.C);
    rmsnorm_backward(NULL, dw2, c.R, c.x, c.w, c.rstd, c.N, c.C);
    CHECK(rel_err_ff_(dx2, dx, n) < 1e-5);
    CHECK(rel_err_ff_(dw2, dw, c.C) < 1e-5);

    free(c.x), free(c.w), free(c.out), free(c.rstd), free(c.R), free(ref), free(rref);
    free(dx0), free(dw0), free(dx), free(dw), free(dx2), free(dw2);
}

/* ---- rope ------------------------------------------------------------------------- */

typedef struct {
    int N, H, hd;
    float *x, *tmp, *R, *cs, *sn;
    int32_t *pos;
} RopeCase;

static double rope_loss_(void *p) {
    RopeCase *c = p;
    size_t n = (size_t)c->N * c->H * c->hd;
    memcpy(c->tmp, c->x, n * sizeof(float));
    rope_forward(c->tmp, c->pos, c->cs, c->sn, c->N, c->H, c->hd);
    return dot_fd_(c->tmp, c->R, n);
}

static void test_rope(void) {
    RopeCase c = {.N = 6, .H = 3, .hd = 16};
    int half = c.hd / 2, max_pos = 64;
    size_t n = (size_t)c.N * c.H * c.hd;
    float inv_freq[8];
    for (int i = 0; i < half; i++) inv_freq[i] = (float)pow(10000.0, -2.0 * i / c.hd);
    c.cs = zero_buf_((size_t)max_pos * half);
    c.sn = zero_buf_((size_t)max_pos * half);
    rope_build_table(c.cs, c.sn, inv_freq, max_pos, half);
    c.pos = malloc(c.N * sizeof(int32_t));
    for (int r = 0; r < c.N; r++) c.pos[r] = (r * 11) % max_pos;
    c.x = rand_buf_(n, 1.0f);
    c.tmp = zero_buf_(n);
    c.R = rand_buf_(n, 1.0f);

    rope_loss_(&c);
    double *ref = malloc(n * sizeof(double));
    for (int r = 0; r < c.N; r++)
        for (int h = 0; h < c.H; h++)
            for (int i = 0; i < half; i++) {
                size_t o = ((size_t)r * c.H + h) * c.hd;
                double ang = (double)c.pos[r] * inv_freq[i];
                double x1 = c.x[o + i], x2 = c.x[o + i + half];
                ref[o + i] = x1 * cos(ang) - x2 * sin(ang);
                ref[o + i + half] = x2 * cos(ang) + x1 * sin(ang);
            }
    REPORT_FWD("rope", rel_err_(c.tmp, ref, n));

    // backward is in place on dout: the result is dL/dx
    float *dx = copy_buf_(c.R, n);
    rope_backward(dx, c.pos, c.cs, c.sn, c.N, c.H, c.hd);
    REPORT_GRAD("rope dx", gradcheck_(rope_loss_, &c, c.x, dx, n, 1e-2f, 1000));
    // and backward undoes forward (rotation is orthogonal)
    float *y = copy_buf_(c.x, n);
    rope_forward(y, c.pos, c.cs, c.sn, c.N, c.H, c.hd);
    rope_backward(y, c.pos, c.cs, c.sn, c.N, c.H, c.hd);
    CHECK(rel_err_ff_(y, c.x, n) < 1e-6);

    free(c.cs), free(c.sn), free(c.pos), free(c.x), free(c.tmp), free(c.R), free(ref), free(dx), free(y);
}

/* ---- attention -------------------------------------------------------------------- */

/* Naive reference: explicit masked T x T softmax in double. out (B,Tq,H*hd), lse (B,H,Tq). */
static void attention_ref_(double *out, double *lse, const float *q, const float *k, const float *v,
                           const int32_t *pos, int B, int Tq, int Tk, int H, int KVH, int hd) {
    int group = H / KVH;
    double *s = malloc((size_t)Tk * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < Tq; i++) {
                int a = Tk - Tq + i;
                int p = pos ? pos[b * Tq + i] : a;
                const float *qi = q + ((size_t)b * Tq + i) * H * hd + h * hd;
                double m = -INFINITY;
                for (int j = 0; j < Tk; j++) {
                    int visible = j <= a && j >= a - p;
                    if (!visible) {
                        s[j] = -INFINITY;
                        continue;
                    }
                    const float *kj = k + ((size_t)b * Tk + j) * KVH * hd + (h / group) * hd;
                    double d = 0.0;
                    for (int e = 0; e < hd; e++) d += (double)qi[e] * kj[e];
                    s[j] = d / sqrt((double)hd);
                    m = s[j] > m ? s[j] : m;
                }
                double l = 0.0;
                for (int j = 0; j < Tk; j++) {
                    s[j] = exp(s[j] - m);
                    l += s[j];
                }
                double *oi = out + ((size_t)b * Tq + i) * H * hd + h * hd;
                for (int e = 0; e < hd; e++) oi[e] = 0.0;
                for (int j = 0; j < Tk; j++) {
                    if (s[j] == 0.0) continue;
                    const float *vj = v + ((size_t)b * Tk + j) * KVH * hd + (h / group) * hd;
                    for (int e = 0; e < hd; e++) oi[e] += s[j] / l * vj[e];
                }
                lse[((size_t)b * H + h) * Tq + i] = m + log(l);
            }
    free(s);
}

typedef struct {
    int B, T, H, KVH, hd;
    float *q, *k, *v, *out, *lse, *R;
    int32_t *pos;
} AttnCase;

static double attn_loss_(void *p) {
    AttnCase *c = p;
    attention_forward(c->out, c->lse, c->q, c->k, c->v, c->pos, c->B, c->T, c->T, c->H, c->KVH, c->hd);
    return dot_fd_(c->out, c->R, (size_t)c->B * c->T * c->H * c->hd);
}

static void test_attention(const char *name, int B, int T, int H, int KVH, int hd, int packed) {
    AttnCase c = {.B = B, .T = T, .H = H, .KVH = KVH, .hd = hd};
    size_t nq = (size_t)B * T * H * hd, nk = (size_t)B * T * KVH * hd, nl = (size_t)B * H * T;
    c.q = rand_buf_(nq, 1.5f);
    c.k = rand_buf_(nk, 1.5f);
    c.v = rand_buf_(nk, 1.0f);
    c.out = zero_buf_(nq);
    c.lse = zero_buf_(nl);
    c.R = rand_buf_(nq, 1.0f);
    c.pos = NULL;
    if (packed) {
        // each batch row packs examples of different lengths: pos restarts at 0
        c.pos = malloc((size_t)B * T * sizeof(int32_t));
        for (int b = 0; b < B; b++) {
            int p = 0, len = 3 + b;
            for (int t = 0; t < T; t++) {
                c.pos[b * T + t] = p++;
                if (p == len) p = 0, len += 2;
            }
        }
    }
    char label[64];

    // forward vs explicit softmax
    attn_loss_(&c);
    double *ref = malloc(nq * sizeof(double)), *lref = malloc(nl * sizeof(double));
    attention_ref_(ref, lref, c.q, c.k, c.v, c.pos, B, T, T, H, KVH, hd);
    snprintf(label, sizeof label, "%s out", name);
    REPORT_FWD(label, rel_err_(c.out, ref, nq));
    double lerr = 0.0;
    for (size_t i = 0; i < nl; i++) lerr = fmax(lerr, fabs(c.lse[i] - lref[i]) / fmax(1.0, fabs(lref[i])));
    snprintf(label, sizeof label, "%s lse", name);
    REPORT_FWD(label, lerr);

    // decode: the last Tq query rows against all T keys equal the last rows of the full pass
    for (int Tq = 1; Tq <= 3; Tq += 2) {
        size_t rs = (size_t)H * hd;
        float *qd = zero_buf_((size_t)B * Tq * rs), *od = zero_buf_((size_t)B * Tq * rs);
        float *ld = zero_buf_((size_t)B * H * Tq);
        int32_t *pd = packed ? malloc((size_t)B * Tq * sizeof(int32_t)) : NULL;
        for (int b = 0; b < B; b++)
            for (int i = 0; i < Tq; i++) {
                memcpy(qd + ((size_t)b * Tq + i) * rs, c.q + ((size_t)b * T + T - Tq + i) * rs, rs * sizeof(float));
                if (pd) pd[b * Tq + i] = c.pos[b * T + T - Tq + i];
            }
        attention_forward(od, ld, qd, c.k, c.v, pd, B, Tq, T, H, KVH, hd);
        double md = 0.0, ml = 0.0;
        for (int b = 0; b < B; b++)
            for (int i = 0; i < Tq; i++) {
                for (size_t e = 0; e < rs; e++)
                    md = fmax(md, fabs(od[((size_t)b * Tq + i) * rs + e] - ref[((size_t)b * T + T - Tq + i) * rs + e]));
                for (int h = 0; h < H; h++)
                    ml = fmax(ml, fabs(ld[((size_t)b * H + h) * Tq + i] - lref[((size_t)b * H + h) * T + T - Tq + i]));
            }
        snprintf(label, sizeof label, "%s decode Tq=%d", name, Tq);
        REPORT_FWD(label, fmax(md, ml));
        // lse == NULL is allowed (inference)
        float *od2 = zero_buf_((size_t)B * Tq * rs);
        attention_forward(od2, NULL, qd, c.k, c.v, pd, B, Tq, T, H, KVH, hd);
        CHECK(memcmp(od, od2, (size_t)B * Tq * rs * sizeof(float)) == 0);
        free(qd), free(od), free(ld), free(pd), free(od2);
    }

    // backward, accumulating into random buffers
    attn_loss_(&c);
    float *dq0 = rand_buf_(nq, 1.0f), *dk0 = rand_buf_(nk, 1.0f), *dv0 = rand_buf_(nk, 1.0f);
    float *dq = copy_buf_(dq0, nq), *dk = copy_buf_(dk0, nk), *dv = copy_buf_(dv0, nk);
    attention_backward(dq, dk, dv, c.R, c.q, c.k, c.v, c.out, c.lse, c.pos, B, T, H, KVH, hd);
    sub_init_(dq, dq0, nq);
    sub_init_(dk, dk0, nk);
    sub_init_(dv, dv0, nk);
    snprintf(label, sizeof label, "%s dq", name);
    REPORT_GRAD(label, gradcheck_(attn_loss_, &c, c.q, dq, nq, 1e-2f, 600));
    snprintf(label, sizeof label, "%s dk", name);
    REPORT_GRAD(label, gradcheck_(attn_loss_, &c, c.k, dk, nk, 1e-2f, 600));
    snprintf(label, sizeof label, "%s dv", name);
    REPORT_GRAD(label, gradcheck_(attn_loss_, &c, c.v, dv, nk, 1e-2f, 600));
    attn_loss_(&c);

    // NULL gradient pointers
    float *dq2 = zero_buf_(nq), *dk2 = zero_buf_(nk), *dv2 = zero_buf_(nk);
    attention_backward(dq2, NULL, NULL, c.R, c.q, c.k, c.v, c.out, c.lse, c.pos, B, T, H, KVH, hd);
    attention_backward(NULL, dk2, NULL, c.R, c.q, c.k, c.v, c.out, c.lse, c.pos, B, T, H, KVH, hd);
    attention_backward(NULL, NULL, dv2, c.R, c.q, c.k, c.v, c.out, c.lse, c.pos, B, T, H, KVH, hd);
    CHECK(rel_err_ff_(dq2, dq, nq) < 1e-5);
    CHECK(rel_err_ff_(dk2, dk, nk) < 1e-5);
    CHECK(rel_err_ff_(dv2, dv, nk) < 1e-5);

    free(c.q), free(c.k), free(c.v), free(c.out), free(c.lse), free(c.R), free(c.pos), free(ref), free(lref);
    free(dq0), free(dk0), free(dv0), free(dq), free(dk), free(dv), free(dq2), free(dk2), free(dv2);
}

/* ---- swiglu ----------------------------------------------------------------------- */

typedef struct {
    int N, F;
    float *g, *u, *out, *R;
} SwiCase;

static double swi_loss_(void *p) {
    SwiCase *c = p;
    swiglu_forward(c->out, c->g, c->u, c->N, c->F);
    return dot_fd_(c->out, c->R, (size_t)c->N * c->F);
}

static void test_swiglu(void) {
    SwiCase c = {.N = 4, .F = 37};
    size_t n = (size_t)c.N * c.F;
    c.g = rand_buf_(n, 4.0f);
    c.u = rand_buf_(n, 2.0f);
    c.out = zero_buf_(n);
    c.R = rand_buf_(n, 1.0f);
    swi_loss_(&c);
    double *ref = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) ref[i] = (double)c.g[i] / (1.0 + exp(-(double)c.g[i])) * c.u[i];
    REPORT_FWD("swiglu", rel_err_(c.out, ref, n));

    float *dg0 = rand_buf_(n, 1.0f), *du0 = rand_buf_(n, 1.0f);
    float *dg = copy_buf_(dg0, n), *du = copy_buf_(du0, n);
    swiglu_backward(dg, du, c.R, c.g, c.u, c.N, c.F);
    sub_init_(dg, dg0, n);
    sub_init_(du, du0, n);
    REPORT_GRAD("swiglu dgate", gradcheck_(swi_loss_, &c, c.g, dg, n, 1e-2f, 1000));
    REPORT_GRAD("swiglu dup", gradcheck_(swi_loss_, &c, c.u, du, n, 1e-2f, 1000));
    float *dg2 = zero_buf_(n), *du2 = zero_buf_(n);
    swiglu_backward(dg2, NULL, c.R, c.g, c.u, c.N, c.F);
    swiglu_backward(NULL, du2, c.R, c.g, c.u, c.N, c.F);
    CHECK(rel_err_ff_(dg2, dg, n) < 1e-5);
    CHECK(rel_err_ff_(du2, du, n) < 1e-5);
    free(c.g), free(c.u), free(c.out), free(c.R), free(ref), free(dg0), free(du0), free(dg), free(du);
    free(dg2), free(du2);
}

/* ---- embedding -------------------------------------------------------------------- */

typedef struct {
    int N, C;
    float *table, *out, *R;
    int32_t *ids;
} EmbCase;

static double emb_loss_(void *p) {
    EmbCase *c = p;
    embedding_forward(c->out, c->ids, c->table, c->N, c->C);
    return dot_fd_(c->out, c->R, (size_t)c->N * c->C);
}

static void test_embedding(void) {
    int V = 11;
    EmbCase c = {.N = 9, .C = 70};
    size_t n = (size_t)c.N * c.C, nt = (size_t)V * c.C;
    c.table = rand_buf_(nt, 1.0f);
    c.out = zero_buf_(n);
    c.R = rand_buf_(n, 1.0f);
    int32_t ids[9] = {3, 0, 10, 3, 5, 3, 0, 7, 10};  // repeated ids must accumulate
    c.ids = ids;
    emb_loss_(&c);
    double *ref = malloc(n * sizeof(double));
    for (int r = 0; r < c.N; r++)
        for (int i = 0; i < c.C; i++) ref[r * c.C + i] = c.table[ids[r] * c.C + i];
    REPORT_FWD("embedding", rel_err_(c.out, ref, n));
    float *dt0 = rand_buf_(nt, 1.0f), *dt = copy_buf_(dt0, nt);
    embedding_backward(dt, c.R, c.ids, c.N, c.C);
    sub_init_(dt, dt0, nt);
    REPORT_GRAD("embedding dtable", gradcheck_(emb_loss_, &c, c.table, dt, nt, 1e-2f, 1000));
    free(c.table), free(c.out), free(c.R), free(ref), free(dt0), free(dt);
}

/* ---- cross-entropy ---------------------------------------------------------------- */

typedef struct {
    int N, V;
    float scale;
    float *logits, *losses;
    int32_t *targets;
} CeCase;

static double ce_loss_(void *p) {
    CeCase *c = p;
    crossentropy_forward(c->losses, c->logits, c->targets, c->N, c->V);
    double s = 0.0;
    for (int n = 0; n < c->N; n++) s += (double)c->losses[n];
    return s * c->scale;
}

static void test_crossentropy(void) {
    CeCase c = {.N = 6, .V = 50};
    size_t n = (size_t)c.N * c.V;
    c.logits = rand_buf_(n, 5.0f);
    c.logits[7] = 80.0f;  // large logit: needs the max subtraction
    c.losses = zero_buf_(c.N);
    int32_t targets[6] = {4, -100, 49, 0, -1, 7};
    c.targets = targets;
    int count = crossentropy_forward(c.losses, c.logits, c.targets, c.N, c.V);
    CHECK(count == 4);
    double *ref = malloc(c.N * sizeof(double));
    for (int r = 0; r < c.N; r++) {
        if (targets[r] < 0) {
            ref[r] = 0.0;
            continue;
        }
        double m = -INFINITY, s = 0.0;
        for (int v = 0; v < c.V; v++) m = fmax(m, c.logits[r * c.V + v]);
        for (int v = 0; v < c.V; v++) s += exp(c.logits[r * c.V + v] - m);
        ref[r] = m + log(s) - c.logits[r * c.V + targets[r]];
    }
    REPORT_FWD("crossentropy", rel_err_(c.losses, ref, c.N));
    CHECK(isfinite(c.losses[0]));

    c.scale = 1.0f / count;
    float *d0 = rand_buf_(n, 1.0f), *d = copy_buf_(d0, n);
    crossentropy_backward(d, c.logits, c.targets, c.scale, c.N, c.V);
    sub_init_(d, d0, n);
    REPORT_GRAD("crossentropy dlogits", gradcheck_(ce_loss_, &c, c.logits, d, n, 1e-2f, 1000));
    // ignored rows are left untouched when accumulating
    for (int v = 0; v < c.V; v++) CHECK(fabsf(d[1 * c.V + v]) < 1e-6f && fabsf(d[4 * c.V + v]) < 1e-6f);

    // in place: the logits buffer is overwritten by the gradient, ignored rows become 0
    float *ip = copy_buf_(c.logits, n);
    crossentropy_backward(ip, ip, c.targets, c.scale, c.N, c.V);
    double md = 0.0;
    for (size_t i = 0; i < n; i++) md = fmax(md, fabs((double)ip[i] - d[i]));
    printf("  %-32s max abs diff %.3g\n", "crossentropy in-place", md);
    CHECK(md < 1e-6);

    // fused (the model's chunked loss head): the losses of the forward (checked against the
    // double reference above) and, in place, the gradient checked by finite differences
    float *fu = copy_buf_(c.logits, n), *fl = zero_buf_(c.N);
    CHECK(crossentropy_fused(fl, fu, c.targets, c.scale, c.N, c.V) == count);
    REPORT_FWD("crossentropy fused loss", rel_err_(fl, ref, c.N));
    md = 0.0;
    for (size_t i = 0; i < n; i++) md = fmax(md, fabs((double)fu[i] - ip[i]));
    printf("  %-32s max abs diff %.3g\n", "crossentropy fused vs in-place", md);
    CHECK(md < 1e-6);
    free(c.logits), free(c.losses), free(ref), free(d0), free(d), free(ip), free(fu), free(fl);
}

/* ---- elementwise ------------------------------------------------------------------ */

static void test_elementwise(void) {
    size_t n = 100003;  // above the parallel threshold, odd length
    float *y = rand_buf_(n, 1.0f), *x = rand_buf_(n, 1.0f), *y0 = copy_buf_(y, n);
    add_inplace(y, x, n);
    int ok = 1;
    for (size_t i = 0; i < n; i++) ok &= y[i] == y0[i] + x[i];
    CHECK(ok);
    scale_inplace(y, 0.5f, n);
    ok = 1;
    for (size_t i = 0; i < n; i++) ok &= y[i] == (y0[i] + x[i]) * 0.5f;
    CHECK(ok);
    free(y), free(x), free(y0);
}

int main(void) {
    test_matmul(0);
    test_matmul(1);
    test_rmsnorm();
    test_rope();
    test_attention("attn MHA", 1, 9, 2, 2, 8, 0);
    test_attention("attn GQA B=2", 2, 11, 4, 2, 8, 0);
    test_attention("attn GQA packed B=2", 2, 13, 6, 2, 16, 1);
    test_attention("attn MQA packed T=40", 1, 40, 2, 1, 4, 1);  // spans several key blocks
    test_attention("attn hd=128 T=37", 1, 37, 2, 1, 128, 0);
    // several 64-key / 32-query blocks, hd not a multiple of 16, B*kv_heads < threads (split path)
    test_attention("attn GQA packed T=150 hd=40", 1, 150, 3, 1, 40, 1);
    test_attention("attn GQA T=130 hd=64 B=2", 2, 130, 4, 2, 64, 0);
    test_swiglu();
    test_embedding();
    test_crossentropy();
    test_elementwise();
    return check_report("test_kernels_grad");
}
