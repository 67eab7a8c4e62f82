/* data.c: datasets for fine-tuning (see data.h): records -> rendered text with the spans that
 * carry loss -> tokens with a per-token loss flag -> examples -> split -> rows. */
#include "data.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "error.h"
#include "fileio.h"
#include "io/json.h"
#include "tokenizer/chat_template.h"

enum { FMT_NONE, FMT_TEXT, FMT_PROMPT, FMT_ALPACA, FMT_CHAT, FMT_QA };
static const char *FMT_NAME[] = {"", "{\"text\"}", "{\"prompt\", \"completion\"}", "Alpaca {\"instruction\", \"output\"}",
                                 "chat {\"messages\"}", "{\"question\", \"answer\"}"};

/* An example: tokens [off, off + n) of the dataset's token store; targets are only taken from
 * tokens before `limit` (the end of the document for windows, the end of the example else). */
typedef struct example {
    size_t off;
    uint32_t n, limit;
} example;

struct peft_dataset {
    int seq_len, pack;
    int32_t pad_id;
    int32_t *ids;  /* every token of every record */
    uint8_t *loss; /* loss[i]: token i is learnt (predicted from token i - 1) */
    size_t n_tok, cap_tok, cap_loss;
    example *ex;
    size_t n_ex, cap_ex;
    int n_dropped; /* records whose learnt tokens all lie beyond seq_len (a prompt that fills it) */
    /* per split: example indices in row order, and where each row starts in that list */
    int *order[2], n_order[2];
    int *row_start[2], n_rows[2]; /* row r holds order[row_start[r] .. row_start[r + 1]) */
};

typedef struct loader {
    peft_dataset *ds;
    const peft_tokenizer *tok;
    const peft_data_opts *opts;
    const char *path;
    peft_chat_template *tpl; /* parsed at the first chat record */
    int fmt;
} loader;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 1024;
    while (c < need) c *= 2;
    void *g = realloc(*p, c * elem);
    if (!g) return -1;
    *p = g;
    *cap = c;
    return 0;
}

/* Tokenizes text; a token is learnt when it overlaps a span (or when all is, with no spans).
 * eos: append the eos token, learnt. Then cuts the record into examples. */
static int add_record(loader *L, const char *text, size_t len, int add_special, const peft_chat_span *spans, size_t n_spans,
                      int all, int eos, int windows, const char *where, peft_err *err) {
    peft_dataset *ds = L->ds;
    int32_t *ids;
    uint32_t *st, *en;
    size_t n;
    int rc = peft_tokenizer_encode_spans(L->tok, text, len, add_special, &ids, &st, &en, &n, err);
    if (rc) return peft_err_prefix(err, "%s", where);
    /* the record ends with eos (the post-processor's or appended): it closes the answer, so it is learnt */
    int32_t eos_id = peft_tokenizer_eos_id(L->tok);
    size_t n_text = n;
    if (eos && eos_id >= 0) {
        if (n && ids[n - 1] == eos_id && st[n - 1] == len) {
            n_text = n - 1;
        } else {
            int32_t *g = realloc(ids, (n + 1) * sizeof *g);
            if (!g) rc = -1;
            else (ids = g)[n++] = eos_id;
        }
    }
    size_t base = ds->n_tok;
    if (rc || grow((void **)&ds->ids, &ds->cap_tok, base + n, sizeof *ds->ids) ||
        grow((void **)&ds->loss, &ds->cap_loss, base + n, 1))
        rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory", where);
    for (size_t i = 0; !rc && i < n; i++) {
        int learnt = all || i >= n_text;
        for (size_t k = 0; !learnt && k < n_spans; k++) learnt = st[i] < spans[k].end && en[i] > spans[k].start;
        ds->ids[base + i] = ids[i];
        ds->loss[base + i] = (uint8_t)learnt;
    }
    free(ids);
    free(st);
    free(en);
    if (rc) return rc;
    ds->n_tok += n;
    /* examples: windows of seq_len tokens for documents, else the record truncated */
    uint32_t T = (uint32_t)L->opts->seq_len;
    for (size_t b = 0; b < n; b += T) {
        uint32_t m = (uint32_t)(n - b < T ? n - b : T);
        example e = {base + b, m, windows ? (uint32_t)(n - b) : m};
        int any = 0;
        for (uint32_t j = 1; j <= m && !any; j++) any = j < e.limit && ds->loss[e.off + j];
        if (any) {
            if (grow((void **)&ds->ex, &ds->cap_ex, ds->n_ex + 1, sizeof *ds->ex))
                return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", where);
            ds->ex[ds->n_ex++] = e;
        }
        if (!windows) {
            /* truncation cut every learnt token: say so instead of losing the record silently */
            int learnt = 0;
            for (size_t j = 1; j < n && !any && !learnt; j++) learnt = ds->loss[base + j];
            ds->n_dropped += learnt;
            break;
        }
    }
    return 0;
}

