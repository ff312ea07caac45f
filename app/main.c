/* main.c - the cellm command: dispatches to a subcommand. */
#include <stdio.h>
#include <string.h>

#include "cellm.h"
#include "cmd.h"

struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
};

static const struct command g_commands[] = {
    {"run", cmd_run, "generate text from a prompt, or chat interactively"},
    {"logits", cmd_logits, "print prompt tokens, top logits and greedy tokens as JSON lines"},
    {"tokenize", cmd_tokenize, "print the token ids of a text"},
    {"model", cmd_model, "model info | synth | import-tokenizer"},
    {"bench", cmd_bench, "measure prompt and generation speed"},
    {"serve", cmd_serve, "serve an OpenAI-compatible HTTP API"},
    {"key", cmd_key, "key generate: make a cell key"},
    {"xfer-bench", cmd_xfer_bench, "measure transfer throughput and latency between two nodes"},
};

static void usage(FILE *f) {
    fprintf(f,
            "cellm %s - run large language models on one machine or a cell of several\n"
            "\n"
            "usage: cellm COMMAND [options]   (cellm COMMAND --help for its options)\n"
            "\n"
            "commands:\n",
            cellm_version());
    for (size_t i = 0; i < sizeof g_commands / sizeof g_commands[0]; i++)
        fprintf(f, "  %-12s %s\n", g_commands[i].name, g_commands[i].summary);
    fprintf(f,
            "\n"
            "environment:\n"
            "  CELLM_LOG=error|warn|info|debug   log level (default warn)\n"
            "  CELLM_KERNELS=ref                 use the portable reference kernels\n"
            "  CELLM_KEY_FILE=FILE               cell key for commands that talk to peers\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("cellm %s\n", cellm_version());
        return 0;
    }
    for (size_t i = 0; i < sizeof g_commands / sizeof g_commands[0]; i++)
        if (!strcmp(argv[1], g_commands[i].name)) return g_commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "cellm: unknown command '%s' (see cellm --help)\n", argv[1]);
    return 2;
}
