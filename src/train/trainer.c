/* trainer.c: the fine-tuning loop. Everything a step depends on is a function of (seed,
 * step): the data order (a seeded permutation per epoch), the dropout masks (seeded per
 * micro-batch) and LISA's layers (seeded per period). So a checkpoint only holds the
 * parameters, the AdamW moments, the step and (LISA) the layers trained in earlier periods,
 * and a resumed run repeats an uninterrupted one bit for bit. */
#include "trainer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fileio.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "rng.h"
#include "train/checkpoint.h"
#include "train/dist.h"

void peft_train_opts_default(peft_train_opts *o) {
    memset(o, 0, sizeof *o);
    o->batch = 4;
    o->seq_len = 256;
    o->grad_accum = 1;
    o->steps = 100;
    o->lr = 2e-4;
    o->beta1 = 0.9;
    o->beta2 = 0.999;
    o->eps = 1e-8;
    o->weight_decay = 0.0;
    o->lr_ratio_b = 1.0;
    o->max_grad_norm = 1.0;
    o->schedule = PEFT_SCHED_COSINE;
    o->eval_batches = 0;
    o->seed = 42;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- data order ----------------------------------------------------------------- */

typedef struct row_order {
    int rows;
    long epoch;   /* epoch whose permutation is in perm (-1: none) */
    int *perm;
    uint64_t seed;
} row_order;

/* The dataset row of global draw index k: epoch k / rows, shuffled by (seed, epoch). */
static int row_at(row_order *o, long k) {
    long epoch = k / o->rows;
    if (epoch != o->epoch) {
        peft_rng rng;
        peft_rng_seed(&rng, o->seed, 0x6461746100000000ull + (uint64_t)epoch);
        for (int i = 0; i < o->rows; i++) o->perm[i] = i;
        for (int i = o->rows - 1; i > 0; i--) {
            int j = (int)peft_rng_below(&rng, (uint32_t)i + 1), t = o->perm[i];
            o->perm[i] = o->perm[j];
            o->perm[j] = t;
        }
        o->epoch = epoch;
    }
    return o->perm[k % o->rows];
}

/* The given dataset rows (-1: padding, no loss) as model input rows of T tokens. With nv =
 * m->virt.n_virtual virtual tokens (prompt / prefix tuning) each row starts with nv placeholders, the
 * data (T - nv tokens) follows and its positions count on from nv. The placeholders carry no
 * loss, except that with prompt tuning the last one predicts the first data token (when it is
 * learnt): HF PEFT's loss does so, its virtual tokens being positions of the sequence. Prefix
 * tuning's are a cache, with no prediction of their own. */
static int fill_rows(const peft_dataset *ds, int split, const int *rows, int B, int T, const peft_model *m, int32_t *in,
                     int32_t *tgt, int32_t *pos, peft_err *err) {
    int nv = m->virt.n_virtual;
    for (int b = 0; b < B; b++) {
        int32_t *bi = in + (size_t)b * T, *bt = tgt + (size_t)b * T, *bp = pos + (size_t)b * T;
        if (rows[b] < 0) {
            for (int t = 0; t < T; t++) bi[t] = 0, bt[t] = -1, bp[t] = t;
            continue;
        }
        int rc = peft_dataset_row(ds, split, rows[b], bi + nv, bt + nv, bp + nv);
        if (rc) return peft_fail(err, rc, "dataset row %d of split %d could not be read", rows[b], split);
        for (int t = 0; t < nv; t++) bi[t] = 0, bt[t] = -1, bp[t] = t;
        for (int t = nv; t < T && nv; t++) bp[t] += nv;
        if (nv && m->virt.emb) bt[nv - 1] = peft_dataset_row_first_target(ds, split, rows[b]);
    }
    return PEFT_OK;
}

/* What batches are made of: a causal-LM dataset's split (packed rows, next-token targets), or a
 * classification dataset's examples (padded to the batch's longest, label targets). */
typedef struct train_src {
    const peft_dataset *ds;      /* causal-lm, or NULL */
    int split;
    const peft_cls_dataset *cls; /* seq-cls / image-cls, or NULL */
} train_src;

static int src_rows(const train_src *s) {
    return s->cls ? s->cls->n : s->ds ? peft_dataset_rows(s->ds, s->split) : 0;
}

static uint64_t src_hash(const train_src *s) {
    return s->cls ? peft_cls_hash(s->cls) : s->ds ? peft_dataset_hash(s->ds) : 0;
}

/* ---- evaluation ------------------------------------------------------------------- */

typedef struct batch_bufs {
    int B, T;
    int32_t *in, *tgt, *pos;
    int *rows;
    peft_cls_batch cls;
} batch_bufs;

/* The model's batch over bb->rows[B] (-1: padding, only at the end): causal-lm rows of T tokens
 * (positions inside packed examples), or classification examples, the padding rows left out. */
static int src_batch(const train_src *s, const peft_model *m, batch_bufs *bb, peft_batch *out, peft_err *err) {
    if (s->cls) {
        int n = bb->B, pad = m->info.pad_token_id >= 0 ? m->info.pad_token_id : 0;
        while (n > 0 && bb->rows[n - 1] < 0) n--;
        int rc = peft_cls_batch_fill(s->cls, bb->rows, n, 0, pad, &bb->cls, err);
        *out = bb->cls.b;
        return rc;
    }
    *out = (peft_batch){.B = bb->B, .T = bb->T, .ids = bb->in, .pos = bb->pos, .targets = bb->tgt};
    return fill_rows(s->ds, s->split, bb->rows, bb->B, bb->T, m, bb->in, bb->tgt, bb->pos, err);
}

static int eval_split(peft_model *m, peft_adapter_set *set, const train_src *src, peft_acts *acts, batch_bufs *bb,
                      int max_batches, double *loss, peft_err *err) {
    int B = bb->B, n_rows = src_rows(src);
    if (set) peft_adapter_set_mode(set, 0, 0); /* `peft eval` of a base model has no adapters */
    double sum = 0;
    long count = 0;
    for (int r0 = 0, k = 0; r0 < n_rows && (max_batches <= 0 || k < max_batches); r0 += B, k++) {
        for (int b = 0; b < B; b++) bb->rows[b] = r0 + b < n_rows ? r0 + b : -1;
        double l;
        int counted;
        peft_batch batch;
        int rc = src_batch(src, m, bb, &batch, err);
        if (rc == PEFT_OK) rc = peft_model_forward(m, acts, &batch, &l, &counted, err);
        if (rc) return rc;
        sum += l * counted;
        count += counted;
    }
    if (!count) /* a mean over nothing is no loss: refuse rather than report NaN */
        return peft_fail(err, PEFT_EINVAL, "evaluation: no token to evaluate (%d rows, none with a target)", n_rows);
    *loss = sum / count;
    return PEFT_OK;
}

static int bufs_alloc(batch_bufs *bb, int B, int T, peft_err *err) {
    size_t n = (size_t)B * T;
    bb->B = B;
    bb->T = T;
    bb->in = malloc(n * sizeof(int32_t));
    bb->tgt = malloc(n * sizeof(int32_t));
    bb->pos = malloc(n * sizeof(int32_t));
    bb->rows = malloc((size_t)B * sizeof(int));
    return bb->in && bb->tgt && bb->pos && bb->rows ? PEFT_OK : peft_fail(err, PEFT_ENOMEM, "out of memory");
}

static void bufs_free(batch_bufs *bb) {
    free(bb->in);
    free(bb->tgt);
    free(bb->pos);
    free(bb->rows);
    peft_cls_batch_free(&bb->cls);
}

int peft_evaluate(peft_model *m, peft_adapter_set *set, const peft_dataset *ds, int B, int T, int split, int max_batches,
                  double *loss, peft_err *err) {
    batch_bufs bb = {0};
    peft_acts *acts = NULL;
    int rc = peft_model_acts_alloc(m, B, T, 0, 0, &acts, err);
    if (rc == PEFT_OK) rc = bufs_alloc(&bb, B, T, err);
    train_src src = {.ds = ds, .split = split};
    if (rc == PEFT_OK) rc = eval_split(m, set, &src, acts, &bb, max_batches, loss, err);
    bufs_free(&bb);
    peft_model_acts_free(m, acts);
    return rc;
}

/* ---- checkpoints ------------------------------------------------------------------ */

/* Methods whose trainable tensors change (LISA): brings the set to update `step`; when its
 * parameters changed, the optimizer starts afresh on them and `log` (if given) names the
 * layers trained from update step + 1 on. */
static int set_begin_step(peft_adapter_set *set, peft_adamw *opt, long step, FILE *log, peft_err *err) {
    int rc = peft_adapter_set_begin_step(set, step, err);
    if (rc <= 0) return rc;
    rc = peft_adamw_rebind(opt, peft_adapter_set_params(set), peft_adapter_set_n_params(set), err);
    if (rc == PEFT_OK && log) {
        int layers[1024], n = peft_adapter_set_active_layers(set, layers, 1024);
        fprintf(log, "{\"step\":%ld,\"active_layers\":[", step + 1);
        for (int i = 0; i < n && i < 1024; i++) fprintf(log, "%s%d", i ? "," : "", layers[i]);
        fprintf(log, "]}\n");
    }
    return rc;
}

/* ---- log and plot ------------------------------------------------------------------ */

typedef struct curve {
    int n, cap;
    double *x, *y;
} curve;

static void curve_add(curve *c, double x, double y) {
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 256;
        double *nx = realloc(c->x, (size_t)cap * sizeof *nx);
        if (!nx) return;
        c->x = nx;
        double *ny = realloc(c->y, (size_t)cap * sizeof *ny);
        if (!ny) return;
        c->y = ny;
        c->cap = cap;
    }
    c->x[c->n] = x;
    c->y[c->n++] = y;
}

