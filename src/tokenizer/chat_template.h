/* chat_template.h: the chat templates of the supported model families, rendered natively (no
 * Jinja interpreter). tokenizer_config.json's chat_template is recognised by its markers; each
 * renderer reproduces that family's official template byte for byte (tested against
 * @huggingface/jinja running the real template). A template not recognised is an error whose
 * message lists the family names a user can pick instead. */
#ifndef PEFT_TOKENIZER_CHAT_TEMPLATE_H
#define PEFT_TOKENIZER_CHAT_TEMPLATE_H

#include <stddef.h>

#include "peft.h"
#include "tokenizer/tokenizer.h"

struct cJSON;

enum {
    PEFT_CHAT_CHATML = 1, /* <|im_start|>role\n...<|im_end|>\n (Qwen2/2.5, SmolLM), optional default system */
    PEFT_CHAT_QWEN3,      /* ChatML with Qwen3's <think> handling of the last assistant turn */
    PEFT_CHAT_LLAMA3,     /* <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> */
    PEFT_CHAT_LLAMA2,     /* <s>[INST] <<SYS>>...<</SYS>> ... [/INST] answer </s> */
    PEFT_CHAT_MISTRAL     /* <s>[INST] ... [/INST]answer</s> (Mistral/Mixtral Instruct v0.1) */
};

typedef struct peft_chat_template {
    int family;
    char default_system[1024]; /* CHATML: the system turn used when the conversation has none */
    int has_default_system;
    int gen_prompt_always;     /* LLAMA3: the template ends with the assistant header unconditionally */
    int eos_space;             /* MISTRAL: a space follows each eos (v0.1, not Mixtral) */
    char bos[64], eos[64];     /* the token texts the template writes */
} peft_chat_template;

typedef struct peft_chat_msg {
    const char *role, *content;
} peft_chat_msg;

/* A byte range [start, end) of rendered text that the assistant produced (its content and its
 * end-of-turn token): where a fine-tuning loss is taken. */
typedef struct peft_chat_span {
    size_t start, end;
} peft_chat_span;

/* "chatml, qwen3, llama3, llama2, mistral" */
const char *peft_chat_template_names(void);
/* Recognises a Jinja chat template's family. PEFT_EUNSUPPORTED when it is not recognised. */
int peft_chat_template_detect(const char *jinja, peft_chat_template *out, peft_err *err);
/* A family by name (as a user gives it on the command line). PEFT_EINVAL for an unknown name. */
int peft_chat_template_named(const char *name, peft_chat_template *out, peft_err *err);
/* The template for tok: `name` if given, else tokenizer_config.json's chat_template; bos/eos
 * from tok. An error when neither is available. */
int peft_chat_template_for(const peft_tokenizer *tok, const char *name, peft_chat_template *out, peft_err *err);

/* Renders a conversation. *out (malloc'ed, NUL-terminated, *out_len bytes); if spans is not
 * NULL, *spans (malloc'ed) gets the assistant spans. Errors (roles that must alternate, a role
 * the family does not know) are PEFT_EINVAL. */
int peft_chat_render(const peft_chat_template *t, const peft_chat_msg *msgs, size_t n, int gen_prompt, char **out,
                     size_t *out_len, peft_chat_span **spans, size_t *n_spans, peft_err *err);
/* The same from a cJSON array of {"role", "content"}; `where` (e.g. "FILE:LINE") prefixes
 * messages. */
int peft_chat_render_json(const peft_chat_template *t, const struct cJSON *messages, int gen_prompt, char **out,
                          size_t *out_len, peft_chat_span **spans, size_t *n_spans, const char *where, peft_err *err);

#endif
