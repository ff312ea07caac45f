/* cmd_model.c - `cellm model info | synth | import-tokenizer`.
 *
 *   info MODEL.gguf [-c CTX]   architecture, hyper-parameters, parameter
 *                              count, tensor types, file size, and the memory
 *                              weights + KV cache + scratch need at CTX
 *   synth -o OUT.gguf ...      writes a synthetic model (src/model/synth.c)
 *   import-tokenizer ...       handled by cmd_import.c */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "cmd.h"
#include "gguf/types.h"
#include "kernels/kernels.h"
#include "model/model.h"
#include "model/synth.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: cellm model info MODEL.gguf [-c CTX]\n"
            "       cellm model synth -o OUT.gguf --arch llama|qwen2|qwen3|qwen3moe --embd N --layers N\n"
            "                         --heads N --kv-heads N --ffn N [--head-dim N]\n"
            "                         [--experts N --experts-used N --expert-ffn N]\n"
            "                         [--vocab N | --vocab-from FILE.gguf] [--type TYPE] [--seed N] [--ctx N]\n"
            "                         [--tied] [--rope-base F] [--rope-llama3 FACTOR] [-t THREADS]\n"
            "       cellm model import-tokenizer ...   (see cellm model import-tokenizer --help)\n"
            "\n"
            "synth writes random weights from the seed (default 1) with a tokenizer: the tokenizer.* keys of\n"
            "--vocab-from, or a built-in byte-level BPE of --vocab tokens (default 32000).\n"
            "TYPE: f32 f16 bf16 q4_0 q4_1 q5_0 q5_1 q8_0 q2_k q3_k q4_k q5_k q6_k q4_k_m q5_k_m (default f16).\n");
}

