/* hparams.c - hyper-parameters from GGUF metadata.
 *
 * Keys follow llama.cpp's naming: `general.architecture` names the arch and
 * every other key is `<arch>.<name>`. Required keys missing or out of range
 * give CM_EFORMAT naming the key; an arch cellm has no forward pass for gives
 * CM_EUNSUPPORTED. The RoPE layout is fixed per arch as llama.cpp fixes it
 * (llama: normal, adjacent pairs; qwen2/qwen3/qwen3moe: NeoX, halves). */
#include <stdio.h>
#include <string.h>

#include "base/status.h"
#include "model/model.h"

static const char *g_path_unknown = "model";

static const char *gpath(const cm_gguf *g) {
    const char *p = cm_gguf_path(g);
    return p ? p : g_path_unknown;
}

/* Reads `<arch>.<suffix>` as an int; absent -> *out = def (or an error when
 * def < 0 means required). */
static int get_int(const cm_gguf *g, const char *arch, const char *suffix, int64_t def, int64_t lo, int64_t hi,
                   int *out) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int64_t v;
    int rc = cm_gguf_get_i64(g, key, &v);
    if (rc == CM_ENOTFOUND) {
        if (def < 0) return cm_errorf(CM_EFORMAT, "%s: metadata key %s is missing", gpath(g), key);
        v = def;
    } else if (rc != CM_OK) {
        return rc;
    }
    if (v < lo || v > hi)
        return cm_errorf(CM_EFORMAT, "%s: metadata key %s = %lld is out of range [%lld, %lld]", gpath(g), key,
                         (long long)v, (long long)lo, (long long)hi);
    *out = (int)v;
    return CM_OK;
}

static int get_float(const cm_gguf *g, const char *arch, const char *suffix, float def, float *out) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int rc = cm_gguf_get_f32(g, key, out);
    if (rc == CM_ENOTFOUND) {
        *out = def;
        return CM_OK;
    }
    return rc;
}

