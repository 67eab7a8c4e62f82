/* tok_internal.h: the parts of a loaded tokenizer shared by tokenizer.c (loading, encoding),
 * bpe.c (vocabulary maps, merges), wordpiece.c, pretok.c (normalizers, pre-tokenizers) and
 * decode.c. */
#ifndef PEFT_TOKENIZER_TOK_INTERNAL_H
#define PEFT_TOKENIZER_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "tokenizer.h"

/* Open-addressing map from byte strings (kept elsewhere, not copied) to ids. */
typedef struct tok_strmap {
    const char **key;
    uint32_t *len;
    int32_t *val;
    size_t cap, n; /* cap: a power of two */
} tok_strmap;
int tok_strmap_init(tok_strmap *m, size_t expected);
void tok_strmap_free(tok_strmap *m);
/* Inserts or overwrites. Returns 0, or -1 when out of memory. */
int tok_strmap_put(tok_strmap *m, const char *key, uint32_t len, int32_t val);
int32_t tok_strmap_get(const tok_strmap *m, const char *key, size_t len); /* -1 if absent */

/* Map from a pair of ids to the merge's rank and the merged id. */
typedef struct tok_mergemap {
    uint64_t *key; /* (a << 32 | b) + 1; 0 marks an empty slot */
    uint32_t *rank;
    int32_t *merged;
    size_t cap, n;
} tok_mergemap;
int tok_mergemap_init(tok_mergemap *m, size_t expected);
void tok_mergemap_free(tok_mergemap *m);
int tok_mergemap_put(tok_mergemap *m, int32_t a, int32_t b, uint32_t rank, int32_t merged);
/* Returns 1 and fills rank/merged when the pair merges. */
int tok_mergemap_get(const tok_mergemap *m, int32_t a, int32_t b, uint32_t *rank, int32_t *merged);

/* BERT is BertNormalizer, and Lowercase as a BertNormalizer with only `lowercase` */
enum { TOK_NORM_NFC, TOK_NORM_PREPEND, TOK_NORM_REPLACE, TOK_NORM_BERT, TOK_NORM_STRIP };
typedef struct tok_norm {
    int kind;
    char *a, *b; /* PREPEND: a; REPLACE: a -> b (literal) */
    size_t an, bn;
    int left, right; /* STRIP */
    int clean, chinese, strip_accents, lowercase; /* BERT */
} tok_norm;

enum { TOK_PRE_SPLIT, TOK_PRE_BYTELEVEL, TOK_PRE_METASPACE, TOK_PRE_DIGITS, TOK_PRE_BERT };
enum { TOK_SPLIT_REMOVED, TOK_SPLIT_ISOLATED, TOK_SPLIT_MERGED_PREV, TOK_SPLIT_MERGED_NEXT, TOK_SPLIT_CONTIGUOUS };
enum { TOK_PREPEND_ALWAYS, TOK_PREPEND_FIRST, TOK_PREPEND_NEVER };
typedef struct tok_pre {
    int kind;
    pcre2_code *re;         /* SPLIT, and BYTELEVEL with use_regex */
    int behavior, invert;   /* SPLIT */
    int add_prefix_space;   /* BYTELEVEL */
    char repl[8];           /* METASPACE replacement character (UTF-8) */
    size_t repl_n;
    int prepend_scheme, split; /* METASPACE */
    int individual_digits;  /* DIGITS */
} tok_pre;

enum { TOK_DEC_BYTELEVEL, TOK_DEC_REPLACE, TOK_DEC_BYTEFALLBACK, TOK_DEC_FUSE, TOK_DEC_STRIP, TOK_DEC_METASPACE,
       TOK_DEC_WORDPIECE };
typedef struct tok_dec {
    int kind;
    char *a, *b; /* REPLACE: a -> b; STRIP: a is the character; METASPACE: a is the replacement;
                  * WORDPIECE: a is the prefix */
    size_t an, bn;
    int start, stop; /* STRIP */
    int prefix;      /* METASPACE: strip the space its prefix added */
    int cleanup;     /* WORDPIECE: undo the spaces before punctuation and contractions */
} tok_dec;

/* One piece of a post-processor's template: a sequence (seq 0: A, 1: B) or a special token id
 * (seq -1); type_id is what every token of the piece gets. */
typedef struct tok_post_piece {
    int seq;
    int32_t id;
    uint32_t type_id;
} tok_post_piece;

enum { TOK_ADDED = 1, TOK_SPECIAL = 2 };

/* trie.c: a byte trie of strings (the added tokens' texts), two flat arrays; node 0 is the root. */
typedef struct tok_trie_node {
    int32_t child;    /* index of the first child; the n_child children are contiguous, by byte */
    int32_t token;    /* index of the string that ends here, -1 if none */
    uint16_t n_child; /* 0..256 */
    uint8_t byte;     /* the byte on the edge from the parent */
} tok_trie_node;
typedef struct tok_trie {
    tok_trie_node *node;
    size_t n;
    int32_t root[256]; /* the root's child for each first byte, -1 if none */
} tok_trie;
/* Builds the trie of the n strings s[i] (len[i] bytes each, none empty; a string given twice
 * keeps its first index). The strings are not copied and must outlive the trie. Returns 0, or -1
 * when out of memory (t is then empty). */
int tok_trie_build(tok_trie *t, const char *const *s, const uint32_t *len, int n);
void tok_trie_free(tok_trie *t);
/* The index of the longest string that s[0..n) starts with, -1 if none. */
int tok_trie_longest(const tok_trie *t, const char *s, size_t n);
/* The index of the string equal to s[0..n), -1 if none. */
int tok_trie_find(const tok_trie *t, const char *s, size_t n);

