/* cmd_import.c - placeholder until this subcommand is built. */
#include <stdio.h>

#include "cmd.h"

int cmd_model_import_tokenizer(int argc, char **argv) {
    fprintf(stderr, "cellm: model %s is not built yet\n", argv[0]);
    return 1;
}