int cm_hparams_load(const cm_gguf *g, cm_hparams *hp) {
    memset(hp, 0, sizeof *hp);
    const char *arch = NULL;
    int rc = cm_gguf_get_str(g, "general.architecture", &arch, NULL);
    if (rc == CM_ENOTFOUND) return cm_errorf(CM_EFORMAT, "%s: metadata key general.architecture is missing", gpath(g));
    if (rc) return rc;
    if (!strcmp(arch, "llama")) hp->arch = CM_ARCH_LLAMA;
    else if (!strcmp(arch, "qwen2")) hp->arch = CM_ARCH_QWEN2;
    else if (!strcmp(arch, "qwen3")) hp->arch = CM_ARCH_QWEN3;
    else if (!strcmp(arch, "qwen3moe")) hp->arch = CM_ARCH_QWEN3MOE;
    else
        return cm_errorf(CM_EUNSUPPORTED,
                         "%s: architecture '%s' is not supported (supported: llama, qwen2, qwen3, qwen3moe)",
                         gpath(g), arch);
    snprintf(hp->arch_name, sizeof hp->arch_name, "%s", arch);

    const int64_t big = 1 << 30;
    if ((rc = get_int(g, arch, "embedding_length", -1, 1, 1 << 20, &hp->n_embd))) return rc;
    if ((rc = get_int(g, arch, "block_count", -1, 1, 4096, &hp->n_layer))) return rc;
    if ((rc = get_int(g, arch, "attention.head_count", -1, 1, 1 << 14, &hp->n_head))) return rc;
    if ((rc = get_int(g, arch, "attention.head_count_kv", hp->n_head, 1, hp->n_head, &hp->n_head_kv))) return rc;
    if (hp->n_head % hp->n_head_kv)
        return cm_errorf(CM_EFORMAT, "%s: %s.attention.head_count %d is not a multiple of head_count_kv %d", gpath(g),
                         arch, hp->n_head, hp->n_head_kv);
    int def_hd = hp->n_embd / hp->n_head;
    if ((rc = get_int(g, arch, "attention.key_length", def_hd, 2, 1 << 14, &hp->head_dim))) return rc;
    int vlen;
    if ((rc = get_int(g, arch, "attention.value_length", hp->head_dim, 1, 1 << 14, &vlen))) return rc;
    if (vlen != hp->head_dim)
        return cm_errorf(CM_EUNSUPPORTED, "%s: %s.attention.value_length %d differs from key_length %d", gpath(g),
                         arch, vlen, hp->head_dim);
    if ((rc = get_int(g, arch, "context_length", 4096, 1, big, &hp->n_ctx_train))) return rc;
    if ((rc = get_int(g, arch, "expert_count", 0, 0, 1 << 16, &hp->n_expert))) return rc;
    if ((rc = get_int(g, arch, "expert_used_count", 0, 0, hp->n_expert, &hp->n_expert_used))) return rc;
    bool moe_arch = hp->arch == CM_ARCH_QWEN3MOE;
    if (moe_arch && hp->n_expert == 0)
        return cm_errorf(CM_EFORMAT, "%s: %s needs %s.expert_count > 0", gpath(g), arch, arch);
    if (hp->n_expert > 0 && hp->n_expert_used == 0)
        return cm_errorf(CM_EFORMAT, "%s: %s.expert_count is %d but %s.expert_used_count is missing or 0", gpath(g),
                         arch, hp->n_expert, arch);
    if (hp->n_expert > 0 && (hp->arch == CM_ARCH_QWEN2 || hp->arch == CM_ARCH_QWEN3))
        return cm_errorf(CM_EUNSUPPORTED, "%s: experts in a %s model are not supported", gpath(g), arch);
    /* A dense FFN width is required for dense models; MoE models may omit it. */
    if ((rc = get_int(g, arch, "feed_forward_length", hp->n_expert ? 0 : -1, 0, big, &hp->n_ff))) return rc;
    if (hp->n_expert > 0) {
        /* Mixtral-style llama stores the expert width as feed_forward_length. */
        int def_ffe = hp->arch == CM_ARCH_LLAMA ? hp->n_ff : -1;
        if ((rc = get_int(g, arch, "expert_feed_forward_length", def_ffe, 1, big, &hp->n_ff_expert))) return rc;
        if (hp->n_ff_expert <= 0)
            return cm_errorf(CM_EFORMAT, "%s: %s.expert_feed_forward_length is missing", gpath(g), arch);
    } else if (hp->n_ff <= 0) {
        return cm_errorf(CM_EFORMAT, "%s: %s.feed_forward_length must be > 0", gpath(g), arch);
    }
    if ((rc = get_float(g, arch, "attention.layer_norm_rms_epsilon", 1e-5f, &hp->norm_eps))) return rc;
    if (!(hp->norm_eps > 0 && hp->norm_eps < 1))
        return cm_errorf(CM_EFORMAT, "%s: %s.attention.layer_norm_rms_epsilon = %g is out of range", gpath(g), arch,
                         hp->norm_eps);
    if ((rc = get_float(g, arch, "rope.freq_base", 10000.0f, &hp->rope_freq_base))) return rc;
    if (!(hp->rope_freq_base > 1))
        return cm_errorf(CM_EFORMAT, "%s: %s.rope.freq_base = %g must be > 1", gpath(g), arch, hp->rope_freq_base);
    if ((rc = get_int(g, arch, "rope.dimension_count", hp->head_dim, 2, hp->head_dim, &hp->rope_dim))) return rc;
    if (hp->rope_dim % 2)
        return cm_errorf(CM_EFORMAT, "%s: %s.rope.dimension_count %d is odd", gpath(g), arch, hp->rope_dim);
    hp->rope_neox = hp->arch != CM_ARCH_LLAMA;

    /* RoPE scaling. llama3 is applied through per-pair frequency factors
     * (model.c prefers a rope_freqs.weight tensor when the file has one). */
    char key[160];
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    const char *stype = NULL;
    rc = cm_gguf_get_str(g, key, &stype, NULL);
    if (rc && rc != CM_ENOTFOUND) return rc;
    if (stype && !strcmp(stype, "llama3")) {
        if ((rc = get_float(g, arch, "rope.scaling.factor", 8.0f, &hp->rope_scale_factor))) return rc;
        if ((rc = get_float(g, arch, "rope.scaling.low_freq_factor", 1.0f, &hp->rope_low_freq_factor))) return rc;
        if ((rc = get_float(g, arch, "rope.scaling.high_freq_factor", 4.0f, &hp->rope_high_freq_factor))) return rc;
        if ((rc = get_int(g, arch, "rope.scaling.original_context_length", 8192, 1, big, &hp->rope_orig_ctx)))
            return rc;
        if (!(hp->rope_scale_factor >= 1) || !(hp->rope_high_freq_factor > hp->rope_low_freq_factor) ||
            !(hp->rope_low_freq_factor > 0))
            return cm_errorf(CM_EFORMAT, "%s: llama3 rope scaling parameters out of range (factor %g, low %g, high %g)",
                             gpath(g), hp->rope_scale_factor, hp->rope_low_freq_factor, hp->rope_high_freq_factor);
    } else if (stype && strcmp(stype, "none") && strcmp(stype, "linear")) {
        return cm_errorf(CM_EUNSUPPORTED, "%s: %s = '%s' is not supported (supported: none, linear, llama3)", gpath(g),
                         key, stype);
    }

    /* Vocabulary: the embedding's row count is the truth; the tokenizer's
     * token count is the fallback. */
    const cm_gguf_tensor *te = cm_gguf_find_tensor(g, "token_embd.weight");
    if (te && te->n_dims >= 2) {
        if (te->ne[1] < 1 || te->ne[1] > big)
            return cm_errorf(CM_EFORMAT, "%s: token_embd.weight has %lld rows, expected 1..%lld", gpath(g),
                             (long long)te->ne[1], (long long)big);
        hp->n_vocab = (int)te->ne[1];
    } else {
        int et;
        uint64_t n = 0;
        if (cm_gguf_get_arr_info(g, "tokenizer.ggml.tokens", &et, &n) == CM_OK && n > 0 && n < (uint64_t)big)
            hp->n_vocab = (int)n;
        else if ((rc = get_int(g, arch, "vocab_size", -1, 1, big, &hp->n_vocab)))
            return rc;
    }
    hp->tied_output = cm_gguf_find_tensor(g, "output.weight") == NULL;
    return CM_OK;
}
