/* args.h: `--name value` / `--flag` option parsing shared by the subcommands.
 * Each getter marks its option used; args_finish reports any option no getter asked for,
 * so a typo is an error rather than silently ignored. Every numeric option is read with its
 * accepted range (args_int / args_real): a value outside it, NaN, or one that does not fit the
 * type is refused with the option's name, and the ranges are printed by --help
 * (args_print_numbers), so what --help documents is what the reader checks. */
#ifndef PEFT_CLI_ARGS_H
#define PEFT_CLI_ARGS_H

#include <stdio.h>

#define CLI_MAX_ARGS 256 /* argv entries a command accepts (more is an error, never truncated) */
#define CLI_MAX_NUMS 64  /* numeric options of one command */

/* Accepted values of a real option: lo .. hi, each end closed or open. */
typedef struct cli_range {
    double lo, hi;
    unsigned char lo_open, hi_open;
} cli_range;
#define CLI_CLOSED(lo, hi) ((cli_range){(lo), (hi), 0, 0})   /* [lo, hi] */
#define CLI_ABOVE(lo, hi) ((cli_range){(lo), (hi), 1, 0})    /* (lo, hi] */
#define CLI_BELOW(lo, hi) ((cli_range){(lo), (hi), 0, 1})    /* [lo, hi) */

/* One numeric option as a getter saw it, for --help. */
typedef struct cli_num_opt {
    const char *name;
    int is_int;
    long ilo, ihi, idflt; /* is_int */
    cli_range r;          /* !is_int */
    double dflt;
} cli_num_opt;

typedef struct cli_args {
    int argc;
    char **argv;
    unsigned char used[CLI_MAX_ARGS];
    int too_many;     /* argc was above CLI_MAX_ARGS */
    int bad;          /* a value failed to parse; message already printed */
    int help;         /* --help / -h given: getters only record their options, print nothing */
    const char *cmd;  /* subcommand name, for messages */
    int n_nums;
    cli_num_opt nums[CLI_MAX_NUMS];
} cli_args;

void args_init(cli_args *a, const char *cmd, int argc, char **argv);
int args_has(cli_args *a, const char *name);                 /* flags */
/* The value after `name` (the last occurrence wins); dflt when absent. A missing value, or one
 * that is itself an option (`--out --steps 3`), is an error. */
const char *args_str(cli_args *a, const char *name, const char *dflt);
/* An integer in [lo, hi] (so an int field gets hi <= INT_MAX); dflt when absent. */
long args_int(cli_args *a, const char *name, long dflt, long lo, long hi);
/* A real number in r (never NaN; infinite only if r says so); dflt when absent. */
double args_real(cli_args *a, const char *name, double dflt, cli_range r);
/* The index of the value of `name` in choices (NULL-terminated); dflt when absent; any other
 * value is refused with the list. */
int args_choice(cli_args *a, const char *name, const char *const *choices, int dflt);
/* Prints "peft CMD: MSG" unless --help was asked for, and marks the arguments bad (args_finish
 * then returns 2): for a combination of options that excludes itself. */
__attribute__((format(printf, 2, 3))) void args_complain(cli_args *a, const char *fmt, ...);
/* 0 if all options were consumed and parsed; otherwise prints the problem and returns 2. */
int args_finish(cli_args *a);
/* Prints the numeric options the getters saw: name, default, accepted range. */
void args_print_numbers(const cli_args *a, FILE *fp);

/* The checked number readers behind args_int / args_real, for numbers inside option values
 * (`--rank-pattern q_proj=16`): 0 = ok, -1 = not a number of that kind, -2 = out of range. */
int cli_parse_int(const char *s, long lo, long hi, long *out);
int cli_parse_real(const char *s, cli_range r, double *out);
/* "[lo, hi]" / "(lo, hi]"... of a range, for messages. */
const char *cli_range_str(cli_range r, char *buf, size_t n);

#endif
