/* cmd_model.c - placeholder until this subcommand is built. */
#include <stdio.h>

#include "cmd.h"

int cmd_model(int argc, char **argv) {
    fprintf(stderr, "cellm: %s is not built yet\n", argv[0]);
    return 1;
}

