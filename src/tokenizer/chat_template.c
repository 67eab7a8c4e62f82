/* chat_template.c: conversation records rendered with a Jinja chat template (jinja.c): the
 * variables transformers' apply_chat_template passes, the built-in templates a user can name,
 * and the assistant spans a fine-tuning loss is taken on. */
#include "chat_template.h"

#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "error.h"
#include "fileio.h"
#include "jinja.h"
#include "tok_internal.h"

struct peft_chat_template {
    peft_jinja *jinja;
    char *bos, *eos;   /* the tokenizer's token texts, NULL if it has none */
    char **specials;   /* texts of the tokenizer's special tokens (end-of-turn candidates) */
    size_t n_specials;
    unsigned char first[256]; /* first[c]: some special token starts with byte c */
};

/* The official templates of each family, as their tokenizer_config.json files spell them. */
static const char CHATML[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
static const char LLAMA3[] = /* Meta-Llama-3-8B-Instruct */
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
static const char LLAMA2[] = /* Llama-2-7b-chat-hf */
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
static const char MISTRAL[] = /* Mistral-7B-Instruct-v0.1 */
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";
static const char QWEN3[] = /* Qwen3 */
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- messages[0].content + '\\n\\n' }}\n"
    "    {%- endif %}\n"
    "    {{- \"# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n"
    "{%- for message in messages[::-1] %}\n"
    "    {%- set index = (messages|length - 1) - loop.index0 %}\n"
    "    {%- if ns.multi_step_tool and message.role == \"user\" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}\n"
    "        {%- set ns.multi_step_tool = false %}\n"
    "        {%- set ns.last_query_index = index %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {%- set content = message.content %}\n"
    "        {%- set reasoning_content = '' %}\n"
    "        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}\n"
    "            {%- set reasoning_content = message.reasoning_content %}\n"
    "        {%- else %}\n"
    "            {%- if '</think>' in message.content %}\n"
    "                {%- set content = message.content.split('</think>')[-1].lstrip('\\n') %}\n"
    "                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}\n"
    "            {%- endif %}\n"
    "        {%- endif %}\n"
    "        {%- if loop.index0 > ns.last_query_index %}\n"
    "            {%- if loop.last or (not loop.last and reasoning_content) %}\n"
    "                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}\n"
    "            {%- else %}\n"
    "                {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    "            {%- endif %}\n"
    "        {%- else %}\n"
    "            {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    "        {%- endif %}\n"
    "        {%- if message.tool_calls %}\n"
    "            {%- for tool_call in message.tool_calls %}\n"
    "                {%- if (loop.first and content) or (not loop.first) %}\n"
    "                    {{- '\\n' }}\n"
    "                {%- endif %}\n"
    "                {%- if tool_call.function %}\n"
    "                    {%- set tool_call = tool_call.function %}\n"
    "                {%- endif %}\n"
    "                {{- '<tool_call>\\n{\"name\": \"' }}\n"
    "                {{- tool_call.name }}\n"
    "                {{- '\", \"arguments\": ' }}\n"
    "                {%- if tool_call.arguments is string %}\n"
    "                    {{- tool_call.arguments }}\n"
    "                {%- else %}\n"
    "                    {{- tool_call.arguments | tojson }}\n"
    "                {%- endif %}\n"
    "                {{- '}\\n</tool_call>' }}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if loop.first or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}";

static const struct { const char *name, *jinja; } BUILTIN[] = {
    {"chatml", CHATML}, {"qwen3", QWEN3}, {"llama3", LLAMA3}, {"llama2", LLAMA2}, {"mistral", MISTRAL},
};

const char *peft_chat_template_names(void) { return "chatml, qwen3, llama3, llama2, mistral"; }

void peft_chat_template_free(peft_chat_template *t) {
    if (!t) return;
    peft_jinja_free(t->jinja);
    free(t->bos);
    free(t->eos);
    for (size_t i = 0; i < t->n_specials; i++) free(t->specials[i]);
    free(t->specials);
    free(t);
}

static int dup_opt(const char *s, char **out) {
    *out = s ? strdup(s) : NULL;
    return s && !*out;
}

