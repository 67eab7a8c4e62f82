/* jinja.c: a Jinja2 interpreter for chat templates (see jinja.h): a lexer that applies
 * Jinja2's whitespace rules as transformers configures them (trim_blocks, lstrip_blocks, `-`
 * markers, one trailing newline dropped), a recursive-descent parser to an AST with Jinja2's
 * operator precedence, and a tree-walking evaluator over Python-like values.
 *
 * Memory: the AST lives in the template's arena, every value of a rendering in the rendering's
 * arena; both are freed at once. Errors inside the parser and the evaluator longjmp to the
 * entry point, which frees the arena and returns the code: no partial cleanup paths. */
#include "jinja.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "error.h"
#include "utf8.h"

/* Limits against hostile templates and inputs. */
#define J_MAX_OUTPUT (16u << 20) /* bytes of rendered text */
#define J_MAX_ARENA (256u << 20) /* bytes of values alive during one rendering */
#define J_MAX_STEPS 1000000      /* statements executed + loop iterations + values built */
#define J_MAX_DEPTH 200          /* nesting of expressions and blocks in the parser */
#define J_MAX_RANGE 100000       /* range() length, as jinja2.sandbox.MAX_RANGE */

/* ---- arena ---- */

typedef struct ablk {
    struct ablk *next;
    size_t used, cap;
    max_align_t data[];
} ablk;

typedef struct arena {
    ablk *head;
    size_t total;
} arena;

static void arena_free(arena *a) {
    for (ablk *b = a->head, *n; b; b = n) n = b->next, free(b);
    a->head = NULL;
    a->total = 0;
}

/* ---- errors: one jump target per parse or render ---- */

typedef struct jerr {
    jmp_buf jb;
    peft_err *err;
    int code;
} jerr;

static _Noreturn void jfail(jerr *e, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static _Noreturn void jfail(jerr *e, int code, const char *fmt, ...) {
    char msg[sizeof ((peft_err *)0)->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    e->code = peft_fail(e->err, code, "%s", msg);
    longjmp(e->jb, 1);
}

static void *aalloc(arena *a, jerr *e, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        if (a->total + cap > J_MAX_ARENA) jfail(e, PEFT_EUNSUPPORTED, "chat template: rendering needs more than %u MiB", J_MAX_ARENA >> 20);
        ablk *b = malloc(sizeof *b + cap);
        if (!b) jfail(e, PEFT_ENOMEM, "chat template: out of memory");
        b->next = a->head, b->used = 0, b->cap = cap;
        a->head = b;
        a->total += cap;
    }
    void *p = (char *)a->head->data + a->head->used;
    a->head->used += n;
    return p;
}

/* ---- values ---- */

enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_NS, V_FUNC, V_METHOD, V_LOOP };

typedef struct jv jv;
typedef struct jlist {
    size_t n;
    jv *a;
} jlist;
typedef struct jdict { /* insertion-ordered, string keys (JSON objects, namespaces, dict()) */
    size_t n, cap;
    jv *k, *v;
} jdict;

struct jv {
    int t;
    union {
        int64_t i;       /* BOOL, INT */
        double f;        /* FLOAT */
        struct {
            const char *p; /* STR; UNDEF: the name, for messages (may be NULL) */
            size_t n;
        } s;
        jlist *l;        /* LIST (tuples too) */
        jdict *d;        /* DICT, NS */
        struct {
            int id;      /* FUNC: a global; METHOD: a method of *self */
            const jv *self;
        } m;
        struct {         /* LOOP: `loop` in iteration i over items (its fields are computed when read) */
            const jlist *items;
            size_t i;
        } loop;
    } u;
};

static const jv UNDEF = {V_UNDEF, {0}};
static const jv NONE = {V_NONE, {0}};

static jv mk_bool(int b) { jv v = {V_BOOL, {.i = !!b}}; return v; }
static jv mk_int(int64_t i) { jv v = {V_INT, {.i = i}}; return v; }
static jv mk_float(double f) { jv v = {V_FLOAT, {.f = f}}; return v; }
static jv mk_str(const char *p, size_t n) { jv v = {V_STR, {.s = {p, n}}}; return v; }
static jv mk_undef(const char *name) { jv v = {V_UNDEF, {.s = {name, 0}}}; return v; }

/* ---- AST ---- */

enum {
    /* statements */
    N_TEXT, N_OUT, N_IF, N_FOR, N_SET, N_SETBLOCK, N_BREAK, N_CONTINUE, N_GENERATION,
    /* expressions */
    N_LIT, N_NAME, N_ATTR, N_ITEM, N_SLICE, N_CALL, N_FILTER, N_TEST, N_NEG, N_POS, N_NOT, N_AND, N_OR,
    N_BIN, N_CMP, N_COND, N_LIST, N_DICT
};

typedef struct jnode jnode;
struct jnode {
    int kind, line, col;
    int neg;           /* N_TEST: `is not` */
    int op;            /* N_BIN / N_CMP: the operator token; N_TEST: negated; N_FILTER/N_TEST/N_CALL: builtin id */
    const char *name;  /* N_NAME, N_ATTR, N_FILTER, N_TEST, N_SET target (with attr), N_FOR targets */
    const char *attr;  /* N_SET: ns.attr; N_FOR: second target */
    const char *kw;    /* an argument's keyword (name=value) */
    jv lit;            /* N_LIT, N_TEXT (a string) */
    jnode *a, *b, *c, *d; /* children: N_IF cond/then/else, N_FOR iter/body/else/filter, N_COND then/cond/else... */
    jnode **kids;      /* bodies, arguments, list items, dict key/value pairs, N_CMP operands */
    size_t nk;
};

struct peft_jinja {
    arena ar;
    jnode *root; /* a body (N_LIST of statements) */
    int has_generation;
};

/* ---- lexer ---- */

enum { K_TEXT, K_VAR, K_VAR_END, K_BLOCK, K_BLOCK_END, K_NAME, K_STR, K_INT, K_FLOAT, K_OP, K_EOF };

typedef struct jtok {
    int k, line, col;
    const char *p; /* K_TEXT, K_NAME, K_STR (unescaped, in the arena), K_OP */
    size_t n;
    int64_t i;
    double f;
} jtok;

typedef struct parser {
    jerr e;
    arena *ar;
    const char *what, *src;
    size_t len;
    jtok *t;
    size_t nt, cap, pos;
    int depth, has_generation;
    size_t at;       /* where_of's cursor: tokens are pushed in source order */
    int line, col;
} parser;

