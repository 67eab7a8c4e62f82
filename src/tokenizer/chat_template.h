/* chat_template.h: chat conversations rendered with the Jinja chat template that
 * tokenizer_config.json contains (src/tokenizer/jinja.c interprets it as transformers' Jinja2
 * environment does), or with a named built-in template (the official template of a family), or
 * with a template file. A template the interpreter cannot render exactly is refused when it is
 * loaded, with the file, line, column and construct: peft.c never renders a different template
 * than the one it was given. */
#ifndef PEFT_TOKENIZER_CHAT_TEMPLATE_H
#define PEFT_TOKENIZER_CHAT_TEMPLATE_H

#include <stddef.h>

#include "peft.h"
#include "tokenizer/tokenizer.h"

struct cJSON;

typedef struct peft_chat_template peft_chat_template;

/* A byte range [start, end) of rendered text that the assistant produced: where a fine-tuning
 * loss is taken. With {% generation %} blocks in the template, their output (HF's
 * return_assistant_tokens_mask); otherwise an assistant message's turn, from the end of the
 * rendering of the conversation before it with the generation prompt, to the end of the first
 * special token after that (its end-of-turn token; without a tokenizer, or without a special
 * token, to where the rendering of the conversation ending with it stops agreeing, trailing
 * whitespace excluded). */
typedef struct peft_chat_span {
    size_t start, end;
} peft_chat_span;

/* "chatml, qwen3, llama3, llama2, mistral" */
const char *peft_chat_template_names(void);
/* Parses a Jinja chat template; `what` names it in messages ("tokenizer_config.json"). tok (may
 * be NULL) gives bos_token, eos_token and the special tokens that end assistant spans.
 * PEFT_EUNSUPPORTED for a template outside the supported Jinja subset. */
int peft_chat_template_parse(const char *jinja, const char *what, const peft_tokenizer *tok, peft_chat_template **out,
                             peft_err *err);
/* The template for tok: `name` if given (a built-in name, or a path to a Jinja file), else
 * tokenizer_config.json's chat_template. An error when neither is available. */
int peft_chat_template_for(const peft_tokenizer *tok, const char *name, peft_chat_template **out, peft_err *err);
void peft_chat_template_free(peft_chat_template *t);

/* Renders one conversation record {"messages": [...], "tools": [...]?, "chat_template_kwargs":
 * {...}?} as transformers' apply_chat_template(messages, tools=tools, add_generation_prompt=
 * gen_prompt, **chat_template_kwargs, tokenize=False) does. *out (malloc'ed, NUL-terminated,
 * *out_len bytes); if spans is not NULL, *spans (malloc'ed) gets the assistant spans in order.
 * Errors: PEFT_EFORMAT for a malformed record, PEFT_EINVAL for an error the template raises;
 * `where` (e.g. "FILE:LINE") prefixes messages. Thread-safe on a shared t. */
int peft_chat_render_json(const peft_chat_template *t, const struct cJSON *record, int gen_prompt, char **out,
                          size_t *out_len, peft_chat_span **spans, size_t *n_spans, const char *where, peft_err *err);

#endif
