/* test_tokenizer_chat.c: the Jinja interpreter (src/tokenizer/jinja.c) and the chat renderer
 * on their own: each expected string is what Python's Jinja2 gives in transformers' environment
 * (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, json.dumps tojson),
 * written down when the case was made; the parser's refusals; the limits; the assistant spans.
 * The comparison with transformers' apply_chat_template on the real templates of ../shared is
 * tests/tokenizer/test_chat_template_hf.py. */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "check.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/jinja.h"
#include "tokenizer/fixture.h"

/* template, variables (JSON), Jinja2's rendering */
static const char *const CASES[][3] = {
    {"  {% if true %}\n  a\n  {%- endif %}\n{# c #}\nb {{- ' x ' -}} c\n",
     "{}",
     "  ab x c"},
    {"{% for i in [1, 2, 3] if i != 2 %}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}|{% endfor %}",
     "{}",
     "0TrueFalse2|1FalseTrue2|"},
    {"{% set ns = namespace(n=0, s='') %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% set ns.s = ns.s ~ m.role[0] %}{% endfor %}{{ ns.n }}:{{ ns.s }}",
     "{\"messages\": [{\"role\": \"user\"}, {\"role\": \"assistant\"}]}",
     "2:ua"},
    {"{{ 'a,b,,c'.split(',') }}{{ ' x  y '.split() }}{{ 'abc'[::-1] }}{{ [1,2,3][1:] }}{{ 'h\303\251llo'[1] }}{{ '  t\\n'.strip() }}|{{ 'xxaxx'.strip('x') }}",
     "{}",
     "['a', 'b', '', 'c']['x', 'y']cba[2, 3]\303\251t|a"},
    {"{{ {'a': [1, 2.5, none, true], 'b': '\303\251\"\\n'} | tojson }}|{{ [1, 'a'] | tojson(indent=2) }}|{{ x | tojson }}",
     "{\"x\": {\"k\": [1, {\"z\": null}]}}",
     "{\"a\": [1, 2.5, null, true], \"b\": \"\303\251\\\"\\n\"}|[\n  1,\n  \"a\"\n]|{\"k\": [1, {\"z\": null}]}"},
    {"{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1e20 }} {{ 0.1 + 0.2 }} {{ 3 * 'ab' }} {{ 1 == 1.0 }} {{ true + 1 }}",
     "{}",
     "3 -4 2 3.5 1024 1e+20 0.30000000000000004 ababab True 2"},
    {"{{ x is defined }}{{ y is none }}{{ 'a' is string }}{{ d is mapping }}{{ [1] is sequence }}{{ 3 is divisibleby 3 }}{{ 'b' in 'abc' }}{{ 4 not in [1] }}{{ y is not none }}",
     "{\"y\": null, \"d\": {}}",
     "FalseTrueTrueTrueTrueTrueTrueTrueFalse"},
    {"{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(', ') }}|{{ messages | rejectattr('role', 'equalto', 'user') | list | length }}|{{ messages | first | string }}",
     "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}, {\"role\": \"user\", \"content\": \"c\"}]}",
     "a, c|1|{'role': 'user', 'content': 'a'}"},
    {"{{ 'Hello World' | upper }}{{ 'ABC' | lower }}{{ 'hello wORLD' | title }}{{ 'a-b' | replace('-', '+') }}{{ undefined_thing | default('dflt') }}{{ '' | default('e', true) }}{{ [3,1] | last }}",
     "{}",
     "HELLO WORLDabcHello Worlda+bdflte1"},
    {"{% for k, v in d | items %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}{{ d.get('a') }}{{ d.get('z', 0) }}",
     "{\"d\": {\"a\": 1, \"b\": \"two\"}}",
     "a=1;b=two;ab10"},
    {"{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}{% for x in [] %}no{% else %}empty{% endfor %}",
     "{}",
     "02empty"},
    {"{{ 'yes' if a else 'no' }}{{ a and 'x' or 'y' }}{{ not a }}{{ none }}{{ [none, true] }}{{ {'k': 'v'} }}",
     "{\"a\": 0}",
     "noyTrueNone[None, True]{'k': 'v'}"},
    {"{% set x %}inner {{ 1 + 1 }}{% endset %}[{{ x }}]{{ x | length }}{{ 'a' ~ 1 ~ none }}",
     "{}",
     "[inner 2]7a1None"},
};