static _Noreturn void perr_at(parser *P, int line, int col, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
static _Noreturn void perr_at(parser *P, int line, int col, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    jfail(&P->e, PEFT_EUNSUPPORTED, "%s: chat_template line %d column %d: %s", P->what, line, col, msg);
}

/* Line and column (in code points) of src[at]; at never decreases between calls. */
static void where_of(parser *P, size_t at, int *line, int *col) {
    for (; P->at < at; P->at++)
        if (P->src[P->at] == '\n') P->line++, P->col = 1;
        else if (((unsigned char)P->src[P->at] & 0xC0) != 0x80) P->col++;
    *line = P->line, *col = P->col;
}

static jtok *push_tok(parser *P, int k, size_t at) {
    if (P->nt == P->cap) {
        size_t cap = P->cap ? P->cap * 2 : 256;
        jtok *g = realloc(P->t, cap * sizeof *g);
        if (!g) jfail(&P->e, PEFT_ENOMEM, "%s: out of memory", P->what);
        P->t = g, P->cap = cap;
    }
    jtok *t = &P->t[P->nt++];
    memset(t, 0, sizeof *t);
    t->k = k;
    where_of(P, at, &t->line, &t->col);
    return t;
}

/* Python's str.isspace() on one code point (what str.strip() and re's \s strip). */
static int py_space(uint32_t c) {
    return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}
static size_t space_len(const char *s, size_t n) { /* bytes of one leading space character, 0 if none */
    if (!n) return 0;
    uint32_t c;
    size_t k = utf8_decode(s, n, &c);
    return py_space(c) ? k : 0;
}
static size_t rspace_len(const char *s, size_t n) { /* bytes of one trailing space character, 0 if none */
    if (!n) return 0;
    size_t k = n - 1;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
    uint32_t c;
    utf8_decode(s + k, n - k, &c);
    return py_space(c) ? n - k : 0;
}

static int is_ident0(int c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static int is_digit(int c) { return c >= '0' && c <= '9'; }

static void put_utf8(char *out, size_t *w, uint32_t cp) {
    if (cp < 0x80) out[(*w)++] = (char)cp;
    else if (cp < 0x800) out[(*w)++] = (char)(0xC0 | cp >> 6), out[(*w)++] = (char)(0x80 | (cp & 63));
    else if (cp < 0x10000)
        out[(*w)++] = (char)(0xE0 | cp >> 12), out[(*w)++] = (char)(0x80 | ((cp >> 6) & 63)), out[(*w)++] = (char)(0x80 | (cp & 63));
    else
        out[(*w)++] = (char)(0xF0 | cp >> 18), out[(*w)++] = (char)(0x80 | ((cp >> 12) & 63)),
        out[(*w)++] = (char)(0x80 | ((cp >> 6) & 63)), out[(*w)++] = (char)(0x80 | (cp & 63));
}

static int hexval(int c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* A string literal at s[*i] (the quote): Python's escapes undone. Returns the end. */
static size_t lex_string(parser *P, size_t i, size_t end, jtok *t) {
    const char *s = P->src;
    char q = s[i];
    size_t j = i + 1;
    while (j < end && s[j] != q) j += s[j] == '\\' && j + 1 < end ? 2 : 1;
    if (j >= end) perr_at(P, t->line, t->col, "unterminated string literal");
    char *o = aalloc(P->ar, &P->e, j - i + 1);
    size_t w = 0;
    for (size_t k = i + 1; k < j; k++) {
        if (s[k] != '\\') {
            o[w++] = s[k];
            continue;
        }
        char c = s[++k];
        int nhex = c == 'x' ? 2 : c == 'u' ? 4 : c == 'U' ? 8 : 0;
        if (nhex) {
            uint32_t cp = 0;
            int ok = k + (size_t)nhex < j;
            for (int h = 1; ok && h <= nhex; h++) ok = hexval(s[k + h]) >= 0, cp = cp * 16 + (uint32_t)hexval(s[k + h]);
            if (!ok || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000)) perr_at(P, t->line, t->col, "bad \\%c escape in a string literal", c);
            put_utf8(o, &w, cp); /* at most 4 bytes for at least 4 source bytes */
            k += (size_t)nhex;
            continue;
        }
        const char *from = "ntr\\'\"abfv0\n", *to = "\n\t\r\\'\"\a\b\f\v";
        const char *f = strchr(from, c);
        if (c == '\n') continue; /* a backslash-newline continues the line */
        if (f && *f) o[w++] = c == '0' ? '\0' : to[f - from];
        else o[w++] = '\\', o[w++] = c; /* Python keeps unknown escapes */
    }
    t->p = o, t->n = w;
    return j + 1;
}

/* Lexes the inside of a tag from i to its closer; returns the position after the closer and
 * sets *strip_after (a `-` before it) and *plus_after (a `+` before it). */
static size_t lex_tag(parser *P, size_t i, int block, int *strip_after, int *plus_after) {
    size_t opener = P->nt - 1;
    const char *s = P->src;
    size_t n = P->len;
    char c1 = block ? '%' : '}';
    for (;;) {
        while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
        if (i >= n) {
            jtok *o = &P->t[opener];
            perr_at(P, o->line, o->col, "unterminated %s tag", block ? "{% ... %}" : "{{ ... }}");
        }
        int sign = (s[i] == '-' || (block && s[i] == '+')) && i + 2 < n && s[i + 1] == c1 && s[i + 2] == '}';
        if ((s[i] == c1 && i + 1 < n && s[i + 1] == '}') || sign) {
            *strip_after = sign && s[i] == '-';
            *plus_after = sign && s[i] == '+';
            push_tok(P, block ? K_BLOCK_END : K_VAR_END, i);
            return i + (sign ? 3 : 2);
        }
        jtok *t;
        if (is_ident0((unsigned char)s[i])) {
            size_t j = i;
            while (j < n && (is_ident0((unsigned char)s[j]) || is_digit(s[j]))) j++;
            t = push_tok(P, K_NAME, i);
            t->p = s + i, t->n = j - i;
            i = j;
        } else if (is_digit(s[i])) {
            size_t j = i;
            int fl = 0;
            while (j < n && (is_digit(s[j]) || s[j] == '_')) j++;
            if (j + 1 < n && s[j] == '.' && is_digit(s[j + 1])) {
                fl = 1, j++;
                while (j < n && is_digit(s[j])) j++;
            }
            if (j < n && (s[j] == 'e' || s[j] == 'E')) {
                size_t k = j + 1 + (j + 1 < n && (s[j + 1] == '+' || s[j + 1] == '-'));
                if (k < n && is_digit(s[k])) {
                    fl = 1, j = k;
                    while (j < n && is_digit(s[j])) j++;
                }
            }
            t = push_tok(P, fl ? K_FLOAT : K_INT, i);
            char buf[64];
            size_t w = 0;
            for (size_t k = i; k < j && w + 1 < sizeof buf; k++)
                if (s[k] != '_') buf[w++] = s[k];
            buf[w] = 0;
            if (j - i >= sizeof buf) perr_at(P, t->line, t->col, "number literal too long");
            if (fl) t->f = strtod(buf, NULL);
            else {
                char *e;
                unsigned long long v = strtoull(buf, &e, 10);
                if (v > INT64_MAX) perr_at(P, t->line, t->col, "integer literal out of range");
                t->i = (int64_t)v;
            }
            i = j;
        } else if (s[i] == '\'' || s[i] == '"') {
            t = push_tok(P, K_STR, i);
            i = lex_string(P, i, n, t);
        } else {
            static const char *const OPS2[] = {"==", "!=", "<=", ">=", "//", "**"};
            t = push_tok(P, K_OP, i);
            t->p = s + i, t->n = 1;
            for (size_t k = 0; k < sizeof OPS2 / sizeof *OPS2; k++)
                if (i + 1 < n && s[i] == OPS2[k][0] && s[i + 1] == OPS2[k][1]) t->n = 2;
            if (t->n == 1 && !strchr("()[]{},.:|~+-*/%<>=", s[i]))
                perr_at(P, t->line, t->col, "unexpected character '%c' in a tag", s[i]);
            i += t->n;
        }
    }
}

/* The source as Jinja2 sees it: \r\n and \r read as \n, one trailing newline dropped. */
static char *normalize_source(parser *P, const char *src, size_t len, size_t *out_len) {
    char *s = aalloc(P->ar, &P->e, len + 1);
    size_t w = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[w++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else {
            s[w++] = src[i];
        }
    }
    if (w && s[w - 1] == '\n') w--;
    s[w] = 0;
    *out_len = w;
    return s;
}

static void lex(parser *P) {
    const char *s = P->src;
    size_t n = P->len, i = 0;
    int strip_next = 0, trim_nl = 0, line_start = 1;
    while (i <= n) {
        /* the next tag opener */
        size_t j = i;
        while (j + 1 < n && !(s[j] == '{' && (s[j + 1] == '{' || s[j + 1] == '%' || s[j + 1] == '#'))) j++;
        if (j + 1 >= n) j = n;
        size_t ts = i, te = j;
        if (trim_nl && ts < te && s[ts] == '\n') ts++, line_start = 1; /* trim_blocks */
        if (strip_next) { /* `-%}`: all whitespace after */
            size_t k;
            while (ts < te && (k = space_len(s + ts, te - ts))) line_start = s[ts] == '\n' ? 1 : line_start, ts += k;
        }
        int kind = j < n ? s[j + 1] : 0, sign = j + 2 < n ? s[j + 2] : 0;
        if (kind && sign == '-') {
            size_t k;
            while (te > ts && (k = rspace_len(s + ts, te - ts))) te -= k;
        } else if ((kind == '%' || kind == '#') && sign != '+') {
            /* lstrip_blocks: spaces and tabs between the line start and a block or comment tag */
            size_t k = te;
            while (k > ts && (s[k - 1] == ' ' || s[k - 1] == '\t' || s[k - 1] == '\r' || s[k - 1] == '\f' || s[k - 1] == '\v')) k--;
            if ((k > ts && s[k - 1] == '\n') || (k == ts && line_start)) te = k;
        }
        if (te > ts) {
            jtok *t = push_tok(P, K_TEXT, ts);
            t->p = s + ts, t->n = te - ts;
        }
        if (j >= n) break;
        size_t body = j + 2 + (sign == '-' || sign == '+');
        int strip_after = 0, plus_after = 0;
        if (kind == '#') {
            size_t k = body;
            while (k + 1 < n && !(s[k] == '#' && s[k + 1] == '}')) k++;
            if (k + 1 >= n) {
                int line, col;
                where_of(P, j, &line, &col);
                perr_at(P, line, col, "unterminated comment {# ... #}");
            }
            strip_after = k > body && s[k - 1] == '-';
            plus_after = k > body && s[k - 1] == '+';
            i = k + 2;
        } else {
            push_tok(P, kind == '%' ? K_BLOCK : K_VAR, j);
            i = lex_tag(P, body, kind == '%', &strip_after, &plus_after);
        }
        strip_next = strip_after;
        trim_nl = kind != '{' && !plus_after && !strip_after;
        line_start = 0;
    }
    push_tok(P, K_EOF, n);
}

/* ---- builtin tables (the parser refuses names outside them) ---- */

enum { /* filters */
    F_TRIM, F_LENGTH, F_TOJSON, F_STRING, F_UPPER, F_LOWER, F_TITLE, F_CAPITALIZE, F_REPLACE, F_DEFAULT, F_FIRST,
    F_LAST, F_JOIN, F_ITEMS, F_SELECTATTR, F_REJECTATTR, F_SELECT, F_REJECT, F_MAP, F_LIST, F_REVERSE, F_INT,
    F_FLOAT, F_ABS, F_SAFE, F_ESCAPE, F_INDENT, F_UNIQUE, F_SUM, F_MIN, F_MAX
};
static const struct { const char *name; int id; } FILTERS[] = {
    {"trim", F_TRIM}, {"length", F_LENGTH}, {"count", F_LENGTH}, {"tojson", F_TOJSON}, {"string", F_STRING},
    {"upper", F_UPPER}, {"lower", F_LOWER}, {"title", F_TITLE}, {"capitalize", F_CAPITALIZE}, {"replace", F_REPLACE},
    {"default", F_DEFAULT}, {"d", F_DEFAULT}, {"first", F_FIRST}, {"last", F_LAST}, {"join", F_JOIN},
    {"items", F_ITEMS}, {"selectattr", F_SELECTATTR}, {"rejectattr", F_REJECTATTR}, {"select", F_SELECT},
    {"reject", F_REJECT}, {"map", F_MAP}, {"list", F_LIST}, {"reverse", F_REVERSE}, {"int", F_INT},
    {"float", F_FLOAT}, {"abs", F_ABS}, {"safe", F_SAFE}, {"escape", F_ESCAPE}, {"e", F_ESCAPE},
    {"indent", F_INDENT}, {"unique", F_UNIQUE}, {"sum", F_SUM}, {"min", F_MIN}, {"max", F_MAX},
};
enum { /* tests */
    T_DEFINED, T_UNDEFINED, T_NONE, T_STRING, T_NUMBER, T_INTEGER, T_FLOAT, T_BOOLEAN, T_TRUE, T_FALSE, T_MAPPING,
    T_SEQUENCE, T_ITERABLE, T_EQ, T_NE, T_LT, T_LE, T_GT, T_GE, T_ODD, T_EVEN, T_DIVISIBLEBY, T_LOWER, T_UPPER,
    T_IN, T_SAMEAS
};
static const struct { const char *name; int id; } TESTS[] = {
    {"defined", T_DEFINED}, {"undefined", T_UNDEFINED}, {"none", T_NONE}, {"string", T_STRING}, {"number", T_NUMBER},
    {"integer", T_INTEGER}, {"float", T_FLOAT}, {"boolean", T_BOOLEAN}, {"true", T_TRUE}, {"false", T_FALSE},
    {"mapping", T_MAPPING}, {"sequence", T_SEQUENCE}, {"iterable", T_ITERABLE}, {"equalto", T_EQ}, {"eq", T_EQ},
    {"==", T_EQ}, {"sameas", T_SAMEAS}, {"ne", T_NE}, {"!=", T_NE}, {"lt", T_LT}, {"<", T_LT}, {"lessthan", T_LT},
    {"le", T_LE}, {"<=", T_LE}, {"gt", T_GT}, {">", T_GT}, {"greaterthan", T_GT}, {"ge", T_GE}, {">=", T_GE},
    {"odd", T_ODD}, {"even", T_EVEN}, {"divisibleby", T_DIVISIBLEBY}, {"lower", T_LOWER}, {"upper", T_UPPER},
    {"in", T_IN},
};
enum { /* methods of strings and dicts */
    M_STRIP, M_LSTRIP, M_RSTRIP, M_STARTSWITH, M_ENDSWITH, M_SPLIT, M_UPPER, M_LOWER, M_REPLACE, M_TITLE,
    M_CAPITALIZE, M_JOIN, M_FIND, M_COUNT, M_ITEMS, M_KEYS, M_VALUES, M_GET
};
static const struct { const char *name; int id, on_dict; } METHODS[] = {
    {"strip", M_STRIP, 0}, {"lstrip", M_LSTRIP, 0}, {"rstrip", M_RSTRIP, 0}, {"startswith", M_STARTSWITH, 0},
    {"endswith", M_ENDSWITH, 0}, {"split", M_SPLIT, 0}, {"upper", M_UPPER, 0}, {"lower", M_LOWER, 0},
    {"replace", M_REPLACE, 0}, {"title", M_TITLE, 0}, {"capitalize", M_CAPITALIZE, 0}, {"join", M_JOIN, 0},
    {"find", M_FIND, 0}, {"count", M_COUNT, 0}, {"items", M_ITEMS, 1}, {"keys", M_KEYS, 1},
    {"values", M_VALUES, 1}, {"get", M_GET, 1},
};
enum { G_RAISE, G_NAMESPACE, G_RANGE, G_DICT };
static const struct { const char *name; int id; } GLOBALS[] = {
    {"raise_exception", G_RAISE}, {"namespace", G_NAMESPACE}, {"range", G_RANGE}, {"dict", G_DICT},
};
/* Index of the entry named nm[0..n) in a table whose entries start with their name, or -1. */
static int find_in(const void *table, size_t count, size_t stride, const char *nm, size_t n) {
    for (size_t i = 0; i < count; i++) {
        const char *name = *(const char *const *)(const void *)((const char *)table + i * stride);
        if (strlen(name) == n && !memcmp(name, nm, n)) return (int)i;
    }
    return -1;
}
#define FIND(table, nm, n) find_in(table, sizeof table / sizeof *table, sizeof *table, nm, n)

/* ---- parser ---- */

static jtok *cur(parser *P) { return &P->t[P->pos]; }
static int is_op(const jtok *t, const char *op) { return t->k == K_OP && t->n == strlen(op) && !memcmp(t->p, op, t->n); }
static int is_name(const jtok *t, const char *nm) { return t->k == K_NAME && t->n == strlen(nm) && !memcmp(t->p, nm, t->n); }

static const char *tok_desc(parser *P, const jtok *t) {
    static const char *const K[] = {"text", "'{{'", "'}}'", "'{%'", "'%}'", "name", "string", "integer", "number", "operator", "end of template"};
    if (t->k == K_NAME || t->k == K_OP) {
        char *d = aalloc(P->ar, &P->e, t->n + 3);
        snprintf(d, t->n + 3, "'%.*s'", (int)t->n, t->p);
        return d;
    }
    return K[t->k];
}

static _Noreturn void expected(parser *P, const char *what) {
    jtok *t = cur(P);
    perr_at(P, t->line, t->col, "expected %s, found %s", what, tok_desc(P, t));
}

static void expect_op(parser *P, const char *op) {
    if (!is_op(cur(P), op)) {
        char d[16];
        snprintf(d, sizeof d, "'%s'", op);
        expected(P, d);
    }
    P->pos++;
}

static jnode *node(parser *P, int kind, const jtok *at) {
    jnode *n = aalloc(P->ar, &P->e, sizeof *n);
    memset(n, 0, sizeof *n);
    n->kind = kind, n->line = at->line, n->col = at->col;
    return n;
}

static const char *tok_str(parser *P, const jtok *t) {
    char *s = aalloc(P->ar, &P->e, t->n + 1);
    memcpy(s, t->p, t->n);
    s[t->n] = 0;
    return s;
}

/* Growable child list, in the arena (old copies are left behind: templates are small). */
static void add_kid(parser *P, jnode *n, jnode *k) {
    if (!(n->nk & (n->nk - 1))) { /* 0, 1, 2, 4, ...: double */
        jnode **g = aalloc(P->ar, &P->e, (n->nk ? n->nk * 2 : 1) * sizeof *g);
        if (n->nk) memcpy(g, n->kids, n->nk * sizeof *g);
        n->kids = g;
    }
    n->kids[n->nk++] = k;
}

static void enter(parser *P) {
    if (++P->depth > J_MAX_DEPTH) perr_at(P, cur(P)->line, cur(P)->col, "nested more than %d levels deep", J_MAX_DEPTH);
}

static jnode *parse_expr(parser *P);
static jnode *parse_or(parser *P);
static jnode *parse_unary(parser *P, int with_filter);
static jnode *parse_primary(parser *P);
static jnode *parse_postfix(parser *P, jnode *n);

/* Call arguments after '(' up to ')': positional then name=value. */
static void parse_args(parser *P, jnode *call) {
    expect_op(P, "(");
    while (!is_op(cur(P), ")")) {
        if (call->nk) expect_op(P, ",");
        if (is_op(cur(P), ")")) break;
        const char *kw = NULL;
        if (cur(P)->k == K_NAME && is_op(&P->t[P->pos + 1], "=")) {
            kw = tok_str(P, cur(P));
            P->pos += 2;
        } else if (call->nk && call->kids[call->nk - 1]->kw) {
            perr_at(P, cur(P)->line, cur(P)->col, "positional argument after a keyword argument");
        }
        jnode *a = parse_expr(P);
        a->kw = kw;
        add_kid(P, call, a);
    }
    P->pos++;
}

static jnode *parse_filter_expr(parser *P, jnode *n) {
    for (int depth = P->depth;; enter(P)) {
        jtok *t = cur(P);
        if (is_op(t, "|")) {
            P->pos++;
            jtok *nm = cur(P);
            if (nm->k != K_NAME) expected(P, "a filter name");
            int f = FIND(FILTERS, nm->p, nm->n);
            if (f < 0) perr_at(P, nm->line, nm->col, "unknown filter '%.*s'", (int)nm->n, nm->p);
            P->pos++;
            jnode *fn = node(P, N_FILTER, nm);
            fn->op = FILTERS[f].id, fn->name = FILTERS[f].name, fn->a = n;
            if (is_op(cur(P), "(")) parse_args(P, fn);
            n = fn;
        } else if (is_name(t, "is")) {
            P->pos++;
            int neg = is_name(cur(P), "not");
            P->pos += neg;
            jtok *nm = cur(P);
            size_t len = nm->n;
            if (nm->k != K_NAME && !(nm->k == K_OP && FIND(TESTS, nm->p, nm->n) >= 0)) expected(P, "a test name");
            int f = FIND(TESTS, nm->p, len);
            if (f < 0) perr_at(P, nm->line, nm->col, "unknown test '%.*s'", (int)nm->n, nm->p);
            P->pos++;
            jnode *tn = node(P, N_TEST, nm);
            tn->op = TESTS[f].id, tn->name = TESTS[f].name, tn->a = n, tn->neg = neg;
            jtok *x = cur(P);
            if (is_op(x, "(")) parse_args(P, tn);
            else if ((x->k == K_NAME && !is_name(x, "else") && !is_name(x, "or") && !is_name(x, "and") && !is_name(x, "if") &&
                      !is_name(x, "not") && !is_name(x, "in") && !is_name(x, "is")) ||
                     x->k == K_STR || x->k == K_INT || x->k == K_FLOAT || is_op(x, "[") || is_op(x, "{"))
                add_kid(P, tn, parse_postfix(P, parse_primary(P)));
            n = tn;
        } else {
            P->depth = depth;
            return n;
        }
    }
}

static jnode *parse_postfix(parser *P, jnode *n) {
    for (int depth = P->depth;; enter(P)) {
        jtok *t = cur(P);
        if (is_op(t, ".")) {
            P->pos++;
            jtok *nm = cur(P);
            jnode *a;
            if (nm->k == K_NAME) {
                a = node(P, N_ATTR, nm);
                a->name = tok_str(P, nm);
            } else if (nm->k == K_INT) { /* x.0 is x[0] */
                a = node(P, N_ITEM, nm);
                a->b = node(P, N_LIT, nm);
                a->b->lit = mk_int(nm->i);
            } else {
                expected(P, "an attribute name");
            }
            P->pos++;
            a->a = n;
            n = a;
        } else if (is_op(t, "[")) {
            P->pos++;
            jnode *parts[3] = {0};
            int colons = 0;
            while (!is_op(cur(P), "]")) {
                if (is_op(cur(P), ":")) {
                    if (++colons > 2) expected(P, "']'");
                    P->pos++;
                } else {
                    if (parts[colons]) expected(P, "':' or ']'");
                    parts[colons] = parse_expr(P);
                }
            }
            P->pos++;
            jnode *it = node(P, colons ? N_SLICE : N_ITEM, t);
            if (!colons && !parts[0]) perr_at(P, t->line, t->col, "empty subscript");
            it->a = n, it->b = parts[0], it->c = parts[1], it->d = parts[2];
            n = it;
        } else if (is_op(t, "(")) {
            jnode *c = node(P, N_CALL, t);
            c->a = n;
            if (n->kind == N_NAME) {
                int g = FIND(GLOBALS, n->name, strlen(n->name));
                if (g < 0) perr_at(P, n->line, n->col, "unknown function '%s'", n->name);
                c->op = GLOBALS[g].id;
            } else if (n->kind == N_ATTR) {
                if (FIND(METHODS, n->name, strlen(n->name)) < 0) perr_at(P, n->line, n->col, "unknown method '%s'", n->name);
            } else {
                perr_at(P, t->line, t->col, "only functions and methods can be called");
            }
            parse_args(P, c);
            n = c;
        } else {
            P->depth = depth;
            return n;
        }
    }
}

static jnode *parse_primary(parser *P) {
    jtok *t = cur(P);
    jnode *n;
    enter(P);
    if (t->k == K_NAME) {
        P->pos++;
        n = node(P, N_LIT, t);
        if (is_name(t, "true") || is_name(t, "True")) n->lit = mk_bool(1);
        else if (is_name(t, "false") || is_name(t, "False")) n->lit = mk_bool(0);
        else if (is_name(t, "none") || is_name(t, "None")) n->lit = NONE;
        else n->kind = N_NAME, n->name = tok_str(P, t);
    } else if (t->k == K_STR) {
        /* adjacent literals concatenate */
        size_t len = 0, k = P->pos;
        for (; P->t[k].k == K_STR; k++) len += P->t[k].n;
        char *s = aalloc(P->ar, &P->e, len + 1);
        len = 0;
        for (; P->pos < k; P->pos++) memcpy(s + len, cur(P)->p, cur(P)->n), len += cur(P)->n;
        n = node(P, N_LIT, t);
        n->lit = mk_str(s, len);
    } else if (t->k == K_INT || t->k == K_FLOAT) {
        P->pos++;
        n = node(P, N_LIT, t);
        n->lit = t->k == K_INT ? mk_int(t->i) : mk_float(t->f);
    } else if (is_op(t, "(") || is_op(t, "[")) {
        int paren = is_op(t, "(");
        const char *close = paren ? ")" : "]";
        P->pos++;
        n = node(P, N_LIST, t);
        int comma = 0;
        while (!is_op(cur(P), close)) {
            if (n->nk) expect_op(P, ","), comma = 1;
            if (is_op(cur(P), close)) break;
            add_kid(P, n, parse_expr(P));
        }
        P->pos++;
        if (paren && n->nk == 1 && !comma) n = n->kids[0]; /* (x) is x; (x,) a tuple */
    } else if (is_op(t, "{")) {
        P->pos++;
        n = node(P, N_DICT, t);
        while (!is_op(cur(P), "}")) {
            if (n->nk) expect_op(P, ",");
            if (is_op(cur(P), "}")) break;
            add_kid(P, n, parse_expr(P));
            expect_op(P, ":");
            add_kid(P, n, parse_expr(P));
        }
        P->pos++;
    } else {
        expected(P, "an expression");
    }
    P->depth--;
    return n;
}

static jnode *parse_unary(parser *P, int with_filter) {
    jtok *t = cur(P);
    jnode *n;
    enter(P);
    if (is_op(t, "-") || is_op(t, "+")) {
        P->pos++;
        n = node(P, is_op(t, "-") ? N_NEG : N_POS, t);
        n->a = parse_unary(P, 0);
    } else {
        n = parse_primary(P);
    }
    n = parse_postfix(P, n);
    if (with_filter) n = parse_filter_expr(P, n);
    P->depth--;
    return n;
}

static jnode *bin(parser *P, const jtok *t, int op, jnode *a, jnode *b) {
    jnode *n = node(P, N_BIN, t);
    n->op = op, n->a = a, n->b = b;
    return n;
}
static int op_code(const jtok *t) { return t->n == 1 ? t->p[0] : (t->p[0] << 8) | t->p[1]; }
#define OP2(a, b) (((a) << 8) | (b))

static jnode *parse_pow(parser *P) {
    int depth = P->depth;
    jnode *n = parse_unary(P, 1);
    while (is_op(cur(P), "**")) {
        enter(P); /* a chain nests the tree one level per operator */
        jtok *t = &P->t[P->pos++];
        n = bin(P, t, OP2('*', '*'), n, parse_unary(P, 1));
    }
    P->depth = depth;
    return n;
}
static jnode *parse_math2(parser *P) {
    int depth = P->depth;
    jnode *n = parse_pow(P);
    while (is_op(cur(P), "*") || is_op(cur(P), "/") || is_op(cur(P), "//") || is_op(cur(P), "%")) {
        enter(P); /* a chain nests the tree one level per operator */
        jtok *t = &P->t[P->pos++];
        n = bin(P, t, op_code(t), n, parse_pow(P));
    }
    P->depth = depth;
    return n;
}
static jnode *parse_concat(parser *P) {
    int depth = P->depth;
    jnode *n = parse_math2(P);
    while (is_op(cur(P), "~")) {
        enter(P); /* a chain nests the tree one level per operator */
        jtok *t = &P->t[P->pos++];
        n = bin(P, t, '~', n, parse_math2(P));
    }
    P->depth = depth;
    return n;
}
static jnode *parse_math1(parser *P) {
    int depth = P->depth;
    jnode *n = parse_concat(P);
    while (is_op(cur(P), "+") || is_op(cur(P), "-")) {
        enter(P); /* a chain nests the tree one level per operator */
        jtok *t = &P->t[P->pos++];
        n = bin(P, t, op_code(t), n, parse_concat(P));
    }
    P->depth = depth;
    return n;
}
enum { C_IN = 1, C_NOTIN = 2 };
static jnode *parse_compare(parser *P) {
    jnode *first = parse_math1(P), *cmp = NULL;
    for (;;) {
        jtok *t = cur(P);
        int op;
        if (is_op(t, "==") || is_op(t, "!=") || is_op(t, "<") || is_op(t, ">") || is_op(t, "<=") || is_op(t, ">=")) op = op_code(t), P->pos++;
        else if (is_name(t, "in")) op = C_IN, P->pos++;
        else if (is_name(t, "not") && is_name(&P->t[P->pos + 1], "in")) op = C_NOTIN, P->pos += 2;
        else break;
        if (!cmp) {
            cmp = node(P, N_CMP, t);
            add_kid(P, cmp, first);
        }
        jnode *rhs = parse_math1(P);
        jnode *wrap = node(P, N_LIST, t); /* (op, operand) pair: keeps rhs->op free for rhs's own use */
        wrap->op = op, wrap->a = rhs;
        add_kid(P, cmp, wrap);
    }
    return cmp ? cmp : first;
}
static jnode *parse_not(parser *P) {
    if (is_name(cur(P), "not")) {
        jtok *t = &P->t[P->pos++];
        enter(P);
        jnode *n = node(P, N_NOT, t);
        n->a = parse_not(P);
        P->depth--;
        return n;
    }
    return parse_compare(P);
}
static jnode *parse_and(parser *P) {
    int depth = P->depth;
    jnode *n = parse_not(P);
    while (is_name(cur(P), "and")) {
        enter(P); /* a chain nests the tree one level per operator */
        jtok *t = &P->t[P->pos++];
        jnode *a = node(P, N_AND, t);
        a->a = n, a->b = parse_not(P);
        n = a;
    }
    P->depth = depth;
    return n;
}
static jnode *parse_or(parser *P) {
    int depth = P->depth;
    jnode *n = parse_and(P);
    while (is_name(cur(P), "or")) {
        enter(P); /* a chain nests the tree one level per operator */
        jtok *t = &P->t[P->pos++];
        jnode *a = node(P, N_OR, t);
        a->a = n, a->b = parse_and(P);
        n = a;
    }
    P->depth = depth;
    return n;
}
/* `a if cond else b` (else optional: undefined) */
static jnode *parse_expr(parser *P) {
    enter(P);
    jnode *n = parse_or(P);
    while (is_name(cur(P), "if")) {
        jtok *t = &P->t[P->pos++];
        jnode *c = node(P, N_COND, t);
        c->a = n, c->b = parse_or(P);
        if (is_name(cur(P), "else")) P->pos++, c->c = parse_expr(P);
        n = c;
    }
    P->depth--;
    return n;
}

/* ---- statements ---- */

static void block_end(parser *P) {
    if (cur(P)->k != K_BLOCK_END) expected(P, "'%}'");
    P->pos++;
}

/* Parses statements until a block tag whose first name is in `stops` (space-separated, each
 * word surrounded by spaces: " elif else endif "); returns the body, leaves pos at that name. */
static jnode *parse_body(parser *P, const char *stops, const char *opener, const jtok *open_at) {
    jnode *body = node(P, N_LIST, cur(P));
    enter(P);
    for (;;) {
        jtok *t = cur(P);
        if (t->k == K_EOF) {
            if (!stops) break;
            perr_at(P, open_at->line, open_at->col, "{%% %s %%} is never closed", opener);
        }
        P->pos++;
        if (t->k == K_TEXT) {
            jnode *n = node(P, N_TEXT, t);
            n->lit = mk_str(t->p, t->n);
            add_kid(P, body, n);
        } else if (t->k == K_VAR) {
            jnode *n = node(P, N_OUT, t);
            n->a = parse_expr(P);
            if (cur(P)->k != K_VAR_END) expected(P, "'}}'");
            P->pos++;
            add_kid(P, body, n);
        } else if (t->k == K_BLOCK) {
            jtok *nm = cur(P);
            if (nm->k != K_NAME) expected(P, "a statement name");
            char word[40];
            snprintf(word, sizeof word, " %.*s ", (int)(nm->n < 30 ? nm->n : 30), nm->p);
            if (stops && strstr(stops, word)) {
                P->pos--; /* back at '{%' for the caller */
                break;
            }
            P->pos++;
            jnode *n;
            if (is_name(nm, "if")) {
                n = node(P, N_IF, nm);
                jnode *last = n;
                last->a = parse_expr(P);
                block_end(P);
                for (;;) {
                    last->b = parse_body(P, " elif else endif ", "if", nm);
                    jtok *w = &P->t[P->pos + 1];
                    P->pos += 2;
                    if (is_name(w, "elif")) {
                        jnode *e = node(P, N_IF, w);
                        e->a = parse_expr(P);
                        block_end(P);
                        last->c = e, last = e;
                        continue;
                    }
                    if (is_name(w, "else")) {
                        block_end(P);
                        last->c = parse_body(P, " endif ", "if", nm);
                        P->pos += 2;
                    }
                    block_end(P);
                    break;
                }
            } else if (is_name(nm, "for")) {
                n = node(P, N_FOR, nm);
                if (cur(P)->k != K_NAME) expected(P, "a loop variable");
                n->name = tok_str(P, cur(P));
                P->pos++;
                if (is_op(cur(P), ",")) {
                    P->pos++;
                    if (cur(P)->k != K_NAME) expected(P, "a second loop variable");
                    n->attr = tok_str(P, cur(P));
                    P->pos++;
                }
                if (!is_name(cur(P), "in")) expected(P, "'in'");
                P->pos++;
                n->a = parse_or(P); /* Jinja2: no conditional expression here, `if` filters the items */
                if (is_name(cur(P), "if")) P->pos++, n->d = parse_or(P);
                if (is_name(cur(P), "recursive")) perr_at(P, cur(P)->line, cur(P)->col, "recursive loops are not supported");
                block_end(P);
                n->b = parse_body(P, " else endfor ", "for", nm);
                if (is_name(&P->t[P->pos + 1], "else")) {
                    P->pos += 2;
                    block_end(P);
                    n->c = parse_body(P, " endfor ", "for", nm);
                }
                P->pos += 2;
                block_end(P);
            } else if (is_name(nm, "set")) {
                if (cur(P)->k != K_NAME) expected(P, "a variable name");
                const char *target = tok_str(P, cur(P)), *attr = NULL;
                P->pos++;
                if (is_op(cur(P), ".")) {
                    P->pos++;
                    if (cur(P)->k != K_NAME) expected(P, "an attribute name");
                    attr = tok_str(P, cur(P));
                    P->pos++;
                }
                if (is_op(cur(P), "=")) {
                    P->pos++;
                    n = node(P, N_SET, nm);
                    n->a = parse_expr(P);
                    block_end(P);
                } else if (!attr && cur(P)->k == K_BLOCK_END) {
                    P->pos++;
                    n = node(P, N_SETBLOCK, nm);
                    n->b = parse_body(P, " endset ", "set", nm);
                    P->pos += 2;
                    block_end(P);
                } else {
                    expected(P, "'='");
                }
                n->name = target, n->attr = attr;
            } else if (is_name(nm, "break") || is_name(nm, "continue")) {
                n = node(P, is_name(nm, "break") ? N_BREAK : N_CONTINUE, nm);
                block_end(P);
            } else if (is_name(nm, "generation")) {
                n = node(P, N_GENERATION, nm);
                block_end(P);
                n->b = parse_body(P, " endgeneration ", "generation", nm);
                P->pos += 2;
                block_end(P);
                P->has_generation = 1;
            } else if (is_name(nm, "elif") || is_name(nm, "else") || (nm->n > 3 && !memcmp(nm->p, "end", 3))) {
                perr_at(P, nm->line, nm->col, "unexpected {%% %.*s %%}%s%s", (int)nm->n, nm->p, stops ? ", expecting one of" : "",
                        stops ? stops : "");
            } else {
                perr_at(P, nm->line, nm->col, "unsupported statement {%% %.*s %%}", (int)nm->n, nm->p);
            }
            add_kid(P, body, n);
        } else {
            perr_at(P, t->line, t->col, "unexpected %s", tok_desc(P, t));
        }
    }
    P->depth--;
    return body;
}

static int check_loop_controls(parser *P, const jnode *n, int in_loop) {
    if (!n) return 0;
    if ((n->kind == N_BREAK || n->kind == N_CONTINUE) && !in_loop)
        perr_at(P, n->line, n->col, "{%% %s %%} outside a loop", n->kind == N_BREAK ? "break" : "continue");
    if (n->kind == N_SETBLOCK || n->kind == N_GENERATION) in_loop = 0; /* Jinja2 refuses break across them too */
    for (size_t i = 0; i < n->nk; i++) check_loop_controls(P, n->kids[i], in_loop);
    if (n->kind == N_IF || n->kind == N_LIST || n->kind == N_SETBLOCK || n->kind == N_GENERATION)
        check_loop_controls(P, n->b, in_loop), check_loop_controls(P, n->c, in_loop);
    if (n->kind == N_FOR) check_loop_controls(P, n->b, 1), check_loop_controls(P, n->c, in_loop);
    return 0;
}

int peft_jinja_parse(const char *src, size_t len, const char *what, peft_jinja **out, peft_err *err) {
    *out = NULL;
    peft_jinja *t = calloc(1, sizeof *t);
    if (!t) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
    parser P;
    memset(&P, 0, sizeof P);
    P.e.err = err, P.ar = &t->ar, P.what = what;
    if (setjmp(P.e.jb)) {
        free(P.t);
        arena_free(&t->ar);
        free(t);
        return P.e.code;
    }
    P.src = normalize_source(&P, src, len, &P.len);
    P.line = P.col = 1;
    lex(&P);
    t->root = parse_body(&P, NULL, NULL, NULL);
    check_loop_controls(&P, t->root, 0);
    t->has_generation = P.has_generation;
    free(P.t);
    *out = t;
    return PEFT_OK;
}

void peft_jinja_free(peft_jinja *t) {
    if (!t) return;
    arena_free(&t->ar);
    free(t);
}

int peft_jinja_has_generation(const peft_jinja *t) { return t->has_generation; }

/* ---- evaluator ---- */

typedef struct frame { /* one scope: the template's, or one loop iteration's */
    struct frame *up;
    jdict vars;
} frame;

typedef struct jctx {
    jerr e;
    arena ar;
    char *out;
    size_t n, cap;
    peft_jinja_span *gen;
    size_t n_gen, cap_gen;
    long steps;
    const jdict *globals; /* the caller's variables */
    int line;             /* of the statement being run, for messages */
} jctx;

static _Noreturn void rfail(jctx *c, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static _Noreturn void rfail(jctx *c, const char *fmt, ...) {
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    jfail(&c->e, PEFT_EINVAL, "chat template, line %d: %s", c->line, msg);
}

static void step(jctx *c) {
    if (++c->steps > J_MAX_STEPS) jfail(&c->e, PEFT_EUNSUPPORTED, "chat template: more than %d steps (a runaway loop?)", J_MAX_STEPS);
}
static void *ralloc(jctx *c, size_t n) { return aalloc(&c->ar, &c->e, n); }

/* growable byte buffer in the arena (for building strings) */
typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;
static void sb_put(jctx *c, sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        if (b->n + n > J_MAX_OUTPUT) jfail(&c->e, PEFT_EUNSUPPORTED, "chat template: a string longer than %u MiB", J_MAX_OUTPUT >> 20);
        size_t cap = (b->n + n + 1) * 2;
        char *g = ralloc(c, cap);
        if (b->n) memcpy(g, b->p, b->n);
        b->p = g, b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void sb_puts(jctx *c, sbuf *b, const char *s) { sb_put(c, b, s, strlen(s)); }
static jv sb_val(jctx *c, sbuf *b) {
    if (!b->p) sb_put(c, b, "", 0);
    return mk_str(b->p, b->n);
}

static const char *type_name(const jv *v) {
    static const char *const N[] = {"undefined", "NoneType", "bool", "int", "float", "str", "list", "dict", "Namespace", "function",
                                    "method", "LoopContext"};
    return N[v->t];
}

static void dict_set(jctx *c, jdict *d, jv k, jv v) {
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].u.s.n == k.u.s.n && !memcmp(d->k[i].u.s.p, k.u.s.p, k.u.s.n)) {
            d->v[i] = v;
            return;
        }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4;
        jv *nk = ralloc(c, cap * sizeof *nk), *nv = ralloc(c, cap * sizeof *nv);
        if (d->n) memcpy(nk, d->k, d->n * sizeof *nk), memcpy(nv, d->v, d->n * sizeof *nv);
        d->k = nk, d->v = nv, d->cap = cap;
    }
    d->k[d->n] = k, d->v[d->n++] = v;
}
static const jv *dict_get(const jdict *d, const char *k, size_t n) {
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].u.s.n == n && !memcmp(d->k[i].u.s.p, k, n)) return &d->v[i];
    return NULL;
}

