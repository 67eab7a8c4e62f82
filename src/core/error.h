/* error.h: status codes and the error record every fallible call fills.
 *
 * Convention (SQLite-like return codes, no exit() in the library):
 *   int rc = peft_something(..., &err);   // 0 on success, a negative PEFT_E* code on failure
 *   if (rc) fprintf(stderr, "%s\n", err.msg);
 * The callee writes a message naming the file and what is wrong into err->msg.
 * `err` may be NULL when the caller does not want the message. */
#ifndef PEFT_CORE_ERROR_H
#define PEFT_CORE_ERROR_H

#include "peft.h"

/* Sets err (if non-NULL) and returns code, so callers can write
 *   return peft_fail(err, PEFT_EFORMAT, "%s: header too short", path); */
int peft_fail(peft_err *err, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Prefixes an existing message with context ("loading X: <old message>"). Returns err->code. */
int peft_err_prefix(peft_err *err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Checked size arithmetic for values read from files: return 0 on overflow. */
static inline int peft_mul_ok(size_t a, size_t b, size_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline int peft_add_ok(size_t a, size_t b, size_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

#endif
