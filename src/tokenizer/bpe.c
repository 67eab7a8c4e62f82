/* bpe.c: the BPE model: vocabulary and merge maps, and the merge loop.
 *
 * A word starts as one symbol per byte (byte-level) or per character (SentencePiece-style).
 * Candidate merges of neighbouring symbols sit in a binary heap ordered by (rank, position),
 * so the lowest-ranked pair is merged first and ties go to the leftmost, as in HF tokenizers;
 * a popped entry whose symbols changed since it was pushed is stale and skipped. That is
 * O(n log n) per word instead of rescanning all pairs after every merge. */
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"
#include "utf8.h"

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

int tok_strmap_init(tok_strmap *m, size_t expected) {
    memset(m, 0, sizeof *m);
    m->cap = pow2_at_least(expected * 2 + 1);
    m->key = calloc(m->cap, sizeof *m->key);
    m->len = calloc(m->cap, sizeof *m->len);
    m->val = calloc(m->cap, sizeof *m->val);
    return m->key && m->len && m->val ? 0 : -1;
}

void tok_strmap_free(tok_strmap *m) {
    free(m->key);
    free(m->len);
    free(m->val);
    memset(m, 0, sizeof *m);
}

static int strmap_grow(tok_strmap *m) {
    tok_strmap bigger;
    if (tok_strmap_init(&bigger, m->cap)) return tok_strmap_free(&bigger), -1;
    for (size_t i = 0; i < m->cap; i++)
        if (m->key[i]) tok_strmap_put(&bigger, m->key[i], m->len[i], m->val[i]);
    tok_strmap_free(m);
    *m = bigger;
    return 0;
}

int tok_strmap_put(tok_strmap *m, const char *key, uint32_t len, int32_t val) {
    if ((m->n + 1) * 2 > m->cap && strmap_grow(m)) return -1;
    size_t i = hash_bytes(key, len) & (m->cap - 1);
    while (m->key[i]) {
        if (m->len[i] == len && !memcmp(m->key[i], key, len)) {
            m->val[i] = val;
            return 0;
        }
        i = (i + 1) & (m->cap - 1);
    }
    m->key[i] = key;
    m->len[i] = len;
    m->val[i] = val;
    m->n++;
    return 0;
}

int32_t tok_strmap_get(const tok_strmap *m, const char *key, size_t len) {
    size_t i = hash_bytes(key, len) & (m->cap - 1);
    while (m->key[i]) {
        if (m->len[i] == len && !memcmp(m->key[i], key, len)) return m->val[i];
        i = (i + 1) & (m->cap - 1);
    }
    return -1;
}

int tok_mergemap_init(tok_mergemap *m, size_t expected) {
    memset(m, 0, sizeof *m);
    m->cap = pow2_at_least(expected * 2 + 1);
    m->key = calloc(m->cap, sizeof *m->key);
    m->rank = calloc(m->cap, sizeof *m->rank);
    m->merged = calloc(m->cap, sizeof *m->merged);
    return m->key && m->rank && m->merged ? 0 : -1;
}

void tok_mergemap_free(tok_mergemap *m) {
    free(m->key);
    free(m->rank);
    free(m->merged);
    memset(m, 0, sizeof *m);
}

int tok_mergemap_put(tok_mergemap *m, int32_t a, int32_t b, uint32_t rank, int32_t merged) {
    if ((m->n + 1) * 2 > m->cap) {
        tok_mergemap bigger;
        if (tok_mergemap_init(&bigger, m->cap)) return tok_mergemap_free(&bigger), -1;
        for (size_t i = 0; i < m->cap; i++)
            if (m->key[i])
                tok_mergemap_put(&bigger, (int32_t)((m->key[i] - 1) >> 32), (int32_t)((m->key[i] - 1) & 0xffffffffu),
                                 m->rank[i], m->merged[i]);
        tok_mergemap_free(m);
        *m = bigger;
    }
    uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t i = hash_u64(k) & (m->cap - 1);
    while (m->key[i]) {
        if (m->key[i] == k) return 0; /* the first (lowest-ranked) occurrence of a pair wins */
        i = (i + 1) & (m->cap - 1);
    }
    m->key[i] = k;
    m->rank[i] = rank;
    m->merged[i] = merged;
    m->n++;
    return 0;
}

