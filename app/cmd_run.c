/* cmd_run.c - placeholder until this subcommand is built. */
#include <stdio.h>

#include "cmd.h"

int cmd_logits(int argc, char **argv) {
    fprintf(stderr, "cellm: %s is not built yet\n", argv[0]);
    return 1;
}

int cmd_run(int argc, char **argv) {
    fprintf(stderr, "cellm: %s is not built yet\n", argv[0]);
    return 1;
}
