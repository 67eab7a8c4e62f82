/* scheduler.c: the model thread of `peft serve` (see scheduler.h). One mutex guards the queue,
 * the adapter table and every job's output; each job has its own condition variable. Only the
 * scheduler thread touches the model, the adapters and a job's generation state. */
#include "serve/scheduler.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "methods/adapter_pool.h"
#include "models/generate.h"

typedef struct adapter_entry {
    char name[SERVE_NAME_MAX];
    /* its name in the pool: "<name>#<serial>", so that a name unloaded while old jobs still
     * use it can be loaded again at once */
    char key[SERVE_NAME_MAX + 24];
    int removed;               /* unloaded: no new jobs; freed when refs reach 0 */
    int refs;                  /* jobs holding it */
    struct adapter_entry *next;
} adapter_entry;

typedef struct load_cmd {
    const char *name, *dir;
    int done, rc;
    char msg[SERVE_MSG_MAX];
    struct load_cmd *next;
} load_cmd;

struct serve_job {
    /* set by submit, read by the scheduler */
    char *prompt;
    int add_special;
    serve_params p;
    adapter_entry *adapter;    /* NULL: the base model */
    /* the channel, under s->mu */
    pthread_cond_t cv;
    char *out;                 /* text produced and not yet taken: [out_len] */
    size_t out_len, out_cap;
    serve_result res;
    int refs;                  /* 2 while both the HTTP side and the scheduler hold it */
    int cancelled;             /* the HTTP side went away */
    serve_sched *s;
    /* scheduler thread only */
    peft_gen g;
    size_t shown;              /* bytes of the decoded sequence already turned into text */
    char *text;                /* everything generated so far: [text_len], for the stop strings */
    size_t text_len, emitted;
    struct serve_job *next;
};

struct serve_sched {
    peft_model *m;
    const peft_tokenizer *tok;
    char base_name[SERVE_NAME_MAX];
    serve_sched_opts o;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t work;       /* the scheduler waits here for jobs and commands */
    serve_job *queue, **queue_tail; /* submitted, not started */
    int n_jobs;                /* queued + running (the bound of max_queue) */
    load_cmd *cmds;
    adapter_entry *adapters;
    int closed, quit;
    unsigned long n_loaded;    /* serial of the pool keys */
    /* scheduler thread only */
    peft_adapter_pool *pool;   /* every loaded adapter, chosen per row */
    serve_job *active;         /* running sequences */
    int n_active;
    peft_kv **step_kv;         /* [max_active] one batched step: the caches, */
    int32_t *step_ids;         /* [max_active] the last ids, */
    int *step_rows;            /* [max(max_active, PEFT_GEN_CHUNK)] the pool index of each row, */
    serve_job **step_jobs;     /* [max_active] whose they are, */
    float *step_logits;        /* [max_active, V] and their logits */
};

static void job_unref_locked(serve_job *j) {
    if (--j->refs > 0) return;
    if (j->adapter) j->adapter->refs--;
    for (int i = 0; i < j->p.n_stop; i++) free(j->p.stop[i]);
    peft_gen_free(&j->g);
    pthread_cond_destroy(&j->cv);
    free(j->prompt);
    free(j->out);
    free(j->text);
    free(j);
}

/* Appends text to j's channel and wakes its reader; under s->mu. */
static int job_put_locked(serve_job *j, const char *text, size_t len) {
    if (j->out_len + len + 1 > j->out_cap) {
        size_t cap = (j->out_len + len + 1) * 2;
        char *p = realloc(j->out, cap);
        if (!p) return PEFT_ENOMEM;
        j->out = p, j->out_cap = cap;
    }
    memcpy(j->out + j->out_len, text, len);
    j->out_len += len;
    j->out[j->out_len] = '\0';
    pthread_cond_broadcast(&j->cv);
    return PEFT_OK;
}

static void job_end_locked(serve_job *j, int status, const char *finish, const char *msg) {
    j->res.status = status;
    j->res.finish_reason = finish;
    if (msg) snprintf(j->res.msg, sizeof j->res.msg, "%s", msg);
    pthread_cond_broadcast(&j->cv);
}

/* ---- the scheduler thread ---- */

static adapter_entry *find_adapter(serve_sched *s, const char *name) {
    for (adapter_entry *e = s->adapters; e; e = e->next)
        if (!e->removed && !strcmp(e->name, name)) return e;
    return NULL;
}