int peft_chat_template_parse(const char *jinja, const char *what, const peft_tokenizer *tok, peft_chat_template **out,
                             peft_err *err) {
    *out = NULL;
    peft_chat_template *t = calloc(1, sizeof *t);
    if (!t) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
    int rc = peft_jinja_parse(jinja, strlen(jinja), what, &t->jinja, err);
    if (!rc && tok) {
        int oom = dup_opt(peft_tokenizer_bos_text(tok), &t->bos) | dup_opt(peft_tokenizer_eos_text(tok), &t->eos);
        t->specials = calloc((size_t)tok->n_ids + 1, sizeof *t->specials);
        oom |= !t->specials;
        for (int id = 0; !oom && id < tok->n_ids; id++)
            if (tok->text[id] && (tok->flags[id] & TOK_SPECIAL) && tok->text_len[id]) {
                char *s = malloc(tok->text_len[id] + 1);
                if (!(oom = !s)) {
                    memcpy(s, tok->text[id], tok->text_len[id]);
                    s[tok->text_len[id]] = 0;
                    t->specials[t->n_specials++] = s;
                    t->first[(unsigned char)s[0]] = 1;
                }
            }
        if (oom) rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
    }
    if (rc) {
        peft_chat_template_free(t);
        return rc;
    }
    *out = t;
    return PEFT_OK;
}

int peft_chat_template_for(const peft_tokenizer *tok, const char *name, peft_chat_template **out, peft_err *err) {
    *out = NULL;
    if (!name) {
        const char *j = peft_tokenizer_chat_template(tok);
        if (!j)
            return peft_fail(err, PEFT_EINVAL, "the tokenizer has no chat_template in tokenizer_config.json; name one with "
                             "--chat-template (%s, or a Jinja file)", peft_chat_template_names());
        return peft_chat_template_parse(j, "tokenizer_config.json", tok, out, err);
    }
    for (size_t i = 0; i < sizeof BUILTIN / sizeof *BUILTIN; i++)
        if (!strcmp(name, BUILTIN[i].name)) return peft_chat_template_parse(BUILTIN[i].jinja, name, tok, out, err);
    if (!strchr(name, '/') && !strstr(name, ".jinja"))
        return peft_fail(err, PEFT_EINVAL, "unknown chat template \"%s\" (known: %s, or a path to a Jinja file)", name,
                         peft_chat_template_names());
    char *text;
    size_t len;
    int rc = peft_read_file(name, &text, &len, err);
    if (rc) return rc;
    if (strlen(text) != len) rc = peft_fail(err, PEFT_EFORMAT, "%s: a NUL byte in the template", name);
    else rc = peft_chat_template_parse(text, name, tok, out, err);
    free(text);
    return rc;
}

/* ---- rendering ---- */

/* transformers' _alias_reasoning_fields: a message with reasoning under any of its names gets
 * {"thinking": r, **message, "reasoning_content": r}. Returns a new array, or NULL when no
 * message needs it (*oom on allocation failure). */
static cJSON *alias_reasoning(const cJSON *msgs, int *oom) {
    static const char *const FIELDS[] = {"reasoning_content", "thinking", "reasoning"};
    const cJSON *m;
    int any = 0;
    cJSON_ArrayForEach(m, msgs) for (int f = 0; f < 3; f++) {
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(m, FIELDS[f]);
        any |= r && !cJSON_IsNull(r);
    }
    *oom = 0;
    if (!any) return NULL;
    cJSON *out = cJSON_CreateArray();
    cJSON_ArrayForEach(m, msgs) {
        const cJSON *r = NULL;
        for (int f = 0; f < 3 && !r; f++) {
            r = cJSON_GetObjectItemCaseSensitive(m, FIELDS[f]);
            if (r && cJSON_IsNull(r)) r = NULL;
        }
        cJSON *c;
        if (!r || !cJSON_IsObject(m)) {
            c = cJSON_Duplicate(m, 1);
        } else {
            c = cJSON_CreateObject();
            if (c) cJSON_AddItemToObject(c, "thinking", cJSON_Duplicate(r, 1));
            const cJSON *it;
            cJSON_ArrayForEach(it, m) {
                if (!c) break;
                if (!strcmp(it->string, "thinking")) cJSON_ReplaceItemInObjectCaseSensitive(c, "thinking", cJSON_Duplicate(it, 1));
                else cJSON_AddItemToObject(c, it->string, cJSON_Duplicate(it, 1));
            }
            if (c && cJSON_GetObjectItemCaseSensitive(c, "reasoning_content"))
                cJSON_ReplaceItemInObjectCaseSensitive(c, "reasoning_content", cJSON_Duplicate(r, 1));
            else if (c) cJSON_AddItemToObject(c, "reasoning_content", cJSON_Duplicate(r, 1));
        }
        if (!out || !c) {
            cJSON_Delete(c);
            cJSON_Delete(out);
            *oom = 1;
            return NULL;
        }
        cJSON_AddItemToArray(out, c);
    }
    return out;
}

