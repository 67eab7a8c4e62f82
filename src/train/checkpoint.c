/* checkpoint.c: checkpoints of the training loop and the run signature (checkpoint.h). */
#include "checkpoint.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/json.h"
#include "kernels/kernels.h"

/* ---- the run signature ------------------------------------------------------------ */

typedef struct sbuf {
    char *s;
    size_t n, cap;
    int oom;
} sbuf;

static void add(sbuf *b, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        size_t room = b->cap - b->n;
        va_start(ap, fmt);
        int k = b->s ? vsnprintf(b->s + b->n, room, fmt, ap) : -1;
        va_end(ap);
        if (k >= 0 && (size_t)k < room) {
            b->n += (size_t)k;
            return;
        }
        size_t cap = b->cap ? 2 * b->cap : 2048;
        while (k >= 0 && cap - b->n <= (size_t)k) cap *= 2;
        char *g = b->oom ? NULL : realloc(b->s, cap);
        if (!g) {
            b->oom = 1;
            return;
        }
        b->s = g;
        b->cap = cap;
    }
}

/* name=value for a string value, its line breaks escaped (one setting per line) */
static void add_str(sbuf *b, const char *name, const char *v) {
    add(b, "%s=", name);
    for (; *v; v += strcspn(v, "\r\n")) {
        add(b, "%.*s", (int)strcspn(v, "\r\n"), v);
        if (*v == '\r' || *v == '\n') add(b, "\\%c", *v++ == '\r' ? 'r' : 'n');
    }
    add(b, "\n");
}

static void add_patterns(sbuf *b, const char *name, const peft_pattern *p, int n) {
    add(b, "%s=", name);
    for (int i = 0; i < n; i++) add(b, "%s%.*s:%.17g", i ? "," : "", (int)strcspn(p[i].key, "\r\n"), p[i].key, p[i].value);
    add(b, "\n");
}

char *peft_run_signature(const peft_train_opts *o, const peft_model *m, const peft_adapter_set *set, uint64_t data_hash,
                         uint64_t val_hash) {
    sbuf b = {0};
    /* training: everything an update depends on (not eval_every, save_every, progress) */
    add(&b, "seed=%llu\nbatch=%d\nseq_len=%d\ngrad_accum=%d\nsteps=%ld\nlr=%.17g\nschedule=%d\nwarmup=%ld\n",
        (unsigned long long)o->seed, o->batch, o->seq_len, o->grad_accum, o->steps, o->lr, (int)o->schedule, o->warmup);
    add(&b, "beta1=%.17g\nbeta2=%.17g\neps=%.17g\nweight_decay=%.17g\nlora_plus_ratio=%.17g\nallora_eta=%.17g\nclip=%.17g\n",
        o->beta1, o->beta2, o->eps, o->weight_decay, o->lr_ratio_b, o->allora_eta, o->max_grad_norm);
    add(&b, "skip_nonfinite=%d\n", o->skip_nonfinite);
    /* the model: its shape and the precision of its frozen matmuls */
    const peft_model_info *mc = &m->info;
    add(&b, "model=%s layers %d hidden %d intermediate %d heads %d/%d vocab %d\ncompute=%s\n", mc->hf_class, mc->n_layers,
        mc->hidden_size, mc->intermediate_size, mc->n_heads, mc->n_kv_heads, mc->vocab_size, m->compute);
    /* the adapter: every field of its configuration */
    const peft_adapter_config *c = peft_adapter_set_config(set);
    const peft_method_opts *mo = &c->opts;
    add_str(&b, "method", c->method);
    add_str(&b, "target_modules", c->target_modules);
    add(&b, "target_regex=%d\nlayers_to_transform=", c->target_regex);
    for (int i = 0; i < c->n_layers_to_transform; i++) add(&b, "%s%d", i ? "," : "", c->layers_to_transform[i]);
    add(&b, "\n");
    add_patterns(&b, "rank_pattern", c->rank_pattern, c->n_rank_pattern);
    add_patterns(&b, "alpha_pattern", c->alpha_pattern, c->n_alpha_pattern);
    add(&b, "save_as_lora=%d\nrank=%d\nalpha=%.17g\nrslora=%d\ndropout=%.17g\ninit_gaussian=%d\nadapter_seed=%llu\n", c->save_as_lora,
        mo->rank, mo->alpha, mo->use_rslora, mo->dropout, mo->init_gaussian, (unsigned long long)mo->seed);
    add(&b, "init_scale=%.17g\nnum_virtual_tokens=%d\nlisa_gamma=%d\nlisa_interval=%ld\n", mo->init_scale, mo->n_virtual,
        mo->lisa_gamma, mo->lisa_interval);
    add_str(&b, "feedforward_modules", mo->feedforward_modules);
    add_str(&b, "init_text", mo->init_text);
    add(&b, "trainable=%zu\n", peft_adapter_set_numel(set));
    /* the data as the model sees it: file, tokenizer, template, seq-len, packing and split */
    add(&b, "data=%016llx\nval_data=%016llx\n", (unsigned long long)data_hash, (unsigned long long)val_hash);
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}

