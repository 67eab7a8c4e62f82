/* args.c: long-option parsing for the CLI, with range-checked numbers (args.h). */
#include "args.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* "--x" and longer: an option name, never a value (negative numbers have one dash). */
static int is_option(const char *s) {
    return s[0] == '-' && s[1] == '-' && s[2] != '\0';
}

void args_init(cli_args *a, const char *cmd, int argc, char **argv) {
    memset(a, 0, sizeof *a);
    a->cmd = cmd;
    a->too_many = argc > CLI_MAX_ARGS;
    a->argc = a->too_many ? CLI_MAX_ARGS : argc;
    a->argv = argv;
    a->used[0] = 1; /* the subcommand itself */
    for (int i = 1; i < a->argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) a->help = a->used[i] = 1;
}

/* The last occurrence wins (so scripts can override a default by appending); earlier
 * occurrences and their values are marked used too. */
static int find(cli_args *a, const char *name) {
    int found = -1;
    for (int i = 1; i < a->argc; i++)
        if (!strcmp(a->argv[i], name)) {
            if (found >= 0) {
                a->used[found] = 1;
                if (found + 1 < a->argc && !is_option(a->argv[found + 1])) a->used[found + 1] = 1;
            }
            found = i;
        }
    return found;
}

void args_complain(cli_args *a, const char *fmt, ...) {
    a->bad = 1;
    if (a->help) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "peft %s: ", a->cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int args_has(cli_args *a, const char *name) {
    int i = find(a, name);
    if (i < 0) return 0;
    a->used[i] = 1;
    return 1;
}

const char *args_str(cli_args *a, const char *name, const char *dflt) {
    int i = find(a, name);
    if (i < 0) return dflt;
    a->used[i] = 1;
    if (i + 1 >= a->argc) {
        args_complain(a, "%s needs a value", name);
        return dflt;
    }
    if (is_option(a->argv[i + 1])) { /* `--out --steps 3`: --out's value is missing */
        args_complain(a, "%s needs a value, got the option '%s'", name, a->argv[i + 1]);
        return dflt;
    }
    a->used[i + 1] = 1;
    return a->argv[i + 1];
}

int args_choice(cli_args *a, const char *name, const char *const *choices, int dflt) {
    const char *s = args_str(a, name, NULL);
    if (!s) return dflt;
    for (int k = 0; choices[k]; k++)
        if (!strcmp(s, choices[k])) return k;
    char list[256] = "";
    for (int k = 0; choices[k]; k++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", k ? "|" : "", choices[k]);
    args_complain(a, "%s must be %s, got '%s'", name, list, s);
    return dflt;
}

const char *cli_range_str(cli_range r, char *buf, size_t n) {
    snprintf(buf, n, "%c%.10g, %.10g%c", r.lo_open ? '(' : '[', r.lo, r.hi, r.hi_open ? ')' : ']');
    return buf;
}

static int in_range(double v, cli_range r) {
    return (r.lo_open ? v > r.lo : v >= r.lo) && (r.hi_open ? v < r.hi : v <= r.hi);
}

int cli_parse_int(const char *s, long lo, long hi, long *out) {
    /* strtol alone would take leading blanks, an empty string or "12abc" up to the letters */
    if (!(isdigit((unsigned char)s[0]) || ((s[0] == '-' || s[0] == '+') && isdigit((unsigned char)s[1])))) return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*end != '\0') return -1;
    if (errno == ERANGE || v < lo || v > hi) return -2;
    *out = v;
    return 0;
}

int cli_parse_real(const char *s, cli_range r, double *out) {
    if (*s == '\0' || isspace((unsigned char)*s)) return -1;
    char *end;
    double v = strtod(s, &end);
    if (*end != '\0' || isnan(v)) return -1;
    if (!in_range(v, r)) return -2; /* 1e999 parses as inf: out of any finite range */
    *out = v;
    return 0;
}

static void record(cli_args *a, cli_num_opt o) {
    for (int k = 0; k < a->n_nums; k++)
        if (!strcmp(a->nums[k].name, o.name)) return;
    if (a->n_nums < CLI_MAX_NUMS) a->nums[a->n_nums++] = o;
}

long args_int(cli_args *a, const char *name, long dflt, long lo, long hi) {
    record(a, (cli_num_opt){.name = name, .is_int = 1, .ilo = lo, .ihi = hi, .idflt = dflt});
    const char *s = args_str(a, name, NULL);
    long v;
    if (!s) return dflt;
    int rc = cli_parse_int(s, lo, hi, &v);
    if (rc == 0) return v;
    args_complain(a, "%s %s an integer in [%ld, %ld], got '%s'", name, rc == -1 ? "expects" : "must be", lo, hi, s);
    return dflt;
}

double args_real(cli_args *a, const char *name, double dflt, cli_range r) {
    record(a, (cli_num_opt){.name = name, .r = r, .dflt = dflt});
    const char *s = args_str(a, name, NULL);
    double v;
    if (!s) return dflt;
    int rc = cli_parse_real(s, r, &v);
    if (rc == 0) return v;
    char range[80];
    args_complain(a, "%s %s a number in %s, got '%s'", name, rc == -1 ? "expects" : "must be", cli_range_str(r, range, sizeof range), s);
    return dflt;
}

void args_print_numbers(const cli_args *a, FILE *fp) {
    if (!a->n_nums) return;
    fprintf(fp, "Numeric options (default; accepted values; anything else is refused):\n");
    for (int k = 0; k < a->n_nums; k++) {
        const cli_num_opt *o = &a->nums[k];
        char dflt[32], range[96];
        if (o->is_int) {
            if (o->idflt >= o->ilo && o->idflt <= o->ihi) snprintf(dflt, sizeof dflt, "%ld", o->idflt);
            else snprintf(dflt, sizeof dflt, "unset");
            snprintf(range, sizeof range, "integer in [%ld, %ld]", o->ilo, o->ihi);
        } else {
            if (in_range(o->dflt, o->r)) snprintf(dflt, sizeof dflt, "%g", o->dflt);
            else snprintf(dflt, sizeof dflt, "unset");
            char r[80];
            snprintf(range, sizeof range, "number in %s", cli_range_str(o->r, r, sizeof r));
        }
        fprintf(fp, "  %-26s %-8s %s\n", o->name, dflt, range);
    }
}

int args_finish(cli_args *a) {
    if (a->too_many) {
        fprintf(stderr, "peft %s: too many arguments (at most %d)\n", a->cmd, CLI_MAX_ARGS - 1);
        return 2;
    }
    for (int i = 1; i < a->argc; i++)
        if (!a->used[i]) {
            fprintf(stderr, "peft %s: unknown option '%s' (see peft %s --help)\n", a->cmd, a->argv[i], a->cmd);
            return 2;
        }
    return a->bad ? 2 : 0;
}
