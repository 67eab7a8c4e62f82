/* gguf_vocab.c: the tokenizer embedded in a GGUF file, as the tokenizer.json (and
 * tokenizer_config.json) HF's converters would write for it, loaded by peft_tokenizer_load_json.
 *
 *  - tokenizer.ggml.model "llama": llama.cpp's SentencePiece tokenizer merges adjacent symbols
 *    (UTF-8 characters at first) into the vocabulary entry of highest score, leftmost first, and
 *    spells what is left in <0xXX> byte tokens. That is BPE whose merges are every split of a
 *    token into two vocabulary entries, ranked by the token's score (HF's LlamaConverter),
 *    with byte fallback, "▁" for spaces and a "▁" prefix (tokenizer.ggml.add_space_prefix).
 *    Two different tokens of exactly equal score may merge in another order than llama.cpp's.
 *  - "gpt2": byte-level BPE with tokenizer.ggml.merges and the split regex of
 *    tokenizer.ggml.pre (the families below; others are refused).
 * Token types (tokenizer.ggml.token_type): 2 unknown and 3 control become special added tokens,
 * 4 user-defined plain added tokens (matched whole in the text, as llama.cpp does). */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "io/gguf.h"
#include "tok_internal.h"

enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4 };

static const char LLAMA3_SPLIT[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char QWEN2_SPLIT[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* tokenizer.ggml.pre values and their split regex (NULL: GPT-2's ByteLevel regex). */
static const struct {
    const char *pre, *split;
    int ignore_merges; /* words found whole in the vocabulary are not merged (llama.cpp, HF llama3) */
} pre_types[] = {
    {"default", NULL, 0},       {"gpt2", NULL, 0},           {"llama-bpe", LLAMA3_SPLIT, 1}, {"llama3", LLAMA3_SPLIT, 1},
    {"llama-v3", LLAMA3_SPLIT, 1}, {"smaug-bpe", LLAMA3_SPLIT, 1}, {"dbrx", LLAMA3_SPLIT, 1}, {"qwen2", QWEN2_SPLIT, 0},
    {"deepseek-r1-qwen", QWEN2_SPLIT, 0},
};

/* A NUL-terminated copy of a GGUF string; refuses embedded NULs (JSON keys cannot hold them). */
static char *str_copy(const char *s, size_t n) {
    if (memchr(s, 0, n)) return NULL;
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n), d[n] = 0;
    return d;
}

typedef struct vocab {
    const peft_gguf_file *f;
    uint64_t n;
    char **text;       /* [n] */
    int *type;         /* [n] */
    const peft_gguf_kv *scores; /* or NULL */
    tok_strmap ids;    /* text -> first id spelled so */
} vocab;

static void vocab_free(vocab *v) {
    for (uint64_t i = 0; v->text && i < v->n; i++) free(v->text[i]);
    free(v->text);
    free(v->type);
    tok_strmap_free(&v->ids);
}

static int vocab_read(const peft_gguf_file *f, vocab *v, peft_err *err) {
    memset(v, 0, sizeof *v);
    v->f = f;
    const peft_gguf_kv *toks = peft_gguf_find(f, "tokenizer.ggml.tokens"), *types;
    if (!toks) return peft_fail(err, PEFT_EFORMAT, "%s: missing metadata key \"tokenizer.ggml.tokens\"", f->path);
    int rc = peft_gguf_get_array(f, "tokenizer.ggml.tokens", 1, PEFT_GGUF_STRING, toks->n, &toks, err);
    if (rc) return rc;
    if (toks->n < 1 || toks->n > (1u << 24))
        return peft_fail(err, PEFT_EFORMAT, "%s: tokenizer.ggml.tokens has %llu entries (needs 1..2^24)", f->path, (unsigned long long)toks->n);
    v->n = toks->n;
    if ((rc = peft_gguf_get_array(f, "tokenizer.ggml.token_type", 0, PEFT_GGUF_I32, v->n, &types, err)) ||
        (rc = peft_gguf_get_array(f, "tokenizer.ggml.scores", 0, PEFT_GGUF_F32, v->n, &v->scores, err)))
        return rc;
    v->text = calloc(v->n, sizeof *v->text);
    v->type = malloc(v->n * sizeof *v->type);
    if (!v->text || !v->type || tok_strmap_init(&v->ids, v->n)) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", f->path);
    for (uint64_t i = 0; i < v->n; i++) {
        size_t len;
        const char *s = peft_gguf_arr_str(toks, i, &len);
        if (!(v->text[i] = str_copy(s, len)))
            return peft_fail(err, PEFT_EFORMAT, "%s: tokenizer.ggml.tokens[%llu] holds a NUL byte (or out of memory)", f->path,
                             (unsigned long long)i);
        double type = types ? peft_gguf_arr_num(types, i) : TT_NORMAL;
        v->type[i] = type >= 0 && type <= 16 ? (int)type : 0; /* 0: no type llama.cpp defines */
        if (tok_strmap_get(&v->ids, v->text[i], len) < 0 && tok_strmap_put(&v->ids, v->text[i], (uint32_t)len, (int32_t)i))
            return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", f->path);
    }
    return PEFT_OK;
}

static cJSON *added_token(const char *text, uint64_t id, int special) {
    cJSON *t = cJSON_CreateObject();
    cJSON_AddNumberToObject(t, "id", (double)id);
    cJSON_AddStringToObject(t, "content", text);
    cJSON_AddBoolToObject(t, "single_word", 0);
    cJSON_AddBoolToObject(t, "lstrip", 0);
    cJSON_AddBoolToObject(t, "rstrip", 0);
    cJSON_AddBoolToObject(t, "normalized", 0);
    cJSON_AddBoolToObject(t, "special", special);
    return t;
}

typedef struct merge {
    float score;
    uint32_t merged, cut; /* the token and the byte where it splits */
} merge;

static int cmp_merge(const void *a, const void *b) {
    const merge *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    if (x->merged != y->merged) return x->merged < y->merged ? -1 : 1;
    return x->cut < y->cut ? -1 : x->cut > y->cut;
}

/* SentencePiece merges: every cut of a normal token at a UTF-8 character boundary into two
 * vocabulary entries, best score first. */
static int spm_merges(const vocab *v, cJSON *merges, peft_err *err) {
    size_t cap = 1024, n = 0;
    merge *m = malloc(cap * sizeof *m);
    if (!m) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", v->f->path);
    int rc = PEFT_OK;
    char buf[1024];
    for (uint64_t i = 0; i < v->n && rc == PEFT_OK; i++) {
        const char *s = v->text[i];
        size_t len = strlen(s);
        if (v->type[i] != TT_NORMAL || len >= sizeof buf) continue;
        for (size_t cut = 1; cut < len; cut++) {
            if (((unsigned char)s[cut] & 0xC0) == 0x80) continue; /* inside a character */
            if (tok_strmap_get(&v->ids, s, cut) < 0 || tok_strmap_get(&v->ids, s + cut, len - cut) < 0) continue;
            if (n == cap) {
                merge *g = realloc(m, (cap *= 2) * sizeof *m);
                if (!g) {
                    rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory", v->f->path);
                    break;
                }
                m = g;
            }
            m[n++] = (merge){v->scores ? (float)peft_gguf_arr_num(v->scores, i) : -(float)i, (uint32_t)i, (uint32_t)cut};
        }
    }
    if (rc == PEFT_OK) qsort(m, n, sizeof *m, cmp_merge);
    for (size_t k = 0; rc == PEFT_OK && k < n; k++) {
        const char *s = v->text[m[k].merged];
        memcpy(buf, s, m[k].cut);
        buf[m[k].cut] = 0;
        cJSON *pair = cJSON_CreateArray();
        cJSON_AddItemToArray(pair, cJSON_CreateString(buf));
        cJSON_AddItemToArray(pair, cJSON_CreateString(s + m[k].cut));
        cJSON_AddItemToArray(merges, pair);
    }
    free(m);
    return rc;
}

static cJSON *step(const char *type) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", type);
    return o;
}

static cJSON *replace(const char *from, const char *to) {
    cJSON *o = step("Replace"), *pat = cJSON_AddObjectToObject(o, "pattern");
    cJSON_AddStringToObject(pat, "String", from);
    cJSON_AddStringToObject(o, "content", to);
    return o;
}

/* Appends one TemplateProcessing piece: the sequence `seq` ("A"/"B") or, when seq is NULL, the
 * special token `name`. */
static void template_piece(cJSON *arr, const char *seq, const char *name, int type_id) {
    cJSON *it = cJSON_CreateObject(), *o = cJSON_AddObjectToObject(it, seq ? "Sequence" : "SpecialToken");
    cJSON_AddStringToObject(o, "id", seq ? seq : name);
    cJSON_AddNumberToObject(o, "type_id", type_id);
    cJSON_AddItemToArray(arr, it);
}

/* post_processor: BOS / EOS around the sequence as add_bos / add_eos say; a pair repeats them
 * around the second sequence with type id 1, as HF's LlamaTokenizerFast builds its template. */
static cJSON *post_processor(const vocab *v, int64_t bos, int64_t eos, int add_bos, int add_eos) {
    cJSON *o = step("TemplateProcessing"), *single = cJSON_AddArrayToObject(o, "single");
    cJSON *pair = cJSON_AddArrayToObject(o, "pair"), *sp = cJSON_AddObjectToObject(o, "special_tokens");
    const char *ends[2] = {NULL, NULL};
    int64_t end_ids[2] = {add_bos ? bos : -1, add_eos ? eos : -1};
    for (int e = 0; e < 2; e++) {
        if (end_ids[e] < 0 || (uint64_t)end_ids[e] >= v->n) continue;
        ends[e] = v->text[end_ids[e]];
        if (cJSON_GetObjectItemCaseSensitive(sp, ends[e])) continue; /* BOS == EOS */
        cJSON *def = cJSON_AddObjectToObject(sp, ends[e]);
        cJSON_AddStringToObject(def, "id", ends[e]);
        cJSON *ids = cJSON_AddArrayToObject(def, "ids"), *toks = cJSON_AddArrayToObject(def, "tokens");
        cJSON_AddItemToArray(ids, cJSON_CreateNumber((double)end_ids[e]));
        cJSON_AddItemToArray(toks, cJSON_CreateString(ends[e]));
    }
    for (int part = 0; part < 3; part++) { /* single; then the pair's A and B */
        cJSON *arr = part == 0 ? single : pair;
        int type_id = part == 2;
        if (ends[0]) template_piece(arr, NULL, ends[0], type_id);
        template_piece(arr, part == 2 ? "B" : "A", NULL, type_id);
        if (ends[1]) template_piece(arr, NULL, ends[1], type_id);
    }
    return o;
}

/* The tokenizer.json and tokenizer_config.json texts of f's vocabulary. */
static int build_json(const peft_gguf_file *f, const vocab *v, char **tok_json, char **cfg_json, peft_err *err) {
    const char *model, *pre = "default", *tmpl = NULL;
    size_t model_len, pre_len = 7, tmpl_len = 0;
    int rc = peft_gguf_get_str(f, "tokenizer.ggml.model", 1, &model, &model_len, err);
    if (rc) return rc;
    int spm = model_len == 5 && !memcmp(model, "llama", 5), bpe = model_len == 4 && !memcmp(model, "gpt2", 4);
    if (!spm && !bpe)
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: tokenizer.ggml.model \"%.*s\" is not supported (supported: llama, gpt2)", f->path,
                         (int)(model_len > 32 ? 32 : model_len), model);
    int64_t bos = -1, eos = -1, unk = spm ? 0 : -1, pad = -1;
    int add_bos = spm, add_eos = 0, add_prefix = spm;
    if ((rc = peft_gguf_get_int(f, "tokenizer.ggml.bos_token_id", 0, 0, UINT32_MAX, &bos, err)) ||
        (rc = peft_gguf_get_int(f, "tokenizer.ggml.eos_token_id", 0, 0, UINT32_MAX, &eos, err)) ||
        (rc = peft_gguf_get_int(f, "tokenizer.ggml.unknown_token_id", 0, 0, UINT32_MAX, &unk, err)) ||
        (rc = peft_gguf_get_int(f, "tokenizer.ggml.padding_token_id", 0, 0, UINT32_MAX, &pad, err)) ||
        (rc = peft_gguf_get_bool(f, "tokenizer.ggml.add_bos_token", 0, &add_bos, err)) ||
        (rc = peft_gguf_get_bool(f, "tokenizer.ggml.add_eos_token", 0, &add_eos, err)) ||
        (rc = peft_gguf_get_bool(f, "tokenizer.ggml.add_space_prefix", 0, &add_prefix, err)) ||
        (rc = peft_gguf_get_str(f, "tokenizer.chat_template", 0, &tmpl, &tmpl_len, err)) ||
        (bpe && (rc = peft_gguf_get_str(f, "tokenizer.ggml.pre", 0, &pre, &pre_len, err))))
        return rc;
    size_t p = 0, n_pre = sizeof pre_types / sizeof pre_types[0];
    while (bpe && p < n_pre && (strlen(pre_types[p].pre) != pre_len || memcmp(pre, pre_types[p].pre, pre_len))) p++;
    if (bpe && p == n_pre)
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: tokenizer.ggml.pre \"%.*s\" is not supported (supported: default, gpt2, llama-bpe, qwen2 and their aliases)",
                         f->path, (int)(pre_len > 32 ? 32 : pre_len), pre);
    const peft_gguf_kv *gm = NULL;
    if (bpe) {
        const peft_gguf_kv *kv = peft_gguf_find(f, "tokenizer.ggml.merges");
        if ((rc = peft_gguf_get_array(f, "tokenizer.ggml.merges", 1, PEFT_GGUF_STRING, kv ? kv->n : 0, &gm, err))) return rc;
    }

    cJSON *root = cJSON_CreateObject(), *added = cJSON_AddArrayToObject(root, "added_tokens");
    cJSON *mdl = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(mdl, "type", "BPE");
    cJSON_AddBoolToObject(mdl, "byte_fallback", spm);
    cJSON_AddBoolToObject(mdl, "fuse_unk", spm);
    cJSON_AddBoolToObject(mdl, "ignore_merges", bpe && pre_types[p].ignore_merges);
    if (unk >= 0 && (uint64_t)unk < v->n) cJSON_AddStringToObject(mdl, "unk_token", v->text[unk]);
    cJSON *vo = cJSON_AddObjectToObject(mdl, "vocab"), *merges = cJSON_AddArrayToObject(mdl, "merges");
    for (uint64_t i = 0; i < v->n; i++) {
        if ((uint64_t)tok_strmap_get(&v->ids, v->text[i], strlen(v->text[i])) == i) cJSON_AddNumberToObject(vo, v->text[i], (double)i);
        if (v->type[i] == TT_UNKNOWN || v->type[i] == TT_CONTROL || v->type[i] == TT_USER)
            cJSON_AddItemToArray(added, added_token(v->text[i], i, v->type[i] != TT_USER));
    }
    if (spm) {
        rc = spm_merges(v, merges, err);
        cJSON *norm = step("Sequence"), *ns = cJSON_AddArrayToObject(norm, "normalizers");
        if (add_prefix) {
            cJSON *pp = step("Prepend");
            cJSON_AddStringToObject(pp, "prepend", "\xe2\x96\x81");
            cJSON_AddItemToArray(ns, pp);
        }
        cJSON_AddItemToArray(ns, replace(" ", "\xe2\x96\x81"));
        cJSON_AddItemToObject(root, "normalizer", norm);
        cJSON *dec = step("Sequence"), *ds = cJSON_AddArrayToObject(dec, "decoders");
        cJSON_AddItemToArray(ds, replace("\xe2\x96\x81", " "));
        cJSON_AddItemToArray(ds, step("ByteFallback"));
        cJSON_AddItemToArray(ds, step("Fuse"));
        if (add_prefix) {
            cJSON *strip = step("Strip");
            cJSON_AddStringToObject(strip, "content", " ");
            cJSON_AddNumberToObject(strip, "start", 1);
            cJSON_AddNumberToObject(strip, "stop", 0);
            cJSON_AddItemToArray(ds, strip);
        }
        cJSON_AddItemToObject(root, "decoder", dec);
    } else {
        for (uint64_t i = 0; i < gm->n; i++) {
            size_t len;
            const char *s = peft_gguf_arr_str(gm, i, &len);
            char *c = str_copy(s, len);
            if (!c) {
                rc = peft_fail(err, PEFT_EFORMAT, "%s: tokenizer.ggml.merges[%llu] holds a NUL byte (or out of memory)", f->path, (unsigned long long)i);
                break;
            }
            cJSON_AddItemToArray(merges, cJSON_CreateString(c));
            free(c);
        }
        cJSON *bl = step("ByteLevel");
        cJSON_AddBoolToObject(bl, "add_prefix_space", 0);
        cJSON_AddBoolToObject(bl, "trim_offsets", 0);
        cJSON_AddBoolToObject(bl, "use_regex", pre_types[p].split == NULL);
        if (pre_types[p].split) {
            cJSON *seq = step("Sequence"), *ps = cJSON_AddArrayToObject(seq, "pretokenizers"), *split = step("Split");
            cJSON *pat = cJSON_AddObjectToObject(split, "pattern");
            cJSON_AddStringToObject(pat, "Regex", pre_types[p].split);
            cJSON_AddStringToObject(split, "behavior", "Isolated");
            cJSON_AddBoolToObject(split, "invert", 0);
            cJSON_AddItemToArray(ps, split);
            cJSON_AddItemToArray(ps, bl);
            cJSON_AddItemToObject(root, "pre_tokenizer", seq);
        } else {
            cJSON_AddItemToObject(root, "pre_tokenizer", bl);
        }
        cJSON_AddItemToObject(root, "decoder", step("ByteLevel"));
    }
    if (add_bos || add_eos) cJSON_AddItemToObject(root, "post_processor", post_processor(v, bos, eos, add_bos, add_eos));
    cJSON *cfg = cJSON_CreateObject();
    const int64_t cfg_ids[] = {bos, eos, pad};
    const char *const cfg_keys[] = {"bos_token", "eos_token", "pad_token"};
    for (int i = 0; i < 3; i++)
        if (cfg_ids[i] >= 0 && (uint64_t)cfg_ids[i] < v->n) cJSON_AddStringToObject(cfg, cfg_keys[i], v->text[cfg_ids[i]]);
    char *t = tmpl ? str_copy(tmpl, tmpl_len) : NULL;
    if (t) cJSON_AddStringToObject(cfg, "chat_template", t);
    free(t);
    if (rc == PEFT_OK) {
        *tok_json = cJSON_PrintUnformatted(root);
        *cfg_json = cJSON_PrintUnformatted(cfg);
        if (!*tok_json || !*cfg_json) rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory", f->path);
    }
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    return rc;
}

int peft_gguf_tokenizer_from(const peft_gguf_file *f, peft_tokenizer **out, peft_err *err) {
    *out = NULL;
    vocab v;
    char *tok_json = NULL, *cfg_json = NULL;
    int rc = vocab_read(f, &v, err);
    if (rc == PEFT_OK) rc = build_json(f, &v, &tok_json, &cfg_json, err);
    if (rc == PEFT_OK)
        rc = peft_tokenizer_load_json(tok_json, strlen(tok_json), cfg_json, strlen(cfg_json), f->path, out, err);
    vocab_free(&v);
    free(tok_json);
    free(cfg_json);
    return rc;
}

int peft_gguf_tokenizer_load(const char *path, peft_tokenizer **out, peft_err *err) {
    peft_gguf_file *f;
    *out = NULL;
    int rc = peft_gguf_open(path, &f, err);
    if (rc) return rc;
    rc = peft_gguf_tokenizer_from(f, out, err);
    peft_gguf_close(f);
    return rc;
}
