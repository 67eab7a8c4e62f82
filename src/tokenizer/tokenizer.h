/* tokenizer.h: Hugging Face tokenizer.json tokenizers (BPE and WordPiece) in C.
 *
 * Two kinds of BPE are in use and both are handled:
 *  - byte-level BPE (GPT-2, Llama-3, Qwen2/3, SmolLM): a Split regex and/or ByteLevel
 *    pre-tokenizer, then merges by rank over the bytes of each piece;
 *  - SentencePiece-style BPE (Llama-2, TinyLlama, Mistral): Prepend/Replace normalizers or a
 *    Metaspace pre-tokenizer, merges over characters, and <0xNN> byte fallback.
 * And WordPiece (BERT and its kin): BertNormalizer, BertPreTokenizer, greedy longest-match-first
 * pieces with a "##" prefix, the WordPiece decoder. The post-processor (TemplateProcessing,
 * BertProcessing, RobertaProcessing) adds its special tokens to one text or a pair of texts
 * ([CLS] A [SEP] B [SEP], <s> A </s></s> B </s>) and gives the type ids.
 * Added tokens (specials such as <|im_start|>) are matched in the raw text first, as HF does:
 * leftmost-longest, non-normalized tokens before normalized ones, never split
 * (lstrip/rstrip/single_word honoured; "normalized" tokens are matched in the raw text, which
 * is the same for the files in use). A character the vocabulary cannot spell becomes unk, or
 * is dropped when there is no unk token (as HF does). BOS/EOS come from tokenizer_config.json.
 *
 * Thread safety: a loaded tokenizer is read-only; any number of threads may encode and
 * decode with it at once. */
#ifndef PEFT_TOKENIZER_H
#define PEFT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "peft.h"

typedef struct peft_tokenizer peft_tokenizer;

/* Loads DIR/tokenizer.json and (if present) DIR/tokenizer_config.json; DIR may also be a .gguf
 * file, whose embedded vocabulary is loaded (src/tokenizer/gguf_vocab.c).
 * Returns PEFT_OK and *out (free with peft_tokenizer_free), or PEFT_EIO/PEFT_EFORMAT, or
 * PEFT_EUNSUPPORTED naming the component (model, normalizer, pre-tokenizer...) not handled. */
int peft_tokenizer_load(const char *model_dir, peft_tokenizer **out, peft_err *err);
/* The same from memory: the text of a tokenizer.json (len bytes, need not be NUL-terminated)
 * and optionally of a tokenizer_config.json (NULL: none). Messages name the texts
 * WHAT/tokenizer.json and WHAT/tokenizer_config.json (peft_tokenizer_load passes its DIR). */
int peft_tokenizer_load_json(const char *tokenizer_json, size_t len, const char *config_json, size_t config_len,
                             const char *what, peft_tokenizer **out, peft_err *err);
void peft_tokenizer_free(peft_tokenizer *tok);

/* Encodes text (len bytes of UTF-8; invalid UTF-8 is PEFT_EINVAL naming the byte offset).
 * add_special: apply the post-processor (e.g. BOS) as HF's add_special_tokens=True.
 * *ids is malloc'ed, caller frees. */
int peft_tokenizer_encode(const peft_tokenizer *tok, const char *text, size_t len, int add_special,
                          int32_t **ids, size_t *n_ids, peft_err *err);

/* As peft_tokenizer_encode, and also the span of the original text each token came from:
 * token i covers bytes [(*starts)[i], (*ends)[i]). Tokens the post-processor adds (BOS) get
 * an empty span at the start (or end) of the text. starts/ends are malloc'ed. */
int peft_tokenizer_encode_spans(const peft_tokenizer *tok, const char *text, size_t len, int add_special,
                                int32_t **ids, uint32_t **starts, uint32_t **ends, size_t *n_ids,
                                peft_err *err);

/* Encodes a pair of texts (a: alen bytes, b: blen bytes, UTF-8) as the library's
 * encode(a, b): each text on its own, then the post-processor's pair template (special tokens
 * only with add_special). *ids and *type_ids (n_ids each; 0 for A's part, 1 for B's part in
 * BERT's template, all 0 in RoBERTa's) are malloc'ed, caller frees both. No truncation. */
int peft_tokenizer_encode_pair(const peft_tokenizer *tok, const char *a, size_t alen, const char *b, size_t blen,
                               int add_special, int32_t **ids, uint32_t **type_ids, size_t *n_ids, peft_err *err);

/* The post-processor's template (with its special tokens) around already encoded content: one
 * sequence a[na], or the pair a[na], b[nb] when b is not NULL (b with nb = 0 is an empty second
 * text). As encode / encode_pair with add_special, on the texts' tokens; this is how a caller
 * truncates the content first, as the library's truncation does. *ids and *type_ids (n_ids each)
 * are malloc'ed, caller frees both. */
int peft_tokenizer_post_process(const peft_tokenizer *tok, const int32_t *a, size_t na, const int32_t *b, size_t nb,
                                int32_t **ids, uint32_t **type_ids, size_t *n_ids, peft_err *err);

/* Decodes ids to a malloc'ed NUL-terminated string (skip_special: drop special tokens).
 * Byte sequences that are not valid UTF-8 become U+FFFD, as HF does. */
int peft_tokenizer_decode(const peft_tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
                          char **out, peft_err *err);

/* Number of ids: one past the largest id of the vocabulary and the added tokens. */
int peft_tokenizer_vocab_size(const peft_tokenizer *tok);
int peft_tokenizer_bos_id(const peft_tokenizer *tok); /* -1 if none */
int peft_tokenizer_eos_id(const peft_tokenizer *tok); /* -1 if none */
/* The pad token of tokenizer_config.json, -1 if none. */
int peft_tokenizer_pad_id(const peft_tokenizer *tok);

/* The text of an added/special token (e.g. "<|im_end|>"), or NULL if id is not one. */
const char *peft_tokenizer_added_text(const peft_tokenizer *tok, int id);
/* The id of an added token or vocabulary entry spelled exactly `text`, -1 if none. */
int peft_tokenizer_token_id(const peft_tokenizer *tok, const char *text);
/* tokenizer_config.json's bos_token / eos_token strings, NULL if absent. */
const char *peft_tokenizer_bos_text(const peft_tokenizer *tok);
const char *peft_tokenizer_eos_text(const peft_tokenizer *tok);
/* tokenizer_config.json's chat_template (the "default" one when it is a list), NULL if absent. */
const char *peft_tokenizer_chat_template(const peft_tokenizer *tok);

#endif
