/* args.c: minimal long-option parsing for the CLI. */
#include "args.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void args_init(cli_args *a, const char *cmd, int argc, char **argv) {
    memset(a, 0, sizeof *a);
    a->cmd = cmd;
    a->argc = argc < 256 ? argc : 256;
    a->argv = argv;
    a->used[0] = 1; /* the subcommand itself */
}

/* The last occurrence wins (so scripts can override a default by appending); earlier
 * occurrences and their values are marked used too. */
static int find(cli_args *a, const char *name) {
    int found = -1;
    for (int i = 1; i < a->argc; i++)
        if (!strcmp(a->argv[i], name)) {
            if (found >= 0) {
                a->used[found] = 1;
                if (found + 1 < a->argc && a->argv[found + 1][0] != '-') a->used[found + 1] = 1;
            }
            found = i;
        }
    return found;
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
        fprintf(stderr, "peft %s: %s needs a value\n", a->cmd, name);
        a->bad = 1;
        return dflt;
    }
    a->used[i + 1] = 1;
    return a->argv[i + 1];
}

long args_int(cli_args *a, const char *name, long dflt) {
    const char *s = args_str(a, name, NULL);
    if (!s) return dflt;
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0') {
        fprintf(stderr, "peft %s: %s expects an integer, got '%s'\n", a->cmd, name, s);
        a->bad = 1;
        return dflt;
    }
    return v;
}

double args_double(cli_args *a, const char *name, double dflt) {
    const char *s = args_str(a, name, NULL);
    if (!s) return dflt;
    char *end;
    double v = strtod(s, &end);
    if (*s == '\0' || *end != '\0') {
        fprintf(stderr, "peft %s: %s expects a number, got '%s'\n", a->cmd, name, s);
        a->bad = 1;
        return dflt;
    }
    return v;
}

int args_finish(cli_args *a) {
    for (int i = 1; i < a->argc; i++)
        if (!a->used[i]) {
            fprintf(stderr, "peft %s: unknown option '%s' (see peft %s --help)\n", a->cmd, a->argv[i], a->cmd);
            return 2;
        }
    return a->bad ? 2 : 0;
}