static jv from_json(jctx *c, const cJSON *j) {
    step(c);
    if (cJSON_IsString(j)) return mk_str(j->valuestring, strlen(j->valuestring));
    if (cJSON_IsBool(j)) return mk_bool(cJSON_IsTrue(j));
    if (cJSON_IsNumber(j)) {
        double d = j->valuedouble; /* cJSON does not keep 1 and 1.0 apart: integral values read as int */
        return d == floor(d) && fabs(d) < 9e15 ? mk_int((int64_t)d) : mk_float(d);
    }
    if (cJSON_IsArray(j)) {
        jlist *l = ralloc(c, sizeof *l);
        l->n = (size_t)cJSON_GetArraySize(j);
        l->a = ralloc(c, (l->n ? l->n : 1) * sizeof *l->a);
        size_t i = 0;
        for (const cJSON *it = j->child; it; it = it->next) l->a[i++] = from_json(c, it);
        jv v = {V_LIST, {.l = l}};
        return v;
    }
    if (cJSON_IsObject(j)) {
        jdict *d = ralloc(c, sizeof *d);
        memset(d, 0, sizeof *d);
        for (const cJSON *it = j->child; it; it = it->next)
            dict_set(c, d, mk_str(it->string, strlen(it->string)), from_json(c, it));
        jv v = {V_DICT, {.d = d}};
        return v;
    }
    return NONE;
}