/* Frees the unloaded adapters no job holds any more; under s->mu. */
static void collect_adapters_locked(serve_sched *s) {
    for (adapter_entry **pe = &s->adapters; *pe;) {
        adapter_entry *e = *pe;
        if (e->removed && e->refs == 0) {
            peft_adapter_pool_unload(s->pool, e->key, NULL);
            *pe = e->next;
            free(e);
        } else pe = &e->next;
    }
}

static void run_loads_locked(serve_sched *s) {
    while (s->cmds) {
        load_cmd *c = s->cmds;
        s->cmds = c->next;
        peft_err err = {0};
        adapter_entry *e = calloc(1, sizeof *e);
        if (!e) c->rc = SERVE_INTERNAL, snprintf(c->msg, sizeof c->msg, "out of memory");
        else if (find_adapter(s, c->name) || !strcmp(c->name, s->base_name))
            c->rc = SERVE_CONFLICT, snprintf(c->msg, sizeof c->msg, "the model '%s' is already loaded", c->name);
        else {
            snprintf(e->name, sizeof e->name, "%s", c->name);
            snprintf(e->key, sizeof e->key, "%s#%lu", c->name, ++s->n_loaded);
            pthread_mutex_unlock(&s->mu); /* reading the files: HTTP threads go on meanwhile */
            int rc = peft_adapter_pool_load(s->pool, e->key, c->dir, &err);
            pthread_mutex_lock(&s->mu);
            if (rc) c->rc = SERVE_BAD, snprintf(c->msg, sizeof c->msg, "%s", err.msg);
            else if (find_adapter(s, c->name)) { /* a second load of the name won the race */
                peft_adapter_pool_unload(s->pool, e->key, NULL);
                c->rc = SERVE_CONFLICT, snprintf(c->msg, sizeof c->msg, "the model '%s' is already loaded", c->name);
            } else {
                e->next = s->adapters;
                s->adapters = e;
                e = NULL;
                c->rc = SERVE_OK;
            }
        }
        free(e);
        c->done = 1;
        pthread_cond_broadcast(&s->work);
    }
}