static const char *field(const cJSON *o, const char *key, int *bad) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (v && !cJSON_IsString(v)) *bad = 1;
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int record_format(const cJSON *o) {
    if (cJSON_GetObjectItemCaseSensitive(o, "messages")) return FMT_CHAT;
    if (cJSON_GetObjectItemCaseSensitive(o, "instruction")) return FMT_ALPACA;
    if (cJSON_GetObjectItemCaseSensitive(o, "prompt") || cJSON_GetObjectItemCaseSensitive(o, "completion")) return FMT_PROMPT;
    if (cJSON_GetObjectItemCaseSensitive(o, "text")) return FMT_TEXT;
    if (cJSON_GetObjectItemCaseSensitive(o, "question")) return FMT_QA;
    return FMT_NONE;
}

/* Question/answer records (GSM8K and the like): the question as the prompt, the loss on the answer. */
static const char QA_PROMPT[] = "Question: %s\nAnswer: ";

/* alpaca-lora's templates (templates/alpaca.json) */
static const char ALPACA_INPUT[] =
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n%s\n\n### Input:\n%s\n\n### Response:\n";
static const char ALPACA_NO_INPUT[] =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n%s\n\n### Response:\n";

static int add_json_record(loader *L, const cJSON *o, const char *where, peft_err *err) {
    if (!cJSON_IsObject(o)) return peft_fail(err, PEFT_EFORMAT, "%s: expected a JSON object", where);
    int fmt = record_format(o), bad = 0, rc;
    if (fmt == FMT_NONE)
        return peft_fail(err, PEFT_EFORMAT,
                         "%s: record has none of \"text\", \"prompt\"/\"completion\", \"instruction\"/\"output\", \"messages\", "
                         "\"question\"/\"answer\"",
                         where);
    if (L->fmt == FMT_NONE) L->fmt = fmt;
    if (fmt != L->fmt)
        return peft_fail(err, PEFT_EFORMAT, "%s: a %s record in a file of %s records", where, FMT_NAME[fmt], FMT_NAME[L->fmt]);
    if (fmt == FMT_TEXT) {
        const char *t = field(o, "text", &bad);
        if (bad) return peft_fail(err, PEFT_EFORMAT, "%s: \"text\" is not a string", where);
        return add_record(L, t, strlen(t), 1, NULL, 0, 1, 1, 1, where, err);
    }
    if (fmt == FMT_CHAT) {
        char *text;
        size_t n, n_spans;
        peft_chat_span *spans;
        if (!L->tpl && (rc = peft_chat_template_for(L->tok, L->opts->chat_template, &L->tpl, err)))
            return peft_err_prefix(err, "%s", where);
        if ((rc = peft_chat_render_json(L->tpl, o, 0, &text, &n, &spans, &n_spans, where, err)))
            return rc;
        if (!n_spans) rc = peft_fail(err, PEFT_EFORMAT, "%s: conversation has no assistant turn to learn", where);
        /* the template writes BOS and end-of-turn tokens itself */
        if (!rc) rc = add_record(L, text, n, 0, spans, n_spans, 0, 0, 0, where, err);
        free(text);
        free(spans);
        return rc;
    }
    const char *prompt, *answer, *input = NULL;
    if (fmt == FMT_PROMPT) {
        prompt = field(o, "prompt", &bad);
        answer = field(o, "completion", &bad);
        if (bad || !prompt || !answer) return peft_fail(err, PEFT_EFORMAT, "%s: \"prompt\" and \"completion\" must both be strings", where);
    } else if (fmt == FMT_QA) {
        prompt = field(o, "question", &bad);
        answer = field(o, "answer", &bad);
        if (bad || !prompt || !answer) return peft_fail(err, PEFT_EFORMAT, "%s: \"question\" and \"answer\" must both be strings", where);
    } else {
        prompt = field(o, "instruction", &bad);
        input = field(o, "input", &bad);
        answer = field(o, "output", &bad);
        if (bad || !prompt || !answer)
            return peft_fail(err, PEFT_EFORMAT, "%s: Alpaca record needs string \"instruction\" and \"output\" (and \"input\" a string if present)", where);
    }
    size_t cap = strlen(prompt) + (input ? strlen(input) : 0) + strlen(answer) + sizeof ALPACA_INPUT + sizeof QA_PROMPT;
    char *text = malloc(cap);
    if (!text) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", where);
    int k = fmt == FMT_PROMPT ? snprintf(text, cap, "%s", prompt)
          : fmt == FMT_QA   ? snprintf(text, cap, QA_PROMPT, prompt)
          : input && *input ? snprintf(text, cap, ALPACA_INPUT, prompt, input) : snprintf(text, cap, ALPACA_NO_INPUT, prompt);
    peft_chat_span span = {(size_t)k, (size_t)k + strlen(answer)};
    strcpy(text + k, answer);
    rc = add_record(L, text, span.end, 1, &span, 1, 0, 1, 0, where, err);
    free(text);
    return rc;
}