static int parse_int(const char *flag, const char *s, int lo, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > (1L << 30)) {
        fprintf(stderr, "cellm model: %s needs an integer >= %d, got '%s'\n", flag, lo, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_float(const char *flag, const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || *end || !(v > 0)) {
        fprintf(stderr, "cellm model: %s needs a positive number, got '%s'\n", flag, s);
        return -1;
    }
    *out = v;
    return 0;
}

static const char *human(double b, char *buf, size_t n) {
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (b >= 1024 && i < 4) b /= 1024, i++;
    snprintf(buf, n, "%.2f %s", b, u[i]);
    return buf;
}

static int cmd_info(int argc, char **argv) {
    const char *path = NULL;
    int n_ctx = 4096;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "--ctx")) {
            if (i + 1 >= argc || parse_int(argv[i], argv[i + 1], 1, &n_ctx)) return 2;
            i++;
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (argv[i][0] == '-' || path) {
            fprintf(stderr, "cellm model info: unexpected argument '%s'\n", argv[i]);
            return 2;
        } else {
            path = argv[i];
        }
    }
    if (!path) {
        usage(stderr);
        return 2;
    }
    cm_kernels_init(false);
    cm_gguf *g = NULL;
    int rc = cm_gguf_open(path, &g);
    if (rc) {
        fprintf(stderr, "cellm: %s\n", cm_last_error(rc));
        return 1;
    }
    cm_hparams hp;
    rc = cm_hparams_load(g, &hp);
    if (rc) {
        fprintf(stderr, "cellm: %s\n", cm_last_error(rc));
        cm_gguf_close(g);
        return 1;
    }
    char b1[32], b2[32], b3[32], b4[32];
    printf("file:          %s (%s, GGUF v%u)\n", path, human((double)cm_gguf_file_bytes(g), b1, sizeof b1),
           cm_gguf_version(g));
    const char *name = NULL;
    if (cm_gguf_get_str(g, "general.name", &name, NULL) == CM_OK) printf("name:          %s\n", name);
    printf("architecture:  %s\n", hp.arch_name);
    printf("layers:        %d\n", hp.n_layer);
    printf("embedding:     %d\n", hp.n_embd);
    printf("heads:         %d (kv %d, head size %d)\n", hp.n_head, hp.n_head_kv, hp.head_dim);
    if (hp.n_expert)
        printf("experts:       %d, %d used per token, width %d\n", hp.n_expert, hp.n_expert_used, hp.n_ff_expert);
    if (hp.n_ff) printf("ffn:           %d\n", hp.n_ff);
    printf("vocabulary:    %d\n", hp.n_vocab);
    printf("context:       %d (trained)\n", hp.n_ctx_train);
    printf("rope:          %s, base %g, %d dims%s\n", hp.rope_neox ? "neox" : "normal", hp.rope_freq_base, hp.rope_dim,
           cm_gguf_find_tensor(g, "rope_freqs.weight") ? ", rope_freqs.weight scaling"
           : hp.rope_scale_factor > 0                 ? ", llama3 scaling"
                                                      : "");
    printf("rms norm eps:  %g\n", hp.norm_eps);
    printf("output:        %s\n", hp.tied_output ? "tied to token_embd" : "output.weight");

    uint64_t n_params = 0, cnt[CM_TYPE_COUNT] = {0}, bytes[CM_TYPE_COUNT] = {0}, total = 0;
    for (int64_t i = 0; i < cm_gguf_n_tensors(g); i++) {
        const cm_gguf_tensor *t = cm_gguf_tensor_at(g, i);
        uint64_t n = 1;
        for (int d = 0; d < CM_GGUF_MAX_DIMS; d++) n *= (uint64_t)t->ne[d];
        n_params += n;
        if (t->type >= 0 && t->type < CM_TYPE_COUNT) {
            cnt[t->type]++;
            bytes[t->type] += t->n_bytes;
        }
        total += t->n_bytes;
    }
    printf("parameters:    %llu (%.3f B)\n", (unsigned long long)n_params, (double)n_params / 1e9);
    printf("tensors:       %lld, %s\n", (long long)cm_gguf_n_tensors(g), human((double)total, b1, sizeof b1));
    for (int t = 0; t < CM_TYPE_COUNT; t++)
        if (cnt[t])
            printf("  %-6s %5llu tensors  %s\n", cm_type_name(t), (unsigned long long)cnt[t],
                   human((double)bytes[t], b1, sizeof b1));
    cm_gguf_close(g);

    /* Memory: load the model and size a context the way `cellm run` does
     * (one sequence, 512-token batches). The KV cache is malloc'd, so its
     * pages are not touched by this. */
    cm_model *m = NULL;
    rc = cm_model_load(path, NULL, &m);
    if (rc) {
        fprintf(stderr, "cellm: cannot load the model for inference: %s\n", cm_last_error(rc));
        return 1;
    }
    cm_ctx_params cp = {.n_ctx = n_ctx, .n_seq_max = 1, .n_batch_max = 512, .n_threads = 1};
    cm_ctx *c = NULL;
    rc = cm_ctx_create(m, &cp, &c);
    if (rc) {
        fprintf(stderr, "cellm: cannot size a context of %d: %s\n", n_ctx, cm_last_error(rc));
        cm_model_destroy(m);
        return 1;
    }
    uint64_t kv = cm_ctx_kv_bytes(c), scratch = cm_ctx_scratch_bytes(c);
    printf("memory at context %d (1 sequence, batch 512):\n", n_ctx);
    printf("  weights      %s (mmap'd)\n", human((double)total, b1, sizeof b1));
    printf("  kv cache     %s (%llu bytes per token)\n", human((double)kv, b2, sizeof b2),
           (unsigned long long)cm_model_kv_bytes_per_token(m));
    printf("  scratch      %s\n", human((double)scratch, b3, sizeof b3));
    printf("  total        %s\n", human((double)(total + kv + scratch), b4, sizeof b4));
    printf("weights read per token: %s\n", human((double)cm_model_weight_bytes(m), b1, sizeof b1));
    cm_ctx_destroy(c);
    cm_model_destroy(m);
    return 0;
}