int tok_mergemap_get(const tok_mergemap *m, int32_t a, int32_t b, uint32_t *rank, int32_t *merged) {
    uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t i = hash_u64(k) & (m->cap - 1);
    while (m->key[i]) {
        if (m->key[i] == k) {
            *rank = m->rank[i];
            *merged = m->merged[i];
            return 1;
        }
        i = (i + 1) & (m->cap - 1);
    }
    return 0;
}

int tok_out_push(tok_out *o, int32_t id, uint32_t start, uint32_t end) {
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 256;
        int32_t *ids = realloc(o->ids, cap * sizeof *ids);
        if (!ids) return -1;
        o->ids = ids;
        uint32_t *s = realloc(o->start, cap * sizeof *s);
        if (!s) return -1;
        o->start = s;
        uint32_t *e = realloc(o->end, cap * sizeof *e);
        if (!e) return -1;
        o->end = e;
        o->cap = cap;
    }
    o->ids[o->n] = id;
    o->start[o->n] = start;
    o->end[o->n++] = end;
    return 0;
}

typedef struct tok_heap_entry {
    uint32_t rank, pos; /* pos: index of the left symbol */
    int32_t a, b, merged;
} tok_heap_entry;

static int heap_less(const tok_heap_entry *x, const tok_heap_entry *y) {
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static void heap_push(tok_heap_entry *h, size_t *n, tok_heap_entry e) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&e, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static tok_heap_entry heap_pop(tok_heap_entry *h, size_t *n) {
    tok_heap_entry top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap_less(&h[c + 1], &h[c])) c++;
        if (!heap_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

static int scratch_reserve(tok_scratch *sc, size_t n) {
    if (n <= sc->sym_cap) return 0;
    size_t cap = n < 64 ? 64 : n * 2;
    int32_t *id = realloc(sc->sym_id, cap * sizeof *id);
    if (!id) return -1;
    sc->sym_id = id;
    uint32_t *st = realloc(sc->sym_start, cap * sizeof *st);
    if (!st) return -1;
    sc->sym_start = st;
    uint32_t *ln = realloc(sc->sym_len, cap * sizeof *ln);
    if (!ln) return -1;
    sc->sym_len = ln;
    int32_t *pv = realloc(sc->prev, cap * sizeof *pv);
    if (!pv) return -1;
    sc->prev = pv;
    int32_t *nx = realloc(sc->next, cap * sizeof *nx);
    if (!nx) return -1;
    sc->next = nx;
    /* every merge pushes at most two entries, plus the initial n - 1 */
    tok_heap_entry *h = realloc(sc->heap, 3 * cap * sizeof *h);
    if (!h) return -1;
    sc->heap = h;
    sc->heap_cap = 3 * cap;
    sc->sym_cap = cap;
    return 0;
}

static void push_pair(const peft_tokenizer *tok, tok_scratch *sc, size_t *hn, int32_t left) {
    int32_t right = sc->next[left];
    uint32_t rank;
    int32_t merged;
    if (right < 0 || sc->sym_id[left] < 0 || sc->sym_id[right] < 0) return;
    if (!tok_mergemap_get(&tok->merges, sc->sym_id[left], sc->sym_id[right], &rank, &merged)) return;
    tok_heap_entry e = {rank, (uint32_t)left, sc->sym_id[left], sc->sym_id[right], merged};
    heap_push(sc->heap, hn, e);
}

/* Whether byte fallback spells the len bytes at s as <0xNN> tokens (it needs all of them). */
static int byte_fallback_covers(const peft_tokenizer *tok, const char *s, size_t len) {
    if (!tok->byte_fallback) return 0;
    for (size_t i = 0; i < len; i++)
        if (tok->byte_id[(unsigned char)s[i]] < 0) return 0;
    return 1;
}

/* Appends a symbol the vocabulary lacks: its bytes as <0xNN> tokens when byte fallback has
 * them all, else unk (consecutive unks fused when fuse_unk). bpe_word has dropped the symbols
 * that neither can spell, so one of them applies. Returns 0, or -1 when out of memory. */
static int emit_unknown(const peft_tokenizer *tok, const tok_piece *p, uint32_t start, uint32_t len, tok_out *out) {
    uint32_t o0 = tok_piece_orig(p, start), o1 = tok_piece_orig(p, start + len - 1) + 1;
    if (byte_fallback_covers(tok, p->s + start, len)) {
        for (uint32_t i = 0; i < len; i++)
            if (tok_out_push(out, tok->byte_id[(unsigned char)p->s[start + i]], o0, o1)) return -1;
        return 0;
    }
    if (tok->fuse_unk && out->n && out->ids[out->n - 1] == tok->unk_id && out->end[out->n - 1] == o0) {
        out->end[out->n - 1] = o1;
        return 0;
    }
    return tok_out_push(out, tok->unk_id, o0, o1);
}

static int bpe_word(const peft_tokenizer *tok, tok_scratch *sc, const tok_piece *p, tok_out *out) {
    if (tok->ignore_merges) {
        int32_t id = tok_strmap_get(&tok->vocab, p->s, p->n);
        if (id >= 0) return tok_out_push(out, id, tok_piece_orig(p, 0), tok_piece_orig(p, p->n - 1) + 1);
    }
    if (scratch_reserve(sc, p->n)) return -1;
    size_t ns = 0;
    for (size_t i = 0; i < p->n;) {
        size_t k = tok->byte_level ? 1 : utf8_char_len((unsigned char)p->s[i]);
        if (k > p->n - i) k = p->n - i;
        sc->sym_id[ns] = tok->byte_level ? tok->byte_id[(unsigned char)p->s[i]] : tok_strmap_get(&tok->vocab, p->s + i, k);
        /* a symbol the vocabulary lacks, with no unk token and no byte fallback for it, is
         * dropped as HF drops it: its neighbours become adjacent and may merge. (Some published
         * byte-level files lack the symbols of the ASCII controls, for instance.) */
        if (sc->sym_id[ns] < 0 && tok->unk_id < 0 && !byte_fallback_covers(tok, p->s + i, k)) {
            i += k;
            continue;
        }
        sc->sym_start[ns] = (uint32_t)i;
        sc->sym_len[ns] = (uint32_t)k;
        sc->prev[ns] = (int32_t)ns - 1;
        sc->next[ns] = (int32_t)ns + 1;
        ns++;
        i += k;
    }
    if (ns == 0) return 0;
    sc->next[ns - 1] = -1;
    size_t hn = 0;
    for (size_t i = 0; i + 1 < ns; i++) push_pair(tok, sc, &hn, (int32_t)i);
    while (hn) {
        tok_heap_entry e = heap_pop(sc->heap, &hn);
        int32_t l = (int32_t)e.pos, r = sc->next[l];
        if (sc->sym_len[l] == 0 || sc->sym_id[l] != e.a || r < 0 || sc->sym_id[r] != e.b) continue;
        sc->sym_id[l] = e.merged;
        sc->sym_len[l] += sc->sym_len[r];
        sc->sym_len[r] = 0;
        sc->next[l] = sc->next[r];
        if (sc->next[r] >= 0) sc->prev[sc->next[r]] = l;
        if (sc->prev[l] >= 0) push_pair(tok, sc, &hn, sc->prev[l]);
        push_pair(tok, sc, &hn, l);
    }
    for (int32_t i = 0; i >= 0; i = sc->next[i]) {
        uint32_t st = sc->sym_start[i], ln = sc->sym_len[i];
        int rc = sc->sym_id[i] >= 0
                     ? tok_out_push(out, sc->sym_id[i], tok_piece_orig(p, st), tok_piece_orig(p, st + ln - 1) + 1)
                     : emit_unknown(tok, p, st, ln, out);
        if (rc) return rc;
    }
    return 0;
}

/* SentencePiece-style files have no pre-tokenizer, so a whole section is one word. When no merge
 * joins a character to a following U+2581, no token can contain "x\u2581" (x not U+2581), so
 * cutting the word before each such U+2581 changes nothing and keeps the words short. */
int tok_bpe_piece(const peft_tokenizer *tok, tok_scratch *sc, const tok_piece *p, tok_out *out) {
    static const char SP[] = "\xe2\x96\x81";
    if (p->n == 0) return 0;
    if (!tok->sp_word_split) return bpe_word(tok, sc, p, out);
    size_t b = 0;
    for (size_t i = 3; i + 3 <= p->n; i++) {
        if (memcmp(p->s + i, SP, 3) || !memcmp(p->s + i - 3, SP, 3)) continue;
        tok_piece w = {p->s + b, i - b, p->align ? p->align + b : NULL, p->align ? 0 : p->base + (uint32_t)b};
        int rc = bpe_word(tok, sc, &w, out);
        if (rc) return rc;
        b = i;
    }
    tok_piece w = {p->s + b, p->n - b, p->align ? p->align + b : NULL, p->align ? 0 : p->base + (uint32_t)b};
    return bpe_word(tok, sc, &w, out);
}