/* The variables of one rendering: messages[0..n_msgs) (borrowed), tools, add_generation_prompt,
 * bos_token/eos_token, then the record's chat_template_kwargs (which win, as in transformers). */
static int render_prefix(const peft_chat_template *t, const cJSON *msgs, int n_msgs, const cJSON *tools,
                         const cJSON *kwargs, int gen, char **out, size_t *len, peft_jinja_span **gs, size_t *n_gs,
                         peft_err *err) {
    cJSON *vars = cJSON_CreateObject(), *list = cJSON_CreateArray();
    int oom = !vars || !list;
    const cJSON *m = msgs ? msgs->child : NULL;
    for (int i = 0; !oom && i < n_msgs; i++, m = m->next) oom = !cJSON_AddItemReferenceToArray(list, (cJSON *)m);
    if (!oom) cJSON_AddItemToObject(vars, "messages", list), list = NULL;
    if (!oom) oom = !(tools ? cJSON_AddItemReferenceToObject(vars, "tools", (cJSON *)tools) : cJSON_AddNullToObject(vars, "tools") != NULL);
    if (!oom) oom = !cJSON_AddNullToObject(vars, "documents") || !cJSON_AddBoolToObject(vars, "add_generation_prompt", gen);
    if (!oom && t->bos) oom = !cJSON_AddStringToObject(vars, "bos_token", t->bos);
    if (!oom && t->eos) oom = !cJSON_AddStringToObject(vars, "eos_token", t->eos);
    const cJSON *kw;
    cJSON_ArrayForEach(kw, kwargs) {
        if (oom) break;
        cJSON_DeleteItemFromObjectCaseSensitive(vars, kw->string);
        oom = !cJSON_AddItemReferenceToObject(vars, kw->string, (cJSON *)kw);
    }
    int rc = oom ? peft_fail(err, PEFT_ENOMEM, "chat template: out of memory") : peft_jinja_render(t->jinja, vars, out, len, gs, n_gs, err);
    cJSON_Delete(list);
    cJSON_Delete(vars);
    return rc;
}

static size_t common_prefix(const char *a, size_t na, const char *b, size_t nb) {
    size_t i = 0;
    while (i < na && i < nb && a[i] == b[i]) i++;
    return i;
}

/* End of assistant message i's turn in the full rendering s[0..n), its start at `start`:
 * through the first special token at or after start; else `fallback` less trailing whitespace. */
static size_t turn_end(const peft_chat_template *t, const char *s, size_t n, size_t start, size_t fallback) {
    for (size_t p = start; p < n; p++) {
        if (!t->first[(unsigned char)s[p]]) continue;
        for (size_t k = 0; k < t->n_specials; k++) {
            size_t len = strlen(t->specials[k]);
            if (len <= n - p && !memcmp(s + p, t->specials[k], len)) return p + len;
        }
    }
    while (fallback > start && strchr(" \t\r\n", s[fallback - 1])) fallback--;
    return fallback;
}

/* Assistant spans by prefix renderings: message i's turn starts where the rendering of
 * messages[:i] with the generation prompt stops agreeing with the full one. */
