/* commands.h: the `peft` CLI subcommands, one file each (cmd_<name>.c).
 * Each takes argc/argv after the subcommand name and returns a process exit code:
 * 0 success, 1 runtime error (message printed), 2 usage error. */
#ifndef PEFT_CLI_COMMANDS_H
#define PEFT_CLI_COMMANDS_H

int cmd_inspect(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_combine(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_predict(int argc, char **argv);

/* Prints "peft: <msg>" to stderr and returns 1: the CLI's way of reporting a library error. */
int cli_report(const char *msg);

#endif
