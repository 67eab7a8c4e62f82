/* fuzz_dataset.c: libFuzzer target for training data (peft_dataset_load_memory) with a small
 * fixed tokenizer (tests/tokenizer/fixture.h: SentencePiece-style BPE with a ChatML template).
 * Input: one byte of options (file extension .jsonl / .json / .txt, packing, seq_len 2..33,
 * a validation split), one byte picking the chat template (tokenizer's own or a named family),
 * then the file's text. Any input must give an error naming the file, or a dataset whose every
 * row holds ids of the vocabulary, targets that are -1 or such ids, and positions inside the
 * row. Built by fuzz/run.sh. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/fixture.h"
#include "tokenizer/tokenizer.h"
#include "train/data.h"

#define REQUIRE(c) \
    do {           \
        if (!(c)) __builtin_trap(); \
    } while (0)

static peft_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    char *dir = fixture_dir();
    peft_err err;
    REQUIRE(dir && peft_tokenizer_load(dir, &tok, &err) == PEFT_OK);
    fixture_rmdir(dir);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2 || size > (1u << 16)) return 0;
    static const char *const names[] = {"fuzz.jsonl", "fuzz.json", "fuzz.txt", "fuzz"};
    static const char *const templates[] = {NULL, "chatml", "llama3", "llama2", "mistral", "qwen3", "nonsense", NULL};
    const char *name = names[data[0] & 3];
    peft_data_opts opts = {.seq_len = 2 + ((data[0] >> 2) & 31), .val_fraction = (data[0] & 0x80) ? 0.25 : 0,
                           .seed = data[1], .chat_template = templates[data[1] & 7], .pack = (data[1] >> 3) & 1};
    size_t len = size - 2;
    char *text = malloc(len ? len : 1); /* not NUL-terminated: the loader must honour len */
    if (!text) return 0;
    memcpy(text, data + 2, len);
    peft_err err = {0};
    peft_dataset *ds = NULL;
    int rc = peft_dataset_load_memory(text, len, name, tok, &opts, &ds, &err);
    free(text);
    if (rc != PEFT_OK) {
        REQUIRE(ds == NULL);
        REQUIRE(rc < 0 && err.code == rc && memchr(err.msg, 0, sizeof err.msg) && strstr(err.msg, "fuzz"));
        return 0;
    }
    int T = opts.seq_len, V = peft_tokenizer_vocab_size(tok);
    REQUIRE(peft_dataset_examples(ds, 0) + peft_dataset_examples(ds, 1) > 0);
    int32_t in[64], tg[64], pos[64];
    for (int split = 0; split < 2; split++)
        for (int r = 0; r < peft_dataset_rows(ds, split); r++) {
            REQUIRE(peft_dataset_row(ds, split, r, in, tg, pos) == PEFT_OK);
            for (int t = 0; t < T; t++) {
                REQUIRE(in[t] >= 0 && in[t] < V && tg[t] >= -1 && tg[t] < V && pos[t] >= 0 && pos[t] <= t);
                if (tg[t] >= 0 && t + 1 < T && pos[t + 1] == pos[t] + 1) REQUIRE(tg[t] == in[t + 1]);
            }
        }
    REQUIRE(peft_dataset_row(ds, 0, peft_dataset_rows(ds, 0), in, tg, pos) == PEFT_EINVAL);
    peft_dataset_free(ds);
    return 0;
}