typedef struct tok_added {
    const char *text;
    uint32_t len;
    int32_t id;
    int lstrip, rstrip, single_word;
} tok_added;

struct peft_tokenizer {
    /* Every id's text: raw bytes for a byte-level vocabulary, UTF-8 otherwise, the content for
     * added tokens. NULL where an id is unused. */
    char **text;
    uint32_t *text_len;
    uint8_t *flags; /* TOK_ADDED | TOK_SPECIAL */
    int n_ids;

    tok_strmap vocab; /* model vocabulary and added tokens: text -> id */
    tok_mergemap merges;
    int byte_level;       /* words are merged starting from their bytes */
    int32_t byte_id[256]; /* byte-level: id of each byte's symbol; otherwise the <0xNN> ids; -1: none */
    int byte_fallback, fuse_unk, ignore_merges;
    int sp_word_split; /* words may be cut before U+2581 (see tok_bpe_piece) */
    int32_t unk_id;
    int wordpiece;         /* the model is WordPiece (wordpiece.c), not BPE */
    char *wp_prefix;       /* WordPiece continuing_subword_prefix */
    size_t wp_prefix_n, wp_max_chars;

    tok_added *added; /* the n_raw_added non-normalized ones, then the normalized ones */
    int n_added, n_raw_added;
    tok_trie added_trie[2]; /* texts -> index: [0] in added, [1] in added + n_raw_added */
    pcre2_code *word_re;   /* one character of \w as HF's single_word sees it; NULL when no token is single_word */

    tok_norm *norm;
    int n_norm;
    tok_pre *pre;
    int n_pre;
    tok_dec *dec;
    int n_dec;
    tok_post_piece *post[2]; /* the post-processor's templates for one sequence [0] and a pair [1] */
    int n_post[2];

    int32_t bos_id, eos_id, pad_id;
    char *bos_text, *eos_text, *chat_template;
};

/* Growable output of an encode call: ids and the original byte span of each. */
typedef struct tok_out {
    int32_t *ids;
    uint32_t *start, *end;
    size_t n, cap;
} tok_out;
int tok_out_push(tok_out *o, int32_t id, uint32_t start, uint32_t end);

/* A piece of (possibly normalized) text: the original offset of byte i is
 * align ? align[i] : base + i. */
typedef struct tok_piece {
    const char *s;
    size_t n;
    const uint32_t *align;
    uint32_t base;
} tok_piece;
static inline uint32_t tok_piece_orig(const tok_piece *p, size_t i) {
    return p->align ? p->align[i] : p->base + (uint32_t)i;
}

/* Scratch memory of one encode call (never shared between threads). */
typedef struct tok_scratch {
    /* BPE symbols */
    int32_t *sym_id;
    uint32_t *sym_start, *sym_len;
    int32_t *prev, *next;
    size_t sym_cap;
    struct tok_heap_entry *heap;
    size_t heap_cap;
    pcre2_match_data *md;
    char *buf; /* WordPiece keys */
    size_t buf_cap;
    /* buffers owned by normalizers and pre-tokenizers, freed at the end of the call */
    void **blocks;
    size_t n_blocks, cap_blocks;
} tok_scratch;
void *tok_scratch_alloc(tok_scratch *sc, size_t bytes);
/* Hands a malloc'ed block to sc (freed with it); on failure frees p and returns -1. */
int tok_scratch_keep(tok_scratch *sc, void *p);
void tok_scratch_free(tok_scratch *sc);

/* bpe.c: merges one pre-tokenized piece and appends its ids to out. Returns 0, or -1 when out
 * of memory. */
int tok_bpe_piece(const peft_tokenizer *tok, tok_scratch *sc, const tok_piece *p, tok_out *out);

/* wordpiece.c: reads the WordPiece fields of the model object (after its vocabulary is in
 * tok->vocab); then cuts one pre-tokenized word and appends its ids to out (0, or -1 when out of
 * memory). */
int tok_wordpiece_load(peft_tokenizer *tok, const void *model_cjson, const char *what, peft_err *err);
int tok_wordpiece_piece(const peft_tokenizer *tok, tok_scratch *sc, const tok_piece *p, tok_out *out);

/* pretok.c */
int tok_parse_normalizer(peft_tokenizer *tok, const void *cjson, const char *what, peft_err *err);
int tok_parse_pre_tokenizer(peft_tokenizer *tok, const void *cjson, const char *what, peft_err *err);
/* Normalizes and pre-tokenizes one section of text between added tokens, then runs the model
 * (BPE or WordPiece) on each piece.
 * first: the section starts the text (Metaspace's prepend_scheme "first"). Returns 0 or -1
 * (out of memory). */
int tok_encode_section(const peft_tokenizer *tok, tok_scratch *sc, const char *s, size_t n, uint32_t base,
                       int first, tok_out *out);
void tok_free_steps(peft_tokenizer *tok);

/* decode.c */
int tok_parse_decoder(peft_tokenizer *tok, const void *cjson, const char *what, peft_err *err);

/* Whitespace as JavaScript's String.prototype.trim sees it (what @huggingface/jinja's trim uses;
 * chat_template.c's). */
static inline int tok_is_space(uint32_t cp) {
    return cp == ' ' || (cp >= 0x09 && cp <= 0x0D) || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000 || cp == 0xFEFF;
}

#endif