/* -- conversions -- */

static int truthy(const jv *v) {
    switch (v->t) {
    case V_BOOL: case V_INT: return v->u.i != 0;
    case V_FLOAT: return v->u.f != 0;
    case V_STR: return v->u.s.n != 0;
    case V_LIST: return v->u.l->n != 0;
    case V_DICT: return v->u.d->n != 0;
    case V_NS: case V_FUNC: case V_METHOD: case V_LOOP: return 1;
    default: return 0;
    }
}

/* Python's repr(float) (shortest round-trip digits). */
static void float_repr(double f, char *buf, size_t cap, int json) {
    if (isnan(f)) { snprintf(buf, cap, json ? "NaN" : "nan"); return; }
    if (isinf(f)) { snprintf(buf, cap, f > 0 ? (json ? "Infinity" : "inf") : (json ? "-Infinity" : "-inf")); return; }
    char e[40];
    int p;
    for (p = 1; p <= 17; p++) {
        snprintf(e, sizeof e, "%.*e", p - 1, f);
        if (strtod(e, NULL) == f) break;
    }
    /* e = "[-]d.ddde[+-]XX": digits and the decimal exponent */
    char digits[24];
    int nd = 0, neg = e[0] == '-';
    const char *q = e + neg;
    for (; *q && *q != 'e'; q++)
        if (*q != '.') digits[nd++] = *q;
    int exp = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    size_t w = 0;
    if (neg) buf[w++] = '-';
    if (exp < -4 || exp >= 16) {
        buf[w++] = digits[0];
        if (nd > 1) buf[w++] = '.', memcpy(buf + w, digits + 1, (size_t)nd - 1), w += (size_t)nd - 1;
        snprintf(buf + w, cap - w, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    } else if (exp < 0) {
        buf[w++] = '0', buf[w++] = '.';
        for (int z = 0; z < -exp - 1; z++) buf[w++] = '0';
        memcpy(buf + w, digits, (size_t)nd), w += (size_t)nd;
        buf[w] = 0;
    } else {
        for (int k = 0; k <= exp; k++) buf[w++] = k < nd ? digits[k] : '0';
        buf[w++] = '.';
        if (nd > exp + 1) memcpy(buf + w, digits + exp + 1, (size_t)(nd - exp - 1)), w += (size_t)(nd - exp - 1);
        else buf[w++] = '0';
        buf[w] = 0;
    }
}

static void repr_into(jctx *c, sbuf *b, const jv *v, int top);

static void repr_str(jctx *c, sbuf *b, const char *s, size_t n) {
    int sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
    char q = sq && !dq ? '"' : '\'';
    sb_put(c, b, &q, 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char esc[8];
        if (ch == '\\' || ch == (unsigned char)q) esc[0] = '\\', esc[1] = (char)ch, sb_put(c, b, esc, 2);
        else if (ch == '\n') sb_puts(c, b, "\\n");
        else if (ch == '\r') sb_puts(c, b, "\\r");
        else if (ch == '\t') sb_puts(c, b, "\\t");
        else if (ch < 0x20 || ch == 0x7F) snprintf(esc, sizeof esc, "\\x%02x", ch), sb_puts(c, b, esc);
        else sb_put(c, b, s + i, 1);
    }
    sb_put(c, b, &q, 1);
}

/* str(v) (top) or repr(v) (inside a list or dict), as Python writes them. */
static void repr_into(jctx *c, sbuf *b, const jv *v, int top) {
    char num[48];
    step(c);
    switch (v->t) {
    case V_UNDEF: break;
    case V_NONE: sb_puts(c, b, "None"); break;
    case V_BOOL: sb_puts(c, b, v->u.i ? "True" : "False"); break;
    case V_INT: snprintf(num, sizeof num, "%lld", (long long)v->u.i), sb_puts(c, b, num); break;
    case V_FLOAT: float_repr(v->u.f, num, sizeof num, 0), sb_puts(c, b, num); break;
    case V_STR:
        if (top) sb_put(c, b, v->u.s.p, v->u.s.n);
        else repr_str(c, b, v->u.s.p, v->u.s.n);
        break;
    case V_LIST:
        sb_puts(c, b, "[");
        for (size_t i = 0; i < v->u.l->n; i++) {
            if (i) sb_puts(c, b, ", ");
            repr_into(c, b, &v->u.l->a[i], 0);
        }
        sb_puts(c, b, "]");
        break;
    case V_DICT:
        sb_puts(c, b, "{");
        for (size_t i = 0; i < v->u.d->n; i++) {
            if (i) sb_puts(c, b, ", ");
            repr_into(c, b, &v->u.d->k[i], 0);
            sb_puts(c, b, ": ");
            repr_into(c, b, &v->u.d->v[i], 0);
        }
        sb_puts(c, b, "}");
        break;
    default: rfail(c, "cannot print a %s", type_name(v));
    }
}

static jv to_str(jctx *c, const jv *v) {
    if (v->t == V_STR) return *v;
    sbuf b = {0};
    repr_into(c, &b, v, 1);
    return sb_val(c, &b);
}

/* json.dumps(v, ensure_ascii=False, indent=indent, sort_keys=sort) */
static void json_into(jctx *c, sbuf *b, const jv *v, int indent, int level, int sort) {
    char num[48];
    step(c);
    if (level > 512) rfail(c, "tojson: nested too deeply");
    switch (v->t) {
    case V_NONE: sb_puts(c, b, "null"); return;
    case V_BOOL: sb_puts(c, b, v->u.i ? "true" : "false"); return;
    case V_INT: snprintf(num, sizeof num, "%lld", (long long)v->u.i), sb_puts(c, b, num); return;
    case V_FLOAT: float_repr(v->u.f, num, sizeof num, 1), sb_puts(c, b, num); return;
    case V_STR:
        sb_puts(c, b, "\"");
        for (size_t i = 0; i < v->u.s.n; i++) {
            unsigned char ch = (unsigned char)v->u.s.p[i];
            const char *e = ch == '"' ? "\\\"" : ch == '\\' ? "\\\\" : ch == '\n' ? "\\n" : ch == '\r' ? "\\r"
                          : ch == '\t' ? "\\t" : ch == '\b' ? "\\b" : ch == '\f' ? "\\f" : NULL;
            if (e) sb_puts(c, b, e);
            else if (ch < 0x20) snprintf(num, sizeof num, "\\u%04x", ch), sb_puts(c, b, num);
            else sb_put(c, b, v->u.s.p + i, 1);
        }
        sb_puts(c, b, "\"");
        return;
    case V_LIST: case V_DICT: {
        int dict = v->t == V_DICT;
        size_t n = dict ? v->u.d->n : v->u.l->n;
        sb_puts(c, b, dict ? "{" : "[");
        size_t *ord = NULL;
        if (dict && sort && n) { /* insertion sort of key indices: objects are small */
            ord = ralloc(c, n * sizeof *ord);
            for (size_t i = 0; i < n; i++) {
                size_t k = i;
                const jv *key = &v->u.d->k[i];
                while (k > 0) {
                    const jv *o = &v->u.d->k[ord[k - 1]];
                    size_t m = o->u.s.n < key->u.s.n ? o->u.s.n : key->u.s.n;
                    int r = memcmp(o->u.s.p, key->u.s.p, m);
                    if (r < 0 || (r == 0 && o->u.s.n <= key->u.s.n)) break;
                    ord[k] = ord[k - 1], k--;
                }
                ord[k] = i;
            }
        }
        for (size_t i = 0; i < n; i++) {
            if (i) sb_puts(c, b, indent >= 0 ? "," : ", ");
            if (indent >= 0) {
                sb_puts(c, b, "\n");
                for (int s = 0; s < indent * (level + 1); s++) sb_puts(c, b, " ");
            }
            size_t k = ord ? ord[i] : i;
            if (dict) json_into(c, b, &v->u.d->k[k], indent, level + 1, sort), sb_puts(c, b, ": ");
            json_into(c, b, dict ? &v->u.d->v[k] : &v->u.l->a[k], indent, level + 1, sort);
        }
        if (indent >= 0 && n) {
            sb_puts(c, b, "\n");
            for (int s = 0; s < indent * level; s++) sb_puts(c, b, " ");
        }
        sb_puts(c, b, dict ? "}" : "]");
        return;
    }
    default: rfail(c, "tojson: Object of type %s is not JSON serializable", v->t == V_UNDEF ? "Undefined" : type_name(v));
    }
}

/* -- comparisons -- */

static int is_num(const jv *v) { return v->t == V_BOOL || v->t == V_INT || v->t == V_FLOAT; }
static double num(const jv *v) { return v->t == V_FLOAT ? v->u.f : (double)v->u.i; }

static int equal(const jv *a, const jv *b) {
    if (is_num(a) && is_num(b)) {
        if (a->t != V_FLOAT && b->t != V_FLOAT) return a->u.i == b->u.i;
        return num(a) == num(b);
    }
    if (a->t != b->t) return 0;
    switch (a->t) {
    case V_UNDEF: case V_NONE: return 1;
    case V_STR: return a->u.s.n == b->u.s.n && !memcmp(a->u.s.p, b->u.s.p, a->u.s.n);
    case V_LIST:
        if (a->u.l->n != b->u.l->n) return 0;
        for (size_t i = 0; i < a->u.l->n; i++)
            if (!equal(&a->u.l->a[i], &b->u.l->a[i])) return 0;
        return 1;
    case V_DICT:
        if (a->u.d->n != b->u.d->n) return 0;
        for (size_t i = 0; i < a->u.d->n; i++) {
            const jv *o = dict_get(b->u.d, a->u.d->k[i].u.s.p, a->u.d->k[i].u.s.n);
            if (!o || !equal(&a->u.d->v[i], o)) return 0;
        }
        return 1;
    default: return a->u.d == b->u.d;
    }
}

/* <0, 0, >0; strings compare by code point (= by UTF-8 bytes) */
static int order(jctx *c, const jv *a, const jv *b, const char *op) {
    if (is_num(a) && is_num(b)) {
        if (a->t != V_FLOAT && b->t != V_FLOAT) return (a->u.i > b->u.i) - (a->u.i < b->u.i);
        return (num(a) > num(b)) - (num(a) < num(b));
    }
    if (a->t == V_STR && b->t == V_STR) {
        size_t m = a->u.s.n < b->u.s.n ? a->u.s.n : b->u.s.n;
        int r = memcmp(a->u.s.p, b->u.s.p, m);
        return r ? r : (a->u.s.n > b->u.s.n) - (a->u.s.n < b->u.s.n);
    }
    if (a->t == V_LIST && b->t == V_LIST) {
        for (size_t i = 0; i < a->u.l->n && i < b->u.l->n; i++)
            if (!equal(&a->u.l->a[i], &b->u.l->a[i])) return order(c, &a->u.l->a[i], &b->u.l->a[i], op);
        return (a->u.l->n > b->u.l->n) - (a->u.l->n < b->u.l->n);
    }
    rfail(c, "'%s' not supported between instances of '%s' and '%s'", op, type_name(a), type_name(b));
}

static int contains(jctx *c, const jv *hay, const jv *needle) {
    if (hay->t == V_STR) {
        if (needle->t != V_STR) rfail(c, "'in <string>' requires string as left operand, not %s", type_name(needle));
        if (!needle->u.s.n) return 1;
        for (size_t i = 0; i + needle->u.s.n <= hay->u.s.n; i++)
            if (!memcmp(hay->u.s.p + i, needle->u.s.p, needle->u.s.n)) return 1;
        return 0;
    }
    if (hay->t == V_LIST) {
        for (size_t i = 0; i < hay->u.l->n; i++)
            if (equal(&hay->u.l->a[i], needle)) return 1;
        return 0;
    }
    if (hay->t == V_DICT || hay->t == V_NS) return needle->t == V_STR && dict_get(hay->u.d, needle->u.s.p, needle->u.s.n);
    if (hay->t == V_UNDEF) return 0;
    rfail(c, "argument of type '%s' is not iterable", type_name(hay));
}

/* -- strings (UTF-8, code point indexed where Python indexes) -- */

static size_t cp_count(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}
/* byte offsets of every code point start, plus n at the end */
static size_t *cp_offsets(jctx *c, const char *s, size_t n, size_t *count) {
    size_t k = cp_count(s, n), *o = ralloc(c, (k + 1) * sizeof *o), j = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) o[j++] = i;
    o[k] = n;
    *count = k;
    return o;
}

