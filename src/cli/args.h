/* args.h: `--name value` / `--flag` option parsing shared by the subcommands.
 * Each getter marks its option used; args_finish reports any option no getter asked for,
 * so a typo is an error rather than silently ignored. */
#ifndef PEFT_CLI_ARGS_H
#define PEFT_CLI_ARGS_H

typedef struct cli_args {
    int argc;
    char **argv;
    unsigned char used[256];
    int bad;          /* a value failed to parse; message already printed */
    const char *cmd;  /* subcommand name, for messages */
} cli_args;

void args_init(cli_args *a, const char *cmd, int argc, char **argv);
int args_has(cli_args *a, const char *name);                 /* --help and flags */
const char *args_str(cli_args *a, const char *name, const char *dflt);
long args_int(cli_args *a, const char *name, long dflt);
double args_double(cli_args *a, const char *name, double dflt);
/* 0 if all options were consumed and parsed; otherwise prints the problem and returns 2. */
int args_finish(cli_args *a);

#endif
