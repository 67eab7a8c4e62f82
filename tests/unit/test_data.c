/* test_data.c: dataset loading for every format, loss masks, packing, split and shuffling, and
 * the errors for malformed files, on the fixture tokenizer (tests/tokenizer/fixture.h). */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tokenizer/fixture.h"
#include "tokenizer/tokenizer.h"
#include "train/data.h"

static char dir_[64];
static peft_tokenizer *tok;

static const char *put_file(const char *name, const char *content) {
    static char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir_, name);
    FILE *f = fopen(path, "w");
    fputs(content, f);
    fclose(f);
    return path;
}

static peft_dataset *load(const char *path, int T, double val, uint64_t seed, int pack) {
    peft_data_opts o = {T, val, seed, NULL, pack};
    peft_dataset *ds = NULL;
    peft_err err;
    int rc = peft_dataset_load(path, tok, &o, &ds, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    return ds;
}

static void expect_error(const char *path, const char *want) {
    peft_data_opts o = {16, 0, 1, NULL, 1};
    peft_dataset *ds = NULL;
    peft_err err = {0};
    int rc = peft_dataset_load(path, tok, &o, &ds, &err);
    CHECK_MSG(rc != 0 && strstr(err.msg, want), "wanted an error with \"%s\", got rc %d \"%s\"", want, rc, err.msg);
    peft_dataset_free(ds);
}

/* The text of the learnt tokens of every row of both splits, in row order. */
static char *learnt_text(const peft_dataset *ds, int T, size_t *n_targets) {
    int32_t *in = malloc(T * sizeof *in), *tg = malloc(T * sizeof *tg), *pos = malloc(T * sizeof *pos);
    int32_t *all = malloc(100000 * sizeof *all);
    size_t n = 0;
    for (int s = 0; s < 2; s++)
        for (int r = 0; r < peft_dataset_rows(ds, s); r++) {
            CHECK(peft_dataset_row(ds, s, r, in, tg, pos) == 0);
            for (int t = 0; t < T; t++) {
                if (tg[t] >= 0) all[n++] = tg[t];
                /* within an example the target is the next input */
                if (t + 1 < T && pos[t + 1] == pos[t] + 1 && tg[t] >= 0) CHECK(tg[t] == in[t + 1]);
                CHECK(pos[t] >= 0 && pos[t] <= t);
            }
        }
    char *out = NULL;
    peft_err err;
    CHECK(peft_tokenizer_decode(tok, all, n, 0, &out, &err) == 0);
    *n_targets = n;
    free(in), free(tg), free(pos), free(all);
    return out;
}

static void test_prompt_completion(void) {
    const char *p = put_file("pc.jsonl", "{\"prompt\": \"the \", \"completion\": \"cat\"}\n");
    peft_dataset *ds = load(p, 16, 0, 1, 0);
    if (!ds) return;
    CHECK(peft_dataset_rows(ds, 0) == 1 && peft_dataset_rows(ds, 1) == 0);
    int32_t in[16], tg[16], pos[16];
    CHECK(peft_dataset_row(ds, 0, 0, in, tg, pos) == 0);
    /* <s> ▁the ▁ c a t </s>: loss on c a t </s> only */
    int32_t want_in[7] = {FIX_BOS, FIX_THE, FIX_SPACE, FIX_CH('c'), FIX_CH('a'), FIX_CH('t'), FIX_EOS};
    int32_t want_tg[7] = {-1, -1, FIX_CH('c'), FIX_CH('a'), FIX_CH('t'), FIX_EOS, -1};
    CHECK(!memcmp(in, want_in, sizeof want_in) && !memcmp(tg, want_tg, sizeof want_tg));
    CHECK(pos[0] == 0 && pos[6] == 6 && in[7] == FIX_EOS && tg[7] == -1 && pos[7] == 0); /* padding */
    CHECK(peft_dataset_row(ds, 0, 1, in, tg, pos) == PEFT_EINVAL && peft_dataset_row(ds, 2, 0, in, tg, pos) == PEFT_EINVAL);
    peft_dataset_free(ds);
}

/* GSM8K-style {"question", "answer"}: "Question: <q>\nAnswer: " is the prompt, the answer is learnt. */
static void test_question_answer(void) {
    const char *p = put_file("qa.jsonl", "{\"question\": \"a b\", \"answer\": \"cat\"}\n{\"question\": \"c\", \"answer\": \"tac\"}\n");
    peft_dataset *ds = load(p, 64, 0, 1, 0);
    if (!ds) return;
    size_t n;
    char *text = learnt_text(ds, 64, &n);
    CHECK(text && strstr(text, "cat") && strstr(text, "tac") && !strstr(text, "Question") && !strstr(text, "Answer"));
    free(text);
    peft_dataset_free(ds);
    expect_error(put_file("qa_bad.jsonl", "{\"question\": \"q\", \"answer\": 7}\n"), "qa_bad.jsonl:1: \"question\" and \"answer\" must both be strings");
}

static void test_alpaca_and_chat(void) {
    const char *p = put_file("alpaca.json",
                          "[{\"instruction\": \"say ab\", \"input\": \"\", \"output\": \"ab ab\"},\n"
                          " {\"instruction\": \"say it\", \"input\": \"twice\", \"output\": \"the\"}]");
    peft_dataset *ds = load(p, 512, 0, 7, 0);
    size_t n;
    char *text = ds ? learnt_text(ds, 512, &n) : NULL;
    /* only the outputs and their eos are learnt (row order is shuffled) */
    CHECK_MSG(text && (!strcmp(text, "ab ab</s>the</s>") || !strcmp(text, "the</s>ab ab</s>")), "%s", text ? text : "");
    free(text);
    peft_dataset_free(ds);

    p = put_file("chat.jsonl",
              "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"the cat\"},"
              " {\"role\": \"user\", \"content\": \"and\"}, {\"role\": \"assistant\", \"content\": \"ab\"}]}\n");
    ds = load(p, 256, 0, 7, 1);
    text = ds ? learnt_text(ds, 256, &n) : NULL;
    /* the assistant turns and their <|im_end|>, nothing of the user turns or headers (no ▁
     * before "ab": it follows "\n" in the same section) */
    CHECK_MSG(text && !strcmp(text, "the cat<|im_end|>ab<|im_end|>"), "%s", text ? text : "");
    free(text);
    peft_dataset_free(ds);
}

static void test_text_windows_split_packing(void) {
    char buf[8000] = "";
    for (int i = 0; i < 40; i++) strcat(buf, "{\"text\": \"the cat sat on the mat\"}\n");
    const char *p = put_file("text.jsonl", buf);
    /* 40 docs of 19 tokens (<s> + 17 + </s>) -> windows of 15 and 4 */
    peft_dataset *ds = load(p, 15, 0.25, 42, 1);
    if (!ds) return;
    int ex = peft_dataset_examples(ds, 0) + peft_dataset_examples(ds, 1);
    CHECK_MSG(ex == 80, "%d examples", ex);
    CHECK(peft_dataset_examples(ds, 1) == 20);
    size_t n;
    char *text = learnt_text(ds, 15, &n);
    CHECK_MSG(n == 40 * 18, "%zu targets", n); /* every token but a document's first is learnt once */
    free(text);
    /* packing: the 4-token windows share rows */
    CHECK(peft_dataset_rows(ds, 0) < peft_dataset_examples(ds, 0));
    /* same seed, same rows; another seed, another order */
    peft_dataset *again = load(p, 15, 0.25, 42, 1), *other = load(p, 15, 0.25, 43, 1);
    int same = 1, differs = 0;
    int32_t a[15], b[15], c[15], x[15], y[15], z[15];
    for (int r = 0; again && other && r < peft_dataset_rows(ds, 0); r++) {
        peft_dataset_row(ds, 0, r, a, b, c);
        peft_dataset_row(again, 0, r, x, y, z);
        same &= !memcmp(a, x, sizeof a) && !memcmp(b, y, sizeof b) && !memcmp(c, z, sizeof c);
        peft_dataset_row(other, 0, r, x, y, z);
        differs |= memcmp(c, z, sizeof c) != 0;
    }
    CHECK(same && differs);
    peft_dataset_free(again);
    peft_dataset_free(other);
    peft_dataset_free(ds);

    /* plain text: one document of 27 tokens; pack=0 gives one window per row */
    p = put_file("doc.txt", "the cat sat on the mat\nthe end\n");
    ds = load(p, 8, 0, 1, 0);
    if (ds) CHECK(peft_dataset_rows(ds, 0) == peft_dataset_examples(ds, 0) && peft_dataset_examples(ds, 0) == 4);
    peft_dataset_free(ds);

    /* truncation: the last kept token predicts nothing */
    p = put_file("long.jsonl", "{\"prompt\": \"a\", \"completion\": \"bcdefghijklmnop\"}\n");
    ds = load(p, 6, 0, 1, 0);
    int32_t in[6], tg[6], pos[6];
    if (ds) {
        CHECK(peft_dataset_rows(ds, 0) == 1);
        peft_dataset_row(ds, 0, 0, in, tg, pos);
        CHECK(tg[5] == -1 && tg[4] == in[5] && pos[5] == 5);
    }
    peft_dataset_free(ds);
}

static void test_errors(void) {
    expect_error(put_file("empty.jsonl", ""), "empty file");
    expect_error(put_file("blank.txt", "  \n\n"), "empty file");
    expect_error(put_file("badjson.jsonl", "{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": \n"), "badjson.jsonl:3:");
    expect_error(put_file("nofield.jsonl", "{\"text\": \"a\"}\n{\"title\": \"b\"}\n"), "nofield.jsonl:2: record has none of");
    expect_error(put_file("mixed.jsonl", "{\"text\": \"a\"}\n\n{\"prompt\": \"q\", \"completion\": \"a\"}\n"), "mixed.jsonl:3: a {\"prompt\"");
    expect_error(put_file("type.jsonl", "{\"prompt\": \"q\", \"completion\": 3}\n"), "type.jsonl:1: \"prompt\" and \"completion\" must both be strings");
    expect_error(put_file("array.jsonl", "[1, 2]\n"), "array.jsonl:1: expected a JSON object");
    expect_error(put_file("arr.json", "[{\"instruction\": \"x\", \"output\": \"y\"}, 5]"), "arr.json: record 2: expected a JSON object");
    expect_error(put_file("notarr.json", "[{\"instruction\": \"x\""), "notarr.json: invalid JSON at line 1");
    expect_error(put_file("noanswer.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n"), "noanswer.jsonl:1: conversation has no assistant turn");
    expect_error(put_file("badmsg.jsonl", "{\"messages\": [{\"role\": \"user\"}]}\n"), "badmsg.jsonl:1: message 0 needs");
    /* the completion does not survive truncation to 16 tokens */
    expect_error(put_file("nothing.jsonl", "{\"prompt\": \"abcdefghijklmnopqrstuvwxyz\", \"completion\": \"x\"}\n"), "no usable example");
    expect_error("/nonexistent/file.jsonl", "/nonexistent/file.jsonl");
    peft_data_opts o = {1, 0, 1, NULL, 1};
    peft_dataset *ds;
    peft_err err;
    CHECK(peft_dataset_load(put_file("ok.txt", "the"), tok, &o, &ds, &err) == PEFT_EINVAL && strstr(err.msg, "seq_len"));
}

/* JSON as strict as Python's json.loads (what HF datasets reads with): one record per line,
 * nothing after it, no duplicate keys; each fault located at FILE:LINE:COLUMN. */
static void test_strict_json(void) {
    expect_error(put_file("two.jsonl", "{\"text\": \"a\"}\n{\"text\": \"a\"} {\"text\": \"b\"}\n"),
                 "two.jsonl:2:15: unexpected characters after the JSON record");
    expect_error(put_file("tail.jsonl", "{\"text\": \"a\"}x\n"), "tail.jsonl:1:14: unexpected characters");
    expect_error(put_file("dup.jsonl", "{\"text\": \"a\"}\n\n{\"prompt\": \"q\", \"completion\": \"a\", \"prompt\": \"r\"}\n"),
                 "dup.jsonl:3:36: duplicate key \"prompt\"");
    expect_error(put_file("dupnest.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\", \"role\": \"assistant\"}]}\n"),
                 "dupnest.jsonl:1:48: duplicate key \"role\"");
    expect_error(put_file("dup.json", "[{\"text\": \"a\"},\n {\"text\": \"b\", \"text\": \"c\"}]"),
                 "dup.json: duplicate key \"text\" at line 2, column 16");
    /* cJSON takes NUL and control bytes for whitespace: locating the duplicate must still end
     * (fuzz_checkpoint found the scanner looping on "[\0\0]") */
    static const char nul[] = "{\"text\":\"a\",\"x\":[\0\0],\"text\":\"b\"}\n";
    peft_data_opts o = {16, 0, 1, NULL, 1};
    peft_dataset *ds = NULL;
    peft_err err = {0};
    int rc = peft_dataset_load_memory(nul, sizeof nul - 1, "nul.jsonl", tok, &o, &ds, &err);
    CHECK_MSG(rc == PEFT_EFORMAT && strstr(err.msg, "nul.jsonl:1:") && strstr(err.msg, "duplicate key"), "rc %d %s", rc, err.msg);
    peft_dataset_free(ds);
    expect_error(put_file("tail.json", "[{\"text\": \"a\"}] ]"), "tail.json: unexpected characters after the JSON document at line 1, column 17");
}

/* Records whose prompt fills seq_len have nothing left to learn: counted, and a file of only
 * such records is refused naming --seq-len. */
static void test_dropped_by_seq_len(void) {
    const char *p = put_file("drop.jsonl", "{\"prompt\": \"abcdefghijklmnopqrstuvwxyz\", \"completion\": \"x\"}\n"
                                           "{\"prompt\": \"the \", \"completion\": \"cat\"}\n"
                                           "{\"prompt\": \"zyxwvutsrqponmlkjihgfedcba\", \"completion\": \"y\"}\n");
    for (int pack = 0; pack < 2; pack++) {
        peft_dataset *ds = load(p, 16, 0, 1, pack);
        if (!ds) return;
        CHECK(peft_dataset_dropped(ds) == 2 && peft_dataset_examples(ds, 0) == 1);
        peft_dataset_free(ds);
    }
    expect_error(put_file("alldrop.jsonl", "{\"prompt\": \"abcdefghijklmnopqrstuvwxyz\", \"completion\": \"x\"}\n"),
                 "in all 1 records the prompt fills --seq-len 16");
}

int main(void) {
    char *d = fixture_dir();
    if (!d) CHECK_SKIP("cannot create a temporary directory");
    strcpy(dir_, d);
    peft_err err;
    if (peft_tokenizer_load(dir_, &tok, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    test_prompt_completion();
    test_question_answer();
    test_alpaca_and_chat();
    test_text_windows_split_packing();
    test_errors();
    test_strict_json();
    test_dropped_by_seq_len();
    peft_tokenizer_free(tok);
    fixture_rmdir(dir_);
    return check_report("test_data");
}
