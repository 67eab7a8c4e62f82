/* cmd_merge.c: `peft merge` (not implemented yet). */
#include <stdio.h>
#include "commands.h"

int cmd_merge(int argc, char **argv) {
    fprintf(stderr, "peft merge: not implemented yet\n");
    return 2;
}