/* The length of the run of bytes from `set` at the start of p[0, n) (p need not be NUL-terminated). */
static size_t span_of(const char *p, size_t n, const char *set) {
    size_t i = 0;
    while (i < n && p[i] && strchr(set, p[i])) i++;
    return i;
}

static int load_jsonl(loader *L, const char *data, size_t len, peft_err *err) {
    char where[4200];
    int lineno = 0, rc = 0;
    for (const char *p = data; !rc && p < data + len;) {
        const char *nl = memchr(p, '\n', (size_t)(data + len - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(data + len - p);
        lineno++;
        snprintf(where, sizeof where, "%s:%d", L->path, lineno);
        if (span_of(p, n, " \t\r") < n) {
            cJSON *o;
            rc = peft_json_parse_record(p, n, L->path, lineno, &o, err);
            if (rc == PEFT_OK) rc = add_json_record(L, o, where, err);
            cJSON_Delete(o);
        }
        p += n + 1;
    }
    return rc;
}

static int load_array(loader *L, const char *data, size_t len, peft_err *err) {
    char where[4200];
    cJSON *arr, *it;
    int rc = peft_json_parse(data, len, L->path, &arr, err), i = 0;
    if (rc) return rc;
    if (!cJSON_IsArray(arr)) {
        cJSON_Delete(arr);
        return peft_fail(err, PEFT_EFORMAT, "%s: expected a JSON array of records (or one JSON record per line)", L->path);
    }
    cJSON_ArrayForEach(it, arr) {
        snprintf(where, sizeof where, "%s: record %d", L->path, ++i);
        if ((rc = add_json_record(L, it, where, err))) break;
    }
    cJSON_Delete(arr);
    return rc;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* splitmix64: a small, well-mixed generator for the seeded shuffles */
static uint64_t next_rand(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void shuffle(int *v, int n, uint64_t *rng) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(next_rand(rng) % (uint64_t)(i + 1)), t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

/* Rows of one split: examples packed in order (next fit), then the rows shuffled. */
static int build_rows(peft_dataset *ds, int split, int *idx, int n, uint64_t *rng) {
    int *start = malloc(((size_t)n + 1) * sizeof *start), *rows = malloc(((size_t)n + 1) * sizeof *rows);
    int *order = malloc(((size_t)n + 1) * sizeof *order), nr = 0, used = ds->seq_len;
    if (!start || !rows || !order) return free(start), free(rows), free(order), -1;
    for (int i = 0; i < n; i++) {
        int len = (int)ds->ex[idx[i]].n;
        if (!ds->pack || used + len > ds->seq_len) start[nr++] = i, used = 0;
        used += len;
    }
    start[nr] = n;
    /* shuffle row ids, then lay the example lists out in that order */
    for (int r = 0; r < nr; r++) rows[r] = r;
    shuffle(rows, nr, rng);
    int w = 0;
    ds->row_start[split] = malloc(((size_t)nr + 1) * sizeof(int));
    if (!ds->row_start[split]) return free(start), free(rows), free(order), -1;
    for (int r = 0; r < nr; r++) {
        ds->row_start[split][r] = w;
        for (int i = start[rows[r]]; i < start[rows[r] + 1]; i++) order[w++] = idx[i];
    }
    ds->row_start[split][nr] = w;
    ds->order[split] = order;
    ds->n_order[split] = n;
    ds->n_rows[split] = nr;
    free(start);
    free(rows);
    return 0;
}

int peft_dataset_load(const char *path, const peft_tokenizer *tok, const peft_data_opts *opts, peft_dataset **out, peft_err *err) {
    char *data;
    size_t len;
    *out = NULL;
    int rc = peft_read_file(path, &data, &len, err);
    if (rc) return rc;
    rc = peft_dataset_load_memory(data, len, path, tok, opts, out, err);
    free(data);
    return rc;
}

int peft_dataset_load_memory(const char *data, size_t len, const char *path, const peft_tokenizer *tok,
                             const peft_data_opts *opts, peft_dataset **out, peft_err *err) {
    *out = NULL;
    if (opts->seq_len < 2) return peft_fail(err, PEFT_EINVAL, "%s: seq_len must be at least 2 (got %d)", path, opts->seq_len);
    if (!(opts->val_fraction >= 0 && opts->val_fraction < 1))
        return peft_fail(err, PEFT_EINVAL, "%s: val_fraction must be in [0, 1) (got %g)", path, opts->val_fraction);
    int rc;
    peft_dataset *ds = calloc(1, sizeof *ds);
    if (!ds) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
    ds->seq_len = opts->seq_len;
    ds->pack = opts->pack;
    ds->pad_id = peft_tokenizer_eos_id(tok) >= 0 ? peft_tokenizer_eos_id(tok) : 0;
    loader L = {ds, tok, opts, path, NULL, FMT_NONE};
    size_t lead = span_of(data, len, " \t\r\n");
    if (lead == len) {
        rc = peft_fail(err, PEFT_EFORMAT, "%s: empty file", path);
    } else if (ends_with(path, ".jsonl")) {
        rc = load_jsonl(&L, data, len, err);
    } else if (ends_with(path, ".json")) {
        rc = data[lead] == '[' ? load_array(&L, data, len, err) : load_jsonl(&L, data, len, err);
    } else {
        /* not named as JSON: records only if the first line is a JSON object */
        const char *nl = memchr(data + lead, '\n', len - lead);
        cJSON *first = data[lead] == '{' ? cJSON_ParseWithLength(data + lead, nl ? (size_t)(nl - data - lead) : len - lead) : NULL;
        int records = cJSON_IsObject(first);
        cJSON_Delete(first);
        rc = records ? load_jsonl(&L, data, len, err) : add_record(&L, data, len, 1, NULL, 0, 1, 1, 1, path, err);
    }
    if (!rc && ds->n_ex == 0 && ds->n_dropped)
        rc = peft_fail(err, PEFT_EINVAL, "%s: no usable example: in all %d records the prompt fills --seq-len %d, so no "
                       "completion token is left to learn (raise --seq-len)", path, ds->n_dropped, opts->seq_len);
    else if (!rc && ds->n_ex == 0)
        rc = peft_fail(err, PEFT_EFORMAT, "%s: no usable example (nothing to learn)", path);
    int n = (int)ds->n_ex, n_val = 0;
    int *idx = rc ? NULL : malloc(((size_t)n + 1) * sizeof *idx);
    if (!rc && !idx) rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
    if (!rc) {
        uint64_t rng = opts->seed;
        for (int i = 0; i < n; i++) idx[i] = i;
        shuffle(idx, n, &rng);
        if (opts->val_fraction > 0 && n >= 2) {
            n_val = (int)(opts->val_fraction * n + 0.5);
            n_val = n_val < 1 ? 1 : n_val > n - 1 ? n - 1 : n_val;
        }
        if (build_rows(ds, 1, idx, n_val, &rng) || build_rows(ds, 0, idx + n_val, n - n_val, &rng))
            rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
    }
    free(idx);
    peft_chat_template_free(L.tpl);
    if (rc) {
        peft_dataset_free(ds);
        return rc;
    }
    *out = ds;
    return PEFT_OK;
}

void peft_dataset_free(peft_dataset *ds) {
    if (!ds) return;
    free(ds->ids);
    free(ds->loss);
    free(ds->ex);
    for (int s = 0; s < 2; s++) free(ds->order[s]), free(ds->row_start[s]);
    free(ds);
}

int peft_dataset_rows(const peft_dataset *ds, int split) { return split == 0 || split == 1 ? ds->n_rows[split] : 0; }
int peft_dataset_examples(const peft_dataset *ds, int split) { return split == 0 || split == 1 ? ds->n_order[split] : 0; }
int peft_dataset_dropped(const peft_dataset *ds) { return ds->n_dropped; }

uint64_t peft_fnv1a(uint64_t h, const void *p, size_t n) {
    for (const unsigned char *b = p; n--; b++) h = (h ^ *b) * 0x100000001b3ull;
    return h;
}

uint64_t peft_dataset_hash(const peft_dataset *ds) {
    uint64_t h = 0xcbf29ce484222325ull;
    int head[3] = {ds->seq_len, ds->pack, ds->pad_id};
    h = peft_fnv1a(h, head, sizeof head);
    h = peft_fnv1a(h, ds->ids, ds->n_tok * sizeof *ds->ids);
    h = peft_fnv1a(h, ds->loss, ds->n_tok);
    for (size_t i = 0; i < ds->n_ex; i++) { /* field by field: the struct has padding */
        uint64_t e[3] = {ds->ex[i].off, ds->ex[i].n, ds->ex[i].limit};
        h = peft_fnv1a(h, e, sizeof e);
    }
    for (int s = 0; s < 2; s++) {
        h = peft_fnv1a(h, &ds->n_rows[s], sizeof ds->n_rows[s]);
        h = peft_fnv1a(h, ds->order[s], (size_t)ds->n_order[s] * sizeof(int));
        h = peft_fnv1a(h, ds->row_start[s], ((size_t)ds->n_rows[s] + 1) * sizeof(int));
    }
    return h;
}

int peft_dataset_row(const peft_dataset *ds, int split, int row, int32_t *inputs, int32_t *targets, int32_t *pos) {
    if ((split != 0 && split != 1) || row < 0 || row >= ds->n_rows[split]) return PEFT_EINVAL;
    int t = 0, T = ds->seq_len;
    for (int k = ds->row_start[split][row]; k < ds->row_start[split][row + 1]; k++) {
        const example *e = &ds->ex[ds->order[split][k]];
        for (uint32_t j = 0; j < e->n && t < T; j++, t++) {
            size_t i = e->off + j;
            inputs[t] = ds->ids[i];
            targets[t] = j + 1 < e->limit && ds->loss[i + 1] ? ds->ids[i + 1] : -1;
            pos[t] = (int32_t)j;
        }
    }
    for (; t < T; t++) inputs[t] = ds->pad_id, targets[t] = -1, pos[t] = 0;
    return PEFT_OK;
}

int32_t peft_dataset_row_first_target(const peft_dataset *ds, int split, int row) {
    if ((split != 0 && split != 1) || row < 0 || row >= ds->n_rows[split]) return -1;
    int k = ds->row_start[split][row];
    if (k == ds->row_start[split][row + 1]) return -1;
    const example *e = &ds->ex[ds->order[split][k]];
    return e->n && ds->loss[e->off] ? ds->ids[e->off] : -1;
}
