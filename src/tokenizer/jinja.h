/* jinja.h: the subset of Jinja2 that Hugging Face chat templates use, interpreted in C.
 *
 * The environment is the one transformers builds (utils/chat_template_utils.py):
 * ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols,
 * generation]), tojson = json.dumps(ensure_ascii=False), raise_exception(), namespace(), range().
 * Parsing refuses what the interpreter cannot render (an unknown filter, test, statement or
 * function, a malformed tag) with the file name, line, column and construct, so a template is
 * rendered as written or not at all. Rendering is bounded (output, memory, steps, depth) so a
 * hostile template ends in an error, not a hang. */
#ifndef PEFT_TOKENIZER_JINJA_H
#define PEFT_TOKENIZER_JINJA_H

#include <stddef.h>

#include "peft.h"

struct cJSON;

typedef struct peft_jinja peft_jinja;

/* A byte range [start, end) of a rendering: a {% generation %} block's output. */
typedef struct peft_jinja_span {
    size_t start, end;
} peft_jinja_span;

/* Parses a template. `what` names its origin in messages ("tokenizer_config.json"). On success
 * *out is the template (free with peft_jinja_free); PEFT_EUNSUPPORTED for a template outside the
 * subset or malformed, PEFT_ENOMEM. */
int peft_jinja_parse(const char *src, size_t len, const char *what, peft_jinja **out, peft_err *err);
void peft_jinja_free(peft_jinja *t);
/* Whether the template has {% generation %} blocks (HF's assistant-token marking). */
int peft_jinja_has_generation(const peft_jinja *t);

/* Renders t with the variables of `vars` (a cJSON object, name -> JSON value; may be NULL).
 * *out: malloc'ed, NUL-terminated, *out_len bytes. If gen is not NULL, *gen (malloc'ed, or NULL
 * when none) gets the {% generation %} spans in output order. Errors: PEFT_EINVAL for a runtime
 * error of the template (raise_exception, an undefined attribute, a type error), with the line;
 * PEFT_EUNSUPPORTED when a limit is exceeded; PEFT_ENOMEM. Thread-safe on a shared t. */
int peft_jinja_render(const peft_jinja *t, const struct cJSON *vars, char **out, size_t *out_len,
                      peft_jinja_span **gen, size_t *n_gen, peft_err *err);

#endif