/* q[0..len) (one code point) is in the strip set: whitespace, or one of chars' code points
 * (byte offsets co[0..nch]) */
static int in_set(const char *q, size_t len, const jv *chars, const size_t *co, size_t nch) {
    if (!chars) {
        uint32_t cp;
        utf8_decode(q, len, &cp);
        return py_space(cp);
    }
    for (size_t x = 0; x < nch; x++)
        if (co[x + 1] - co[x] == len && !memcmp(chars->u.s.p + co[x], q, len)) return 1;
    return 0;
}

/* Python's strip family: `chars` NULL = whitespace; which: 1 left, 2 right, 3 both */
static jv strip(jctx *c, jv s, const jv *chars, int which) {
    const char *p = s.u.s.p;
    size_t b = 0, e = s.u.s.n;
    size_t nch = 0, *co = chars ? cp_offsets(c, chars->u.s.p, chars->u.s.n, &nch) : NULL;
    while ((which & 1) && b < e) {
        uint32_t cp;
        size_t k = utf8_decode(p + b, e - b, &cp);
        if (!in_set(p + b, k, chars, co, nch)) break;
        b += k;
    }
    while ((which & 2) && e > b) {
        size_t k = e - 1;
        while (k > b && ((unsigned char)p[k] & 0xC0) == 0x80) k--;
        if (!in_set(p + k, e - k, chars, co, nch)) break;
        e = k;
    }
    return mk_str(p + b, e - b);
}

static jv str_case(jctx *c, jv s, int mode) { /* 0 upper, 1 lower, 2 title, 3 capitalize (ASCII letters) */
    char *o = ralloc(c, s.u.s.n + 1);
    int prev_alpha = 0;
    for (size_t i = 0; i < s.u.s.n; i++) {
        char ch = s.u.s.p[i];
        int alpha = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
        int up = mode == 0 || (mode == 2 && !prev_alpha) || (mode == 3 && i == 0);
        if (alpha) ch = up ? (char)(ch & ~0x20) : (char)(ch | 0x20);
        o[i] = ch;
        prev_alpha = alpha || (mode == 2 && ((unsigned char)ch >= 0x80 || (ch >= '0' && ch <= '9')));
    }
    o[s.u.s.n] = 0;
    return mk_str(o, s.u.s.n);
}

static jv str_replace(jctx *c, jv s, jv old, jv neu, int64_t count) {
    sbuf b = {0};
    size_t i = 0, done = 0;
    if (!old.u.s.n) { /* Python inserts `new` around every character */
        size_t k, *o = cp_offsets(c, s.u.s.p, s.u.s.n, &k);
        for (size_t j = 0; j <= k; j++) {
            if (count < 0 || (int64_t)done < count) sb_put(c, &b, neu.u.s.p, neu.u.s.n), done++;
            if (j < k) sb_put(c, &b, s.u.s.p + o[j], o[j + 1] - o[j]);
        }
        return sb_val(c, &b);
    }
    while (i < s.u.s.n) {
        if ((count < 0 || (int64_t)done < count) && i + old.u.s.n <= s.u.s.n && !memcmp(s.u.s.p + i, old.u.s.p, old.u.s.n)) {
            sb_put(c, &b, neu.u.s.p, neu.u.s.n);
            i += old.u.s.n, done++;
        } else {
            sb_put(c, &b, s.u.s.p + i, 1), i++;
        }
    }
    return sb_val(c, &b);
}

static jv mk_list(jctx *c, size_t n) {
    jlist *l = ralloc(c, sizeof *l);
    l->n = n;
    l->a = ralloc(c, (n ? n : 1) * sizeof *l->a);
    jv v = {V_LIST, {.l = l}};
    return v;
}

static jv str_split(jctx *c, jv s, const jv *sep, int64_t maxsplit) {
    jv *parts = NULL;
    size_t np = 0, cap = 0;
    const char *p = s.u.s.p;
    size_t n = s.u.s.n, i = 0;
#define PUSH(b_, e_)                                                                                  \
    do {                                                                                              \
        if (np == cap) {                                                                              \
            cap = cap ? cap * 2 : 8;                                                                  \
            jv *g_ = ralloc(c, cap * sizeof *g_);                                                     \
            if (np) memcpy(g_, parts, np * sizeof *g_);                                               \
            parts = g_;                                                                               \
        }                                                                                             \
        parts[np++] = mk_str(p + (b_), (e_) - (b_));                                                  \
        step(c);                                                                                      \
    } while (0)
    if (!sep) { /* runs of whitespace, no empty strings */
        size_t k;
        for (;;) {
            while (i < n && (k = space_len(p + i, n - i))) i += k;
            if (i >= n) break;
            size_t st = i;
            if (maxsplit >= 0 && (int64_t)np >= maxsplit) {
                size_t e = n;
                while (e > st && (k = rspace_len(p + st, e - st))) e -= k;
                PUSH(st, e);
                break;
            }
            while (i < n && !space_len(p + i, n - i)) i++;
            PUSH(st, i);
        }
    } else {
        if (!sep->u.s.n) rfail(c, "split: empty separator");
        size_t st = 0;
        while (i + sep->u.s.n <= n) {
            if ((maxsplit < 0 || (int64_t)np < maxsplit) && !memcmp(p + i, sep->u.s.p, sep->u.s.n)) {
                PUSH(st, i);
                i += sep->u.s.n, st = i;
            } else {
                i++;
            }
        }
        PUSH(st, n);
    }
#undef PUSH
    jv l = mk_list(c, np);
    if (np) memcpy(l.u.l->a, parts, np * sizeof *parts);
    return l;
}

/* -- calls: positional and keyword arguments -- */

typedef struct jargs {
    jv *v;
    const char **kw; /* NULL for positional */
    size_t n;
} jargs;

/* Argument `name` at position pos (or given by keyword); `def` when absent. */
static jv arg(jctx *c, const jargs *a, size_t pos, const char *name, jv def, int *given) {
    size_t npos = 0;
    for (size_t i = 0; i < a->n; i++) {
        if (a->kw[i] ? name && !strcmp(a->kw[i], name) : npos++ == pos) {
            if (given) *given = 1;
            return a->v[i];
        }
    }
    (void)c;
    if (given) *given = 0;
    return def;
}
static void check_args(jctx *c, const jargs *a, size_t max_pos, const char *const *names, const char *fn) {
    size_t npos = 0;
    for (size_t i = 0; i < a->n; i++) {
        if (!a->kw[i]) {
            if (++npos > max_pos) rfail(c, "%s: too many arguments", fn);
            continue;
        }
        int ok = 0;
        for (const char *const *n = names; n && *n && !ok; n++) ok = !strcmp(*n, a->kw[i]);
        if (!ok) rfail(c, "%s: unexpected keyword argument '%s'", fn, a->kw[i]);
    }
}
static jv want_str(jctx *c, jv v, const char *fn) {
    if (v.t != V_STR) rfail(c, "%s: expected a string, got %s", fn, type_name(&v));
    return v;
}
static int64_t want_int(jctx *c, jv v, const char *fn) {
    if (v.t != V_INT && v.t != V_BOOL) rfail(c, "%s: expected an integer, got %s", fn, type_name(&v));
    return v.u.i;
}

/* iteration: list items, dict keys, string characters; undefined is empty */
static jv as_list(jctx *c, jv v) {
    if (v.t == V_LIST) return v;
    if (v.t == V_UNDEF) return mk_list(c, 0);
    if (v.t == V_DICT) {
        jv l = mk_list(c, v.u.d->n);
        memcpy(l.u.l->a, v.u.d->k, v.u.d->n * sizeof(jv));
        return l;
    }
    if (v.t == V_STR) {
        size_t k, *o = cp_offsets(c, v.u.s.p, v.u.s.n, &k);
        jv l = mk_list(c, k);
        for (size_t i = 0; i < k; i++) l.u.l->a[i] = mk_str(v.u.s.p + o[i], o[i + 1] - o[i]);
        return l;
    }
    rfail(c, "'%s' object is not iterable", type_name(&v));
}

static jv get_attr(jctx *c, jv obj, const char *name, size_t n, int item_first);

static jv dict_items(jctx *c, const jdict *d) {
    jv l = mk_list(c, d->n);
    for (size_t i = 0; i < d->n; i++) {
        jv pair = mk_list(c, 2);
        pair.u.l->a[0] = d->k[i], pair.u.l->a[1] = d->v[i];
        l.u.l->a[i] = pair;
    }
    return l;
}

