/* scheduler.h: the one thread that owns the model in `peft serve`. HTTP threads submit
 * generation jobs and adapter loads into a bounded queue and read each job's text back through
 * its own channel; the scheduler thread tokenizes, prefills and steps every active sequence.
 *
 * Adapters are named. A job names its adapter (or the base model) when it is submitted and
 * holds it until it ends. Unloading an adapter removes its name at once (later jobs naming it
 * get "unknown model", /v1/models stops listing it) but never disturbs the jobs that already
 * hold it: its weights are freed when the last of them ends. A load of a name that is in use
 * is refused; a load of a just-unloaded name while old jobs still run is allowed (the old jobs
 * keep the old weights).
 *
 * Continuous batching: every loaded adapter sits in one adapter pool (methods/adapter_pool.h),
 * so sequences of different adapters and of the base model are stepped together. Each
 * iteration the scheduler admits queued jobs in arrival order up to max_active running
 * sequences (each prefilled alone with peft_model_decode, its rows set to its adapter), then gives
 * every running sequence one token in one peft_model_decode_batch (row i: sequence i, its adapter,
 * its KV cache). A job's tokens are the ones `peft generate` gives for its adapter, prompt and
 * seed (models/generate.h: the same prefill chunks, sampler and rng stream).
 * Only adapters the pool can mix (LoRA, DoRA, IA3, VeRA) can be loaded. */
#ifndef PEFT_SERVE_SCHEDULER_H
#define PEFT_SERVE_SCHEDULER_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "models/model.h"
#include "tokenizer/tokenizer.h"

#define SERVE_MAX_STOP 4
#define SERVE_NAME_MAX 128
#define SERVE_MSG_MAX 1024 /* error messages (a peft_err message fits) */

typedef struct serve_sched serve_sched;
typedef struct serve_job serve_job;

typedef struct serve_sched_opts {
    int max_queue;      /* jobs waiting or running; more are refused (HTTP 429) */
    int max_active;     /* sequences stepped together */
    size_t max_len;     /* prompt + new tokens of one job */
} serve_sched_opts;

typedef struct serve_params {
    size_t max_tokens;
    float temperature, top_p;
    uint64_t seed;
    char *stop[SERVE_MAX_STOP]; /* owned by the job once submitted */
    int n_stop;
} serve_params;

/* Why submit / load / unload refused, as HTTP statuses. */
enum { SERVE_OK = 0, SERVE_BAD = 400, SERVE_UNKNOWN = 404, SERVE_CONFLICT = 409, SERVE_FULL = 429,
       SERVE_INTERNAL = 500, SERVE_STOPPING = 503 };

/* Starts the scheduler thread over m and tok (both stay owned by the caller and must outlive
 * the scheduler). base_name: the `model` that selects no adapter. */
int serve_sched_create(peft_model *m, const peft_tokenizer *tok, const char *base_name, const serve_sched_opts *o,
                       serve_sched **out, peft_err *err);
/* Stops accepting jobs, cancels the queued ones (they end with 503), lets the running ones
 * finish, and joins the thread. Then frees everything; NULL is a no-op. */
void serve_sched_free(serve_sched *s);
/* Refuses new jobs and loads from now on (503); running jobs go on. */
void serve_sched_close(serve_sched *s);

/* Loads an adapter directory under `name` (waits until the scheduler has). Returns SERVE_*;
 * msg[SERVE_MSG_MAX] gets the reason. */
int serve_sched_load(serve_sched *s, const char *name, const char *dir, char *msg);
int serve_sched_unload(serve_sched *s, const char *name, char *msg);
/* The base name, then the loaded adapters' names, each NUL-terminated, into a malloc'ed
 * array of *n names of SERVE_NAME_MAX bytes. */
int serve_sched_models(serve_sched *s, char (**names)[SERVE_NAME_MAX], int *n);

/* Queues a job: prompt (text, taken over: freed by the job), add_special (BOS as the
 * tokenizer's post-processor adds it; chat renderings spell it out themselves), model (the base
 * name or an adapter's). p's stop strings are taken over on every return. Returns SERVE_*. */
int serve_sched_submit(serve_sched *s, const char *model, char *prompt, int add_special, serve_params *p,
                       serve_job **out, char *msg);

typedef struct serve_result {
    int status;                 /* 0 while running; 200 done; else the HTTP status of the error */
    const char *finish_reason;  /* "stop" or "length" */
    size_t prompt_tokens, completion_tokens;
    char msg[SERVE_MSG_MAX];              /* the error */
} serve_result;
/* Waits up to timeout_ms for more text or the end. *text (malloc'ed, NULL when none) gets the
 * text produced since the last call; *res the state. Returns 1 once the job has ended and its
 * whole text was returned. */
int serve_job_wait(serve_job *j, int timeout_ms, char **text, size_t *len, serve_result *res);
/* The HTTP side is done with j (a client that went away: the job is cancelled). */
void serve_job_release(serve_job *j);

#endif
