/* utf8.h: the few UTF-8 helpers the tokenizer needs (header-only). */
#ifndef PEFT_TOKENIZER_UTF8_H
#define PEFT_TOKENIZER_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Length of a valid sequence starting at s (1..4), or 0 when s[0..n) does not start with one. */
static inline size_t utf8_valid_len(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    if (n == 0) return 0;
    if (u[0] < 0x80) return 1;
    size_t k;
    uint32_t cp, min;
    if ((u[0] & 0xE0) == 0xC0) k = 2, cp = u[0] & 0x1F, min = 0x80;
    else if ((u[0] & 0xF0) == 0xE0) k = 3, cp = u[0] & 0x0F, min = 0x800;
    else if ((u[0] & 0xF8) == 0xF0) k = 4, cp = u[0] & 0x07, min = 0x10000;
    else return 0;
    if (n < k) return 0;
    for (size_t i = 1; i < k; i++) {
        if ((u[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (u[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return k;
}

/* Decodes one character of valid UTF-8; returns its length. */
static inline size_t utf8_decode(const char *s, size_t n, uint32_t *cp) {
    const unsigned char *u = (const unsigned char *)s;
    if (u[0] < 0x80 || n < 2) return *cp = u[0], 1;
    if ((u[0] & 0xE0) == 0xC0) return *cp = ((uint32_t)(u[0] & 0x1F) << 6) | (u[1] & 0x3F), 2;
    if ((u[0] & 0xF0) == 0xE0 && n >= 3)
        return *cp = ((uint32_t)(u[0] & 0x0F) << 12) | ((uint32_t)(u[1] & 0x3F) << 6) | (u[2] & 0x3F), 3;
    if (n >= 4)
        return *cp = ((uint32_t)(u[0] & 0x07) << 18) | ((uint32_t)(u[1] & 0x3F) << 12) |
                     ((uint32_t)(u[2] & 0x3F) << 6) | (u[3] & 0x3F), 4;
    return *cp = u[0], 1;
}

static inline size_t utf8_encode(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) return o[0] = (unsigned char)cp, 1;
    if (cp < 0x800) return o[0] = 0xC0 | (cp >> 6), o[1] = 0x80 | (cp & 0x3F), 2;
    if (cp < 0x10000)
        return o[0] = 0xE0 | (cp >> 12), o[1] = 0x80 | ((cp >> 6) & 0x3F), o[2] = 0x80 | (cp & 0x3F), 3;
    o[0] = 0xF0 | (cp >> 18), o[1] = 0x80 | ((cp >> 12) & 0x3F);
    o[2] = 0x80 | ((cp >> 6) & 0x3F), o[3] = 0x80 | (cp & 0x3F);
    return 4;
}

/* Length of the character starting at s (from its lead byte), for valid UTF-8. */
static inline size_t utf8_char_len(unsigned char c) {
    return c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
}

#endif