static int cmd_synth(int argc, char **argv) {
    cm_synth_params p;
    cm_synth_defaults(&p);
    p.n_vocab = 32000;
    p.type = CM_TYPE_F16;
    p.progress = true;
    p.n_embd = p.n_layer = p.n_head = p.n_ff = 0;
    p.n_head_kv = 0;
    const char *out = NULL, *arch = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--tied")) {
            p.tied_output = true;
            continue;
        }
        if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            p.progress = false;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "cellm model synth: %s needs a value (or is unknown; see --help)\n", a);
            return 2;
        }
        const char *v = argv[++i];
        int bad = 0;
        if (!strcmp(a, "-o")) out = v;
        else if (!strcmp(a, "--arch")) arch = v;
        else if (!strcmp(a, "--embd")) bad = parse_int(a, v, 1, &p.n_embd);
        else if (!strcmp(a, "--layers")) bad = parse_int(a, v, 1, &p.n_layer);
        else if (!strcmp(a, "--heads")) bad = parse_int(a, v, 1, &p.n_head);
        else if (!strcmp(a, "--kv-heads")) bad = parse_int(a, v, 1, &p.n_head_kv);
        else if (!strcmp(a, "--head-dim")) bad = parse_int(a, v, 2, &p.head_dim);
        else if (!strcmp(a, "--ffn")) bad = parse_int(a, v, 1, &p.n_ff);
        else if (!strcmp(a, "--experts")) bad = parse_int(a, v, 1, &p.n_expert);
        else if (!strcmp(a, "--experts-used")) bad = parse_int(a, v, 1, &p.n_expert_used);
        else if (!strcmp(a, "--expert-ffn")) bad = parse_int(a, v, 1, &p.n_ff_expert);
        else if (!strcmp(a, "--vocab")) bad = parse_int(a, v, 258, &p.n_vocab);
        else if (!strcmp(a, "--vocab-from")) p.vocab_from = v;
        else if (!strcmp(a, "--ctx")) bad = parse_int(a, v, 1, &p.n_ctx_train);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) bad = parse_int(a, v, 1, &p.n_threads);
        else if (!strcmp(a, "--rope-base")) bad = parse_float(a, v, &p.rope_freq_base);
        else if (!strcmp(a, "--rope-llama3")) bad = parse_float(a, v, &p.rope_llama3_factor);
        else if (!strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            p.seed = strtoull(v, &end, 10);
            bad = errno || *end;
            if (bad) fprintf(stderr, "cellm model synth: --seed needs an integer, got '%s'\n", v);
        } else if (!strcmp(a, "--type")) {
            if (cm_synth_parse_type(v, &p.type, &p.mix)) {
                fprintf(stderr, "cellm model synth: %s\n", cm_last_error(CM_EINVAL));
                return 2;
            }
        } else {
            fprintf(stderr, "cellm model synth: unknown option '%s' (see --help)\n", a);
            return 2;
        }
        if (bad) return 2;
    }
    if (!out || !arch || !p.n_embd || !p.n_layer || !p.n_head || (!p.n_ff && !p.n_expert)) {
        fprintf(stderr, "cellm model synth: -o, --arch, --embd, --layers, --heads and --ffn are required\n");
        usage(stderr);
        return 2;
    }
    p.arch = arch;
    if (!p.n_head_kv) p.n_head_kv = p.n_head;
    if (!strcmp(arch, "qwen3moe") && !p.n_ff) p.n_ff = p.n_ff_expert;
    int rc = cm_synth_write(&p, out);
    if (rc) {
        fprintf(stderr, "cellm: %s\n", cm_last_error(rc));
        return 1;
    }
    return 0;
}

int cmd_model(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "info")) return cmd_info(argc - 1, argv + 1);
    if (!strcmp(argv[1], "synth")) return cmd_synth(argc - 1, argv + 1);
    if (!strcmp(argv[1], "import-tokenizer")) return cmd_model_import_tokenizer(argc - 1, argv + 1);
    fprintf(stderr, "cellm model: unknown subcommand '%s' (info, synth, import-tokenizer)\n", argv[1]);
    return 2;
}
