/* trie.c: a byte trie of the added tokens' texts, so that finding the longest added token at a
 * position of the text costs one step per byte of the match, whatever the number of tokens
 * (files with 200k added tokens exist; scanning them all at each position was quadratic).
 *
 * The strings are sorted, then the trie is built breadth first from the sorted order: the
 * strings under a node are a contiguous range of it, and a node's children (one per distinct
 * next byte, in byte order) are contiguous in the node array, so a child is found by binary
 * search and the whole trie is two flat arrays. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

typedef struct entry {
    const char *s;
    uint32_t len;
    int32_t index;
} entry;

/* Bytewise order, a prefix before its extensions, equal strings by index (the first wins). */
static int cmp_entry(const void *x, const void *y) {
    const entry *a = x, *b = y;
    uint32_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->s, b->s, n);
    if (c) return c;
    if (a->len != b->len) return a->len < b->len ? -1 : 1;
    return a->index < b->index ? -1 : a->index > b->index;
}

/* Appends a node; returns its index, or -1 when out of memory (or past 2^31 nodes). */
static int32_t add_node(tok_trie *t, size_t *cap, uint32_t **lo, uint32_t **hi, uint8_t byte, uint32_t l, uint32_t h) {
    if (t->n == *cap) {
        size_t c = *cap ? *cap * 2 : 256;
        if (c > INT32_MAX) return -1;
        tok_trie_node *g = realloc(t->node, c * sizeof *g);
        if (!g) return -1;
        t->node = g;
        uint32_t *gl = realloc(*lo, c * sizeof *gl);
        if (!gl) return -1;
        *lo = gl;
        uint32_t *gh = realloc(*hi, c * sizeof *gh);
        if (!gh) return -1;
        *hi = gh;
        *cap = c;
    }
    tok_trie_node *nd = &t->node[t->n];
    nd->child = 0;
    nd->n_child = 0;
    nd->token = -1;
    nd->byte = byte;
    (*lo)[t->n] = l;
    (*hi)[t->n] = h;
    return (int32_t)t->n++;
}

int tok_trie_build(tok_trie *t, const char *const *s, const uint32_t *len, int n) {
    memset(t, 0, sizeof *t);
    for (int c = 0; c < 256; c++) t->root[c] = -1;
    entry *e = malloc((size_t)(n > 0 ? n : 1) * sizeof *e);
    uint32_t *lo = NULL, *hi = NULL;
    size_t cap = 0;
    int rc = e ? 0 : -1;
    for (int i = 0; i < n && !rc; i++) e[i] = (entry){s[i], len[i], i};
    if (!rc) qsort(e, (size_t)n, sizeof *e, cmp_entry);
    if (!rc && add_node(t, &cap, &lo, &hi, 0, 0, (uint32_t)n) < 0) rc = -1;
    /* node k (depth d) holds the strings e[lo[k]..hi[k]), which share their first d bytes; the
     * nodes are made in breadth-first order, so depth grows by one from one level to the next */
    size_t level_end = 1;
    uint32_t d = 0;
    for (size_t k = 0; k < t->n && !rc; k++) {
        if (k == level_end) level_end = t->n, d++;
        uint32_t l = lo[k], h = hi[k];
        if (l < h && e[l].len == d) t->node[k].token = e[l].index; /* sorted first: shortest, then first index */
        while (l < h && e[l].len == d) l++;
        t->node[k].child = (int32_t)t->n;
        while (l < h && !rc) {
            uint32_t g = l;
            unsigned char b = (unsigned char)e[l].s[d];
            while (g < h && (unsigned char)e[g].s[d] == b) g++;
            int32_t c = add_node(t, &cap, &lo, &hi, b, l, g);
            if (c < 0) rc = -1;
            else t->node[k].n_child++;
            if (c >= 0 && k == 0) t->root[b] = c;
            l = g;
        }
    }
    free(e);
    free(lo);
    free(hi);
    if (rc) tok_trie_free(t);
    return rc;
}

void tok_trie_free(tok_trie *t) {
    free(t->node);
    t->node = NULL;
    t->n = 0;
}

static int32_t child_of(const tok_trie *t, int32_t k, unsigned char b) {
    if (k == 0) return t->root[b];
    const tok_trie_node *nd = &t->node[k];
    int32_t l = nd->child, h = nd->child + nd->n_child; /* children sorted by byte */
    while (l < h) {
        int32_t m = l + (h - l) / 2;
        if (t->node[m].byte < b) l = m + 1;
        else h = m;
    }
    return l < nd->child + nd->n_child && t->node[l].byte == b ? l : -1;
}

int tok_trie_longest(const tok_trie *t, const char *s, size_t n) {
    int best = -1;
    int32_t k = 0;
    for (size_t i = 0; i < n && t->n; i++) {
        if ((k = child_of(t, k, (unsigned char)s[i])) < 0) break;
        if (t->node[k].token >= 0) best = t->node[k].token;
    }
    return best;
}

int tok_trie_find(const tok_trie *t, const char *s, size_t n) {
    int32_t k = 0;
    for (size_t i = 0; i < n && k >= 0; i++) k = t->n ? child_of(t, k, (unsigned char)s[i]) : -1;
    return k > 0 ? t->node[k].token : -1;
}