static void curve_free(curve *c) {
    free(c->x);
    free(c->y);
}

/* Keeps the log lines of steps <= last_step (a resumed run rewrites what came after) and
 * reloads their points into the curves. */
static int log_restore(const char *path, long last_step, curve *train, curve *val, peft_err *err) {
    char *text;
    size_t len;
    if (!peft_file_exists(path)) return PEFT_OK;
    int rc = peft_read_file(path, &text, &len, err);
    if (rc) return rc;
    size_t kept = 0;
    for (char *line = text; *line;) {
        char *nl = strchr(line, '\n');
        size_t ll = nl ? (size_t)(nl - line + 1) : strlen(line);
        cJSON *o = cJSON_ParseWithLength(line, ll);
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "step");
        if (cJSON_IsNumber(s) && s->valuedouble <= (double)last_step) {
            const cJSON *l = cJSON_GetObjectItemCaseSensitive(o, "loss"), *v = cJSON_GetObjectItemCaseSensitive(o, "val_loss");
            if (cJSON_IsNumber(l)) curve_add(train, s->valuedouble, l->valuedouble);
            if (cJSON_IsNumber(v)) curve_add(val, s->valuedouble, v->valuedouble);
            memmove(text + kept, line, ll);
            kept += ll;
        }
        cJSON_Delete(o);
        line += ll;
    }
    rc = peft_write_file_atomic(path, text, kept, err);
    free(text);
    return rc;
}

