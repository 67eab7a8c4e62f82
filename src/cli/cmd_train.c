/* cmd_train.c: `peft train` (not implemented yet). */
#include <stdio.h>
#include "commands.h"

int cmd_train(int argc, char **argv) {
    fprintf(stderr, "peft train: not implemented yet\n");
    return 2;
}
