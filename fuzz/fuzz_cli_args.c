/* fuzz_cli_args.c: libFuzzer target for the CLI option reader (src/cli/args.c) and the id
 * lists of cli_parse_ids (--layers, --prompt-ids, --ids). Built by fuzz/run.sh.
 *
 * Input: NUL-separated argv entries (up to 300, so the CLI_MAX_ARGS limit is crossed too).
 * They go through the getters a command makes (strings, flags, integers and reals with
 * closed and open ranges, repeated names), then args_finish and args_print_numbers. Checked:
 *  - every integer is dflt or inside its range, and when it came from argv it is what strtoll
 *    reads from the whole token; every real is dflt or inside its range, never NaN, and equals
 *    strtod of the token;
 *  - a string value is an argv entry that is not an option ("--x"), or the default;
 *  - args_finish returns 0 or 2, and 2 whenever a getter refused a value;
 *  - cli_parse_ids on every entry either fails with a message or gives ids in [0, INT32_MAX]
 *    that strtol reads back from the text, in order. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The reader compiled into this target, its messages sent to /dev/null instead of stderr
 * (thousands per second would bury libFuzzer's log; its crash reports still use stderr). */
static FILE *fuzz_sink;
#undef stderr
#define stderr fuzz_sink
#include "cli/args.c"
#undef stderr
#define stderr stderr
#include "cli/cli_common.c" /* cli_parse_ids: the CLI is not part of the fuzzed library */

#define REQUIRE(c)                      \
    do {                                \
        if (!(c)) __builtin_trap();     \
    } while (0)

/* The value the reader must have used for `name`: the token after its last occurrence. */
static const char *last_value(int argc, char **argv, const char *name) {
    const char *v = NULL;
    for (int i = 1; i < argc && i < CLI_MAX_ARGS; i++)
        if (!strcmp(argv[i], name)) v = i + 1 < argc && i + 1 < CLI_MAX_ARGS ? argv[i + 1] : NULL;
    return v;
}

static void check_int(cli_args *a, const char *name, long dflt, long lo, long hi) {
    int bad = a->bad;
    a->bad = 0;
    long v = args_int(a, name, dflt, lo, hi);
    const char *s = last_value(a->argc, a->argv, name);
    if (!a->bad && s && strncmp(s, "--", 2)) {
        REQUIRE(v >= lo && v <= hi);
        char *end;
        errno = 0;
        long long ref = strtoll(s, &end, 10);
        REQUIRE(errno == 0 && *end == '\0' && ref == v);
    } else {
        REQUIRE(v == dflt);
    }
    a->bad |= bad;
}

static void check_real(cli_args *a, const char *name, double dflt, cli_range r) {
    int bad = a->bad;
    a->bad = 0;
    double v = args_real(a, name, dflt, r);
    const char *s = last_value(a->argc, a->argv, name);
    if (!a->bad && s && strncmp(s, "--", 2)) {
        REQUIRE(!isnan(v) && (r.lo_open ? v > r.lo : v >= r.lo) && (r.hi_open ? v < r.hi : v <= r.hi));
        REQUIRE(v == strtod(s, NULL));
    } else {
        REQUIRE(v == dflt);
    }
    a->bad |= bad;
}

static void check_ids(const char *s) {
    int32_t *ids = NULL;
    size_t n = 0;
    peft_err err = {0};
    int rc = cli_parse_ids(s, "fuzz", &ids, &n, &err);
    if (rc) {
        REQUIRE(rc < 0 && err.code == rc && memchr(err.msg, 0, sizeof err.msg) && strstr(err.msg, "fuzz"));
        return;
    }
    const char *p = s;
    for (size_t i = 0; i < n; i++) { /* the ids in order, each as strtol reads it */
        while (*p && !(*p >= '0' && *p <= '9') && *p != '-' && *p != '+') p++;
        char *end;
        long v = strtol(p, &end, 10);
        REQUIRE(end != p && v == ids[i] && ids[i] >= 0);
        p = end;
    }
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 4096) return 0;
    if (!fuzz_sink && !(fuzz_sink = fopen("/dev/null", "w"))) return 0;
    /* argv[0] is the subcommand; the input's NUL-separated pieces follow */
    char *buf = malloc(size + 1), *argv[300];
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    int argc = 0;
    argv[argc++] = "train";
    for (char *p = buf; argc < 300 && p <= buf + size; p += strlen(p) + 1) argv[argc++] = p;
    cli_args a;
    args_init(&a, "train", argc, argv);
    const char *s = args_str(&a, "--model", "dflt");
    REQUIRE(!strcmp(s, "dflt") || strncmp(s, "--", 2) || !strcmp(s, "--"));
    args_has(&a, "--rslora");
    check_int(&a, "--rank", 8, 1, 65536);
    check_int(&a, "--seed", 42, 0, LONG_MAX);
    check_int(&a, "--warmup", 0, -5, 5);
    check_real(&a, "--lr", 2e-4, CLI_ABOVE(0, 10));
    check_real(&a, "--dropout", 0, CLI_BELOW(0, 1));
    check_real(&a, "--alpha", 16, CLI_CLOSED(-1e6, 1e6));
    check_real(&a, "--rank", 8, CLI_CLOSED(-INFINITY, INFINITY)); /* one name read twice, as two kinds */
    int any_bad = a.bad;
    int rc = args_finish(&a);
    REQUIRE(rc == 0 || rc == 2);
    REQUIRE(!any_bad || rc == 2);
    args_print_numbers(&a, fuzz_sink);
    for (int i = 1; i < argc; i++) check_ids(argv[i]);

    free(buf);
    return 0;
}
