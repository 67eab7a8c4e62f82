/* cls_data.h: classification data (seq-cls, image-cls): loading, tokenizing, labels, batching.
 *
 * Text files (by extension: .jsonl / .json are JSONL, anything else is TSV):
 *  - TSV with a header row (GLUE style). Columns, by name: the text is `sentence` or `text`, a
 *    pair is `sentence1`/`sentence2`, `text_a`/`text_b` or MRPC's `#1 String`/`#2 String`; the
 *    label is `label` or MRPC's `Quality`. Other columns are ignored. A UTF-8 byte-order mark
 *    before the header is skipped, blank lines are skipped (as Python's csv.reader does), every
 *    other line must have as many fields as the header. Quoting is decided per file: when every
 *    field that starts with a double quote is a well-formed CSV quoted field ("...", inner
 *    quotes doubled), the file is read as CSV-quoted (pandas' to_csv with sep="\t", RTE here);
 *    otherwise quotes are text (GLUE's processors read with quotechar=None; MRPC, SST-2).
 *  - JSONL: one object per line, {"text", "label"} or {"text_a", "text_b", "label"}; the label
 *    an integer or a string.
 * Labels: when every label of the file is an integer (decimal, optional minus), it is the class
 * id; -1 means unlabelled (no loss, not counted by the metrics, as HF's -100); below -1 is an
 * error. Otherwise every label is a class name and ids come from opts->label_names (the model's
 * label2id: names[i] is id i) when given, else from the sorted distinct names (byte order, which
 * is Python's sorted() on the strings): "entailment" 0, "not_entailment" 1.
 * Tokens: the tokenizer's encode(text) / encode(a, b) with its post-processor, truncated as the
 * tokenizers library's truncation (max_length = opts->max_len counting the special tokens;
 * pairs longest_first as its truncation.rs computes it: the longer text is cut first, and when
 * both must be cut each keeps half of the room, the second text the odd token), with the type
 * ids of the template.
 *
 * Image folders: DIR/<class>/<files>, listed as torchvision's ImageFolder (io/image.h: classes
 * sorted, label = index); images are decoded and preprocessed (io/image_preprocess.h) when a
 * batch is filled, not at load.
 *
 * Errors name FILE:LINE and the field (a missing column, a bad or out-of-range label, a line
 * with the wrong number of fields), or FILE (empty file, no example).
 *
 * Thread safety: a loaded dataset is read-only; batches may be filled from many threads (each
 * its own peft_cls_batch). */
#ifndef PEFT_TRAIN_CLS_DATA_H
#define PEFT_TRAIN_CLS_DATA_H

#include <stdint.h>

#include "io/image_preprocess.h"
#include "models/model.h"
#include "tokenizer/tokenizer.h"

typedef struct peft_cls_opts {
    int max_len;                   /* text: tokens per example with the special ones; 0 = no truncation */
    int n_labels;                  /* > 0: every label id must be below it; 0: no check */
    const char *const *label_names; /* [n_label_names] string labels' ids (label2id order), or NULL: sorted */
    int n_label_names;
} peft_cls_opts;

typedef struct peft_cls_dataset {
    char *path;                    /* the file or directory, for messages */
    int n;                         /* examples */
    int n_classes;                 /* 1 + the largest label id (string labels: the number of names) */
    char **classes;                /* [n_classes] class names (string labels, image folders), or NULL */
    int32_t *labels;               /* [n] class id, -1 = unlabelled */
    /* text */
    int is_pair;
    int max_tokens;                /* the longest example's token count */
    int64_t *offset;               /* [n + 1] example i's tokens are tokens[offset[i], offset[i+1]) */
    int32_t *tokens;               /* [offset[n]] ids */
    int32_t *type_ids;             /* [offset[n]] token type ids */
    /* images */
    char **image_paths;            /* [n], or NULL for text */
    peft_image_processor proc;
} peft_cls_dataset;

/* Loads a TSV / JSONL file and tokenizes it with tok. Returns PEFT_OK and *out (free with
 * peft_cls_free), or PEFT_EIO / PEFT_EFORMAT / PEFT_EINVAL with the message. */
int peft_cls_load_text(const char *path, const peft_tokenizer *tok, const peft_cls_opts *opts, peft_cls_dataset **out,
                       peft_err *err);
/* The same from len bytes of memory; `name` stands for the path (its extension picks the format). */
int peft_cls_load_text_memory(const char *text, size_t len, const char *name, const peft_tokenizer *tok,
                              const peft_cls_opts *opts, peft_cls_dataset **out, peft_err *err);
/* Lists an ImageFolder directory; preprocessor_config (a path, or NULL for ViTImageProcessor's
 * defaults) says how batches preprocess its images. opts->n_labels checks the class count. */
int peft_cls_load_images(const char *dir, const char *preprocessor_config, const peft_cls_opts *opts,
                         peft_cls_dataset **out, peft_err *err);
void peft_cls_free(peft_cls_dataset *ds);
/* A 64-bit hash of the examples (labels, tokens and type ids, or the image paths and the
 * preprocessing size), for a training run's signature (train/checkpoint.h). */
uint64_t peft_cls_hash(const peft_cls_dataset *ds);

/* A batch's storage; `b` points into it after peft_cls_batch_fill. */
typedef struct peft_cls_batch {
    peft_batch b;
    int32_t *ids, *type_ids, *lengths, *labels; /* [B, T], [B, T], [B], [B] */
    float *pixels;                              /* [B, 3, H, W] */
    int height, width;                          /* H, W of the images' pixels */
    size_t cap_tokens, cap_rows, cap_pixels;
} peft_cls_batch;

/* Fills bt with the examples rows[0..B): text rows padded with pad_id (type id 0) to T, or to
 * the batch's longest when T is 0 (an example longer than a given T is cut to T), lengths[B];
 * images preprocessed into pixels; labels[B] as targets. Reuses bt's storage (zero-initialize
 * it first, free with peft_cls_batch_free). Errors: a row out of range, an unreadable image, or
 * one whose preprocessed size differs from the batch's first. */
int peft_cls_batch_fill(const peft_cls_dataset *ds, const int *rows, int B, int T, int pad_id, peft_cls_batch *bt,
                        peft_err *err);
void peft_cls_batch_free(peft_cls_batch *bt);

#endif