static void expect_render(const char *tpl, const char *vars, const char *want) {
    peft_jinja *j;
    peft_err err;
    int rc = peft_jinja_parse(tpl, strlen(tpl), "case", &j, &err);
    CHECK_MSG(rc == 0, "parse %s: %s", tpl, err.msg);
    if (rc) return;
    cJSON *v = cJSON_Parse(vars);
    char *out = NULL;
    size_t len;
    rc = peft_jinja_render(j, v, &out, &len, NULL, NULL, &err);
    CHECK_MSG(rc == 0 && len == strlen(want) && !strcmp(out, want), "%s\n  got  %s\n  want %s", tpl, rc ? err.msg : out, want);
    free(out);
    cJSON_Delete(v);
    peft_jinja_free(j);
}

/* a template the parser must refuse, naming the line, column and `construct` */
static void expect_refused(const char *tpl, const char *where, const char *construct) {
    peft_jinja *j = NULL;
    peft_err err;
    int rc = peft_jinja_parse(tpl, strlen(tpl), "tokenizer_config.json", &j, &err);
    CHECK_MSG(rc == PEFT_EUNSUPPORTED && !j && strstr(err.msg, "tokenizer_config.json") && strstr(err.msg, where) &&
                  strstr(err.msg, construct), "%s: rc %d, %s", tpl, rc, err.msg);
}

/* a template that parses but whose rendering fails with code `code` and a message containing `msg` */
static void expect_render_error(const char *tpl, int code, const char *msg) {
    peft_jinja *j;
    peft_err err;
    CHECK(peft_jinja_parse(tpl, strlen(tpl), "case", &j, &err) == 0);
    char *out = NULL;
    size_t len;
    int rc = peft_jinja_render(j, NULL, &out, &len, NULL, NULL, &err);
    CHECK_MSG(rc == code && !out && strstr(err.msg, msg), "%s: rc %d, %s", tpl, rc, err.msg);
    peft_jinja_free(j);
}

static const char CONV[] =
    "{\"messages\": [{\"role\": \"system\", \"content\": \"You are terse.\"}, {\"role\": \"user\", \"content\": \"Hi\"},"
    " {\"role\": \"assistant\", \"content\": \"Hello.\"}, {\"role\": \"user\", \"content\": \" Bye \"},"
    " {\"role\": \"assistant\", \"content\": \"<think>\\nhmm\\n</think>\\n\\nCiao. \"}],"
    " \"chat_template_kwargs\": {\"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}}";

/* Renders CONV with a built-in template; the assistant spans must be span0 and span1. */
static void expect_chat(const peft_tokenizer *tok, const char *name, int gen, const char *want, const char *span0, const char *span1) {
    peft_chat_template *t;
    peft_err err;
    CHECK(peft_chat_template_for(tok, name, &t, &err) == 0);
    cJSON *rec = cJSON_Parse(CONV);
    char *out = NULL;
    size_t len, ns = 0;
    peft_chat_span *sp = NULL;
    int rc = peft_chat_render_json(t, rec, gen, &out, &len, &sp, &ns, "conv:1", &err);
    CHECK_MSG(rc == 0 && !strcmp(out, want), "%s: %s", name, rc ? err.msg : out);
    CHECK_MSG(rc == 0 && ns == 2, "%s: %zu spans", name, ns);
    if (!rc && ns == 2) {
        CHECK_MSG(sp[0].end - sp[0].start == strlen(span0) && !memcmp(out + sp[0].start, span0, strlen(span0)), "%s span 0: %.*s",
                  name, (int)(sp[0].end - sp[0].start), out + sp[0].start);
        CHECK_MSG(sp[1].end - sp[1].start == strlen(span1) && !memcmp(out + sp[1].start, span1, strlen(span1)), "%s span 1: %.*s",
                  name, (int)(sp[1].end - sp[1].start), out + sp[1].start);
    }
    free(out);
    free(sp);
    cJSON_Delete(rec);
    peft_chat_template_free(t);
}

