/* error.c: filling the caller-owned error record. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int peft_fail(peft_err *err, int code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

int peft_err_prefix(peft_err *err, const char *fmt, ...) {
    if (!err) return PEFT_EINTERNAL;
    char prefix[256], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    snprintf(err->msg, sizeof err->msg, "%s: %.*s", prefix, (int)(sizeof old - sizeof prefix - 2), old);
    return err->code;
}

const char *peft_status_name(int code) {
    switch (code) {
    case PEFT_OK: return "ok";
    case PEFT_ENOMEM: return "out of memory";
    case PEFT_EIO: return "i/o error";
    case PEFT_EFORMAT: return "bad file format";
    case PEFT_ESHAPE: return "shape mismatch";
    case PEFT_EUNSUPPORTED: return "unsupported";
    case PEFT_EINVAL: return "invalid argument";
    case PEFT_ENUMERIC: return "non-finite value";
    default: return "internal error";
    }
}