/* The first line "name=value" of a that b lacks or has with another value, as name, a's
 * value and b's ("(none)" when missing), each into n bytes. 0 when the signatures are equal. */
static int signature_diff(const char *a, const char *b, char *name, char *va, char *vb, size_t n) {
    for (int pass = 0; pass < 2; pass++) { /* then the names only b has */
        const char *x = pass ? b : a, *y = pass ? a : b;
        for (const char *line = x; *line;) {
            size_t len = strcspn(line, "\n"), eq = strcspn(line, "=");
            if (eq > len) eq = len;
            const char *found = NULL;
            for (const char *l2 = y; *l2 && !found;) {
                size_t len2 = strcspn(l2, "\n");
                if (len2 >= eq && !strncmp(l2, line, eq) && (l2[eq] == '=' || len2 == eq)) found = l2;
                l2 += len2 + (l2[len2] == '\n');
            }
            size_t len2 = found ? strcspn(found, "\n") : 0;
            if (!found || len2 != len || strncmp(found, line, len)) {
                snprintf(name, n, "%.*s", (int)eq, line);
                const char *vx = eq < len ? line + eq + 1 : "", *vy = found && eq < len2 ? found + eq + 1 : "";
                int lx = (int)(eq < len ? len - eq - 1 : 0), ly = (int)(found && eq < len2 ? len2 - eq - 1 : 0);
                snprintf(pass ? vb : va, n, "%.*s", lx, vx);
                snprintf(pass ? va : vb, n, "%.*s", found ? ly : 6, found ? vy : "(none)");
                return 1;
            }
            line += len + (line[len] == '\n');
        }
    }
    return 0;
}

/* ---- saving ----------------------------------------------------------------------- */

