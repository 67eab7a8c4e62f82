/* peft.h: public API of libpeft, parameter-efficient fine-tuning of Hugging Face
 * transformer checkpoints in C11.
 *
 * Conventions
 *  - Every fallible call returns an int status: PEFT_OK (0) or a negative PEFT_E* code,
 *    and writes a human-readable message into a caller-owned peft_err (may be NULL).
 *  - Objects are opaque handles created by *_load / *_new and released by the matching
 *    *_free. The caller owns what it creates. No hidden globals: two handles never
 *    share mutable state.
 *  - The library never calls exit() or abort() on bad input.
 */
#ifndef PEFT_H
#define PEFT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PEFT_VERSION_MAJOR 0
#define PEFT_VERSION_MINOR 1
#define PEFT_VERSION_PATCH 0

enum {
    PEFT_OK = 0,
    PEFT_ENOMEM = -1,      /* allocation failed */
    PEFT_EIO = -2,         /* open/read/write/rename failed */
    PEFT_EFORMAT = -3,     /* a file is malformed (truncated, bad JSON, bad header) */
    PEFT_ESHAPE = -4,      /* a tensor has the wrong shape or a tensor is missing */
    PEFT_EUNSUPPORTED = -5,/* valid input that peft.c does not handle (architecture, dtype) */
    PEFT_EINVAL = -6,      /* bad argument from the caller */
    PEFT_ENUMERIC = -7,    /* NaN/Inf where a finite value is required */
    PEFT_EINTERNAL = -8
};

typedef struct peft_err {
    int code;
    char msg[1024];
} peft_err;

/* A short name for a status code ("bad file format"). Never NULL. */
const char *peft_status_name(int code);

#ifdef __cplusplus
}
#endif
#endif
