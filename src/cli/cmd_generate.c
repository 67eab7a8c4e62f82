/* cmd_generate.c: `peft generate`: greedy or sampled continuation with a KV cache. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cli_common.h"
#include "commands.h"
#include "methods/adapter_set.h"
#include "models/sampler.h"

static void usage(void) {
    printf("usage: peft generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3) [options]\n"
           "  --max-new N        new tokens (default 64)\n"
           "  --temperature T    0 = greedy (default), else sample from softmax(logits / T)\n"
           "  --top-p P          nucleus sampling mass (default 1 = off)\n"
           "  --seed S           sampling seed (default 0)\n"
           CLI_HALF_HELP
           "  --adapter DIR      generate with a PEFT adapter attached\n"
           "  --ignore-eos       keep going past the end-of-sequence token\n"
           "  With --prompt-ids the new ids are printed; with --prompt the decoded text.\n");
}

static int is_eos(const peft_llama_config *c, const cli_model *cm, int id) {
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_token_ids[i] == id) return 1;
    return cm->tok && peft_tokenizer_eos_id(cm->tok) == id;
}

/* Streams text as HF's TextStreamer does: seq[0..n) is the prompt followed by the new ids;
 * the whole sequence is decoded and the part past *printed (bytes already shown; initially the
 * decoded prompt's length) is printed. Decoding the new ids alone would lose what depends on
 * their left context: a SentencePiece "▁was" after the prompt is " was", alone it is "was".
 * A tail ending in U+FFFD (a character whose bytes are split across tokens) waits for the
 * next token unless this is the last one. */
static int print_new_text(const cli_model *cm, const int32_t *seq, size_t n, int last, size_t *printed, peft_err *err) {
    char *text;
    int rc = peft_tokenizer_decode(cm->tok, seq, n, 1, &text, err);
    if (rc) return rc;
    size_t len = strlen(text);
    int partial = !last && len >= 3 && !memcmp(text + len - 3, "\xEF\xBF\xBD", 3);
    if (len > *printed && !partial) {
        fputs(text + *printed, stdout);
        fflush(stdout);
        *printed = len;
    }
    free(text);
    return PEFT_OK;
}

int cmd_generate(int argc, char **argv) {
    cli_args a;
    args_init(&a, "generate", argc, argv);
    const char *dir = args_str(&a, "--model", NULL), *prompt = args_str(&a, "--prompt", NULL),
               *prompt_ids = args_str(&a, "--prompt-ids", NULL), *adapter = args_str(&a, "--adapter", NULL);
    long max_new = args_int(&a, "--max-new", 64, 0, CLI_MAX_SEQ), seed = args_int(&a, "--seed", 0, 0, LONG_MAX);
    double temperature = args_real(&a, "--temperature", 0.0, CLI_CLOSED(0, 100)),
           top_p = args_real(&a, "--top-p", 1.0, CLI_ABOVE(0, 1));
    int ignore_eos = args_has(&a, "--ignore-eos");
    int bf16 = args_has(&a, "--bf16"), f16 = args_has(&a, "--f16");
    const char *quantize = args_str(&a, "--quantize", NULL);
    if (a.help) {
        usage();
        args_print_numbers(&a, stdout);
        return 0;
    }
    int rc = args_finish(&a);
    if (rc) return rc;
    if (!dir || !prompt == !prompt_ids) {
        fprintf(stderr, "peft generate: %s (see peft generate --help)\n",
                !dir ? "--model DIR is required" : "give exactly one of --prompt / --prompt-ids");
        return 2;
    }
    peft_err err = {0};
    cli_model cm;
    int keep;
    if (cli_keep_blocks(dir, quantize, bf16, f16, 0, &keep, &err) || cli_model_load_ex(dir, adapter, keep, &cm, &err))
        return cli_report(err.msg);
    if (cli_use_half(cm.model, bf16, f16, quantize, 0, &err)) {
        cli_model_free(&cm);
        return cli_report(err.msg);
    }
    const peft_llama_config *c = &cm.model->cfg;
    int32_t *ids = NULL;
    size_t n = 0;
    if (prompt_ids) rc = cli_parse_ids(prompt_ids, "--prompt-ids", &ids, &n, &err);
    else if (!cm.tok) rc = peft_fail(&err, PEFT_EINVAL, "%s has no tokenizer.json: use --prompt-ids", dir);
    else rc = peft_tokenizer_encode(cm.tok, prompt, strlen(prompt), 1, &ids, &n, &err);
    if (rc == PEFT_OK && n == 0) rc = peft_fail(&err, PEFT_EINVAL, "the prompt is empty");
    llama_kv_cache kv = {0};
    int chunk = n > 64 ? 64 : (int)n;
    if (rc == PEFT_OK) rc = llama_kv_alloc(cm.model, (int)(n + (size_t)max_new), chunk, &kv, &err);
    if (rc == PEFT_OK) rc = peft_adapter_set_reserve(cm.adapters, chunk, &err);
    float *logits = malloc((size_t)c->vocab_size * sizeof *logits);
    sample_candidate *scratch = malloc((size_t)c->vocab_size * sizeof *scratch);
    /* seq[n + max_new]: the prompt, then the new ids (out) */
    int32_t *seq = malloc((n + (size_t)max_new + 1) * sizeof *seq), *out = seq ? seq + n : NULL;
    if (rc == PEFT_OK && (!logits || !scratch || !seq)) rc = peft_fail(&err, PEFT_ENOMEM, "out of memory");
    if (rc == PEFT_OK) memcpy(seq, ids, n * sizeof *seq);
    /* Prefill the prompt in chunks, then one token at a time. */
    for (size_t i = 0; rc == PEFT_OK && i < n; i += (size_t)chunk) {
        int len = (int)(n - i < (size_t)chunk ? n - i : (size_t)chunk);
        rc = llama_decode(cm.model, &kv, ids + i, len, logits, &err);
    }
    peft_rng rng;
    peft_rng_seed(&rng, (uint64_t)seed, 0x67656e);
    size_t n_out = 0, printed = 0;
    if (rc == PEFT_OK && prompt) {
        printf("%s", prompt);
        char *text;
        if ((rc = peft_tokenizer_decode(cm.tok, ids, n, 1, &text, &err)) == PEFT_OK) {
            printed = strlen(text); /* the new text starts where the decoded prompt ends */
            free(text);
        }
    }
    for (long s = 0; rc == PEFT_OK && s < max_new; s++) {
        int next = sample_next(logits, c->vocab_size, (float)temperature, (float)top_p, &rng, scratch);
        if (next < 0) {
            rc = peft_fail(&err, PEFT_ENUMERIC, "the model's logits at new token %ld are not finite: nothing to sample", s + 1);
            break;
        }
        out[n_out++] = next;
        int stop = (!ignore_eos && is_eos(c, &cm, next)) || s + 1 == max_new;
        if (prompt) rc = print_new_text(&cm, seq, n + n_out, stop, &printed, &err);
        if (stop || rc) break;
        rc = llama_decode(cm.model, &kv, &out[n_out - 1], 1, logits, &err);
    }
    if (rc == PEFT_OK) {
        if (prompt) printf("\n");
        else {
            for (size_t i = 0; i < n_out; i++) printf("%s%d", i ? " " : "", out[i]);
            printf("\n");
        }
    }
    free(logits);
    free(scratch);
    free(seq);
    free(ids);
    llama_kv_free(&kv);
    cli_model_free(&cm);
    return rc ? cli_report(err.msg) : 0;
}