static int prefix_spans(const peft_chat_template *t, const cJSON *msgs, const cJSON *tools, const cJSON *kwargs,
                        const char *full, size_t n, peft_chat_span **spans, size_t *n_spans, peft_err *err) {
    int count = cJSON_GetArraySize(msgs), k = 0, rc = 0;
    peft_chat_span *sp = calloc((size_t)count + 1, sizeof *sp);
    if (!sp) return peft_fail(err, PEFT_ENOMEM, "chat template: out of memory");
    size_t prev_end = 0, w = 0;
    for (const cJSON *m = msgs->child; m && !rc; m = m->next, k++) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!cJSON_IsString(role) || strcmp(role->valuestring, "assistant")) continue;
        char *pre = NULL, *upto = NULL;
        size_t np = 0, nu = 0, start = 0, agree;
        if (k > 0) rc = render_prefix(t, msgs, k, tools, kwargs, 1, &pre, &np, NULL, NULL, err);
        if (!rc) rc = render_prefix(t, msgs, k + 1, tools, kwargs, 0, &upto, &nu, NULL, NULL, err);
        if (rc) {
            peft_err_prefix(err, "locating assistant message %d", k);
        } else {
            start = k > 0 ? common_prefix(pre, np, full, n) : 0;
            if (start < prev_end) start = prev_end;
            agree = common_prefix(upto, nu, full, n);
            size_t end = turn_end(t, full, n, start, agree > start ? agree : start);
            sp[w].start = start, sp[w++].end = end;
            prev_end = end;
        }
        free(pre);
        free(upto);
    }
    if (rc) return free(sp), rc;
    *spans = sp, *n_spans = w;
    return PEFT_OK;
}

int peft_chat_render_json(const peft_chat_template *t, const cJSON *record, int gen_prompt, char **out, size_t *out_len,
                          peft_chat_span **spans, size_t *n_spans, const char *where, peft_err *err) {
    *out = NULL;
    if (spans) *spans = NULL, *n_spans = 0;
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(record, "messages");
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(record, "tools");
    const cJSON *kwargs = cJSON_GetObjectItemCaseSensitive(record, "chat_template_kwargs");
    const cJSON *m;
    if (!cJSON_IsArray(msgs)) return peft_fail(err, PEFT_EFORMAT, "%s: \"messages\" is not a list", where);
    if (tools && !cJSON_IsArray(tools) && !cJSON_IsNull(tools)) return peft_fail(err, PEFT_EFORMAT, "%s: \"tools\" is not a list", where);
    if (kwargs && !cJSON_IsObject(kwargs)) return peft_fail(err, PEFT_EFORMAT, "%s: \"chat_template_kwargs\" is not an object", where);
    int k = 0;
    cJSON_ArrayForEach(m, msgs) { /* transformers' is_valid_message; the content's type is the template's business */
        if (!cJSON_IsObject(m) || !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(m, "role")) ||
            !cJSON_GetObjectItemCaseSensitive(m, "content"))
            return peft_fail(err, PEFT_EFORMAT, "%s: message %d needs a string \"role\" and a \"content\"", where, k);
        k++;
    }
    int oom;
    cJSON *aliased = alias_reasoning(msgs, &oom);
    if (oom) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", where);
    if (aliased) msgs = aliased;
    peft_jinja_span *gs = NULL;
    size_t n_gs = 0;
    int rc = render_prefix(t, msgs, cJSON_GetArraySize(msgs), tools, kwargs, gen_prompt, out, out_len, &gs, &n_gs, err);
    if (!rc && spans) {
        if (peft_jinja_has_generation(t->jinja)) {
            *spans = (peft_chat_span *)gs, *n_spans = n_gs, gs = NULL; /* same layout */
        } else {
            rc = prefix_spans(t, msgs, tools, kwargs, *out, *out_len, spans, n_spans, err);
        }
    }
    free(gs);
    cJSON_Delete(aliased);
    if (rc) {
        free(*out);
        *out = NULL;
        if (rc != PEFT_ENOMEM) peft_err_prefix(err, "%s", where);
    }
    return rc;
}
