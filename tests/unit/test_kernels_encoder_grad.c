/* test_kernels_encoder_grad.c: the kernels of the encoder / ViT / GPT-2 / Gemma architectures
 * (LayerNorm, GELU and GeGLU, attention_opts masks and soft-capping, patch embedding, learned
 * positions, soft-capped logits) against central finite differences of their own float forward,
 * with the loss L = sum(out * R) accumulated in double; attention's forward also against a naive
 * double-precision loop that applies each mask rule of kernels.h literally, per (query, key).
 * Backward calls start from a constant gradient buffer (the accumulate contract is checked by
 * subtracting it). Shapes are small: the test runs in seconds under ASan. PyTorch parity of the
 * same kernels is tests/kernels/test_kernels_torch.py. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kernels/kernels.h"

#define GRAD_TOL 3e-3 /* ||numeric - analytic|| / ||numeric|| over the sampled entries */
#define FD_EPS 1e-2f
#define FD_SAMPLES 120 /* entries sampled per gradient (evenly spaced) */
#define G0 0.25f /* initial contents of every gradient buffer */

static uint64_t rng_ = 88172645463325252ull;
static float urand_(void) {  // uniform [-1, 1)
    rng_ ^= rng_ << 13, rng_ ^= rng_ >> 7, rng_ ^= rng_ << 17;
    return (float)((double)(rng_ >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}
static float *buf_(size_t n, float amp) {  // amp == 0: filled with G0 (a gradient buffer)
    float *p = malloc((n + 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = amp != 0.0f ? amp * urand_() : G0;
    return p;
}

/* One differentiable input: x (perturbed by the checker) and its analytic gradient g (still
 * holding G0 + dL/dx, as the backward accumulated it). */
typedef struct {
    const char *name;
    float *x, *g;
    size_t n;
} Param;

typedef double (*loss_fn)(void *ctx); /* runs the forward, returns sum(out * R) in double */

static double dot_(const float *a, const float *R, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * R[i];
    return s;
}

/* Central differences for every Param against its analytic gradient; checks each error is below
 * GRAD_TOL (above it when reject: the negative control). */
static void gradcheck_(const char *op, loss_fn loss, void *ctx, const Param *ps, int np, int reject) {
    for (int p = 0; p < np; p++) {
        const Param *q = &ps[p];
        const size_t stride = q->n > FD_SAMPLES ? q->n / FD_SAMPLES : 1;
        double num2 = 0.0, diff2 = 0.0;
        size_t m = 0;
        for (size_t i = (size_t)((urand_() * 0.5f + 0.5f) * stride) % stride; i < q->n; i += stride) {
            const float x0 = q->x[i], xp = x0 + FD_EPS, xm = x0 - FD_EPS;
            q->x[i] = xp;
            const double lp = loss(ctx);
            q->x[i] = xm;
            const double lm = loss(ctx);
            q->x[i] = x0;
            const double num = (lp - lm) / ((double)xp - (double)xm), ana = (double)q->g[i] - G0;
            num2 += num * num, m++;
            diff2 += (num - ana) * (num - ana);
        }
        // relative, with a floor of 1e-3 (RMS) for gradients that are exactly 0 (a window of 1
        // makes out independent of q and k; the analytic side then holds float rounding only)
        const double err = sqrt(diff2) / fmax(sqrt(num2), 1e-3 * sqrt((double)m));
        printf("  %-58s %-8s grad rel err %.3g\n", op, q->name, err);
        if (reject) CHECK_MSG(err > GRAD_TOL, "%s %s: the checker accepted a corrupted gradient", op, q->name);
        else CHECK_MSG(err < GRAD_TOL, "%s %s: gradcheck %.3g", op, q->name, err);
    }
}

/* ---- layernorm -------------------------------------------------------------------------- */

typedef struct {
    int N, C;
    float *x, *w, *b, *out, *mean, *rstd, *R;
} LnCase;

static double ln_loss_(void *p) {
    LnCase *c = p;
    layernorm_forward(c->out, c->mean, c->rstd, c->x, c->w, c->b, 1e-5f, c->N, c->C);
    return dot_(c->out, c->R, (size_t)c->N * c->C);
}

static void test_layernorm(int affine) {
    LnCase c = {.N = 5, .C = 37};
    const size_t n = (size_t)c.N * c.C;
    c.x = buf_(n, 2.0f), c.R = buf_(n, 1.0f), c.out = buf_(n, 1.0f);
    c.w = affine ? buf_(c.C, 1.5f) : NULL, c.b = affine ? buf_(c.C, 1.0f) : NULL;
    c.mean = buf_(c.N, 1.0f), c.rstd = buf_(c.N, 1.0f);
    for (size_t i = 0; i < n; i++) c.x[i] += 3.0f;  // a common offset the mean must remove
    ln_loss_(&c);
    // naive double reference of the forward
    double maxd = 0.0;
    for (int r = 0; r < c.N; r++) {
        double m = 0.0, v = 0.0;
        for (int i = 0; i < c.C; i++) m += c.x[r * c.C + i];
        m /= c.C;
        for (int i = 0; i < c.C; i++) v += (c.x[r * c.C + i] - m) * (c.x[r * c.C + i] - m);
        const double rs = 1.0 / sqrt(v / c.C + 1e-5);
        for (int i = 0; i < c.C; i++) {
            const double y = (c.x[r * c.C + i] - m) * rs * (affine ? c.w[i] : 1.0) + (affine ? c.b[i] : 0.0);
            maxd = fmax(maxd, fabs(y - c.out[r * c.C + i]));
        }
    }
    CHECK_MSG(maxd < 2e-5, "layernorm forward max err %.3g", maxd);
    float *dx = buf_(n, 0), *dw = buf_(c.C, 0), *db = buf_(c.C, 0);
    layernorm_backward(dx, affine ? dw : NULL, affine ? db : NULL, c.R, c.x, c.w, c.mean, c.rstd, c.N, c.C);
    Param ps[] = {{"dinp", c.x, dx, n}, {"dweight", c.w, dw, c.C}, {"dbias", c.b, db, c.C}};
    gradcheck_(affine ? "layernorm (weight, bias)" : "layernorm (no affine)", ln_loss_, &c, ps, affine ? 3 : 1, 0);
    free(c.x), free(c.R), free(c.out), free(c.w), free(c.b), free(c.mean), free(c.rstd), free(dx), free(dw), free(db);
}

/* ---- gelu / geglu ----------------------------------------------------------------------- */

typedef struct {
    int N, F, kind, gated;
    float *gate, *up, *out, *R;
} GeluCase;

static double gelu_loss_(void *p) {
    GeluCase *c = p;
    if (c->gated) geglu_forward(c->out, c->gate, c->up, c->N, c->F, c->kind);
    else gelu_forward(c->out, c->gate, c->N, c->F, c->kind);
    return dot_(c->out, c->R, (size_t)c->N * c->F);
}

static void test_gelu(int kind, int gated) {
    GeluCase c = {.N = 3, .F = 45, .kind = kind, .gated = gated};  // 135: vector body and scalar tail
    const size_t n = (size_t)c.N * c.F;
    c.gate = buf_(n, 4.0f), c.up = buf_(n, 2.0f), c.out = buf_(n, 1.0f), c.R = buf_(n, 1.0f);
    gelu_loss_(&c);
    double maxd = 0.0;  // exact GELU in double: x Phi(x); tanh form as defined
    for (size_t i = 0; i < n; i++) {
        const double x = c.gate[i];
        const double g = kind == GELU_ERF ? 0.5 * x * (1.0 + erf(x / sqrt(2.0)))
                                          : 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
        maxd = fmax(maxd, fabs(g * (gated ? c.up[i] : 1.0) - c.out[i]));
    }
    CHECK_MSG(maxd < 1e-5, "gelu forward max err %.3g", maxd);
    float *dg = buf_(n, 0), *du = buf_(n, 0);
    if (gated) geglu_backward(dg, du, c.R, c.gate, c.up, c.N, c.F, kind);
    else gelu_backward(dg, c.R, c.gate, c.N, c.F, kind);
    Param ps[] = {{"dgate", c.gate, dg, n}, {"dup", c.up, du, n}};
    char op[64];
    snprintf(op, sizeof op, "%s %s", gated ? "geglu" : "gelu", kind == GELU_ERF ? "erf" : "tanh");
    gradcheck_(op, gelu_loss_, &c, ps, gated ? 2 : 1, 0);
    free(c.gate), free(c.up), free(c.out), free(c.R), free(dg), free(du);
}

/* ---- attention with options ------------------------------------------------------------- */

typedef struct {
    int B, T, H, KVH, hd;
    attention_opts o;
    float *q, *k, *v, *out, *lse, *R;
} AttnCase;

static double attn_loss_(void *p) {
    AttnCase *c = p;
    int rc = attention_forward_opts(c->out, c->lse, c->q, c->k, c->v, &c->o, c->B, c->T, c->T, c->H, c->KVH, c->hd);
    CHECK(rc == PEFT_OK);
    return dot_(c->out, c->R, (size_t)c->B * c->T * c->H * c->hd);
}

/* kernels.h's rules, one (query, key) pair at a time */
static int visible_(const attention_opts *o, int b, int T, int i, int j) {
    const int a = i;  // Tq == Tk
    if (o->kv_len && (a >= o->kv_len[b] || j >= o->kv_len[b])) return 0;
    if (o->causal && j > a) return 0;
    if (o->pos) {
        int p = o->pos[(size_t)b * T + i];
        p = p < 0 ? 0 : p > a ? a : p;
        if (j < a - p) return 0;
    }
    if (o->window > 0 && j <= a - o->window) return 0;
    return 1;
}

/* naive double forward; returns the max error of out and lse against the kernel's */
static double attn_ref_err_(const AttnCase *c) {
    const int group = c->H / c->KVH, qs = c->H * c->hd, ks = c->KVH * c->hd, T = c->T;
    const double scale = c->o.scale > 0 ? c->o.scale : 1.0 / sqrt((double)c->hd), cap = c->o.softcap;
    double maxd = 0.0, *s = malloc(T * sizeof(double));
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->H; h++)
            for (int i = 0; i < T; i++) {
                const float *qi = c->q + ((size_t)b * T + i) * qs + h * c->hd;
                double m = -INFINITY, l = 0.0;
                for (int j = 0; j < T; j++) {
                    const float *kj = c->k + ((size_t)b * T + j) * ks + (h / group) * c->hd;
                    double d = 0.0;
                    for (int x = 0; x < c->hd; x++) d += (double)qi[x] * kj[x];
                    d *= scale;
                    if (cap > 0) d = cap * tanh(d / cap);
                    s[j] = visible_(&c->o, b, T, i, j) ? d : -INFINITY;
                    m = fmax(m, s[j]);
                }
                for (int j = 0; j < T; j++) l += m == -INFINITY ? 0.0 : exp(s[j] - m);
                const double lse = l > 0 ? m + log(l) : 0.0;
                maxd = fmax(maxd, fabs(lse - c->lse[((size_t)b * c->H + h) * T + i]));
                for (int x = 0; x < c->hd; x++) {
                    double y = 0.0;
                    for (int j = 0; j < T; j++)
                        if (l > 0 && s[j] > -INFINITY)
                            y += exp(s[j] - lse) * c->v[((size_t)b * T + j) * ks + (h / group) * c->hd + x];
                    maxd = fmax(maxd, fabs(y - c->out[((size_t)b * T + i) * qs + h * c->hd + x]));
                }
            }
    free(s);
    return maxd;
}

static void test_attention(const char *label, attention_opts o, int B, int T, int H, int KVH, int hd) {
    AttnCase c = {.B = B, .T = T, .H = H, .KVH = KVH, .hd = hd, .o = o};
    const size_t nq = (size_t)B * T * H * hd, nk = (size_t)B * T * KVH * hd;
    c.q = buf_(nq, 1.5f), c.k = buf_(nk, 1.5f), c.v = buf_(nk, 1.0f), c.R = buf_(nq, 1.0f);
    c.out = buf_(nq, 1.0f), c.lse = buf_((size_t)B * H * T, 1.0f);
    attn_loss_(&c);
    const double fe = attn_ref_err_(&c);
    printf("  %-58s forward vs double loop max err %.3g\n", label, fe);
    CHECK_MSG(fe < 2e-5, "%s forward %.3g", label, fe);
    float *dq = buf_(nq, 0), *dk = buf_(nk, 0), *dv = buf_(nk, 0);
    int rc = attention_backward_opts(dq, dk, dv, c.R, c.q, c.k, c.v, c.out, c.lse, &c.o, B, T, H, KVH, hd);
    CHECK(rc == PEFT_OK);
    if (o.kv_len) {  // padded queries pass nothing back, padded keys receive nothing: exactly
        int exact = 1;
        for (int b = 0; b < B; b++)
            for (int i = o.kv_len[b] > 0 ? o.kv_len[b] : 0; i < T; i++) {
                for (int x = 0; x < H * hd; x++) exact &= dq[((size_t)b * T + i) * H * hd + x] == G0;
                for (int x = 0; x < KVH * hd; x++)
                    exact &= dk[((size_t)b * T + i) * KVH * hd + x] == G0 && dv[((size_t)b * T + i) * KVH * hd + x] == G0;
            }
        CHECK_MSG(exact, "%s: padded rows got a gradient", label);
    }
    Param ps[] = {{"dq", c.q, dq, nq}, {"dk", c.k, dk, nk}, {"dv", c.v, dv, nk}};
    gradcheck_(label, attn_loss_, &c, ps, 3, 0);
    free(c.q), free(c.k), free(c.v), free(c.R), free(c.out), free(c.lse), free(dq), free(dk), free(dv);
}

static void test_attention_cases(void) {
    const int32_t lens3[3] = {19, 7, 1}, lens2[2] = {19, 0}, lens1[1] = {66};
    int32_t pos[19];  // one row of packed examples of lengths 5, 9, 5
    for (int i = 0; i < 19; i++) pos[i] = i < 5 ? i : i < 14 ? i - 5 : i - 14;
    test_attention("bidirectional, kv_len {19, 7, 1}", (attention_opts){.kv_len = lens3}, 3, 19, 2, 1, 8);
    test_attention("bidirectional, kv_len {19, 0}, scale 0.2", (attention_opts){.kv_len = lens2, .scale = 0.2f}, 2,
                   19, 2, 2, 8);
    test_attention("causal, window 1 (self only)", (attention_opts){.causal = 1, .window = 1}, 1, 19, 2, 1, 8);
    test_attention("causal, window 4", (attention_opts){.causal = 1, .window = 4}, 1, 19, 4, 2, 8);
    test_attention("causal, window 40 > T (no effect)", (attention_opts){.causal = 1, .window = 40}, 1, 19, 2, 1, 8);
    test_attention("causal, packed, window 6", (attention_opts){.causal = 1, .pos = pos, .window = 6}, 1, 19, 2, 1, 8);
    test_attention("causal, softcap 2, scale 0.5", (attention_opts){.causal = 1, .softcap = 2.0f, .scale = 0.5f}, 1,
                   19, 2, 1, 8);
    test_attention("causal, window 5, softcap 3, kv_len {19, 7, 1}",
                   (attention_opts){.causal = 1, .window = 5, .softcap = 3.0f, .kv_len = lens3}, 3, 19, 2, 2, 8);
    test_attention("bidirectional, softcap 1.5, 70 keys (two key blocks)",
                   (attention_opts){.softcap = 1.5f, .scale = 0.4f}, 1, 70, 1, 1, 4);
    test_attention("causal, window 20, 70 keys, kv_len {66}",
                   (attention_opts){.causal = 1, .window = 20, .kv_len = lens1}, 1, 70, 1, 1, 4);
}

/* ---- patch embedding -------------------------------------------------------------------- */

typedef struct {
    int B, Cin, H, W, P, C;
    float *img, *w, *bias, *cols, *out, *R;
} PatchCase;

static double patch_loss_(void *p) {
    PatchCase *c = p;
    patch_embed_forward(c->out, c->cols, c->img, c->w, c->bias, c->B, c->Cin, c->H, c->W, c->P, c->C);
    return dot_(c->out, c->R, (size_t)c->B * (c->H / c->P) * (c->W / c->P) * c->C);
}

static void test_patch_embed(void) {
    PatchCase c = {.B = 2, .Cin = 3, .H = 10, .W = 13, .P = 4, .C = 5};  // 2 x 3 patches, edges dropped
    const int np = (c.H / c.P) * (c.W / c.P), K = c.Cin * c.P * c.P;
    const size_t no = (size_t)c.B * np * c.C;
    c.img = buf_((size_t)c.B * c.Cin * c.H * c.W, 1.0f), c.w = buf_((size_t)c.C * K, 0.5f), c.bias = buf_(c.C, 1.0f);
    c.cols = buf_((size_t)c.B * np * K, 1.0f), c.out = buf_(no, 1.0f), c.R = buf_(no, 1.0f);
    patch_loss_(&c);
    double maxd = 0.0;  // direct convolution in double
    for (int b = 0; b < c.B; b++)
        for (int p = 0; p < np; p++)
            for (int o = 0; o < c.C; o++) {
                const int py = p / (c.W / c.P), px = p % (c.W / c.P);
                double y = c.bias[o];
                for (int ci = 0; ci < c.Cin; ci++)
                    for (int u = 0; u < c.P; u++)
                        for (int x = 0; x < c.P; x++)
                            y += (double)c.w[((o * c.Cin + ci) * c.P + u) * c.P + x] *
                                 c.img[((b * c.Cin + ci) * c.H + py * c.P + u) * c.W + px * c.P + x];
                maxd = fmax(maxd, fabs(y - c.out[((size_t)b * np + p) * c.C + o]));
            }
    CHECK_MSG(maxd < 1e-5, "patch_embed forward max err %.3g", maxd);
    float *dw = buf_((size_t)c.C * K, 0), *db = buf_(c.C, 0);
    patch_embed_backward(dw, db, c.R, c.cols, c.B, c.Cin, c.H, c.W, c.P, c.C);
    Param ps[] = {{"dweight", c.w, dw, (size_t)c.C * K}, {"dbias", c.bias, db, c.C}};
    gradcheck_("patch_embed 10x13, P 4", patch_loss_, &c, ps, 2, 0);
    free(c.img), free(c.w), free(c.bias), free(c.cols), free(c.out), free(c.R), free(dw), free(db);
}

/* ---- learned positions, soft-capping ---------------------------------------------------- */

typedef struct {
    int N, C;
    const int32_t *pos;
    float *base, *table, *out, *R;
} PosCase;

static double pos_loss_(void *p) {
    PosCase *c = p;
    memcpy(c->out, c->base, (size_t)c->N * c->C * sizeof(float));
    embedding_add_forward(c->out, c->pos, c->table, c->N, c->C);
    return dot_(c->out, c->R, (size_t)c->N * c->C);
}

static void test_positions(void) {
    const int32_t pos[6] = {0, 1, 2, 0, 1, 4};  // two packed examples: repeated positions
    PosCase c = {.N = 6, .C = 9, .pos = pos};
    c.base = buf_(54, 1.0f), c.table = buf_(5 * 9, 1.0f), c.out = buf_(54, 1.0f), c.R = buf_(54, 1.0f);
    float *dt = buf_(5 * 9, 0);
    embedding_backward(dt, c.R, pos, c.N, c.C);
    Param ps[] = {{"dtable", c.table, dt, 45}};
    gradcheck_("positions (embedding_add_forward)", pos_loss_, &c, ps, 1, 0);
    CHECK(dt[3 * 9] == G0);  // position 3 is never used
    free(c.base), free(c.table), free(c.out), free(c.R), free(dt);
}

typedef struct {
    int N, V;
    float cap, scale;
    const int32_t *targets;
    float *x, *tmp, *losses, *R;
} CapCase;

static double softcap_loss_(void *p) {
    CapCase *c = p;
    softcap_forward(c->tmp, c->x, c->cap, (size_t)c->N * c->V);
    return dot_(c->tmp, c->R, (size_t)c->N * c->V);
}

static double xent_cap_loss_(void *p) {  // scale * sum of the soft-capped losses
    CapCase *c = p;
    memcpy(c->tmp, c->x, (size_t)c->N * c->V * sizeof(float));
    crossentropy_softcap_fused(c->losses, c->tmp, c->targets, c->cap, c->scale, c->N, c->V);
    double s = 0.0;
    for (int n = 0; n < c->N; n++) s += (double)c->losses[n] * c->scale;
    return s;
}

static void test_softcap(void) {
    const int32_t targets[4] = {3, -100, 0, 36};
    CapCase c = {.N = 4, .V = 37, .cap = 5.0f, .scale = 1.0f / 3.0f, .targets = targets};
    const size_t n = (size_t)c.N * c.V;
    c.x = buf_(n, 12.0f), c.tmp = buf_(n, 1.0f), c.losses = buf_(c.N, 1.0f), c.R = buf_(n, 1.0f);
    softcap_forward(c.tmp, c.x, c.cap, n);
    float *dx = buf_(n, 0);
    softcap_backward(dx, c.R, c.tmp, c.cap, n);
    Param ps[] = {{"dinp", c.x, dx, n}};
    gradcheck_("softcap cap 5", softcap_loss_, &c, ps, 1, 0);
    // fused loss head: the analytic gradient is what the kernel leaves in the logits
    float *g = buf_(n, 1.0f);
    memcpy(g, c.x, n * sizeof(float));
    const int count = crossentropy_softcap_fused(c.losses, g, targets, c.cap, c.scale, c.N, c.V);
    CHECK(count == 3);
    for (size_t i = 0; i < n; i++) g[i] += G0;
    Param pf[] = {{"dlogits", c.x, g, n}};
    gradcheck_("crossentropy_softcap_fused cap 5", xent_cap_loss_, &c, pf, 1, 0);
    free(c.x), free(c.tmp), free(c.losses), free(c.R), free(dx), free(g);
}

/* ---- negative control -------------------------------------------------------------------- */

static void test_checker_rejects(void) {
    // the gelu gradient with one entry off: gradcheck_ must see it
    GeluCase c = {.N = 1, .F = 40, .kind = GELU_TANH};
    c.gate = buf_(40, 3.0f), c.up = NULL, c.out = buf_(40, 1.0f), c.R = buf_(40, 1.0f);
    float *dg = buf_(40, 0);
    gelu_backward(dg, c.R, c.gate, c.N, c.F, c.kind);
    dg[7] += 0.5f;
    Param ps[] = {{"dgate*", c.gate, dg, 40}};
    gradcheck_("negative control (corrupted gelu gradient)", gelu_loss_, &c, ps, 1, 1);
    free(c.gate), free(c.out), free(c.R), free(dg);
}

int main(void) {
    test_layernorm(1);
    test_layernorm(0);
    test_gelu(GELU_ERF, 0);
    test_gelu(GELU_TANH, 0);
    test_gelu(GELU_ERF, 1);
    test_gelu(GELU_TANH, 1);
    test_attention_cases();
    test_patch_embed();
    test_positions();
    test_softcap();
    test_checker_rejects();
    return check_report("test_kernels_encoder_grad");
}
