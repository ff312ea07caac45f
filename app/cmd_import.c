/* cmd_import.c - `cellm model import-tokenizer TOKENIZER.json [--config
 * tokenizer_config.json] [--pre NAME] -o OUT.gguf`: converts a Hugging Face
 * byte-level BPE tokenizer into a vocabulary-only GGUF (tokenizer.* keys and
 * no tensors), usable wherever cellm takes a vocabulary (cellm tokenize -m,
 * cellm model synth --vocab-from). The result is loaded back and checked
 * before the command reports success. */
#include <stdio.h>
#include <string.h>

#include "base/status.h"
#include "cmd.h"
#include "gguf/gguf.h"
#include "text/hf_import.h"
#include "text/tokenizer.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: cellm model import-tokenizer TOKENIZER.json [--config tokenizer_config.json] [--pre NAME]\n"
            "                                    -o OUT.gguf\n"
            "\n"
            "  --config FILE  tokenizer_config.json: BOS/EOS, add_bos_token and the chat template\n"
            "  --pre NAME     the pre-tokenizer (llama-bpe, qwen2, gpt-2, starcoder, falcon, deepseek-llm,\n"
            "                 deepseek-coder); by default detected from the pre_tokenizer regex\n"
            "  -o FILE        the GGUF to write\n");
}

int cmd_model_import_tokenizer(int argc, char **argv) {
    const char *json = NULL, *config = NULL, *pre = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        const char **dst = !strcmp(a, "--config") ? &config : !strcmp(a, "--pre") ? &pre
                         : (!strcmp(a, "-o") || !strcmp(a, "--output")) ? &out : NULL;
        if (dst) {
            if (++i >= argc) {
                fprintf(stderr, "cellm model import-tokenizer: %s needs a value\n", a);
                return 2;
            }
            *dst = argv[i];
        } else if (a[0] == '-') {
            fprintf(stderr, "cellm model import-tokenizer: unknown option '%s' (see --help)\n", a);
            return 2;
        } else if (!json) {
            json = a;
        } else {
            fprintf(stderr, "cellm model import-tokenizer: one TOKENIZER.json only; got '%s' too\n", a);
            return 2;
        }
    }
    if (!json || !out) {
        usage(stderr);
        return 2;
    }

    int ret = 1;
    cm_gguf_writer *w = NULL;
    cm_gguf *g = NULL;
    cm_tokenizer *t = NULL;
    cm_hf_import_info info;
    cm_hf_import_opts opts = {pre};
    int rc = cm_gguf_writer_create(&w);
    if (!rc) rc = cm_gguf_writer_set_str(w, "general.name", "vocabulary");
    if (!rc) rc = cm_hf_import(json, config, w, &opts, &info);
    if (!rc) rc = cm_gguf_writer_write(w, out, NULL, NULL);
    if (!rc) rc = cm_gguf_open(out, &g);
    if (!rc) rc = cm_tokenizer_load(g, &t);
    if (rc) {
        fprintf(stderr, "cellm model import-tokenizer: %s\n", cm_last_error(rc));
        goto done;
    }
    printf("%s: %d tokens (%d added, %d gap fillers), %d merges, pre %s, bos %d, eos %d, add_bos %s%s\n", out,
           info.n_vocab, info.n_added, info.n_gaps, info.n_merges, info.pre, info.bos, info.eos,
           info.add_bos ? "true" : "false", info.has_chat_template ? ", chat template" : "");
    ret = 0;
done:
    cm_tokenizer_destroy(t);
    cm_gguf_close(g);
    cm_gguf_writer_destroy(w);
    return ret;
}