int main(void) {
    for (size_t i = 0; i < sizeof CASES / sizeof *CASES; i++) expect_render(CASES[i][0], CASES[i][1], CASES[i][2]);

    /* built-in templates (Jinja2's renderings of them); spans from the generation prompt to the
     * end of the first special token (the fixture tokenizer's <s>, </s>, <|im_start|>, <|im_end|>),
     * and without a tokenizer to where the turn's own rendering stops agreeing */
    char *dir = fixture_dir();
    peft_tokenizer *tok = NULL;
    peft_err terr;
    CHECK(dir && peft_tokenizer_load(dir, &tok, &terr) == 0);
    expect_chat(NULL, "chatml", 1,
                "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
                "<|im_start|>user\n Bye <|im_end|>\n<|im_start|>assistant\n<think>\nhmm\n</think>\n\nCiao. <|im_end|>\n"
                "<|im_start|>assistant\n",
                "Hello.<|im_end|>", "<think>\nhmm\n</think>\n\nCiao. <|im_end|>");
    expect_chat(tok, "llama2", 0,
                "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi [/INST] Hello. </s><s>[INST] Bye [/INST] <think>\nhmm\n</think>\n\nCiao. </s>",
                " Hello. </s>", " <think>\nhmm\n</think>\n\nCiao. </s>");
    expect_chat(tok, "qwen3", 0,
                "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
                "<|im_start|>user\n Bye <|im_end|>\n<|im_start|>assistant\n<think>\nhmm\n</think>\n\nCiao. <|im_end|>\n",
                "Hello.<|im_end|>", "<think>\nhmm\n</think>\n\nCiao. <|im_end|>");
    peft_tokenizer_free(tok);
    if (dir) fixture_rmdir(dir);

    /* {% generation %} blocks give the spans themselves */
    {
        const char *tpl = "{% for m in messages %}{{ m.role }}: {% if m.role == 'assistant' %}{% generation %}{{ m.content }}!"
                          "{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}";
        peft_chat_template *t;
        peft_err err;
        CHECK(peft_chat_template_parse(tpl, "gen", NULL, &t, &err) == 0);
        cJSON *rec = cJSON_Parse("{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}");
        char *out;
        size_t len, ns;
        peft_chat_span *sp;
        CHECK(peft_chat_render_json(t, rec, 0, &out, &len, &sp, &ns, "g:1", &err) == 0 && !strcmp(out, "user: qassistant: a!") &&
              ns == 1 && sp[0].start == 18 && sp[0].end == 20); /* trim_blocks ate the newlines after {% endif %} */
        free(out);
        free(sp);
        cJSON_Delete(rec);
        peft_chat_template_free(t);
    }

    /* runtime errors: raise_exception, alternation, undefined attributes, type errors */
    {
        peft_chat_template *t;
        peft_err err;
        CHECK(peft_chat_template_for(NULL, "llama2", &t, &err) == 0);
        cJSON *rec = cJSON_Parse("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"user\", \"content\": \"b\"}],"
                                 " \"chat_template_kwargs\": {\"bos_token\": \"<s>\"}}");
        char *out;
        size_t len;
        CHECK(peft_chat_render_json(t, rec, 0, &out, &len, NULL, NULL, "f.jsonl:3", &err) == PEFT_EINVAL &&
              strstr(err.msg, "f.jsonl:3") && strstr(err.msg, "alternate"));
        cJSON_Delete(rec);
        rec = cJSON_Parse("{\"messages\": 3}");
        CHECK(peft_chat_render_json(t, rec, 0, &out, &len, NULL, NULL, "f.jsonl:4", &err) == PEFT_EFORMAT && strstr(err.msg, "f.jsonl:4"));
        cJSON_Delete(rec);
        peft_chat_template_free(t);
        CHECK(peft_chat_template_for(NULL, "zephyr", &t, &err) == PEFT_EINVAL && strstr(err.msg, "zephyr") && !t);
    }
    expect_render_error("{{ raise_exception('no system role') }}", PEFT_EINVAL, "no system role");
    expect_render_error("{{ messages[0].role }}", PEFT_EINVAL, "'messages' is undefined");
    expect_render_error("{{ 'a' + 1 }}", PEFT_EINVAL, "unsupported operand");
    expect_render_error("line 1\n{{ x.y.z }}", PEFT_EINVAL, "line 2");

    /* refusals: what the interpreter cannot render is an error naming the place and construct */
    expect_refused("{{ messages | frobnicate }}", "line 1 column 15", "unknown filter 'frobnicate'");
    expect_refused("ok\n  {% if x is shiny %}{% endif %}", "line 2 column 14", "unknown test 'shiny'");
    expect_refused("{% for m in messages %}", "line 1 column 4", "{% for %} is never closed");
    expect_refused("{{ 'a' ", "line 1 column 1", "unterminated {{ ... }} tag");
    expect_refused("{{ 'abc }}", "line 1 column 4", "unterminated string literal");
    expect_refused("{# never closed", "line 1 column 1", "unterminated comment");
    expect_refused("{% macro f() %}{% endmacro %}", "line 1 column 4", "unsupported statement {% macro %}");
    expect_refused("{% include 'x' %}", "line 1 column 4", "unsupported statement {% include %}");
    expect_refused("{% endif %}", "line 1 column 4", "unexpected {% endif %}");
    expect_refused("{{ strftime_now('%d') }}", "line 1 column 4", "unknown function 'strftime_now'");
    expect_refused("{{ x.frob() }}", "line 1 column 6", "unknown method 'frob'");
    expect_refused("{% break %}", "line 1 column 4", "outside a loop");
    expect_refused("{{ a $ b }}", "line 1 column 6", "unexpected character '$'");
    expect_refused("{{ }}", "line 1 column 4", "expected an expression");
    expect_refused("{% if x %}{% else %}{% else %}{% endif %}", "line 1 column 24", "unexpected {% else %}");

    /* hostile input: deep nesting, huge loops and strings end in errors, not crashes or hangs */
    {
        char deep[4000];
        size_t w = 0;
        w += (size_t)snprintf(deep + w, sizeof deep - w, "{{ ");
        for (int i = 0; i < 1000; i++) deep[w++] = '(';
        deep[w++] = '1';
        for (int i = 0; i < 1000; i++) deep[w++] = ')';
        snprintf(deep + w, sizeof deep - w, " }}");
        expect_refused(deep, "line 1", "nested more than");
        w = 0;
        for (int i = 0; i < 300; i++) w += (size_t)snprintf(deep + w, sizeof deep - w, "{%% if 1 %%}");
        expect_refused(deep, "line 1", "nested more than");
        w = 0;
        w += (size_t)snprintf(deep + w, sizeof deep - w, "{{ 1");
        for (int i = 0; i < 500; i++) w += (size_t)snprintf(deep + w, sizeof deep - w, "+1");
        snprintf(deep + w, sizeof deep - w, " }}");
        expect_refused(deep, "line 1", "nested more than");
    }
    expect_render_error("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", PEFT_EUNSUPPORTED, "steps");
    expect_render_error("{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                        PEFT_EUNSUPPORTED, "MiB");
    expect_render_error("{{ range(1000000) }}", PEFT_EINVAL, "Range too big");
    expect_render_error("{{ 'x' * 100000000 }}", PEFT_EUNSUPPORTED, "MiB");
    return check_report("test_tokenizer_chat");
}
