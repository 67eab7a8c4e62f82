/* generate.h: one sequence being generated: its KV cache, sampler state and stopping rule.
 * `peft generate` and `peft serve` both generate through it, so the same prompt, sampling
 * parameters and seed give the same tokens in both (the prefill is chunked the same way, the
 * rng is seeded the same way, the text is decoded the same way). */
#ifndef PEFT_MODELS_GENERATE_H
#define PEFT_MODELS_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "models/model.h"
#include "models/sampler.h"
#include "tokenizer/tokenizer.h"

#define PEFT_GEN_CHUNK 64 /* prompt tokens per prefill forward */

typedef struct peft_gen {
    peft_model *model;          /* the model g->kv belongs to */
    peft_kv *kv;
    float *logits;              /* [V] logits after the last decoded token */
    sample_candidate *scratch;  /* [V] */
    int32_t *seq;               /* [n_prompt + max_new] the prompt, then the new ids */
    size_t n_prompt, n_out, max_new;
    float temperature, top_p;
    peft_rng rng;
    int chunk;                  /* rows of one prefill forward (adapters need scratch for as many) */
} peft_gen;

/* Allocates g for ids[n] (n >= 1) and up to max_new new tokens; copies the prompt. The seed
 * picks the sampling stream as `peft generate --seed` does. */
int peft_gen_init(peft_gen *g, peft_model *m, const int32_t *ids, size_t n, size_t max_new, float temperature,
                  float top_p, uint64_t seed, peft_err *err);
void peft_gen_free(peft_gen *g);
/* Runs the prompt through m (chunks of g->chunk tokens), leaving the last token's logits. */
int peft_gen_prefill(peft_gen *g, peft_model *m, peft_err *err);
/* Samples the next id from g->logits (overwritten) and appends it: *id, and *done = 1 when it
 * ends the sequence (an end-of-sequence id of the config or tokenizer unless ignore_eos, or the
 * max_new-th token). tok may be NULL. */
int peft_gen_sample(peft_gen *g, const peft_model *m, const peft_tokenizer *tok, int ignore_eos, int32_t *id, int *done,
                    peft_err *err);
/* Feeds the last sampled id to m: g->logits become the next token's. */
int peft_gen_decode(peft_gen *g, peft_model *m, peft_err *err);
/* The text the new ids add, as HF's TextStreamer shows it: the whole sequence is decoded and
 * what lies past *shown bytes (initially 0: the decoded prompt's length is measured on the
 * first call) is returned in *text (malloc'ed, possibly empty). A tail ending in U+FFFD (a
 * character split across tokens) waits for the next token unless `last`. */
int peft_gen_new_text(const peft_gen *g, const peft_tokenizer *tok, int last, size_t *shown, char **text, peft_err *err);

#endif