/* Tokenizes and prefills j; on failure ends it with the reason. */
static int start_job(serve_sched *s, serve_job *j) {
    peft_err err = {0};
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = peft_tokenizer_encode(s->tok, j->prompt, strlen(j->prompt), j->add_special, &ids, &n, &err);
    int status = SERVE_BAD;
    if (rc == PEFT_OK && (n == 0 || n + j->p.max_tokens > s->o.max_len))
        rc = peft_fail(&err, PEFT_EINVAL,
                       "the prompt (%zu tokens) + max_tokens (%zu) must be 1 to %zu tokens (the server's --max-len)", n,
                       j->p.max_tokens, s->o.max_len);
    if (rc == PEFT_OK) { /* PEFT_EINVAL: longer than the model's context, the client's to fix */
        rc = peft_gen_init(&j->g, s->m, ids, n, j->p.max_tokens, j->p.temperature, j->p.top_p, j->p.seed, &err);
        status = rc == PEFT_EINVAL ? SERVE_BAD : SERVE_INTERNAL;
    }
    if (rc == PEFT_OK) { /* every row of the prefill uses the job's adapter */
        int idx = j->adapter ? peft_adapter_pool_find(s->pool, j->adapter->key) : -1;
        for (int i = 0; i < j->g.chunk; i++) s->step_rows[i] = idx;
        rc = peft_adapter_pool_set_rows(s->pool, s->step_rows, j->g.chunk, &err);
    }
    if (rc == PEFT_OK) rc = peft_gen_prefill(&j->g, s->m, &err);
    free(ids);
    pthread_mutex_lock(&s->mu);
    j->res.prompt_tokens = n;
    if (rc) job_end_locked(j, status, NULL, err.msg);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* Bytes at the end of text[len] that may be the start of a stop string. */
static size_t stop_holdback(const serve_job *j) {
    size_t hold = 0;
    for (int i = 0; i < j->p.n_stop; i++) {
        size_t sl = strlen(j->p.stop[i]);
        for (size_t k = sl - 1 < j->text_len ? sl - 1 : j->text_len; k > hold; k--)
            if (!memcmp(j->text + j->text_len - k, j->p.stop[i], k)) {
                hold = k;
                break;
            }
    }
    return hold;
}

/* One new token for j from its logits: sample, extend its text, cut at a stop string,
 * publish. Returns 1 when j has ended (or failed); else its new id waits for the next step. */
static int step_job(serve_sched *s, serve_job *j) {
    peft_err err = {0};
    int32_t id;
    int done = 0;
    const char *finish = NULL;
    char *piece = NULL;
    int rc = peft_gen_sample(&j->g, s->m, s->tok, 0, &id, &done, &err);
    if (rc == PEFT_OK) rc = peft_gen_new_text(&j->g, s->tok, done, &j->shown, &piece, &err);
    if (rc == PEFT_OK) {
        size_t pl = strlen(piece), old = j->text_len;
        char *t = realloc(j->text, old + pl + 1);
        if (!t) rc = peft_fail(&err, PEFT_ENOMEM, "out of memory");
        else {
            j->text = t;
            memcpy(t + old, piece, pl + 1);
            j->text_len += pl;
        }
        /* a stop string ends the text before it; only the part that overlaps the new piece is new */
        for (int i = 0; rc == PEFT_OK && i < j->p.n_stop; i++) {
            size_t sl = strlen(j->p.stop[i]), from = old >= sl ? old - sl + 1 : 0;
            char *hit = strstr(j->text + from, j->p.stop[i]);
            if (hit && (size_t)(hit - j->text) < j->text_len) j->text_len = (size_t)(hit - j->text), finish = "stop";
        }
        if (rc == PEFT_OK && !finish && done) finish = j->g.n_out == j->g.max_new ? "length" : "stop";
        if (rc == PEFT_OK) j->text[j->text_len] = '\0';
    }
    free(piece);
    size_t upto = finish || rc ? j->text_len : j->text_len - stop_holdback(j);
    pthread_mutex_lock(&s->mu);
    j->res.completion_tokens = j->g.n_out;
    if (upto > j->emitted && job_put_locked(j, j->text + j->emitted, upto - j->emitted) == PEFT_OK) j->emitted = upto;
    if (rc) job_end_locked(j, SERVE_INTERNAL, NULL, err.msg);
    else if (finish) job_end_locked(j, 200, finish, NULL);
    pthread_mutex_unlock(&s->mu);
    return rc || finish;
}

static void job_leave(serve_sched *s, serve_job *j) {
    pthread_mutex_lock(&s->mu);
    s->n_jobs--;
    job_unref_locked(j);
    pthread_mutex_unlock(&s->mu);
}

/* One token for every running sequence: each samples from its logits, the ended and the
 * abandoned leave, the others are decoded together in one batched forward (row i: the i-th
 * sequence, with its own adapter and KV cache). */
static void step_all(serve_sched *s) {
    int n = 0, V = s->m->info.vocab_size;
    for (serve_job **pj = &s->active; *pj;) {
        serve_job *j = *pj;
        pthread_mutex_lock(&s->mu);
        int gone = j->cancelled;
        pthread_mutex_unlock(&s->mu);
        if (gone || step_job(s, j)) {
            *pj = j->next;
            s->n_active--;
            job_leave(s, j);
            continue;
        }
        s->step_jobs[n] = j;
        s->step_kv[n] = j->g.kv;
        s->step_ids[n] = j->g.seq[j->g.n_prompt + j->g.n_out - 1];
        s->step_rows[n] = j->adapter ? peft_adapter_pool_find(s->pool, j->adapter->key) : -1;
        n++;
        pj = &j->next;
    }
    if (n == 0) return;
    peft_err err = {0};
    int rc = peft_adapter_pool_set_rows(s->pool, s->step_rows, n, &err);
    if (rc == PEFT_OK) rc = peft_model_decode_batch(s->m, s->step_kv, s->step_ids, n, s->step_logits, &err);
    for (int i = 0; i < n; i++) {
        serve_job *j = s->step_jobs[i];
        if (rc == PEFT_OK) {
            memcpy(j->g.logits, s->step_logits + (size_t)i * V, (size_t)V * sizeof(float));
            continue;
        }
        pthread_mutex_lock(&s->mu); /* the step failed: its sequences end with the reason, and leave */
        job_end_locked(j, SERVE_INTERNAL, NULL, err.msg);
        j->cancelled = 1;
        pthread_mutex_unlock(&s->mu);
    }
}

static void *sched_main(void *arg) {
    serve_sched *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        /* queued jobs whose client left are dropped before they cost a prefill */
        for (serve_job **pj = &s->queue; *pj;) {
            serve_job *j = *pj;
            if (j->cancelled) {
                *pj = j->next;
                s->n_jobs--;
                job_unref_locked(j);
            } else pj = &j->next;
        }
        for (s->queue_tail = &s->queue; *s->queue_tail;) s->queue_tail = &(*s->queue_tail)->next;
        run_loads_locked(s);
        collect_adapters_locked(s);
        if (s->n_active == 0 && !s->queue) {
            if (s->quit) break;
            pthread_cond_wait(&s->work, &s->mu);
            continue;
        }
        /* new sequences join the running ones in arrival order, whatever their adapter */
        serve_job *start = NULL, **start_tail = &start;
        int n_start = 0;
        while (s->queue && s->n_active + n_start < s->o.max_active) {
            serve_job *j = s->queue;
            s->queue = j->next;
            j->next = NULL;
            *start_tail = j, start_tail = &j->next;
            n_start++;
        }
        if (!s->queue) s->queue_tail = &s->queue;
        pthread_mutex_unlock(&s->mu);
        for (serve_job *j = start, *next; j; j = next) {
            next = j->next;
            j->next = NULL;
            if (start_job(s, j) == PEFT_OK) {
                j->next = s->active;
                s->active = j;
                s->n_active++;
            } else job_leave(s, j);
        }
        step_all(s);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- the HTTP threads' side ---- */

/* Frees what serve_sched_create made; the thread is not running. */
static void sched_release(serve_sched *s) {
    for (adapter_entry *e = s->adapters, *next; e; e = next) {
        next = e->next;
        free(e);
    }
    peft_adapter_pool_free(s->pool);
    free(s->step_kv);
    free(s->step_ids);
    free(s->step_rows);
    free(s->step_jobs);
    free(s->step_logits);
    pthread_cond_destroy(&s->work);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

int serve_sched_create(peft_model *m, const peft_tokenizer *tok, const char *base_name, const serve_sched_opts *o,
                       serve_sched **out, peft_err *err) {
    serve_sched *s = calloc(1, sizeof *s);
    if (!s) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    s->m = m, s->tok = tok, s->o = *o;
    snprintf(s->base_name, sizeof s->base_name, "%s", base_name);
    s->queue_tail = &s->queue;
    size_t B = (size_t)o->max_active, R = B > PEFT_GEN_CHUNK ? B : PEFT_GEN_CHUNK;
    int rc = peft_adapter_pool_create(m, (int)R, &s->pool, err);
    s->step_kv = malloc(B * sizeof *s->step_kv);
    s->step_ids = malloc(B * sizeof *s->step_ids);
    s->step_rows = malloc(R * sizeof *s->step_rows);
    s->step_jobs = malloc(B * sizeof *s->step_jobs);
    s->step_logits = malloc(B * (size_t)m->info.vocab_size * sizeof *s->step_logits);
    if (rc == PEFT_OK && (!s->step_kv || !s->step_ids || !s->step_rows || !s->step_jobs || !s->step_logits))
        rc = peft_fail(err, PEFT_ENOMEM, "out of memory for batches of %zu sequences", B);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work, NULL);
    if (rc == PEFT_OK && pthread_create(&s->thread, NULL, sched_main, s))
        rc = peft_fail(err, PEFT_ENOMEM, "cannot start the scheduler thread");
    if (rc) {
        sched_release(s);
        return rc;
    }
    *out = s;
    return PEFT_OK;
}

void serve_sched_close(serve_sched *s) {
    pthread_mutex_lock(&s->mu);
    s->closed = 1;
    pthread_mutex_unlock(&s->mu);
}

void serve_sched_free(serve_sched *s) {
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->closed = s->quit = 1;
    for (serve_job *j = s->queue, *next; j; j = next) { /* never started: they end now */
        next = j->next;
        job_end_locked(j, SERVE_STOPPING, NULL, "the server is shutting down");
        s->n_jobs--;
        job_unref_locked(j);
    }
    s->queue = NULL, s->queue_tail = &s->queue;
    for (load_cmd *c = s->cmds; c; c = c->next) {
        c->rc = SERVE_STOPPING, c->done = 1;
        snprintf(c->msg, sizeof c->msg, "the server is shutting down");
    }
    s->cmds = NULL;
    pthread_cond_broadcast(&s->work);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    sched_release(s);
}

int serve_sched_load(serve_sched *s, const char *name, const char *dir, char *msg) {
    load_cmd c = {.name = name, .dir = dir};
    pthread_mutex_lock(&s->mu);
    if (s->closed) c.rc = SERVE_STOPPING, snprintf(c.msg, sizeof c.msg, "the server is shutting down");
    else if (find_adapter(s, name) || !strcmp(name, s->base_name))
        c.rc = SERVE_CONFLICT, snprintf(c.msg, sizeof c.msg, "the model '%s' is already loaded", name);
    else {
        load_cmd **pc = &s->cmds;
        while (*pc) pc = &(*pc)->next;
        *pc = &c;
        pthread_cond_broadcast(&s->work);
        while (!c.done) pthread_cond_wait(&s->work, &s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    snprintf(msg, SERVE_MSG_MAX, "%s", c.msg);
    return c.rc;
}

int serve_sched_unload(serve_sched *s, const char *name, char *msg) {
    pthread_mutex_lock(&s->mu);
    adapter_entry *e = find_adapter(s, name);
    if (e) e->removed = 1;
    pthread_cond_broadcast(&s->work); /* an idle scheduler frees it now */
    pthread_mutex_unlock(&s->mu);
    if (!e) snprintf(msg, SERVE_MSG_MAX, "no adapter named '%s' is loaded", name);
    return e ? SERVE_OK : SERVE_UNKNOWN;
}

int serve_sched_models(serve_sched *s, char (**names)[SERVE_NAME_MAX], int *n) {
    pthread_mutex_lock(&s->mu);
    int count = 1;
    for (adapter_entry *e = s->adapters; e; e = e->next) count += !e->removed;
    char(*v)[SERVE_NAME_MAX] = malloc((size_t)count * sizeof *v);
    if (v) {
        snprintf(v[0], SERVE_NAME_MAX, "%s", s->base_name);
        int i = count;
        for (adapter_entry *e = s->adapters; e; e = e->next) /* the list is newest first: oldest first out */
            if (!e->removed) snprintf(v[--i], SERVE_NAME_MAX, "%s", e->name);
    }
    pthread_mutex_unlock(&s->mu);
    *names = v, *n = count;
    return v ? PEFT_OK : PEFT_ENOMEM;
}

int serve_sched_submit(serve_sched *s, const char *model, char *prompt, int add_special, serve_params *p,
                       serve_job **out, char *msg) {
    serve_job *j = calloc(1, sizeof *j);
    int rc = SERVE_OK;
    pthread_mutex_lock(&s->mu);
    adapter_entry *e = strcmp(model, s->base_name) ? find_adapter(s, model) : NULL;
    if (!j) rc = SERVE_INTERNAL, snprintf(msg, SERVE_MSG_MAX, "out of memory");
    else if (s->closed) rc = SERVE_STOPPING, snprintf(msg, SERVE_MSG_MAX, "the server is shutting down");
    else if (!e && strcmp(model, s->base_name))
        rc = SERVE_UNKNOWN, snprintf(msg, SERVE_MSG_MAX, "the model '%s' does not exist (see /v1/models)", model);
    else if (s->n_jobs >= s->o.max_queue)
        rc = SERVE_FULL, snprintf(msg, SERVE_MSG_MAX, "the server is busy (%d requests queued or running): retry later", s->n_jobs);
    if (rc) {
        pthread_mutex_unlock(&s->mu);
        for (int i = 0; i < p->n_stop; i++) free(p->stop[i]);
        free(prompt);
        free(j);
        return rc;
    }
    j->prompt = prompt, j->add_special = add_special, j->p = *p, j->s = s;
    j->adapter = e;
    if (e) e->refs++;
    j->refs = 2;
    pthread_cond_init(&j->cv, NULL);
    *s->queue_tail = j;
    s->queue_tail = &j->next;
    s->n_jobs++;
    pthread_cond_broadcast(&s->work);
    pthread_mutex_unlock(&s->mu);
    *out = j;
    return SERVE_OK;
}

int serve_job_wait(serve_job *j, int timeout_ms, char **text, size_t *len, serve_result *res) {
    serve_sched *s = j->s;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&s->mu);
    while (j->out_len == 0 && j->res.status == 0)
        if (pthread_cond_timedwait(&j->cv, &s->mu, &until) == ETIMEDOUT) break;
    *text = NULL, *len = 0;
    if (j->out_len) {
        *text = j->out, *len = j->out_len;
        j->out = NULL, j->out_len = j->out_cap = 0;
    }
    *res = j->res;
    int ended = j->res.status != 0;
    pthread_mutex_unlock(&s->mu);
    return ended;
}

void serve_job_release(serve_job *j) {
    serve_sched *s = j->s;
    pthread_mutex_lock(&s->mu);
    j->cancelled = 1;
    job_unref_locked(j);
    pthread_mutex_unlock(&s->mu);
}
