/* test_llama_tiny.c: the real HF checkpoint ../shared/models/tiny-random-llama (written by
 * transformers 4.42) loads, its first-step logits match the float64 reference recorded in
 * its SOURCE.txt, and greedy decoding of [1,2,3] gives the 8 recorded ids — both with the
 * KV cache and with full re-forwarding. With the frozen matmuls in f16 (llama_use_half) the
 * same 8 ids come out and the logits stay within 2e-3 of the reference (bf16's 8-bit rounding
 * changes the second id on this random model, whose top logits lie close together). */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "unit/tiny_random_llama.h"
#include "kernels/kernels.h"
#include "models/llama.h"

static const int32_t *const expected = tiny_random_llama_greedy;

int main(void) {
    const char *shared = getenv("PEFT_SHARED");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/models/tiny-random-llama", shared ? shared : "../shared");
    char cfg_path[4200];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
    FILE *probe = fopen(cfg_path, "r");
    if (!probe) CHECK_SKIP("%s not found (the shared fixtures are not beside the project)", cfg_path);
    fclose(probe);

    peft_err err = {0};
    peft_llama *m;
    int rc = llama_load(dir, &m, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc) return check_report("test_llama_tiny");
    CHECK(m->base.n_params == 1032272);
    int V = m->cfg.vocab_size;

    /* KV-cache decoding */
    llama_kv_cache kv;
    CHECK(llama_kv_alloc(m, 16, 4, &kv, &err) == 0);
    float *logits = malloc((size_t)V * sizeof *logits);
    int32_t prompt[3] = {1, 2, 3};
    CHECK(llama_decode(m, &kv, prompt, 3, logits, &err) == 0);
    /* float64 reference from SOURCE.txt */
    CHECK_CLOSE(logits[18568], 0.298970, 1e-5);
    CHECK_CLOSE(logits[8575], 0.279835, 1e-5);
    CHECK_CLOSE(logits[0], 0.022118, 1e-5);
    CHECK_CLOSE(logits[3], -0.098116, 1e-5);
    int32_t got[8];
    for (int s = 0; s < 8; s++) {
        got[s] = argmax(logits, V);
        if (s < 7) CHECK(llama_decode(m, &kv, &got[s], 1, logits, &err) == 0);
    }
    for (int s = 0; s < 8; s++) CHECK_MSG(got[s] == expected[s], "step %d: %d vs %d", s, got[s], expected[s]);

    /* Full forward over prompt + expected continuation: each position's argmax is the next id. */
    int32_t seq[11] = {1, 2, 3};
    memcpy(seq + 3, expected, sizeof tiny_random_llama_greedy);
    llama_acts acts;
    CHECK(llama_acts_alloc(m, 1, 11, 0, 0, &acts, &err) == 0);
    CHECK(llama_forward(m, &acts, seq, NULL, NULL, NULL, NULL, &err) == 0);
    for (int t = 2; t < 10; t++) CHECK_MSG(argmax(acts.logits + (size_t)t * V, V) == seq[t + 1], "position %d", t);

    /* Bad ids are refused with a message, not a crash. */
    int32_t bad[2] = {1, 32000};
    llama_kv_free(&kv);
    CHECK(llama_kv_alloc(m, 4, 2, &kv, &err) == 0);
    CHECK(llama_decode(m, &kv, bad, 2, logits, &err) == PEFT_EINVAL);
    CHECK(strstr(err.msg, "32000") != NULL);

    /* f16 compute: the recorded greedy ids again */
    CHECK(llama_use_half(m, &peft_half_f16, 0, &err) == 0);
    llama_kv_free(&kv);
    CHECK(llama_kv_alloc(m, 16, 4, &kv, &err) == 0);
    CHECK(llama_decode(m, &kv, prompt, 3, logits, &err) == 0);
    CHECK_CLOSE(logits[18568], 0.298970, 2e-3);
    CHECK_CLOSE(logits[8575], 0.279835, 2e-3);
    for (int s = 0; s < 8; s++) {
        got[s] = argmax(logits, V);
        if (s < 7) CHECK(llama_decode(m, &kv, &got[s], 1, logits, &err) == 0);
    }
    for (int s = 0; s < 8; s++) CHECK_MSG(got[s] == expected[s], "f16 step %d: %d vs %d", s, got[s], expected[s]);

    llama_acts_free(&acts);
    llama_kv_free(&kv);
    free(logits);
    llama_free(m);
    return check_report("test_llama_tiny");
}