static void write_svg(const char *path, const curve *train, const curve *val) {
    double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
    const curve *cs[2] = {train, val};
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < cs[c]->n; i++) {
            x0 = fmin(x0, cs[c]->x[i]), x1 = fmax(x1, cs[c]->x[i]);
            y0 = fmin(y0, cs[c]->y[i]), y1 = fmax(y1, cs[c]->y[i]);
        }
    if (x0 > x1) return;
    if (x1 - x0 < 1) x1 = x0 + 1;
    if (y1 - y0 < 1e-9) y1 = y0 + 1e-9;
    const double W = 720, H = 400, L = 60, R = 20, TOP = 30, BOT = 40;
    FILE *fp = fopen(path, "w");
    if (!fp) return;
    fprintf(fp, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    fprintf(fp, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n<text x=\"%.0f\" y=\"18\">loss (nats/token) vs. step</text>\n", L);
    fprintf(fp, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n", L, H - BOT, W - R, H - BOT);
    fprintf(fp, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n", L, TOP, L, H - BOT);
    fprintf(fp, "<text x=\"5\" y=\"%.0f\">%.3f</text><text x=\"5\" y=\"%.0f\">%.3f</text>\n", TOP + 10, y1, H - BOT, y0);
    fprintf(fp, "<text x=\"%.0f\" y=\"%.0f\">%.0f</text><text x=\"%.0f\" y=\"%.0f\">step %.0f</text>\n", L, H - 20, x0, W - R - 70,
            H - 20, x1);
    const char *colors[2] = {"#1f77b4", "#ff7f0e"}, *labels[2] = {"train", "validation"};
    for (int c = 0; c < 2; c++) {
        if (!cs[c]->n) continue;
        fprintf(fp, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", colors[c]);
        for (int i = 0; i < cs[c]->n; i++)
            fprintf(fp, "%.1f,%.1f ", L + (cs[c]->x[i] - x0) / (x1 - x0) * (W - L - R),
                    H - BOT - (cs[c]->y[i] - y0) / (y1 - y0) * (H - TOP - BOT));
        fprintf(fp, "\"/>\n<text x=\"%.0f\" y=\"%.0f\" fill=\"%s\">%s</text>\n", W - R - 90, TOP + 15 + 15 * c, colors[c], labels[c]);
    }
    fprintf(fp, "</svg>\n");
    fclose(fp);
}

static void progress_bar(long step, long total, double loss, double tps, double eta_s) {
    int width = 30, filled = (int)(width * step / (total ? total : 1));
    fprintf(stderr, "\r[");
    for (int i = 0; i < width; i++) fputc(i < filled ? '#' : '.', stderr);
    fprintf(stderr, "] %ld/%ld loss %.4f  %.0f tok/s  ETA %02d:%02d ", step, total, loss, tps, (int)eta_s / 60, (int)eta_s % 60);
    fflush(stderr);
}

/* ---- one update's gradient, over micro-batches and ranks --------------------------- */

/* Forward and backward of micro-batch `micro` (0 .. grad_accum - 1) of update `step` into the
 * zeroed gradients; its mean loss (over its counted tokens) into *loss. Its rows and dropout
 * seed are functions of (seed, step, micro) only, never of the rank that runs it. */
static int micro_batch(peft_model *m, peft_adapter_set *set, const train_src *src, const peft_train_opts *o, peft_acts *acts,
                       batch_bufs *bb, row_order *order, long step, int micro, double *loss, peft_err *err) {
    int B = o->batch, counted;
    long k0 = (step * o->grad_accum + micro) * (long)B;
    for (int b = 0; b < B; b++) bb->rows[b] = row_at(order, k0 + b);
    peft_batch batch;
    int rc = src_batch(src, m, bb, &batch, err);
    peft_adapter_set_mode(set, 1, peft_mix64(o->seed ^ ((uint64_t)step << 20) ^ (uint64_t)micro));
    peft_adapter_set_zero_grad(set);
    if (rc == PEFT_OK) rc = peft_model_forward(m, acts, &batch, loss, &counted, err);
    if (rc == PEFT_OK && (rc = peft_model_backward(m, acts, &batch, counted)))
        rc = peft_fail(err, rc, "out of memory for a kernel's scratch (backward pass)");
    return rc;
}

/* The buffers of the gradient sum: acc [numel] (every trainable number back to back, in
 * parameter order); with more than one rank a packet [8 + 4 numel] (a micro-batch's loss as a
 * double, then its gradient) to send and size of them received. */
typedef struct grad_sum {
    size_t cap;            /* floats acc holds */
    float *acc;
    unsigned char *send, *recv;
} grad_sum;

static int grad_sum_reserve(grad_sum *g, size_t numel, int ranks, peft_err *err) {
    if (numel <= g->cap) return PEFT_OK;
    free(g->acc);
    free(g->send);
    free(g->recv);
    size_t packet = 8 + 4 * numel;
    g->acc = malloc(numel * sizeof(float));
    g->send = ranks > 1 ? malloc(packet) : NULL;
    g->recv = ranks > 1 ? malloc(packet * (size_t)ranks) : NULL;
    g->cap = g->acc && (ranks == 1 || (g->send && g->recv)) ? numel : 0;
    return g->cap ? PEFT_OK : peft_fail(err, PEFT_ENOMEM, "out of memory for the gradient sum (%zu numbers)", numel);
}

static void grad_sum_free(grad_sum *g) {
    free(g->acc);
    free(g->send);
    free(g->recv);
}

static void add_into(float *acc, const float *g, size_t n) {
    for (size_t j = 0; j < n; j++) acc[j] += g[j];
}

/* Update `step`'s gradient. Rank r runs micro-batches r, r + size, r + 2 size, ... (grad_accum
 * is a multiple of size); after each round every rank holds that round's size gradients and
 * adds them to the sum in micro-batch order. So every rank, for any number of ranks, computes
 * g0 + g1 + ... + g(G-1) added left to right, each gi computed alone: a job of N ranks gives
 * the bits of a single process, and every rank the same bits (so their AdamW updates, run
 * redundantly, keep the parameters equal without sending them). One micro-batch on one
 * process needs no sum. Leaves the mean gradient (sum / G) in the parameters' grad and the
 * mean of the micro-batches' losses in *loss. */
static int step_gradient(peft_model *m, peft_adapter_set *set, const train_src *src, const peft_train_opts *o,
                         const peft_dist *D, peft_acts *acts, batch_bufs *bb, row_order *order, grad_sum *gs, long step,
                         double *loss, peft_err *err) {
    int n = peft_adapter_set_n_params(set), G = o->grad_accum;
    peft_named_param *p = peft_adapter_set_params(set);
    if (D->size == 1 && G == 1) return micro_batch(m, set, src, o, acts, bb, order, step, 0, loss, err);
    size_t numel = 0, packet;
    for (int i = 0; i < n; i++) numel += p[i].p.numel;
    packet = 8 + 4 * numel;
    int rc = peft_dist_agree(D, grad_sum_reserve(gs, numel, D->size, err), err);
    if (rc) return rc;
    memset(gs->acc, 0, numel * sizeof(float));
    double loss_sum = 0;
    for (int r0 = 0; r0 < G && rc == PEFT_OK; r0 += D->size) {
        double l = 0;
        rc = micro_batch(m, set, src, o, acts, bb, order, step, r0 + D->rank, &l, err);
        if (D->size == 1) {
            for (size_t i = 0, off = 0; i < (size_t)n && rc == PEFT_OK; off += p[i].p.numel, i++)
                add_into(gs->acc + off, p[i].p.grad, p[i].p.numel);
            loss_sum += l;
            continue;
        }
        memcpy(gs->send, &l, 8);
        for (size_t i = 0, off = 8; i < (size_t)n && rc == PEFT_OK; off += 4 * p[i].p.numel, i++)
            memcpy(gs->send + off, p[i].p.grad, 4 * p[i].p.numel);
        rc = peft_dist_agree(D, rc, err);
        if (rc == PEFT_OK) rc = peft_dist_allgather(D, gs->send, packet, gs->recv, err);
        for (int r = 0; r < D->size && rc == PEFT_OK; r++) { /* rank order = micro-batch order */
            const unsigned char *pk = gs->recv + (size_t)r * packet;
            memcpy(&l, pk, 8);
            loss_sum += l;
            add_into(gs->acc, (const float *)(pk + 8), numel); /* packets start at multiples of 4 bytes */
        }
    }
    if (rc) return rc;
    for (size_t i = 0, off = 0; i < (size_t)n; off += p[i].p.numel, i++) memcpy(p[i].p.grad, gs->acc + off, 4 * p[i].p.numel);
    /* Each micro-batch contributed the gradient of its mean loss: average them. */
    if (G > 1) peft_grad_scale(p, n, 1.0f / (float)G);
    *loss = loss_sum / G;
    return PEFT_OK;
}

/* --resume: rank 0 reads the checkpoint and sends its bytes to every rank (the others may run
 * on machines without the output directory); each restores its copy of the state from them.
 * *found: whether there was a checkpoint to resume from. */
static int resume_state(const peft_dist *D, const char *ckpt, peft_adapter_set *set, peft_adamw *opt, const char *signature,
                        long max_step, long *step, int *found, peft_err *err) {
    char *bytes = NULL;
    size_t len = 0;
    int rc = D->rank == 0 && peft_file_exists(ckpt) ? peft_read_file(ckpt, &bytes, &len, err) : PEFT_OK;
    uint64_t n = len;
    rc = peft_dist_agree(D, rc, err);
    if (rc == PEFT_OK) rc = peft_dist_bcast(D, &n, sizeof n, 0, err);
    if (rc == PEFT_OK && n && D->rank && !(bytes = malloc((size_t)n)))
        rc = peft_fail(err, PEFT_ENOMEM, "out of memory for the checkpoint (%llu bytes)", (unsigned long long)n);
    rc = peft_dist_agree(D, rc, err);
    if (rc == PEFT_OK) rc = peft_dist_bcast(D, bytes, (size_t)n, 0, err);
    peft_st_file *f = NULL;
    if (rc == PEFT_OK && n) rc = peft_st_parse((const unsigned char *)bytes, (size_t)n, ckpt, &f, err);
    if (rc == PEFT_OK && n) rc = peft_checkpoint_restore(f, set, opt, signature, max_step, step, err);
    if (f) peft_st_close(f);
    free(bytes);
    *found = n > 0;
    return rc;
}

/* ---- the loop ----------------------------------------------------------------------- */

/* The loop over train's rows, validating on val's (none: src_rows 0). */
static int train_loop(peft_model *m, peft_adapter_set *set, const train_src *train, const train_src *val,
                      const peft_train_opts *o, peft_train_result *res, peft_err *err) {
    static const peft_dist solo = {.rank = 0, .size = 1};
    const peft_dist *D = o->dist ? o->dist : &solo;
    int root = D->rank == 0; /* writes the log, checkpoints and the adapter; validates */
    memset(res, 0, sizeof *res);
    res->first_val_loss = res->final_val_loss = NAN;
    int B = o->batch, T = o->seq_len, n_train = src_rows(train), n_val = src_rows(val);
    if (B < 1 || T < 2 || o->grad_accum < 1 || o->steps < 1)
        return peft_fail(err, PEFT_EINVAL, "batch, grad_accum and steps must be >= 1 and seq_len >= 2");
    if (n_train < 1) return peft_fail(err, PEFT_EINVAL, "the training split is empty");
    if (o->grad_accum % D->size)
        return peft_fail(err, PEFT_EINVAL, "--grad-accum %d is not a multiple of the %d MPI ranks: every rank runs grad_accum / "
                         "ranks micro-batches of --batch rows per update (the global batch is batch x grad_accum rows)",
                         o->grad_accum, D->size);
    /* one run at a time per output directory; what a killed run left is removed */
    int lock = -1, rc = root ? peft_mkdir(o->out_dir, err) : PEFT_OK;
    if (rc == PEFT_OK && root) rc = peft_dir_lock(o->out_dir, &lock, err);
    for (int k = 0; k < 2 && rc == PEFT_OK && root && train->ds; k++) {
        const peft_dataset *d = k ? o->val_data : train->ds;
        if (d && peft_dataset_dropped(d))
            fprintf(stderr, "warning: %s data: %d records dropped: their prompt fills --seq-len %d, leaving no completion token "
                    "to learn\n", k ? "validation" : "training", peft_dataset_dropped(d), T);
    }

    peft_acts *acts = NULL;
    peft_adamw opt = {0};
    batch_bufs bb = {0};
    grad_sum gs = {0};
    row_order order = {.rows = n_train, .epoch = -1, .seed = o->seed, .perm = malloc((size_t)n_train * sizeof(int))};
    curve train_curve = {0}, val_curve = {0};
    int n_params = peft_adapter_set_n_params(set);
    peft_named_param *params = peft_adapter_set_params(set);
    for (int i = 0; i < n_params; i++)
        if (strstr(params[i].key, "lora_B")) params[i].p.lr_scale = (float)o->lr_ratio_b;
    if (rc == PEFT_OK) rc = peft_model_acts_alloc(m, B, T, !o->recompute, 1, &acts, err);
    if (rc == PEFT_OK) rc = peft_adapter_set_reserve(set, B * T, err);
    if (rc == PEFT_OK) rc = bufs_alloc(&bb, B, T, err);
    if (rc == PEFT_OK) rc = peft_adamw_init(&opt, params, n_params, o->beta1, o->beta2, o->eps, o->weight_decay, err);
    opt.allora_eta = o->allora_eta;
    if (rc == PEFT_OK && !order.perm) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");

    char ckpt[4200], log_path[4200], log_new[4300] = "", svg_path[4200];
    snprintf(ckpt, sizeof ckpt, "%s/checkpoint.safetensors", o->out_dir);
    snprintf(log_path, sizeof log_path, "%s/train_log.jsonl", o->out_dir);
    snprintf(svg_path, sizeof svg_path, "%s/loss.svg", o->out_dir);
    char *signature = rc == PEFT_OK ? peft_run_signature(o, m, set, src_hash(train), val->ds && val->ds == train->ds ? 0 : src_hash(val)) : NULL;
    if (rc == PEFT_OK && !signature) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    rc = peft_dist_agree(D, rc, err);
    long step = 0;
    int resumed = 0;
    if (rc == PEFT_OK && o->resume) rc = resume_state(D, ckpt, set, &opt, signature, o->steps, &step, &resumed, err);
    if (rc == PEFT_OK && resumed && root) {
        rc = log_restore(log_path, step, &train_curve, &val_curve, err);
        if (rc == PEFT_OK) fprintf(stderr, "resuming from %s at step %ld\n", ckpt, step);
    } else if (!resumed) {
        /* a fresh run logs beside the previous run's log and replaces it only once its first
         * update is done: a run that cannot start leaves the old log alone */
        snprintf(log_new, sizeof log_new, "%s.tmp.%ld", log_path, (long)getpid());
    }
    const char *log_open = *log_new ? log_new : log_path;
    FILE *log = rc == PEFT_OK && root ? fopen(log_open, *log_new ? "w" : "a") : NULL;
    if (rc == PEFT_OK && root && !log) rc = peft_fail(err, PEFT_EIO, "%s: cannot open for writing: %s", log_open, strerror(errno));

    if (rc == PEFT_OK && root && n_val > 0 && step == 0) {
        rc = eval_split(m, set, val, acts, &bb, o->eval_batches, &res->first_val_loss, err);
        if (rc == PEFT_OK) {
            fprintf(log, "{\"step\":0,\"val_loss\":%.6f}\n", res->first_val_loss);
            curve_add(&val_curve, 0, res->first_val_loss);
        }
    }
    rc = peft_dist_agree(D, rc, err);
    double t_start = now_s(), tokens_seen = 0, train_s = 0; /* train_s: time in updates, without validation */
    long step_start = step;
    while (rc == PEFT_OK && step < o->steps) {
        double t0 = now_s(), loss;
        /* every rank brings LISA to the same layers: they are a function of (seed, step) */
        if ((rc = peft_dist_agree(D, set_begin_step(set, &opt, step, log, err), err))) break;
        n_params = peft_adapter_set_n_params(set);
        rc = step_gradient(m, set, train, o, D, acts, &bb, &order, &gs, step, &loss, err);
        if (rc) break;
        /* clipping and the update see the summed gradient, equal on every rank */
        double gnorm = peft_grad_norm(params, n_params);
        if (!isfinite(loss) || !isfinite(gnorm)) {
            if (!o->skip_nonfinite) {
                rc = peft_fail(err, PEFT_ENUMERIC,
                               "step %ld: %s is not finite (loss %g, gradient norm %g); stopping before the adapter is "
                               "poisoned (--skip-nonfinite skips such steps instead)",
                               step + 1, isfinite(loss) ? "the gradient" : "the loss", loss, gnorm);
                break;
            }
            res->skipped_steps++;
        } else {
            if (o->max_grad_norm > 0 && gnorm > o->max_grad_norm)
                peft_grad_scale(params, n_params, (float)(o->max_grad_norm / (gnorm + 1e-6)));
            peft_adamw_step(&opt, peft_lr_at(o->schedule, o->lr, step, o->steps, o->warmup));
            /* A finite gradient can still overflow a parameter (a huge learning rate): never
             * carry non-finite weights into a checkpoint or the adapter. */
            for (int i = 0; i < n_params && rc == PEFT_OK; i++)
                for (size_t j = 0; j < params[i].p.numel; j++)
                    if (!isfinite(params[i].p.data[j])) {
                        rc = peft_fail(err, PEFT_ENUMERIC, "step %ld: the update made %s non-finite (learning rate %g too high?); "
                                       "stopping before the adapter is poisoned", step + 1, params[i].key, o->lr);
                        break;
                    }
            if (rc) break;
        }
        step++;
        double dt = now_s() - t0;
        tokens_seen += (double)o->grad_accum * B * T; /* the whole job's tokens: every rank counts them all */
        train_s += dt;
        res->final_train_loss = loss;
        if (!root) { /* rank 0 alone logs, validates and saves; the others wait for its status */
            rc = peft_dist_agree(D, rc, err);
            continue;
        }
        double tps = tokens_seen / (now_s() - t_start), eta = (now_s() - t_start) / (step - step_start) * (o->steps - step);
        fprintf(log, "{\"step\":%ld,\"loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.6g,\"tokens_per_s\":%.1f,\"step_s\":%.4f}\n", step,
                loss, peft_lr_at(o->schedule, o->lr, step - 1, o->steps, o->warmup), gnorm, tps, dt);
        curve_add(&train_curve, (double)step, loss);
        if (o->progress) progress_bar(step, o->steps, loss, tps, eta);
        if (n_val > 0 && ((o->eval_every > 0 && step % o->eval_every == 0) || step == o->steps)) {
            double vl;
            rc = eval_split(m, set, val, acts, &bb, o->eval_batches, &vl, err);
            if (rc == PEFT_OK) {
                res->final_val_loss = vl;
                fprintf(log, "{\"step\":%ld,\"val_loss\":%.6f}\n", step, vl);
                curve_add(&val_curve, (double)step, vl);
                if (o->progress) fprintf(stderr, "\n  step %ld: validation loss %.4f\n", step, vl);
            }
        }
        fflush(log);
        if (rc == PEFT_OK && *log_new) {
            if (rename(log_new, log_path) != 0)
                rc = peft_fail(err, PEFT_EIO, "%s: cannot rename to %s: %s", log_new, log_path, strerror(errno));
            else *log_new = '\0';
        }
        if (rc == PEFT_OK && o->save_every > 0 && step % o->save_every == 0 && step < o->steps) {
            rc = peft_checkpoint_save(ckpt, set, &opt, step, signature, err);
            write_svg(svg_path, &train_curve, &val_curve);
        }
        rc = peft_dist_agree(D, rc, err);
    }
    if (o->progress && root) fputc('\n', stderr);
    res->steps_done = step;
    res->tokens_per_s = tokens_seen / fmax(train_s, 1e-9);
    if (rc == PEFT_OK && root) rc = peft_adapter_set_save(set, o->out_dir, err);
    if (rc == PEFT_OK && root) rc = peft_checkpoint_save(ckpt, set, &opt, step, signature, err);
    if (root) write_svg(svg_path, &train_curve, &val_curve);
    if (log) fclose(log);
    if (root && *log_new) unlink(log_new); /* the run took no step: the previous log stays */
    free(signature);
    peft_dir_unlock(lock);
    curve_free(&train_curve);
    curve_free(&val_curve);
    free(order.perm);
    grad_sum_free(&gs);
    bufs_free(&bb);
    peft_adamw_free(&opt);
    peft_model_acts_free(m, acts);
    return rc;
}

int peft_train(peft_model *m, peft_adapter_set *set, const peft_dataset *ds, const peft_train_opts *o,
               peft_train_result *res, peft_err *err) {
    /* Validation rows: a separate dataset's (all of it) or this one's held-out split. */
    train_src train = {.ds = ds, .split = 0}, val = {.ds = o->val_data ? o->val_data : ds, .split = o->val_data ? 0 : 1};
    return train_loop(m, set, &train, &val, o, res, err);
}

int peft_train_cls(peft_model *m, peft_adapter_set *set, const peft_cls_dataset *ds, const peft_cls_dataset *val,
                   const peft_train_opts *o, peft_train_result *res, peft_err *err) {
    train_src train = {.cls = ds}, v = {.cls = val};
    return train_loop(m, set, &train, &v, o, res, err);
}
