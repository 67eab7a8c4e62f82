/* nfc.c: canonical decomposition, canonical ordering, then (NFC) primary composition (UAX #15),
 * with Hangul syllables handled algorithmically; lookups of the BERT classes and lowercase. */
#include "nfc.h"

#include <stdlib.h>
#include <string.h>

#include "utf8.h"

enum { SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7, LCOUNT = 19, VCOUNT = 21,
       TCOUNT = 28, NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT };

static int ccc_of(uint32_t cp) {
    int lo = 0, hi = nfc_ccc_n - 1;
    if (cp < 0x300) return 0;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < nfc_ccc[mid].lo) hi = mid - 1;
        else if (cp > nfc_ccc[mid].hi) lo = mid + 1;
        else return nfc_ccc[mid].ccc;
    }
    return 0;
}

static const nfc_decomp *decomp_of(uint32_t cp) {
    int lo = 0, hi = nfc_decomps_n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < nfc_decomps[mid].cp) hi = mid - 1;
        else if (cp > nfc_decomps[mid].cp) lo = mid + 1;
        else return &nfc_decomps[mid];
    }
    return NULL;
}

static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE && b < TBASE + TCOUNT)
        return a + (b - TBASE);
    int lo = 0, hi = nfc_comps_n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const nfc_comp *c = &nfc_comps[mid];
        if (a < c->a || (a == c->a && b < c->b)) hi = mid - 1;
        else if (a > c->a || b > c->b) lo = mid + 1;
        else return c->cp;
    }
    return 0;
}

int nfc_is_trivial(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0xCC) return 0;
    return 1;
}

int nfd_is_trivial(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0xC3) return 0;
    return 1;
}

typedef struct { uint32_t *cp, *off; size_t n, cap; } cpbuf;

static int push(cpbuf *b, uint32_t cp, uint32_t off) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        uint32_t *c = realloc(b->cp, cap * sizeof *c), *o;
        if (!c) return -1;
        b->cp = c;
        if (!(o = realloc(b->off, cap * sizeof *o))) return -1;
        b->off = o;
        b->cap = cap;
    }
    b->cp[b->n] = cp;
    b->off[b->n++] = off;
    return 0;
}

/* atomic: leave the UNI_BERT_ATOMIC characters whole (NFD as the tokenizers library has it) */
static int decompose(cpbuf *b, uint32_t cp, uint32_t off, int atomic) {
    if (cp >= SBASE && cp < SBASE + SCOUNT) {
        uint32_t s = cp - SBASE, t = s % TCOUNT;
        if (push(b, LBASE + s / NCOUNT, off) || push(b, VBASE + (s % NCOUNT) / TCOUNT, off)) return -1;
        return t ? push(b, TBASE + t, off) : 0;
    }
    const nfc_decomp *d = cp >= 0xC0 && !(atomic && (uni_bert_flags(cp) & UNI_BERT_ATOMIC)) ? decomp_of(cp) : NULL;
    if (!d) return push(b, cp, off);
    if (decompose(b, d->a, off, atomic)) return -1;
    return d->b ? decompose(b, d->b, off, atomic) : 0;
}

/* NFC (compose) or the library's NFD (!compose) of s[0..n). */
static int normalize(const char *s, size_t n, const uint32_t *align, uint32_t base, int compose_, char **out,
                     size_t *out_n, uint32_t **out_align) {
    cpbuf b = {0};
    int rc = -1;
    char *o = NULL;
    uint32_t *oa = NULL;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = utf8_decode(s + i, n - i, &cp);
        if (decompose(&b, cp, align ? align[i] : base + (uint32_t)i, !compose_)) goto done;
        i += k;
    }
    /* Canonical ordering: a stable insertion sort of each run of non-starters by class. */
    for (size_t i = 1; i < b.n; i++) {
        int c = ccc_of(b.cp[i]);
        if (!c) continue;
        for (size_t j = i; j > 0; j--) {
            int p = ccc_of(b.cp[j - 1]);
            if (p <= c) break;
            uint32_t t = b.cp[j]; b.cp[j] = b.cp[j - 1]; b.cp[j - 1] = t;
            t = b.off[j]; b.off[j] = b.off[j - 1]; b.off[j - 1] = t;
        }
    }
    /* Composition: a character joins the last starter unless a character in between is blocked
     * (has a class >= its own, or is a starter). */
    size_t m = 0;
    long starter = -1;
    int last = 0;
    for (size_t i = 0; i < b.n; i++) {
        uint32_t cp = b.cp[i];
        int c = ccc_of(cp);
        if (compose_ && starter >= 0 && (last < c || (last == 0 && (size_t)starter == m - 1))) {
            uint32_t comp = compose(b.cp[starter], cp);
            if (comp) {
                b.cp[starter] = comp;
                continue;
            }
        }
        if (c == 0) starter = (long)m;
        last = c;
        b.cp[m] = cp;
        b.off[m++] = b.off[i];
    }
    if (!(o = malloc(m * 4 + 1)) || !(oa = malloc((m * 4 + 1) * sizeof *oa))) goto done;
    size_t w = 0;
    for (size_t i = 0; i < m; i++) {
        size_t k = utf8_encode(b.cp[i], o + w);
        for (size_t j = 0; j < k; j++) oa[w + j] = b.off[i];
        w += k;
    }
    o[w] = 0;
    *out = o;
    *out_align = oa;
    *out_n = w;
    o = NULL;
    oa = NULL;
    rc = 0;
done:
    free(o);
    free(oa);
    free(b.cp);
    free(b.off);
    return rc;
}

int nfc_normalize(const char *s, size_t n, const uint32_t *align, uint32_t base, char **out, size_t *out_n,
                  uint32_t **out_align) {
    return normalize(s, n, align, base, 1, out, out_n, out_align);
}

int nfd_normalize(const char *s, size_t n, const uint32_t *align, uint32_t base, char **out, size_t *out_n,
                  uint32_t **out_align) {
    return normalize(s, n, align, base, 0, out, out_n, out_align);
}

int uni_bert_flags(uint32_t cp) {
    int lo = 0, hi = uni_bert_n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < uni_bert[mid].lo) hi = mid - 1;
        else if (cp > uni_bert[mid].hi) lo = mid + 1;
        else return uni_bert[mid].flags;
    }
    return 0;
}

int uni_lowercase(uint32_t cp, uint32_t lo[2]) {
    lo[0] = cp;
    if (cp < 0x80) {
        if (cp >= 'A' && cp <= 'Z') lo[0] = cp + 32;
        return 1;
    }
    int l = 0, h = uni_lowers_n - 1;
    while (l <= h) {
        int mid = (l + h) / 2;
        if (cp < uni_lowers[mid].cp) h = mid - 1;
        else if (cp > uni_lowers[mid].cp) l = mid + 1;
        else {
            lo[0] = uni_lowers[mid].a;
            lo[1] = uni_lowers[mid].b;
            return lo[1] ? 2 : 1;
        }
    }
    return 1;
}
