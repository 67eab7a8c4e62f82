/* fixture.h: a tiny SentencePiece-style tokenizer (Llama-2's layout: Prepend/Replace
 * normalizers, BPE with byte fallback, TemplateProcessing BOS, the Replace/ByteFallback/Fuse/
 * Strip decoder) written to a directory, so C tests run without ../shared.
 * Ids: <unk> 0, <s> 1, </s> 2, <|im_start|> 3, <|im_end|> 4, <pad> 5 (lstrip/rstrip),
 * <0x00>..<0xFF> 6..261, U+2581 262, a..z 263..288, merges "▁ t" -> 289, "h e" -> 290,
 * "▁t he" -> 291 ("▁the"), "a b" -> 292. */
#ifndef PEFT_TESTS_TOKENIZER_FIXTURE_H
#define PEFT_TESTS_TOKENIZER_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FIX_SP "\xe2\x96\x81"
enum { FIX_UNK = 0, FIX_BOS = 1, FIX_EOS = 2, FIX_IM_START = 3, FIX_IM_END = 4, FIX_PAD = 5, FIX_BYTE0 = 6,
       FIX_SPACE = 262, FIX_A = 263, FIX_T_ = 289, FIX_HE = 290, FIX_THE = 291, FIX_AB = 292 };
#define FIX_CH(c) (FIX_A + ((c) - 'a'))

static const char FIX_CHATML[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\\\n' + message['content'] + '<|im_end|>' + "
    "'\\\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\\\n' }}{% endif %}";

/* Writes DIR/tokenizer.json and (config != 0) DIR/tokenizer_config.json. Returns 0 on success. */
static int fixture_write(const char *dir, int config) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "{\"version\":\"1.0\",\"added_tokens\":[");
    const char *added[] = {"<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<pad>"};
    for (int i = 0; i < 6; i++)
        fprintf(f, "%s{\"id\":%d,\"content\":\"%s\",\"single_word\":false,\"lstrip\":%s,\"rstrip\":%s,\"normalized\":false,\"special\":%s}",
                i ? "," : "", i, added[i], i == 5 ? "true" : "false", i == 5 ? "true" : "false", i == 5 ? "false" : "true");
    fprintf(f, "],\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"" FIX_SP "\"},"
               "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"" FIX_SP "\"}]},\"pre_tokenizer\":null,"
               "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},"
               "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"pair\":[],\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[1],"
               "\"tokens\":[\"<s>\"]}}},\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":"
               "{\"String\":\"" FIX_SP "\"},\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\","
               "\"content\":\" \",\"start\":1,\"stop\":0}]},\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":\"<unk>\","
               "\"fuse_unk\":true,\"byte_fallback\":true,\"vocab\":{");
    for (int i = 0; i < 6; i++) fprintf(f, "\"%s\":%d,", added[i], i);
    for (int b = 0; b < 256; b++) fprintf(f, "\"<0x%02X>\":%d,", b, FIX_BYTE0 + b);
    fprintf(f, "\"" FIX_SP "\":%d", FIX_SPACE);
    for (int c = 0; c < 26; c++) fprintf(f, ",\"%c\":%d", 'a' + c, FIX_A + c);
    fprintf(f, ",\"" FIX_SP "t\":%d,\"he\":%d,\"" FIX_SP "the\":%d,\"ab\":%d},\"merges\":[\"" FIX_SP " t\",\"h e\",\""
               FIX_SP "t he\",\"a b\"]}}", FIX_T_, FIX_HE, FIX_THE, FIX_AB);
    if (fclose(f)) return -1;
    if (!config) return 0;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (!(f = fopen(path, "w"))) return -1;
    fprintf(f, "{\"bos_token\":\"<s>\",\"eos_token\":\"</s>\",\"pad_token\":\"<pad>\",\"clean_up_tokenization_spaces\":false,"
               "\"chat_template\":\"%s\"}", FIX_CHATML);
    return fclose(f) ? -1 : 0;
}

/* A fresh temporary directory with the fixture (caller removes it with fixture_rmdir). */
static char *fixture_dir(void) {
    static char tmpl[64];
    strcpy(tmpl, "/tmp/peft-tokfix-XXXXXX");
    if (!mkdtemp(tmpl) || fixture_write(tmpl, 1)) return NULL;
    return tmpl;
}

static void fixture_rmdir(const char *dir) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
}

#endif