int peft_checkpoint_save(const char *path, peft_adapter_set *set, peft_adamw *opt, long step, const char *signature,
                         peft_err *err) {
    int n = peft_adapter_set_n_params(set), ns = peft_adapter_set_n_state(set);
    peft_named_param *p = peft_adapter_set_params(set), *st = peft_adapter_set_state(set);
    peft_st_entry *e = calloc((size_t)n * 3 + (size_t)ns, sizeof *e);
    char(*names)[300] = calloc((size_t)n * 2, sizeof *names);
    if (!e || !names) {
        free(e);
        free(names);
        return peft_fail(err, PEFT_ENOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        snprintf(names[2 * i], sizeof names[0], "adamw.m.%s", p[i].key);
        snprintf(names[2 * i + 1], sizeof names[0], "adamw.v.%s", p[i].key);
        const float *data[3] = {p[i].p.data, peft_adamw_m(opt, i), peft_adamw_v(opt, i)};
        const char *keys[3] = {p[i].key, names[2 * i], names[2 * i + 1]};
        for (int k = 0; k < 3; k++) {
            peft_st_entry *x = &e[3 * i + k];
            x->name = keys[k];
            x->dtype = PEFT_F32;
            x->ndim = p[i].p.ndim;
            memcpy(x->shape, p[i].p.shape, sizeof p[i].p.shape);
            x->data = data[k];
        }
    }
    for (int i = 0; i < ns; i++) { /* LISA: layers trained earlier, frozen now */
        e[3 * n + i] = (peft_st_entry){.name = st[i].key, .dtype = PEFT_F32, .ndim = st[i].p.ndim, .data = st[i].p.data};
        memcpy(e[3 * n + i].shape, st[i].p.shape, sizeof st[i].p.shape);
    }
    char step_s[32], adam_s[32];
    snprintf(step_s, sizeof step_s, "%ld", step);
    snprintf(adam_s, sizeof adam_s, "%ld", opt->step);
    const char *meta[] = {"format", PEFT_CHECKPOINT_FORMAT, "step", step_s, "adamw_step", adam_s, "run", signature};
    int rc = peft_st_write(path, e, 3 * n + ns, meta, 4, err);
    free(e);
    free(names);
    return rc;
}

/* ---- restoring ---------------------------------------------------------------------- */

/* A metadata count: decimal digits only (no sign, no spaces), in [lo, hi]. */
static int meta_count(const cJSON *meta, const char *key, long lo, long hi, long *out, const char *path, peft_err *err) {
    const char *s = NULL;
    int rc = peft_json_string(meta, key, 1, &s, path, err);
    if (rc) return rc;
    char *end;
    errno = 0;
    long v = s[0] >= '0' && s[0] <= '9' ? strtol(s, &end, 10) : -1;
    if (v < 0 || errno || *end || v < lo || v > hi)
        return peft_fail(err, PEFT_EFORMAT, "%s: metadata \"%s\" = \"%.40s\" is not an integer in [%ld, %ld]", path, key, s, lo, hi);
    *out = v;
    return PEFT_OK;
}

/* Copies tensor key of f into dst (the shape of p) after checking dtype, shape and values;
 * second moments (nonneg) must also be >= 0. */
static int restore_tensor(const peft_st_file *f, const char *key, const peft_param *p, float *dst, int nonneg, peft_err *err) {
    const peft_st_tensor *t = peft_st_find(f, key);
    int same = t && t->dtype == PEFT_F32 && t->ndim == p->ndim && t->numel == p->numel;
    for (int d = 0; same && d < p->ndim; d++) same = t->shape[d] == p->shape[d];
    if (!same)
        return peft_fail(err, PEFT_ESHAPE, "%s: tensor \"%s\" is missing or not F32 of this run's shape (%zu numbers)", f->path, key,
                         p->numel);
    memcpy(dst, t->data, t->nbytes);
    for (size_t j = 0; j < p->numel; j++)
        if (!isfinite(dst[j]) || (nonneg && dst[j] < 0))
            return peft_fail(err, PEFT_ENUMERIC, "%s: tensor \"%s\" holds %g at element %zu (%s)", f->path, key, dst[j], j,
                             nonneg ? "second moments must be finite and >= 0" : "not finite");
    return PEFT_OK;
}

int peft_checkpoint_restore(const peft_st_file *f, peft_adapter_set *set, peft_adamw *opt, const char *signature, long max_step,
                            long *step, peft_err *err) {
    const char *path = f->path, *fmt = NULL, *run = NULL;
    cJSON *meta = NULL;
    int rc = f->metadata_json ? peft_json_parse(f->metadata_json, strlen(f->metadata_json), path, &meta, err)
                              : peft_fail(err, PEFT_EFORMAT, "%s: not a peft.c checkpoint (no metadata)", path);
    if (rc == PEFT_OK && !cJSON_IsObject(meta)) rc = peft_fail(err, PEFT_EFORMAT, "%s: metadata is not a JSON object", path);
    if (rc == PEFT_OK) rc = peft_json_string(meta, "format", 1, &fmt, path, err);
    if (rc == PEFT_OK && strcmp(fmt, PEFT_CHECKPOINT_FORMAT))
        rc = peft_fail(err, PEFT_EFORMAT, "%s: checkpoint format \"%.60s\", this peft.c reads \"%s\"%s", path, fmt,
                       PEFT_CHECKPOINT_FORMAT,
                       !strcmp(fmt, "peft.c-checkpoint-1") ? " (an older peft.c's, whose run signature misses the method, its "
                                                             "options and the data: train afresh without --resume)" : "");
    long st = 0, as = 0;
    if (rc == PEFT_OK) rc = meta_count(meta, "step", 0, max_step, &st, path, err);
    if (rc == PEFT_OK) rc = meta_count(meta, "adamw_step", 0, st, &as, path, err);
    if (rc == PEFT_OK) rc = peft_json_string(meta, "run", 1, &run, path, err);
    char name[256], was[256], now[256]; /* signature_diff writes up to sizeof was into each */
    if (rc == PEFT_OK && signature_diff(run, signature, name, was, now, sizeof was))
        rc = peft_fail(err, PEFT_EINVAL, "%s: cannot resume: the checkpoint's run has %s = %s, this run has %s = %s (resume with "
                       "the same settings, or train afresh without --resume)", path, name, was, name, now);
    /* LISA: the layers of the last update taken are the ones the moments belong to */
    if (rc == PEFT_OK) {
        int changed = peft_adapter_set_begin_step(set, st > 0 ? st - 1 : 0, err);
        if (changed < 0) rc = changed;
        else if (changed) rc = peft_adamw_rebind(opt, peft_adapter_set_params(set), peft_adapter_set_n_params(set), err);
    }
    int n = rc == PEFT_OK ? peft_adapter_set_n_params(set) : 0, ns = rc == PEFT_OK ? peft_adapter_set_n_state(set) : 0;
    peft_named_param *p = peft_adapter_set_params(set), *sp = peft_adapter_set_state(set);
    for (int i = 0; i < n + ns && rc == PEFT_OK; i++) {
        const peft_named_param *pi = i < n ? &p[i] : &sp[i - n];
        float *dst[3] = {pi->p.data, i < n ? peft_adamw_m(opt, i) : NULL, i < n ? peft_adamw_v(opt, i) : NULL};
        for (int k = 0; k < 3 && dst[k] && rc == PEFT_OK; k++) {
            char key[300];
            snprintf(key, sizeof key, "%s%s", k == 0 ? "" : k == 1 ? "adamw.m." : "adamw.v.", pi->key);
            rc = restore_tensor(f, key, &pi->p, dst[k], k == 2, err);
        }
    }
    if (rc == PEFT_OK) {
        *step = st;
        opt->step = as;
    }
    cJSON_Delete(meta);
    return rc;
}