static jv call_method(jctx *c, int id, jv self, const jargs *a) {
    static const char *const none[] = {NULL};
    const char *nm = METHODS[id].name;
    if (METHODS[id].on_dict) {
        if (self.t != V_DICT) rfail(c, "'%s' object has no attribute '%s'", type_name(&self), nm);
        check_args(c, a, METHODS[id].id == M_GET ? 2 : 0, none, nm);
        switch (METHODS[id].id) {
        case M_ITEMS: return dict_items(c, self.u.d);
        case M_KEYS: return as_list(c, self);
        case M_VALUES: {
            jv l = mk_list(c, self.u.d->n);
            memcpy(l.u.l->a, self.u.d->v, self.u.d->n * sizeof(jv));
            return l;
        }
        default: {
            jv k = arg(c, a, 0, NULL, UNDEF, NULL);
            const jv *v = k.t == V_STR ? dict_get(self.u.d, k.u.s.p, k.u.s.n) : NULL;
            return v ? *v : arg(c, a, 1, NULL, NONE, NULL);
        }
        }
    }
    if (self.t != V_STR) rfail(c, "'%s' object has no attribute '%s'", type_name(&self), nm);
    switch (METHODS[id].id) {
    case M_STRIP: case M_LSTRIP: case M_RSTRIP: {
        check_args(c, a, 1, none, nm);
        jv ch = arg(c, a, 0, NULL, NONE, NULL);
        if (ch.t != V_NONE) want_str(c, ch, nm);
        int which = METHODS[id].id == M_STRIP ? 3 : METHODS[id].id == M_LSTRIP ? 1 : 2;
        return strip(c, self, ch.t == V_NONE ? NULL : &ch, which);
    }
    case M_STARTSWITH: case M_ENDSWITH: {
        check_args(c, a, 1, none, nm);
        jv x = arg(c, a, 0, NULL, UNDEF, NULL);
        jv opts = x.t == V_LIST ? x : mk_list(c, 1);
        if (x.t != V_LIST) opts.u.l->a[0] = x;
        for (size_t i = 0; i < opts.u.l->n; i++) {
            jv p = want_str(c, opts.u.l->a[i], nm);
            if (p.u.s.n > self.u.s.n) continue;
            const char *at = METHODS[id].id == M_STARTSWITH ? self.u.s.p : self.u.s.p + self.u.s.n - p.u.s.n;
            if (!memcmp(at, p.u.s.p, p.u.s.n)) return mk_bool(1);
        }
        return mk_bool(0);
    }
    case M_SPLIT: {
        static const char *const kws[] = {"sep", "maxsplit", NULL};
        check_args(c, a, 2, kws, nm);
        jv sep = arg(c, a, 0, "sep", NONE, NULL), mx = arg(c, a, 1, "maxsplit", mk_int(-1), NULL);
        if (sep.t != V_NONE) want_str(c, sep, nm);
        return str_split(c, self, sep.t == V_NONE ? NULL : &sep, want_int(c, mx, nm));
    }
    case M_UPPER: check_args(c, a, 0, none, nm); return str_case(c, self, 0);
    case M_LOWER: check_args(c, a, 0, none, nm); return str_case(c, self, 1);
    case M_TITLE: check_args(c, a, 0, none, nm); return str_case(c, self, 2);
    case M_CAPITALIZE: check_args(c, a, 0, none, nm); return str_case(c, self, 3);
    case M_REPLACE: {
        check_args(c, a, 3, none, nm);
        jv o = want_str(c, arg(c, a, 0, NULL, UNDEF, NULL), nm), n = want_str(c, arg(c, a, 1, NULL, UNDEF, NULL), nm);
        return str_replace(c, self, o, n, want_int(c, arg(c, a, 2, NULL, mk_int(-1), NULL), nm));
    }
    case M_JOIN: {
        check_args(c, a, 1, none, nm);
        jv l = as_list(c, arg(c, a, 0, NULL, UNDEF, NULL));
        sbuf b = {0};
        for (size_t i = 0; i < l.u.l->n; i++) {
            if (i) sb_put(c, &b, self.u.s.p, self.u.s.n);
            jv s = want_str(c, l.u.l->a[i], nm);
            sb_put(c, &b, s.u.s.p, s.u.s.n);
        }
        return sb_val(c, &b);
    }
    default: { /* find, count */
        check_args(c, a, 1, none, nm);
        jv x = want_str(c, arg(c, a, 0, NULL, UNDEF, NULL), nm);
        int64_t cnt = 0;
        size_t k = 0;
        for (size_t i = 0; i + x.u.s.n <= self.u.s.n;) {
            if (!memcmp(self.u.s.p + i, x.u.s.p, x.u.s.n)) {
                if (METHODS[id].id == M_FIND) return mk_int((int64_t)cp_count(self.u.s.p, i));
                cnt++;
                i += x.u.s.n ? x.u.s.n : 1;
            } else {
                i++;
            }
            k = i;
        }
        (void)k;
        if (METHODS[id].id == M_COUNT && !x.u.s.n) return mk_int((int64_t)cp_count(self.u.s.p, self.u.s.n) + 1);
        return mk_int(METHODS[id].id == M_FIND ? -1 : cnt);
    }
    }
}

/* obj.name (item_first 0) or obj[name] (item_first 1), as jinja2.sandbox's getattr / getitem */
/* loop.<name> in iteration i of items */
static jv loop_attr(const jlist *items, size_t i, const char *name, size_t len) {
    static const char *const F[] = {"index", "index0", "revindex", "revindex0", "first", "last", "length", "depth",
                                    "depth0", "previtem", "nextitem"};
    size_t n = items->n;
    int f = FIND(F, name, len);
    switch (f) {
    case 0: return mk_int((int64_t)i + 1);
    case 1: return mk_int((int64_t)i);
    case 2: return mk_int((int64_t)(n - i));
    case 3: return mk_int((int64_t)(n - i - 1));
    case 4: return mk_bool(i == 0);
    case 5: return mk_bool(i + 1 == n);
    case 6: return mk_int((int64_t)n);
    case 7: return mk_int(1);
    case 8: return mk_int(0);
    case 9: return i ? items->a[i - 1] : UNDEF;
    case 10: return i + 1 < n ? items->a[i + 1] : UNDEF;
    default: return UNDEF;
    }
}

static jv get_attr(jctx *c, jv obj, const char *name, size_t n, int item_first) {
    if (obj.t == V_UNDEF) rfail(c, "'%s' is undefined", obj.u.s.p ? obj.u.s.p : "value");
    if (obj.t == V_LOOP) return loop_attr(obj.u.loop.items, obj.u.loop.i, name, n);
    if ((obj.t == V_DICT || obj.t == V_NS) && item_first) {
        const jv *v = dict_get(obj.u.d, name, n);
        if (v) return *v;
    }
    int m = FIND(METHODS, name, n);
    if (m >= 0 && (METHODS[m].on_dict ? obj.t == V_DICT : obj.t == V_STR)) {
        jv v = {V_METHOD, {.m = {m, NULL}}};
        jv *self = ralloc(c, sizeof *self);
        *self = obj;
        v.u.m.self = self;
        return v;
    }
    if (obj.t == V_DICT || obj.t == V_NS) {
        const jv *v = dict_get(obj.u.d, name, n);
        if (v) return *v;
    }
    char *nm = ralloc(c, n + 1);
    memcpy(nm, name, n);
    nm[n] = 0;
    return mk_undef(nm);
}

static int64_t norm_index(int64_t i, size_t n) { return i < 0 ? i + (int64_t)n : i; }

static jv get_item(jctx *c, jv obj, jv key) {
    if (obj.t == V_UNDEF) rfail(c, "'%s' is undefined", obj.u.s.p ? obj.u.s.p : "value");
    if (key.t == V_STR) return get_attr(c, obj, key.u.s.p, key.u.s.n, 1);
    if ((obj.t == V_LIST || obj.t == V_STR) && (key.t == V_INT || key.t == V_BOOL)) {
        if (obj.t == V_LIST) {
            int64_t i = norm_index(key.u.i, obj.u.l->n);
            return i >= 0 && (uint64_t)i < obj.u.l->n ? obj.u.l->a[i] : UNDEF;
        }
        size_t k, *o = cp_offsets(c, obj.u.s.p, obj.u.s.n, &k);
        int64_t i = norm_index(key.u.i, k);
        return i >= 0 && (uint64_t)i < k ? mk_str(obj.u.s.p + o[i], o[i + 1] - o[i]) : UNDEF;
    }
    return UNDEF;
}

/* Python slicing seq[start:stop:step] of a list or string */
static jv slice(jctx *c, jv obj, const jv *st, const jv *sp, const jv *stp) {
    if (obj.t != V_LIST && obj.t != V_STR) {
        if (obj.t == V_UNDEF) rfail(c, "'%s' is undefined", obj.u.s.p ? obj.u.s.p : "value");
        rfail(c, "'%s' object is not subscriptable", type_name(&obj));
    }
    size_t n, *o = NULL;
    if (obj.t == V_STR) o = cp_offsets(c, obj.u.s.p, obj.u.s.n, &n);
    else n = obj.u.l->n;
    int64_t k = stp->t == V_NONE ? 1 : want_int(c, *stp, "slice"), N = (int64_t)n;
    if (k == 0) rfail(c, "slice step cannot be zero");
    int64_t lo = k > 0 ? 0 : -1, hi = k > 0 ? N : N - 1;
    int64_t b = st->t == V_NONE ? (k > 0 ? lo : hi) : want_int(c, *st, "slice");
    int64_t e = sp->t == V_NONE ? (k > 0 ? hi : lo) : want_int(c, *sp, "slice");
    if (st->t != V_NONE) b = b < 0 ? (b + N < lo ? lo : b + N) : (b > hi ? hi : b);
    if (sp->t != V_NONE) e = e < 0 ? (e + N < lo ? lo : e + N) : (e > hi ? hi : e);
    size_t cnt = 0;
    for (int64_t i = b; k > 0 ? i < e : i > e; i += k) cnt++;
    if (obj.t == V_LIST) {
        jv l = mk_list(c, cnt);
        size_t w = 0;
        for (int64_t i = b; k > 0 ? i < e : i > e; i += k) l.u.l->a[w++] = obj.u.l->a[i];
        return l;
    }
    sbuf s = {0};
    for (int64_t i = b; k > 0 ? i < e : i > e; i += k) sb_put(c, &s, obj.u.s.p + o[i], o[i + 1] - o[i]);
    return sb_val(c, &s);
}

/* -- expressions -- */

static jv eval(jctx *c, frame *f, const jnode *n);
static int run_test(jctx *c, int id, jv v, const jargs *a);
static jv run_filter(jctx *c, frame *f, int id, jv v, const jargs *a);

static jv lookup(jctx *c, frame *f, const char *name) {
    size_t n = strlen(name);
    for (; f; f = f->up) {
        const jv *v = dict_get(&f->vars, name, n);
        if (v) return *v;
    }
    const jv *v = dict_get(c->globals, name, n);
    if (v) return *v;
    int g = FIND(GLOBALS, name, n);
    if (g >= 0) {
        jv fn = {V_FUNC, {.m = {GLOBALS[g].id, NULL}}};
        return fn;
    }
    return mk_undef(name);
}

static jargs eval_args(jctx *c, frame *f, const jnode *n) {
    jargs a = {ralloc(c, (n->nk + 1) * sizeof(jv)), ralloc(c, (n->nk + 1) * sizeof(char *)), n->nk};
    for (size_t i = 0; i < n->nk; i++) a.v[i] = eval(c, f, n->kids[i]), a.kw[i] = n->kids[i]->kw;
    return a;
}

static void overflow_check(jctx *c, int overflowed) {
    if (overflowed) rfail(c, "integer overflow");
}

static jv arith(jctx *c, int op, jv a, jv b) {
    char opname[3] = {(char)(op > 255 ? op >> 8 : op), (char)(op > 255 ? op & 255 : 0), 0};
    if (op == '+' && a.t == V_STR && b.t == V_STR) {
        char *s = ralloc(c, a.u.s.n + b.u.s.n + 1);
        if (a.u.s.n + b.u.s.n > J_MAX_OUTPUT) jfail(&c->e, PEFT_EUNSUPPORTED, "chat template: a string longer than %u MiB", J_MAX_OUTPUT >> 20);
        memcpy(s, a.u.s.p, a.u.s.n), memcpy(s + a.u.s.n, b.u.s.p, b.u.s.n);
        s[a.u.s.n + b.u.s.n] = 0;
        return mk_str(s, a.u.s.n + b.u.s.n);
    }
    if (op == '+' && a.t == V_LIST && b.t == V_LIST) {
        jv l = mk_list(c, a.u.l->n + b.u.l->n);
        memcpy(l.u.l->a, a.u.l->a, a.u.l->n * sizeof(jv));
        memcpy(l.u.l->a + a.u.l->n, b.u.l->a, b.u.l->n * sizeof(jv));
        return l;
    }
    if (op == '*' && (a.t == V_INT || a.t == V_BOOL) && (b.t == V_STR || b.t == V_LIST)) {
        jv t = a;
        a = b, b = t;
    }
    if (op == '*' && ((a.t == V_STR || a.t == V_LIST) && (b.t == V_INT || b.t == V_BOOL))) {
        int64_t k = b.u.i < 0 ? 0 : b.u.i;
        size_t unit = a.t == V_STR ? a.u.s.n : a.u.l->n;
        if (unit && (uint64_t)k > J_MAX_OUTPUT / unit) jfail(&c->e, PEFT_EUNSUPPORTED, "chat template: a repetition longer than %u MiB", J_MAX_OUTPUT >> 20);
        if (a.t == V_STR) {
            sbuf s = {0};
            for (int64_t i = 0; i < k; i++) sb_put(c, &s, a.u.s.p, a.u.s.n);
            return sb_val(c, &s);
        }
        jv l = mk_list(c, unit * (size_t)k);
        for (int64_t i = 0; i < k; i++) memcpy(l.u.l->a + (size_t)i * unit, a.u.l->a, unit * sizeof(jv));
        return l;
    }
    if (!is_num(&a) || !is_num(&b))
        rfail(c, "unsupported operand type(s) for %s: '%s' and '%s'", opname, type_name(&a), type_name(&b));
    int ints = a.t != V_FLOAT && b.t != V_FLOAT;
    int64_t x = a.u.i, y = b.u.i, r;
    double p = num(&a), q = num(&b);
    switch (op) {
    case '+':
        if (!ints) return mk_float(p + q);
        overflow_check(c, __builtin_add_overflow(x, y, &r));
        return mk_int(r);
    case '-':
        if (!ints) return mk_float(p - q);
        overflow_check(c, __builtin_sub_overflow(x, y, &r));
        return mk_int(r);
    case '*':
        if (!ints) return mk_float(p * q);
        overflow_check(c, __builtin_mul_overflow(x, y, &r));
        return mk_int(r);
    case '/':
        if (q == 0) rfail(c, "division by zero");
        return mk_float(p / q);
    case OP2('/', '/'): case '%':
        if (q == 0) rfail(c, "%s by zero", op == '%' ? "modulo" : "integer division");
        if (ints) {
            if (x == INT64_MIN && y == -1) rfail(c, "integer overflow");
            int64_t d = x / y, m = x % y;
            if (m && ((m < 0) != (y < 0))) d--, m += y;
            return mk_int(op == '%' ? m : d);
        } else {
            double d = floor(p / q), m = p - d * q;
            return mk_float(op == '%' ? m : d);
        }
    default: /* ** */
        if (ints && y >= 0) {
            int64_t acc = 1;
            for (int64_t i = 0; i < y; i++) {
                step(c);
                overflow_check(c, __builtin_mul_overflow(acc, x, &acc));
                if (acc == 0 || acc == 1) break;
            }
            return mk_int(acc);
        }
        return mk_float(pow(p, q));
    }
}

