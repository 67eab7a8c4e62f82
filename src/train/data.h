/* data.h: training data for causal-LM fine-tuning: loading, tokenizing, loss masks, train/
 * validation split, packing into fixed-length rows and seeded shuffling.
 *
 * Formats (auto-detected from the extension and the first record):
 *  - plain text (.txt, or anything that is not JSON records): the whole file is one document;
 *  - JSONL (.jsonl) or a JSON array (.json) of records, all of one kind:
 *      {"text"}                              a document; loss on every token
 *      {"prompt", "completion"}              loss on the completion (and EOS) only
 *      {"instruction", "input"?, "output"}   Alpaca; the alpaca-lora prompt; loss on the output
 *      {"messages": [{"role", "content"}]}   chat; rendered with the chat template; loss on the
 *                                            assistant turns (content and end-of-turn token)
 * Documents longer than seq_len are cut into seq_len windows (each window an example; the last
 * token of a window still predicts the first of the next); other examples are truncated.
 * An example with no token to learn is dropped (counted by peft_dataset_dropped when the
 * truncation cut its tokens to learn). JSON is read as strictly as Python's json: one record
 * per JSONL line, nothing after it, no duplicate keys. Errors name FILE:LINE:COLUMN (JSONL
 * syntax), FILE:LINE (JSONL record), FILE: record N
 * (JSON array) or FILE (empty file, no usable example).
 *
 * Thread safety: a loaded dataset is read-only; peft_dataset_row may run on many threads. */
#ifndef PEFT_TRAIN_DATA_H
#define PEFT_TRAIN_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "peft.h"
#include "tokenizer/tokenizer.h"

typedef struct peft_dataset peft_dataset;

typedef struct peft_data_opts {
    int seq_len;               /* T: tokens per packed row */
    double val_fraction;       /* fraction of examples held out (at least 1 when > 0 and >= 2 examples) */
    uint64_t seed;             /* shuffling and split */
    const char *chat_template; /* NULL = from tokenizer_config.json; or a family name the user chose */
    int pack;                  /* 1: pack several examples per row; 0: one example per row, padded */
} peft_data_opts;

/* Loads and tokenizes path. Returns PEFT_OK and *out (free with peft_dataset_free), or
 * PEFT_EIO / PEFT_EFORMAT (malformed record, empty file) / PEFT_EINVAL (bad options). */
int peft_dataset_load(const char *path, const peft_tokenizer *tok, const peft_data_opts *opts, peft_dataset **out,
                      peft_err *err);
/* The same from len bytes of memory (need not be NUL-terminated); `name` stands for the path:
 * its extension picks the format and messages name it. */
int peft_dataset_load_memory(const char *text, size_t len, const char *name, const peft_tokenizer *tok,
                             const peft_data_opts *opts, peft_dataset **out, peft_err *err);
void peft_dataset_free(peft_dataset *ds);

/* split: 0 = train, 1 = validation. Number of rows of seq_len tokens. */
int peft_dataset_rows(const peft_dataset *ds, int split);
/* Number of examples (documents' windows count one each) in a split. */
int peft_dataset_examples(const peft_dataset *ds, int split);

/* Records dropped because their prompt fills seq_len: every token to learn lies beyond it
 * (loaders should report them; a file of nothing else is refused naming --seq-len). */
int peft_dataset_dropped(const peft_dataset *ds);

/* A 64-bit hash of everything the rows are made of (tokens, loss flags, examples, split and
 * row order, seq_len, packing): equal for the same file, tokenizer, template and options. */
uint64_t peft_dataset_hash(const peft_dataset *ds);
/* FNV-1a over n bytes, continuing from h (start: 0xcbf29ce484222325): the data hashes' step. */
uint64_t peft_fnv1a(uint64_t h, const void *p, size_t n);

/* Fills one row (T = seq_len):
 *  inputs[T]:  token ids (padded with eos, or 0 when there is none);
 *  targets[T]: the id to predict at each position, or -1 where no loss is taken (prompt
 *              tokens, padding, the last token of an example, across example boundaries);
 *  pos[T]:     position of the token inside its own example (0, 1, 2, ... restarting at each
 *              packed example): attention is restricted to [t - pos[t], t].
 * Row order within a split is a fixed seeded shuffle. Returns PEFT_OK or PEFT_EINVAL. */
int peft_dataset_row(const peft_dataset *ds, int split, int row, int32_t *inputs, int32_t *targets, int32_t *pos);
/* The target of the position just before the row's first token: that token's id when it is
 * learnt, else -1 (also for a row out of range). Prompt tuning's last virtual token predicts it,
 * as HF PEFT's labels do (it prepends -100 for the virtual tokens, then shifts). */
int32_t peft_dataset_row_first_target(const peft_dataset *ds, int split, int row);

#endif
