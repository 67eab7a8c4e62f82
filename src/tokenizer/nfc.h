/* nfc.h: Unicode NFC normalization of UTF-8 text (Qwen2/Qwen3's normalizer), keeping for each
 * output byte the offset of the input character it came from. Tables: nfc_tables.c (generated). */
#ifndef PEFT_TOKENIZER_NFC_H
#define PEFT_TOKENIZER_NFC_H

#include <stddef.h>
#include <stdint.h>

typedef struct { uint32_t lo, hi; uint8_t ccc; } nfc_ccc_range;
typedef struct { uint32_t cp, a, b; } nfc_decomp;   /* cp -> a b (b == 0: singleton) */
typedef struct { uint32_t a, b, cp; } nfc_comp;     /* a b -> cp, sorted by (a, b) */
extern const nfc_ccc_range nfc_ccc[];
extern const int nfc_ccc_n;
extern const nfc_decomp nfc_decomps[];
extern const int nfc_decomps_n;
extern const nfc_comp nfc_comps[];
extern const int nfc_comps_n;

/* 1 when NFC cannot change s: no code point at or above U+0300 (nothing below it decomposes
 * to something different or composes with a neighbour). */
int nfc_is_trivial(const char *s, size_t n);

/* NFC of valid UTF-8 s[0..n). align[i] (or base + i when align is NULL) is the original offset
 * of byte i; *out_align gets the same for the output. Both outputs are malloc'ed.
 * Returns 0, or -1 when out of memory. */
int nfc_normalize(const char *s, size_t n, const uint32_t *align, uint32_t base, char **out,
                  size_t *out_n, uint32_t **out_align);

#endif