static jv eval(jctx *c, frame *f, const jnode *n) {
    step(c);
    switch (n->kind) {
    case N_LIT: return n->lit;
    case N_NAME: return lookup(c, f, n->name);
    case N_ATTR: return get_attr(c, eval(c, f, n->a), n->name, strlen(n->name), 0);
    case N_ITEM: return get_item(c, eval(c, f, n->a), eval(c, f, n->b));
    case N_SLICE: {
        jv o = eval(c, f, n->a);
        jv b = n->b ? eval(c, f, n->b) : NONE, e = n->c ? eval(c, f, n->c) : NONE, s = n->d ? eval(c, f, n->d) : NONE;
        return slice(c, o, &b, &e, &s);
    }
    case N_CALL: {
        jv fn = eval(c, f, n->a);
        jargs a = eval_args(c, f, n);
        if (fn.t == V_METHOD) return call_method(c, fn.u.m.id, *fn.u.m.self, &a);
        if (fn.t != V_FUNC) rfail(c, "'%s' is not callable", n->a->kind == N_NAME || n->a->kind == N_ATTR ? n->a->name : type_name(&fn));
        switch (fn.u.m.id) {
        case G_RAISE: {
            jv m = arg(c, &a, 0, NULL, mk_str("", 0), NULL);
            m = to_str(c, &m);
            jfail(&c->e, PEFT_EINVAL, "chat template, line %d: raise_exception: %.*s", n->line, (int)(m.u.s.n > 800 ? 800 : m.u.s.n), m.u.s.p);
        }
        case G_NAMESPACE: case G_DICT: {
            jdict *d = ralloc(c, sizeof *d);
            memset(d, 0, sizeof *d);
            for (size_t i = 0; i < a.n; i++) {
                if (a.kw[i]) dict_set(c, d, mk_str(a.kw[i], strlen(a.kw[i])), a.v[i]);
                else if (a.v[i].t == V_DICT)
                    for (size_t k = 0; k < a.v[i].u.d->n; k++) dict_set(c, d, a.v[i].u.d->k[k], a.v[i].u.d->v[k]);
                else rfail(c, "%s: positional arguments must be dicts", fn.u.m.id == G_DICT ? "dict" : "namespace");
            }
            jv v = {fn.u.m.id == G_DICT ? V_DICT : V_NS, {.d = d}};
            return v;
        }
        default: { /* range */
            static const char *const none[] = {NULL};
            check_args(c, &a, 3, none, "range");
            int64_t p0 = want_int(c, arg(c, &a, 0, NULL, mk_int(0), NULL), "range");
            int64_t lo = a.n >= 2 ? p0 : 0, hi = a.n >= 2 ? want_int(c, arg(c, &a, 1, NULL, UNDEF, NULL), "range") : p0;
            int64_t st = a.n >= 3 ? want_int(c, arg(c, &a, 2, NULL, UNDEF, NULL), "range") : 1;
            if (!a.n) rfail(c, "range expected at least 1 argument");
            if (st == 0) rfail(c, "range() arg 3 must not be zero");
            double cnt = st > 0 ? ceil(((double)hi - (double)lo) / (double)st) : ceil(((double)lo - (double)hi) / (double)-st);
            if (cnt < 0) cnt = 0;
            if (cnt > J_MAX_RANGE) rfail(c, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (%d).", J_MAX_RANGE);
            jv l = mk_list(c, (size_t)cnt);
            for (size_t i = 0; i < (size_t)cnt; i++) l.u.l->a[i] = mk_int(lo + (int64_t)i * st);
            return l;
        }
        }
    }
    case N_FILTER: {
        jv v = eval(c, f, n->a);
        jargs a = eval_args(c, f, n);
        return run_filter(c, f, n->op, v, &a);
    }
    case N_TEST: {
        jv v = eval(c, f, n->a);
        jargs a = eval_args(c, f, n);
        return mk_bool(run_test(c, n->op, v, &a) != n->neg);
    }
    case N_NEG: case N_POS: {
        jv v = eval(c, f, n->a);
        if (!is_num(&v)) rfail(c, "bad operand type for unary %c: '%s'", n->kind == N_NEG ? '-' : '+', type_name(&v));
        if (n->kind == N_POS) return v.t == V_BOOL ? mk_int(v.u.i) : v;
        if (v.t == V_FLOAT) return mk_float(-v.u.f);
        if (v.u.i == INT64_MIN) rfail(c, "integer overflow");
        return mk_int(-v.u.i);
    }
    case N_NOT: { jv v = eval(c, f, n->a); return mk_bool(!truthy(&v)); }
    case N_AND: { jv v = eval(c, f, n->a); return truthy(&v) ? eval(c, f, n->b) : v; }
    case N_OR: { jv v = eval(c, f, n->a); return truthy(&v) ? v : eval(c, f, n->b); }
    case N_COND: {
        jv cond = eval(c, f, n->b);
        return truthy(&cond) ? eval(c, f, n->a) : n->c ? eval(c, f, n->c) : UNDEF;
    }
    case N_BIN: {
        jv a = eval(c, f, n->a), b = eval(c, f, n->b);
        if (n->op == '~') {
            jv x = to_str(c, &a), y = to_str(c, &b);
            return arith(c, '+', x, y);
        }
        return arith(c, n->op, a, b);
    }
    case N_CMP: { /* chained: a < b < c is a < b and b < c */
        jv left = eval(c, f, n->kids[0]);
        for (size_t i = 1; i < n->nk; i++) {
            jv right = eval(c, f, n->kids[i]->a);
            int op = n->kids[i]->op, r;
            switch (op) {
            case OP2('=', '='): r = equal(&left, &right); break;
            case OP2('!', '='): r = !equal(&left, &right); break;
            case C_IN: r = contains(c, &right, &left); break;
            case C_NOTIN: r = !contains(c, &right, &left); break;
            case '<': r = order(c, &left, &right, "<") < 0; break;
            case '>': r = order(c, &left, &right, ">") > 0; break;
            case OP2('<', '='): r = order(c, &left, &right, "<=") <= 0; break;
            default: r = order(c, &left, &right, ">=") >= 0; break;
            }
            if (!r) return mk_bool(0);
            left = right;
        }
        return mk_bool(1);
    }
    case N_LIST: {
        jv l = mk_list(c, n->nk);
        for (size_t i = 0; i < n->nk; i++) l.u.l->a[i] = eval(c, f, n->kids[i]);
        return l;
    }
    default: { /* N_DICT */
        jdict *d = ralloc(c, sizeof *d);
        memset(d, 0, sizeof *d);
        for (size_t i = 0; i + 1 < n->nk; i += 2) {
            jv k = eval(c, f, n->kids[i]);
            if (k.t != V_STR) rfail(c, "dict keys must be strings here, got %s", type_name(&k));
            dict_set(c, d, k, eval(c, f, n->kids[i + 1]));
        }
        jv v = {V_DICT, {.d = d}};
        return v;
    }
    }
}

static int run_test(jctx *c, int id, jv v, const jargs *a) {
    jv x = arg(c, a, 0, NULL, UNDEF, NULL);
    switch (id) {
    case T_DEFINED: return v.t != V_UNDEF;
    case T_UNDEFINED: return v.t == V_UNDEF;
    case T_NONE: return v.t == V_NONE;
    case T_STRING: return v.t == V_STR;
    case T_NUMBER: return is_num(&v);
    case T_INTEGER: return v.t == V_INT;
    case T_FLOAT: return v.t == V_FLOAT;
    case T_BOOLEAN: return v.t == V_BOOL;
    case T_TRUE: return v.t == V_BOOL && v.u.i;
    case T_FALSE: return v.t == V_BOOL && !v.u.i;
    case T_MAPPING: return v.t == V_DICT;
    case T_SEQUENCE: case T_ITERABLE: return v.t == V_STR || v.t == V_LIST || v.t == V_DICT;
    case T_EQ: return equal(&v, &x);
    case T_NE: return !equal(&v, &x);
    case T_SAMEAS: return v.t == x.t && (v.t == V_NONE || v.t == V_UNDEF || ((v.t == V_BOOL || v.t == V_INT) && v.u.i == x.u.i) ||
                                         (v.t == V_LIST && v.u.l == x.u.l) || ((v.t == V_DICT || v.t == V_NS) && v.u.d == x.u.d));
    case T_LT: return order(c, &v, &x, "<") < 0;
    case T_LE: return order(c, &v, &x, "<=") <= 0;
    case T_GT: return order(c, &v, &x, ">") > 0;
    case T_GE: return order(c, &v, &x, ">=") >= 0;
    case T_ODD: case T_EVEN: {
        int64_t i = want_int(c, v, id == T_ODD ? "odd" : "even");
        return (i % 2 != 0) == (id == T_ODD);
    }
    case T_DIVISIBLEBY: {
        int64_t d = want_int(c, x, "divisibleby"), i = want_int(c, v, "divisibleby");
        if (!d) rfail(c, "divisibleby: modulo by zero");
        return d == -1 || i % d == 0;
    }
    case T_LOWER: case T_UPPER: {
        jv s = to_str(c, &v);
        int cased = 0;
        for (size_t i = 0; i < s.u.s.n; i++) {
            char ch = s.u.s.p[i];
            if (ch >= 'a' && ch <= 'z') { if (id == T_UPPER) return 0; cased = 1; }
            if (ch >= 'A' && ch <= 'Z') { if (id == T_LOWER) return 0; cased = 1; }
        }
        return cased;
    }
    default: return contains(c, &x, &v); /* in */
    }
}

/* selectattr / rejectattr / select / reject: items passing the test (named by a string argument) */
static jv select_items(jctx *c, jv seq, const jargs *a, int by_attr, int keep) {
    jv l = as_list(c, seq);
    size_t first = by_attr ? 1 : 0;
    jv attr = by_attr ? want_str(c, arg(c, a, 0, NULL, UNDEF, NULL), "selectattr") : UNDEF;
    jv tname = arg(c, a, first, NULL, UNDEF, NULL);
    int tid = -1;
    if (tname.t != V_UNDEF) {
        want_str(c, tname, "select");
        int t = FIND(TESTS, tname.u.s.p, tname.u.s.n);
        if (t < 0) rfail(c, "no test named '%.*s'", (int)tname.u.s.n, tname.u.s.p);
        tid = TESTS[t].id;
    }
    jargs rest = {a->v, a->kw, 0};
    if (a->n > first + 1) rest.v += first + 1, rest.kw += first + 1, rest.n = a->n - first - 1;
    jv out = mk_list(c, l.u.l->n);
    size_t w = 0;
    for (size_t i = 0; i < l.u.l->n; i++) {
        jv x = l.u.l->a[i];
        if (by_attr) x = get_attr(c, x, attr.u.s.p, attr.u.s.n, 1);
        int pass = tid < 0 ? truthy(&x) : run_test(c, tid, x, &rest);
        if (pass == keep) out.u.l->a[w++] = l.u.l->a[i];
    }
    out.u.l->n = w;
    return out;
}

static jv run_filter(jctx *c, frame *f, int id, jv v, const jargs *a) {
    switch (id) {
    case F_TRIM: {
        jv ch = arg(c, a, 0, "chars", NONE, NULL);
        if (ch.t != V_NONE) want_str(c, ch, "trim");
        return strip(c, to_str(c, &v), ch.t == V_NONE ? NULL : &ch, 3);
    }
    case F_LENGTH:
        if (v.t == V_STR) return mk_int((int64_t)cp_count(v.u.s.p, v.u.s.n));
        if (v.t == V_LIST) return mk_int((int64_t)v.u.l->n);
        if (v.t == V_DICT) return mk_int((int64_t)v.u.d->n);
        if (v.t == V_UNDEF) return mk_int(0);
        rfail(c, "object of type '%s' has no len()", type_name(&v));
    case F_TOJSON: {
        static const char *const kws[] = {"indent", "ensure_ascii", "separators", "sort_keys", NULL};
        check_args(c, a, 1, kws, "tojson");
        jv ind = arg(c, a, 0, "indent", NONE, NULL), asc = arg(c, a, 1, "ensure_ascii", mk_bool(0), NULL);
        jv sep = arg(c, a, 2, "separators", NONE, NULL), sk = arg(c, a, 3, "sort_keys", mk_bool(0), NULL);
        if (truthy(&asc) || sep.t != V_NONE) rfail(c, "tojson: ensure_ascii and separators are not supported");
        int indent = ind.t == V_NONE ? -1 : (int)want_int(c, ind, "tojson");
        if (indent > 64) rfail(c, "tojson: indent %d is too large", indent);
        sbuf b = {0};
        json_into(c, &b, &v, indent < 0 ? -1 : indent, 0, truthy(&sk));
        return sb_val(c, &b);
    }
    case F_STRING: case F_SAFE: return v.t == V_STR || id == F_SAFE ? v : to_str(c, &v);
    case F_UPPER: return str_case(c, to_str(c, &v), 0);
    case F_LOWER: return str_case(c, to_str(c, &v), 1);
    case F_TITLE: return str_case(c, to_str(c, &v), 2);
    case F_CAPITALIZE: return str_case(c, to_str(c, &v), 3);
    case F_REPLACE: {
        jv s = to_str(c, &v), o = arg(c, a, 0, "old", UNDEF, NULL), nw = arg(c, a, 1, "new", UNDEF, NULL);
        jv cnt = arg(c, a, 2, "count", NONE, NULL);
        return str_replace(c, s, to_str(c, &o), to_str(c, &nw), cnt.t == V_NONE ? -1 : want_int(c, cnt, "replace"));
    }
    case F_DEFAULT: {
        jv d = arg(c, a, 0, "default_value", mk_str("", 0), NULL), bo = arg(c, a, 1, "boolean", mk_bool(0), NULL);
        return v.t == V_UNDEF || (truthy(&bo) && !truthy(&v)) ? d : v;
    }
    case F_FIRST: case F_LAST: {
        jv l = as_list(c, v);
        if (!l.u.l->n) return UNDEF;
        return l.u.l->a[id == F_FIRST ? 0 : l.u.l->n - 1];
    }
    case F_JOIN: {
        jv l = as_list(c, v), d = arg(c, a, 0, "d", mk_str("", 0), NULL);
        d = to_str(c, &d);
        jv at = arg(c, a, 1, "attribute", NONE, NULL);
        sbuf b = {0};
        for (size_t i = 0; i < l.u.l->n; i++) {
            if (i) sb_put(c, &b, d.u.s.p, d.u.s.n);
            jv x = l.u.l->a[i];
            if (at.t == V_STR) x = get_attr(c, x, at.u.s.p, at.u.s.n, 1);
            x = to_str(c, &x);
            sb_put(c, &b, x.u.s.p, x.u.s.n);
        }
        return sb_val(c, &b);
    }
    case F_ITEMS:
        if (v.t == V_UNDEF) return mk_list(c, 0);
        if (v.t != V_DICT) rfail(c, "items: can only get item pairs from a mapping, not %s", type_name(&v));
        return dict_items(c, v.u.d);
    case F_SELECTATTR: return select_items(c, v, a, 1, 1);
    case F_REJECTATTR: return select_items(c, v, a, 1, 0);
    case F_SELECT: return select_items(c, v, a, 0, 1);
    case F_REJECT: return select_items(c, v, a, 0, 0);
    case F_MAP: {
        jv l = as_list(c, v), at = arg(c, a, 0, "attribute", UNDEF, NULL);
        int by_attr = 0;
        for (size_t i = 0; i < a->n; i++) by_attr |= a->kw[i] && !strcmp(a->kw[i], "attribute");
        jv out = mk_list(c, l.u.l->n);
        if (by_attr) {
            jv def = arg(c, a, 99, "default", UNDEF, NULL);
            want_str(c, at, "map");
            for (size_t i = 0; i < l.u.l->n; i++) {
                jv x = get_attr(c, l.u.l->a[i], at.u.s.p, at.u.s.n, 1);
                out.u.l->a[i] = x.t == V_UNDEF && def.t != V_UNDEF ? def : x;
            }
            return out;
        }
        want_str(c, at, "map");
        int fi = FIND(FILTERS, at.u.s.p, at.u.s.n);
        if (fi < 0) rfail(c, "map: no filter named '%.*s'", (int)at.u.s.n, at.u.s.p);
        jargs rest = {a->v + 1, a->kw + 1, a->n - 1};
        for (size_t i = 0; i < l.u.l->n; i++) out.u.l->a[i] = run_filter(c, f, FILTERS[fi].id, l.u.l->a[i], &rest);
        return out;
    }
    case F_LIST: return as_list(c, v);
    case F_REVERSE: {
        if (v.t == V_STR) {
            jv none = NONE, neg = mk_int(-1);
            return slice(c, v, &none, &none, &neg);
        }
        jv l = as_list(c, v), out = mk_list(c, l.u.l->n);
        for (size_t i = 0; i < l.u.l->n; i++) out.u.l->a[i] = l.u.l->a[l.u.l->n - 1 - i];
        return out;
    }
    case F_INT: case F_FLOAT: {
        jv def = arg(c, a, 0, "default", id == F_INT ? mk_int(0) : mk_float(0), NULL);
        if (v.t == V_INT || v.t == V_BOOL) return id == F_INT ? mk_int(v.u.i) : mk_float((double)v.u.i);
        if (v.t == V_FLOAT) return id == F_FLOAT ? v : fabs(v.u.f) < 9e18 ? mk_int((int64_t)v.u.f) : def;
        if (v.t == V_STR) {
            char buf[64];
            jv s = strip(c, v, NULL, 3);
            if (!s.u.s.n || s.u.s.n >= sizeof buf) return def;
            memcpy(buf, s.u.s.p, s.u.s.n), buf[s.u.s.n] = 0;
            char *e;
            if (id == F_INT) {
                long long i = strtoll(buf, &e, 10);
                if (*e) { double d = strtod(buf, &e); return *e || fabs(d) >= 9e18 ? def : mk_int((int64_t)d); }
                return mk_int(i);
            }
            double d = strtod(buf, &e);
            return *e ? def : mk_float(d);
        }
        return def;
    }
    case F_ABS:
        if (!is_num(&v)) rfail(c, "bad operand type for abs(): '%s'", type_name(&v));
        if (v.t == V_FLOAT) return mk_float(fabs(v.u.f));
        if (v.u.i == INT64_MIN) rfail(c, "integer overflow");
        return mk_int(v.u.i < 0 ? -v.u.i : v.u.i);
    case F_ESCAPE: {
        jv s = to_str(c, &v);
        sbuf b = {0};
        for (size_t i = 0; i < s.u.s.n; i++) {
            char ch = s.u.s.p[i];
            const char *e = ch == '&' ? "&amp;" : ch == '<' ? "&lt;" : ch == '>' ? "&gt;" : ch == '"' ? "&#34;" : ch == '\'' ? "&#39;" : NULL;
            if (e) sb_puts(c, &b, e);
            else sb_put(c, &b, &ch, 1);
        }
        return sb_val(c, &b);
    }
    case F_INDENT: { /* indent(width=4, first=False, blank=False): lines after the first, non-empty unless blank */
        jv s = to_str(c, &v), w = arg(c, a, 0, "width", mk_int(4), NULL), fi = arg(c, a, 1, "first", mk_bool(0), NULL);
        jv bl = arg(c, a, 2, "blank", mk_bool(0), NULL);
        sbuf pad = {0};
        if (w.t == V_STR) sb_put(c, &pad, w.u.s.p, w.u.s.n);
        else for (int64_t i = want_int(c, w, "indent"); i > 0 && pad.n < 256; i--) sb_puts(c, &pad, " ");
        sb_put(c, &pad, "", 0);
        sbuf b = {0};
        if (truthy(&fi)) sb_put(c, &b, pad.p, pad.n);
        for (size_t i = 0, ls = 0; i <= s.u.s.n; i++) {
            if (i < s.u.s.n && s.u.s.p[i] != '\n') continue;
            if (ls && (i > ls || truthy(&bl))) sb_put(c, &b, pad.p, pad.n);
            sb_put(c, &b, s.u.s.p + ls, i - ls + (i < s.u.s.n));
            ls = i + 1;
        }
        return sb_val(c, &b);
    }
    case F_UNIQUE: {
        jv l = as_list(c, v), out = mk_list(c, l.u.l->n);
        size_t w = 0;
        for (size_t i = 0; i < l.u.l->n; i++) {
            int seen = 0;
            for (size_t k = 0; k < w && !seen; k++) seen = equal(&out.u.l->a[k], &l.u.l->a[i]);
            if (!seen) out.u.l->a[w++] = l.u.l->a[i];
        }
        out.u.l->n = w;
        return out;
    }
    case F_SUM: {
        jv l = as_list(c, v), acc = arg(c, a, 1, "start", mk_int(0), NULL), at = arg(c, a, 0, "attribute", NONE, NULL);
        for (size_t i = 0; i < l.u.l->n; i++)
            acc = arith(c, '+', acc, at.t == V_STR ? get_attr(c, l.u.l->a[i], at.u.s.p, at.u.s.n, 1) : l.u.l->a[i]);
        return acc;
    }
    default: { /* min, max */
        jv l = as_list(c, v);
        if (!l.u.l->n) return UNDEF;
        jv best = l.u.l->a[0];
        for (size_t i = 1; i < l.u.l->n; i++) {
            int r = order(c, &l.u.l->a[i], &best, id == F_MIN ? "<" : ">");
            if (id == F_MIN ? r < 0 : r > 0) best = l.u.l->a[i];
        }
        return best;
    }
    }
    (void)f;
}

/* -- statements -- */

enum { FLOW_NORMAL, FLOW_BREAK, FLOW_CONTINUE };

static void emit(jctx *c, const char *s, size_t n) {
    if (c->n + n + 1 > c->cap) {
        if (c->n + n > J_MAX_OUTPUT) jfail(&c->e, PEFT_EUNSUPPORTED, "chat template: the rendering exceeds %u MiB", J_MAX_OUTPUT >> 20);
        size_t cap = (c->n + n + 1) * 2;
        char *g = realloc(c->out, cap);
        if (!g) jfail(&c->e, PEFT_ENOMEM, "chat template: out of memory");
        c->out = g, c->cap = cap;
    }
    memcpy(c->out + c->n, s, n);
    c->n += n;
    c->out[c->n] = 0;
}

static int exec_body(jctx *c, frame *f, const jnode *body);

static void assign(jctx *c, frame *f, const jnode *n, jv v) {
    if (n->attr) {
        jv ns = lookup(c, f, n->name);
        if (ns.t != V_NS) rfail(c, "cannot assign attribute on non-namespace object '%s'", n->name);
        dict_set(c, ns.u.d, mk_str(n->attr, strlen(n->attr)), v);
    } else {
        dict_set(c, &f->vars, mk_str(n->name, strlen(n->name)), v);
    }
}

static void bind_target(jctx *c, frame *it, const jnode *n, jv x) {
    if (!n->attr) {
        dict_set(c, &it->vars, mk_str(n->name, strlen(n->name)), x);
        return;
    }
    jv l = as_list(c, x);
    if (l.u.l->n != 2) rfail(c, "for %s, %s: cannot unpack %zu values into 2", n->name, n->attr, l.u.l->n);
    dict_set(c, &it->vars, mk_str(n->name, strlen(n->name)), l.u.l->a[0]);
    dict_set(c, &it->vars, mk_str(n->attr, strlen(n->attr)), l.u.l->a[1]);
}

static int exec_stmt(jctx *c, frame *f, const jnode *n) {
    step(c);
    c->line = n->line;
    switch (n->kind) {
    case N_TEXT: emit(c, n->lit.u.s.p, n->lit.u.s.n); return FLOW_NORMAL;
    case N_OUT: {
        jv v = eval(c, f, n->a);
        c->line = n->line;
        v = to_str(c, &v);
        emit(c, v.u.s.p, v.u.s.n);
        return FLOW_NORMAL;
    }
    case N_IF:
        for (const jnode *b = n; b;) {
            c->line = b->line;
            jv cond = eval(c, f, b->a);
            if (truthy(&cond)) return exec_body(c, f, b->b);
            if (b->c && b->c->kind == N_IF) b = b->c;
            else return b->c ? exec_body(c, f, b->c) : FLOW_NORMAL;
        }
        return FLOW_NORMAL;
    case N_FOR: {
        jv seq = eval(c, f, n->a);
        if (seq.t == V_NONE || is_num(&seq)) rfail(c, "'%s' object is not iterable", type_name(&seq));
        jv l = as_list(c, seq);
        if (n->d) { /* {% for x in xs if cond %}: the loop sees the filtered items only */
            jv kept = mk_list(c, l.u.l->n);
            size_t w = 0;
            for (size_t i = 0; i < l.u.l->n; i++) {
                frame it = {f, {0}};
                bind_target(c, &it, n, l.u.l->a[i]);
                jv ok = eval(c, &it, n->d);
                if (truthy(&ok)) kept.u.l->a[w++] = l.u.l->a[i];
            }
            kept.u.l->n = w;
            l = kept;
        }
        for (size_t i = 0; i < l.u.l->n; i++) {
            step(c);
            frame it = {f, {0}}; /* each iteration has its own scope, as in Jinja2 */
            bind_target(c, &it, n, l.u.l->a[i]);
            jv loop = {V_LOOP, {.loop = {l.u.l, i}}};
            dict_set(c, &it.vars, mk_str("loop", 4), loop);
            if (exec_body(c, &it, n->b) == FLOW_BREAK) break;
        }
        if (!l.u.l->n && n->c) return exec_body(c, f, n->c);
        return FLOW_NORMAL;
    }
    case N_SET: assign(c, f, n, eval(c, f, n->a)); return FLOW_NORMAL;
    case N_SETBLOCK: {
        size_t start = c->n;
        int flow = exec_body(c, f, n->b);
        char *s = ralloc(c, c->n - start + 1);
        memcpy(s, c->out + start, c->n - start);
        s[c->n - start] = 0;
        jv v = mk_str(s, c->n - start);
        c->n = start;
        if (c->out) c->out[start] = 0;
        assign(c, f, n, v);
        return flow;
    }
    case N_BREAK: return FLOW_BREAK;
    case N_CONTINUE: return FLOW_CONTINUE;
    default: { /* N_GENERATION */
        size_t start = c->n;
        int flow = exec_body(c, f, n->b);
        if (c->n_gen == c->cap_gen) {
            size_t cap = c->cap_gen ? c->cap_gen * 2 : 8;
            peft_jinja_span *g = realloc(c->gen, cap * sizeof *g);
            if (!g) jfail(&c->e, PEFT_ENOMEM, "chat template: out of memory");
            c->gen = g, c->cap_gen = cap;
        }
        c->gen[c->n_gen].start = start;
        c->gen[c->n_gen++].end = c->n;
        return flow;
    }
    }
}

static int exec_body(jctx *c, frame *f, const jnode *body) {
    for (size_t i = 0; i < body->nk; i++) {
        int flow = exec_stmt(c, f, body->kids[i]);
        if (flow != FLOW_NORMAL) return flow;
    }
    return FLOW_NORMAL;
}

int peft_jinja_render(const peft_jinja *t, const cJSON *vars, char **out, size_t *out_len, peft_jinja_span **gen,
                      size_t *n_gen, peft_err *err) {
    jctx c;
    memset(&c, 0, sizeof c);
    c.e.err = err;
    *out = NULL;
    if (gen) *gen = NULL, *n_gen = 0;
    if (setjmp(c.e.jb)) {
        free(c.out);
        free(c.gen);
        arena_free(&c.ar);
        return c.e.code;
    }
    jv g = vars && cJSON_IsObject(vars) ? from_json(&c, vars) : UNDEF;
    jdict empty = {0};
    c.globals = g.t == V_DICT ? g.u.d : &empty;
    frame top = {NULL, {0}};
    exec_body(&c, &top, t->root);
    emit(&c, "", 0);
    arena_free(&c.ar);
    *out = c.out;
    *out_len = c.n;
    if (gen) *gen = c.gen, *n_gen = c.n_gen;
    else free(c.gen);
    return PEFT_OK;
}
