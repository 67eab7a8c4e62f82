/* test_tokenizer_chat.c: chat template recognition and rendering, with the strings Python's
 * Jinja2 (what transformers runs) gives for each family's official template. The comparison
 * with @huggingface/jinja on the real templates is in tests/tokenizer/test_tokenizer_js.mjs;
 * the cases here include the two where that JavaScript engine departs from Jinja2 (an empty
 * system prompt, strip('\n') with an argument). */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tokenizer/chat_template.h"

static const peft_chat_msg CONV[] = {{"system", "You are terse."}, {"user", "Hi"}, {"assistant", "Hello."},
                                     {"user", " Bye "}, {"assistant", "Ciao. "}};

static void expect(const peft_chat_template *t, const peft_chat_msg *m, size_t n, int gen, const char *want) {
    char *out = NULL;
    size_t len;
    peft_err err;
    int rc = peft_chat_render(t, m, n, gen, &out, &len, NULL, NULL, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    CHECK_MSG(out && !strcmp(out, want) && len == strlen(want), "got \"%s\"\nwant \"%s\"", out ? out : "", want);
    free(out);
}

static peft_chat_template named(const char *name, const char *bos, const char *eos) {
    peft_chat_template t;
    peft_err err;
    CHECK(peft_chat_template_named(name, &t, &err) == 0);
    strcpy(t.bos, bos);
    strcpy(t.eos, eos);
    return t;
}

int main(void) {
    peft_chat_template t = named("chatml", "", "<|im_end|>");
    expect(&t, CONV, 5, 0,
           "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
           "<|im_start|>user\n Bye <|im_end|>\n<|im_start|>assistant\nCiao. <|im_end|>\n");
    expect(&t, CONV + 1, 1, 1, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");

    /* spans cover the assistant content and its end-of-turn token */
    char *out;
    size_t len, ns;
    peft_chat_span *sp;
    peft_err err;
    CHECK(peft_chat_render(&t, CONV, 5, 0, &out, &len, &sp, &ns, &err) == 0 && ns == 2);
    if (ns == 2) {
        CHECK(!strncmp(out + sp[0].start, "Hello.<|im_end|>", sp[0].end - sp[0].start) && sp[0].end - sp[0].start == 16);
        CHECK(!strncmp(out + sp[1].start, "Ciao. <|im_end|>", 16) && sp[1].end == len - 1);
    }
    free(out);
    free(sp);

    t = named("llama2", "<s>", "</s>");
    expect(&t, CONV, 5, 0, "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi [/INST] Hello. </s><s>[INST] Bye [/INST] Ciao. </s>");
    /* Jinja2: '' != false is true, so an empty system prompt still writes <<SYS>> */
    expect(&t, (peft_chat_msg[]){{"system", ""}, {"user", "Hi"}}, 2, 0, "<s>[INST] <<SYS>>\n\n<</SYS>>\n\nHi [/INST]");
    CHECK(peft_chat_render(&t, (peft_chat_msg[]){{"user", "a"}, {"user", "b"}}, 2, 0, &out, &len, NULL, NULL, &err) == PEFT_EINVAL &&
          strstr(err.msg, "alternate"));

    t = named("mistral", "<s>", "</s>");
    expect(&t, CONV + 1, 4, 0, "<s>[INST] Hi [/INST]Hello.</s> [INST]  Bye  [/INST]Ciao. </s> ");
    CHECK(peft_chat_render(&t, CONV, 5, 0, &out, &len, NULL, NULL, &err) == PEFT_EINVAL);

    t = named("llama3", "<|begin_of_text|>", "<|eot_id|>");
    expect(&t, CONV, 3, 1,
           "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|><|start_header_id|>user"
           "<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\n");

    t = named("qwen3", "", "<|im_end|>");
    /* the last assistant turn after the last user turn gets an (empty) think block; Jinja2's
     * lstrip('\n') keeps the leading space */
    expect(&t, (peft_chat_msg[]){{"user", "Q"}, {"assistant", " A"}}, 2, 0,
           "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n A<|im_end|>\n");
    expect(&t, (peft_chat_msg[]){{"user", "Q"}, {"assistant", "<think>\nwhy\n</think>\n\nA"}, {"user", "R"}}, 3, 0,
           "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n<|im_start|>user\nR<|im_end|>\n");
    expect(&t, (peft_chat_msg[]){{"user", "Q"}, {"assistant", "<think>\nwhy\n</think>\n\nA"}}, 2, 0,
           "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nwhy\n</think>\n\nA<|im_end|>\n");

    /* recognition */
    peft_chat_template d;
    CHECK(peft_chat_template_detect("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                                    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
                                    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
                                    "{% endfor %}", &d, &err) == 0);
    CHECK(d.family == PEFT_CHAT_CHATML && d.has_default_system && !strcmp(d.default_system, "You are a helpful assistant."));
    expect(&d, CONV + 1, 1, 0, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
    CHECK(peft_chat_template_detect("{{ '<|start_header_id|>' }}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}", &d, &err) == 0 &&
          d.family == PEFT_CHAT_LLAMA3 && d.gen_prompt_always);
    CHECK(peft_chat_template_detect("{{ message['content'] + eos_token}} [INST]", &d, &err) == 0 && d.family == PEFT_CHAT_MISTRAL && !d.eos_space);
    CHECK(peft_chat_template_detect("'<<SYS>>\\n' [INST]", &d, &err) == 0 && d.family == PEFT_CHAT_LLAMA2);
    CHECK(peft_chat_template_detect("<|im_start|> </think>", &d, &err) == 0 && d.family == PEFT_CHAT_QWEN3);
    CHECK(peft_chat_template_detect("{{ '<|user|>\\n' + message['content'] }}", &d, &err) == PEFT_EUNSUPPORTED &&
          strstr(err.msg, "--chat-template") && strstr(err.msg, "llama2"));
    CHECK(peft_chat_template_detect("<|start_header_id|> Cutting Knowledge Date", &d, &err) == PEFT_EUNSUPPORTED);
    CHECK(peft_chat_template_named("zephyr", &d, &err) == PEFT_EINVAL && strstr(err.msg, "zephyr"));
    return check_report("test_tokenizer_chat");
}
