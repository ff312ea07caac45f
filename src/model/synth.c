/* synth.c - writes synthetic models: random weights from a seed, scaled like
 * a trained network so activations stay in a sane range (matrices
 * N(0, 1/fan_in), norms near 1, small biases), with llama.cpp's metadata
 * and tensor names, and a tokenizer.
 *
 * Each row of each tensor draws from its own generator seeded by (seed,
 * tensor, row), so the file is the same whatever the thread count. Tensors are
 * produced one at a time inside the GGUF writer's fill callback, rows
 * quantized in parallel on a cm_pool: a multi-GiB model is never in memory.
 *
 * The built-in tokenizer is a byte-level BPE ("gpt2" model): 256 byte tokens
 * spelled with GPT-2's byte-to-unicode map, then merges that grow tokens one
 * character at a time (a word-initial space 'Ġ' only in front), then two
 * control tokens for BOS and EOS. Each merged token has exactly one merge
 * that makes it, so the vocabulary has no duplicates. */
#include "model/synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/pool.h"
#include "base/rng.h"
#include "base/status.h"
#include "base/time.h"
#include "kernels/kernels.h"
#include "model/model_internal.h"

enum init_kind { INIT_MATRIX, INIT_NORM, INIT_BIAS, INIT_ROPE_FREQS };

typedef struct synth_tensor {
    char name[64];
    int type;
    int n_dims;
    int64_t ne[3];
    int kind;
    float sigma; /* matrices: std dev of the weights */
} synth_tensor;

typedef struct synth_state {
    const cm_synth_params *p;
    cm_hparams hp; /* for the rope formula */
    synth_tensor *t;
    int n_t, cap_t;
    cm_pool *pool;
    float *rowbuf; /* n_threads x max row */
    int64_t max_row;
    double t0;
    uint64_t bytes_done, bytes_total;
    /* current job */
    const synth_tensor *cur;
    int64_t cur_index;
    uint8_t *cur_buf;
    size_t cur_row_bytes;
} synth_state;

void cm_synth_defaults(cm_synth_params *p) {
    memset(p, 0, sizeof *p);
    p->arch = "llama";
    p->n_embd = 64;
    p->n_layer = 2;
    p->n_head = 4;
    p->n_head_kv = 2;
    p->n_ff = 128;
    p->n_vocab = 300;
    p->type = CM_TYPE_F32;
    p->seed = 1;
    p->n_ctx_train = 4096;
    p->rope_freq_base = 10000.0f;
    p->norm_eps = 1e-5f;
    p->rope_low_freq_factor = 1.0f;
    p->rope_high_freq_factor = 4.0f;
    p->rope_orig_ctx = 8192;
}

int cm_synth_parse_type(const char *name, int *type, int *mix) {
    *mix = CM_SYNTH_MIX_NONE;
    if (!strcasecmp(name, "q4_k_m")) {
        *type = CM_TYPE_Q4_K;
        *mix = CM_SYNTH_MIX_Q4_K_M;
        return CM_OK;
    }
    if (!strcasecmp(name, "q5_k_m")) {
        *type = CM_TYPE_Q5_K;
        *mix = CM_SYNTH_MIX_Q5_K_M;
        return CM_OK;
    }
    int t = cm_type_from_name(name);
    if (t < 0 || t == CM_TYPE_Q8_1 || t == CM_TYPE_Q8_K)
        return cm_errorf(CM_EINVAL, "unknown weight type '%s' (f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, "
                                    "q3_k, q4_k, q5_k, q6_k, q4_k_m, q5_k_m)",
                         name);
    *type = t;
    return CM_OK;
}

/* llama.cpp spends more bits on the first and last eighth of the layers and
 * on every third layer between them. */
static bool use_more_bits(int il, int n) { return il < n / 8 || il >= 7 * n / 8 || (il - n / 8) % 3 == 2; }

/* The matrix type: the requested one, the mix's choice, and a fallback when
 * the row length is not a multiple of the type's block (as llama.cpp does). */
static int matrix_type(const cm_synth_params *p, const char *name, int il, int64_t ne0) {
    int t = p->type;
    if (p->mix != CM_SYNTH_MIX_NONE) {
        bool up = !strcmp(name, "output.weight");
        if (il >= 0 && (strstr(name, "attn_v.weight") || strstr(name, "ffn_down")))
            up = up || use_more_bits(il, p->n_layer);
        if (up) t = CM_TYPE_Q6_K;
    }
    int be = cm_type_block_elems(t);
    if (be > 0 && ne0 % be) {
        if (be == CM_QK_K && ne0 % CM_QK == 0) return CM_TYPE_Q8_0;
        return CM_TYPE_F16;
    }
    return t;
}

static int add(synth_state *s, const char *name, int type, int n_dims, int64_t ne0, int64_t ne1, int64_t ne2,
               int kind, float sigma) {
    if (s->n_t == s->cap_t) {
        int cap = s->cap_t ? s->cap_t * 2 : 64;
        synth_tensor *n = realloc(s->t, (size_t)cap * sizeof *n);
        if (!n) return CM_ENOMEM;
        s->t = n;
        s->cap_t = cap;
    }
    synth_tensor *t = &s->t[s->n_t++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = type;
    t->n_dims = n_dims;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->ne[2] = ne2;
    t->kind = kind;
    t->sigma = sigma;
    if (ne0 > s->max_row) s->max_row = ne0;
    return CM_OK;
}

static int add_matrix(synth_state *s, const char *name, int il, int64_t ne0, int64_t ne1, int64_t ne2, float gain) {
    int type = matrix_type(s->p, name, il, ne0);
    return add(s, name, type, ne2 > 1 ? 3 : 2, ne0, ne1, ne2, INIT_MATRIX, gain / sqrtf((float)ne0));
}

static int plan_tensors(synth_state *s) {
    const cm_synth_params *p = s->p;
    int hd = p->head_dim ? p->head_dim : p->n_embd / p->n_head;
    int64_t ne = p->n_embd, nq = (int64_t)p->n_head * hd, nkv = (int64_t)p->n_head_kv * hd;
    bool qwen2 = !strcmp(p->arch, "qwen2"), qk_norm = !strcmp(p->arch, "qwen3") || !strcmp(p->arch, "qwen3moe");
    int64_t ffe = p->n_ff_expert ? p->n_ff_expert : p->n_ff;
    char nm[64];
    int rc;
    /* Output logits come out with a standard deviation near 2, so greedy
     * choices are clear but the distribution is not degenerate. */
    if ((rc = add_matrix(s, "token_embd.weight", -1, ne, p->n_vocab, 1, p->tied_output ? 2.0f : 1.0f))) return rc;
    if (p->rope_llama3_factor > 0 && !p->rope_llama3_keys_only)
        if ((rc = add(s, "rope_freqs.weight", CM_TYPE_F32, 1, hd / 2, 1, 1, INIT_ROPE_FREQS, 0))) return rc;
    for (int il = 0; il < p->n_layer; il++) {
#define N(x) (snprintf(nm, sizeof nm, "blk.%d." x, il), nm)
        if ((rc = add(s, N("attn_norm.weight"), CM_TYPE_F32, 1, ne, 1, 1, INIT_NORM, 0))) return rc;
        if ((rc = add_matrix(s, N("attn_q.weight"), il, ne, nq, 1, 1.0f))) return rc;
        if ((rc = add_matrix(s, N("attn_k.weight"), il, ne, nkv, 1, 1.0f))) return rc;
        if ((rc = add_matrix(s, N("attn_v.weight"), il, ne, nkv, 1, 1.0f))) return rc;
        if ((rc = add_matrix(s, N("attn_output.weight"), il, nq, ne, 1, 1.0f))) return rc;
        if (qwen2) {
            if ((rc = add(s, N("attn_q.bias"), CM_TYPE_F32, 1, nq, 1, 1, INIT_BIAS, 0))) return rc;
            if ((rc = add(s, N("attn_k.bias"), CM_TYPE_F32, 1, nkv, 1, 1, INIT_BIAS, 0))) return rc;
            if ((rc = add(s, N("attn_v.bias"), CM_TYPE_F32, 1, nkv, 1, 1, INIT_BIAS, 0))) return rc;
        }
        if (qk_norm) {
            if ((rc = add(s, N("attn_q_norm.weight"), CM_TYPE_F32, 1, hd, 1, 1, INIT_NORM, 0))) return rc;
            if ((rc = add(s, N("attn_k_norm.weight"), CM_TYPE_F32, 1, hd, 1, 1, INIT_NORM, 0))) return rc;
        }
        if ((rc = add(s, N("ffn_norm.weight"), CM_TYPE_F32, 1, ne, 1, 1, INIT_NORM, 0))) return rc;
        if (p->n_expert > 0) {
            /* the router stays f32, as llama.cpp's quantizer leaves it */
            if ((rc = add(s, N("ffn_gate_inp.weight"), CM_TYPE_F32, 2, ne, p->n_expert, 1, INIT_MATRIX,
                          2.0f / sqrtf((float)ne))))
                return rc;
            if ((rc = add_matrix(s, N("ffn_gate_exps.weight"), il, ne, ffe, p->n_expert, 1.0f))) return rc;
            if ((rc = add_matrix(s, N("ffn_up_exps.weight"), il, ne, ffe, p->n_expert, 1.0f))) return rc;
            if ((rc = add_matrix(s, N("ffn_down_exps.weight"), il, ffe, ne, p->n_expert, 1.0f))) return rc;
        } else {
            if ((rc = add_matrix(s, N("ffn_gate.weight"), il, ne, p->n_ff, 1, 1.0f))) return rc;
            if ((rc = add_matrix(s, N("ffn_up.weight"), il, ne, p->n_ff, 1, 1.0f))) return rc;
            if ((rc = add_matrix(s, N("ffn_down.weight"), il, p->n_ff, ne, 1, 1.0f))) return rc;
        }
#undef N
    }
    if ((rc = add(s, "output_norm.weight", CM_TYPE_F32, 1, ne, 1, 1, INIT_NORM, 0))) return rc;
    if (!p->tied_output)
        if ((rc = add_matrix(s, "output.weight", -1, ne, p->n_vocab, 1, 2.0f))) return rc;
    return CM_OK;
}

/* Approximately normal from one 64-bit draw: the sum of four 16-bit
 * uniforms (Irwin-Hall), rescaled to unit variance. Cheap enough for a
 * billion weights in seconds. */
static inline float fast_normal(cm_rng *r) {
    uint64_t u = cm_rng_u64(r);
    float sum = (float)(u & 0xffff) + (float)((u >> 16) & 0xffff) + (float)((u >> 32) & 0xffff) + (float)(u >> 48);
    return (sum * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
}

static void fill_row(const synth_state *s, const synth_tensor *t, int64_t i_tensor, int64_t row, float *x) {
    cm_rng r;
    cm_rng_init(&r, s->p->seed * 0x9E3779B97F4A7C15ull ^ ((uint64_t)i_tensor << 40) ^ (uint64_t)row);
    int64_t n = t->ne[0];
    switch (t->kind) {
    case INIT_MATRIX:
        for (int64_t i = 0; i < n; i++) x[i] = fast_normal(&r) * t->sigma;
        break;
    case INIT_NORM:
        for (int64_t i = 0; i < n; i++) x[i] = 1.0f + 0.1f * fast_normal(&r);
        break;
    case INIT_BIAS:
        for (int64_t i = 0; i < n; i++) x[i] = 0.2f * fast_normal(&r);
        break;
    case INIT_ROPE_FREQS:
        for (int64_t i = 0; i < n; i++) x[i] = cm_rope_llama3_factor(&s->hp, (int)i);
        break;
    }
}

static void quant_worker(void *arg, int ith, int nth) {
    synth_state *s = arg;
    const synth_tensor *t = s->cur;
    const cm_type_traits *tr = cm_type_traits_get(t->type);
    float *x = s->rowbuf + (size_t)ith * (size_t)s->max_row;
    long b, e;
    cm_split_range((long)(t->ne[1] * t->ne[2]), ith, nth, &b, &e);
    for (long row = b; row < e; row++) {
        fill_row(s, t, s->cur_index, row, x);
        tr->from_float(x, s->cur_buf + (size_t)row * s->cur_row_bytes, t->ne[0]);
    }
}

static int fill(void *user, int64_t i, const char *name, void *buf, uint64_t n_bytes) {
    synth_state *s = user;
    if (i < 0 || i >= s->n_t || strcmp(name, s->t[i].name))
        return cm_errorf(CM_EINVAL, "synth: writer asked for tensor %lld '%s' out of order", (long long)i, name);
    const synth_tensor *t = &s->t[i];
    const cm_type_traits *tr = cm_type_traits_get(t->type);
    if (!tr || !tr->from_float)
        return cm_errorf(CM_EUNSUPPORTED, "synth: no quantizer for type %s", cm_type_name(t->type));
    s->cur = t;
    s->cur_index = i;
    s->cur_buf = buf;
    s->cur_row_bytes = cm_type_row_bytes(t->type, t->ne[0]);
    if ((uint64_t)s->cur_row_bytes * (uint64_t)(t->ne[1] * t->ne[2]) != n_bytes)
        return cm_errorf(CM_EINVAL, "synth: tensor %s: writer gave %llu bytes, expected %llu", name,
                         (unsigned long long)n_bytes,
                         (unsigned long long)s->cur_row_bytes * (unsigned long long)(t->ne[1] * t->ne[2]));
    cm_pool_run(s->pool, quant_worker, s);
    s->bytes_done += n_bytes;
    if (s->p->progress)
        fprintf(stderr, "[%4lld/%4d] %-28s %-5s [%lld x %lld x %lld]  %5.1f%%  %.1fs\n", (long long)i + 1, s->n_t,
                name, cm_type_name(t->type), (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                100.0 * (double)s->bytes_done / (double)(s->bytes_total ? s->bytes_total : 1),
                cm_now_s() - s->t0);
    return CM_OK;
}

/* ---- built-in tokenizer ---- */

/* GPT-2's byte-to-unicode map: printable bytes stand for themselves, the
 * others for 256 + k in byte order. Writes the UTF-8 of byte b's char. */
static int byte_char(int b, char *out) {
    int cp;
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) {
        cp = b;
    } else {
        int k = 0;
        for (int x = 0; x < b; x++)
            if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) k++;
        cp = 256 + k;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

static int write_builtin_tokenizer(cm_gguf_writer *w, int n_vocab) {
    int rc = CM_ENOMEM;
    int n_merges = n_vocab - 256 - 2;
    char **tok = calloc((size_t)n_vocab, sizeof *tok);
    size_t *len = calloc((size_t)n_vocab, sizeof *len);
    int32_t *type = calloc((size_t)n_vocab, sizeof *type);
    char **mer = calloc((size_t)(n_merges > 0 ? n_merges : 1), sizeof *mer);
    size_t *mlen = calloc((size_t)(n_merges > 0 ? n_merges : 1), sizeof *mlen);
    if (!tok || !len || !type || !mer || !mlen) goto done;
    for (int b = 0; b < 256; b++) {
        char u[4];
        int n = byte_char(b, u);
        if (!(tok[b] = malloc(4))) goto done;
        memcpy(tok[b], u, (size_t)n);
        len[b] = (size_t)n;
        type[b] = 1;
    }
    /* Alphabet by rough English frequency; the word-initial space char
     * (byte 0x20 -> 'Ġ') may only start a token. */
    static const char alpha[] = "etaoinsrhldcumfpgwybvkxjqzETAOINSRHLDCUMFPGWYBVKXJQZ0123456789";
    const int n_alpha = (int)sizeof alpha - 1;
    int n_tok = 256;
    /* Breadth-first by length: extend every token made so far (starting with
     * 'Ġ' and the letters themselves) by each letter. */
    int frontier_begin = 0, frontier_end = 0;
    int *front = malloc(sizeof(int) * (size_t)(n_vocab + n_alpha + 1));
    if (!front) goto done;
    front[frontier_end++] = ' '; /* byte ids equal byte values */
    for (int a = 0; a < n_alpha; a++) front[frontier_end++] = (unsigned char)alpha[a];
    int m = 0;
    while (m < n_merges && frontier_begin < frontier_end) {
        int end = frontier_end;
        for (int f = frontier_begin; f < end && m < n_merges; f++) {
            int left = front[f];
            for (int a = 0; a < n_alpha && m < n_merges; a++) {
                int right = (unsigned char)alpha[a];
                size_t L = len[left] + len[right];
                if (!(tok[n_tok] = malloc(L)) || !(mer[m] = malloc(L + 1))) {
                    free(front);
                    goto done;
                }
                memcpy(tok[n_tok], tok[left], len[left]);
                memcpy(tok[n_tok] + len[left], tok[right], len[right]);
                len[n_tok] = L;
                type[n_tok] = 1;
                memcpy(mer[m], tok[left], len[left]);
                mer[m][len[left]] = ' ';
                memcpy(mer[m] + len[left] + 1, tok[right], len[right]);
                mlen[m] = L + 1;
                front[frontier_end++] = n_tok;
                n_tok++;
                m++;
            }
        }
        frontier_begin = end;
    }
    free(front);
    n_merges = m;
    static const char *specials[2] = {"<|begin_of_text|>", "<|end_of_text|>"};
    for (int i = 0; i < 2; i++) {
        if (!(tok[n_tok] = strdup(specials[i]))) goto done;
        len[n_tok] = strlen(specials[i]);
        type[n_tok] = 3; /* control */
        n_tok++;
    }
    if ((rc = cm_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2"))) goto done;
    if ((rc = cm_gguf_writer_set_str(w, "tokenizer.ggml.pre", "gpt-2"))) goto done;
    if ((rc = cm_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tok, len, (uint64_t)n_tok)))
        goto done;
    if ((rc = cm_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", CM_GGUF_INT32, type, (uint64_t)n_tok))) goto done;
    if ((rc = cm_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)mer, mlen,
                                         (uint64_t)n_merges)))
        goto done;
    if ((rc = cm_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)(n_tok - 2)))) goto done;
    if ((rc = cm_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)(n_tok - 1)))) goto done;
    if ((rc = cm_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", true))) goto done;
    if ((rc = cm_gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", false))) goto done;
    rc = n_tok == n_vocab ? CM_OK
                          : cm_errorf(CM_EINVAL, "synth: built-in tokenizer reached %d tokens, wanted %d", n_tok, n_vocab);
done:
    if (tok)
        for (int i = 0; i < n_vocab; i++) free(tok[i]);
    if (mer)
        for (int i = 0; i < (n_merges > 0 ? n_merges : 0); i++) free(mer[i]);
    free(tok);
    free(len);
    free(type);
    free(mer);
    free(mlen);
    return rc;
}

/* llama.cpp's general.file_type values for the types a synth file uses. */
static int file_type(const cm_synth_params *p) {
    if (p->mix == CM_SYNTH_MIX_Q4_K_M) return 15;
    if (p->mix == CM_SYNTH_MIX_Q5_K_M) return 17;
    switch (p->type) {
    case CM_TYPE_F32: return 0;
    case CM_TYPE_F16: return 1;
    case CM_TYPE_Q4_0: return 2;
    case CM_TYPE_Q4_1: return 3;
    case CM_TYPE_Q8_0: return 7;
    case CM_TYPE_Q5_0: return 8;
    case CM_TYPE_Q5_1: return 9;
    case CM_TYPE_Q2_K: return 10;
    case CM_TYPE_Q3_K: return 12;
    case CM_TYPE_Q4_K: return 15;
    case CM_TYPE_Q5_K: return 17;
    case CM_TYPE_Q6_K: return 18;
    case CM_TYPE_BF16: return 32;
    default: return -1;
    }
}

static int check_params(const cm_synth_params *p) {
    bool moe_arch = !strcmp(p->arch, "qwen3moe");
    if (strcmp(p->arch, "llama") && strcmp(p->arch, "qwen2") && strcmp(p->arch, "qwen3") && !moe_arch)
        return cm_errorf(CM_EINVAL, "synth: --arch must be llama, qwen2, qwen3 or qwen3moe, not '%s'", p->arch);
    if (p->n_embd < 1 || p->n_layer < 1 || p->n_head < 1 || p->n_head_kv < 1 || p->n_head % p->n_head_kv)
        return cm_errorf(CM_EINVAL, "synth: need --embd, --layers, --heads >= 1 and --heads a multiple of --kv-heads");
    int hd = p->head_dim ? p->head_dim : p->n_embd / p->n_head;
    if (hd < 2 || hd % 2 || (!p->head_dim && p->n_embd % p->n_head))
        return cm_errorf(CM_EINVAL, "synth: head size %d (embd %d / heads %d) must be even and exact", hd, p->n_embd,
                         p->n_head);
    if (moe_arch && (p->n_expert < 1 || p->n_ff_expert < 1))
        return cm_errorf(CM_EINVAL, "synth: qwen3moe needs --experts, --experts-used and --expert-ffn");
    if (p->n_expert > 0 && (p->n_expert_used < 1 || p->n_expert_used > p->n_expert))
        return cm_errorf(CM_EINVAL, "synth: --experts-used must be 1..%d", p->n_expert);
    if (p->n_expert > 0 && (!strcmp(p->arch, "qwen2") || !strcmp(p->arch, "qwen3")))
        return cm_errorf(CM_EINVAL, "synth: experts are supported for llama (Mixtral) and qwen3moe only");
    if (!strcmp(p->arch, "llama") && p->n_expert > 0 && p->n_ff_expert && p->n_ff_expert != p->n_ff)
        return cm_errorf(CM_EINVAL, "synth: a llama model with experts uses --ffn as the expert width; "
                                    "--expert-ffn must match it or be left out");
    if (p->n_expert == 0 && p->n_ff < 1) return cm_errorf(CM_EINVAL, "synth: need --ffn >= 1");
    if (!p->vocab_from && p->n_vocab < 258)
        return cm_errorf(CM_EINVAL, "synth: --vocab must be at least 258 (256 bytes + BOS + EOS)");
    if (p->rope_llama3_factor > 0 && strcmp(p->arch, "llama"))
        return cm_errorf(CM_EINVAL, "synth: llama3 rope scaling applies to --arch llama only");
    if (!cm_type_traits_get(p->type) || !cm_type_traits_get(p->type)->from_float)
        return cm_errorf(CM_EUNSUPPORTED, "synth: type %s has no quantizer yet", cm_type_name(p->type));
    return CM_OK;
}

int cm_synth_write(const cm_synth_params *p_in, const char *path) {
    cm_kernels_init(false);
    cm_synth_params p = *p_in;
    int rc = check_params(&p);
    if (rc) return rc;
    synth_state s;
    memset(&s, 0, sizeof s);
    s.p = &p;
    cm_gguf *vsrc = NULL;
    cm_gguf_writer *w = NULL;
    if (p.vocab_from) {
        if ((rc = cm_gguf_open(p.vocab_from, &vsrc))) goto done;
        int et;
        uint64_t n;
        if (cm_gguf_get_arr_info(vsrc, "tokenizer.ggml.tokens", &et, &n) || n == 0 || n > (1u << 30)) {
            rc = cm_errorf(CM_EFORMAT, "%s: no tokenizer.ggml.tokens array to copy", p.vocab_from);
            goto done;
        }
        p.n_vocab = (int)n;
    }
    int hd = p.head_dim ? p.head_dim : p.n_embd / p.n_head;
    s.hp.rope_freq_base = p.rope_freq_base;
    s.hp.rope_dim = hd;
    s.hp.rope_scale_factor = p.rope_llama3_factor;
    s.hp.rope_low_freq_factor = p.rope_low_freq_factor;
    s.hp.rope_high_freq_factor = p.rope_high_freq_factor;
    s.hp.rope_orig_ctx = p.rope_orig_ctx;
    if ((rc = plan_tensors(&s))) goto done;

    if ((rc = cm_gguf_writer_create(&w))) goto done;
    const char *a = p.arch;
    char key[128];
#define K(x) (snprintf(key, sizeof key, "%s." x, a), key)
    if ((rc = cm_gguf_writer_set_str(w, "general.architecture", a))) goto done;
    if ((rc = cm_gguf_writer_set_str(w, "general.name", "cellm synthetic"))) goto done;
    if (file_type(&p) >= 0 && (rc = cm_gguf_writer_set_u32(w, "general.file_type", (uint32_t)file_type(&p)))) goto done;
    if ((rc = cm_gguf_writer_set_u32(w, K("context_length"), (uint32_t)p.n_ctx_train))) goto done;
    if ((rc = cm_gguf_writer_set_u32(w, K("embedding_length"), (uint32_t)p.n_embd))) goto done;
    if ((rc = cm_gguf_writer_set_u32(w, K("block_count"), (uint32_t)p.n_layer))) goto done;
    if ((rc = cm_gguf_writer_set_u32(w, K("feed_forward_length"), (uint32_t)p.n_ff))) goto done;
    if ((rc = cm_gguf_writer_set_u32(w, K("attention.head_count"), (uint32_t)p.n_head))) goto done;
    if ((rc = cm_gguf_writer_set_u32(w, K("attention.head_count_kv"), (uint32_t)p.n_head_kv))) goto done;
    if ((rc = cm_gguf_writer_set_u32(w, K("attention.key_length"), (uint32_t)hd))) goto done;
    if ((rc = cm_gguf_writer_set_u32(w, K("attention.value_length"), (uint32_t)hd))) goto done;
    if ((rc = cm_gguf_writer_set_f32(w, K("attention.layer_norm_rms_epsilon"), p.norm_eps))) goto done;
    if ((rc = cm_gguf_writer_set_f32(w, K("rope.freq_base"), p.rope_freq_base))) goto done;
    if ((rc = cm_gguf_writer_set_u32(w, K("rope.dimension_count"), (uint32_t)hd))) goto done;
    if ((rc = cm_gguf_writer_set_u32(w, K("vocab_size"), (uint32_t)p.n_vocab))) goto done;
    if (p.n_expert > 0) {
        if ((rc = cm_gguf_writer_set_u32(w, K("expert_count"), (uint32_t)p.n_expert))) goto done;
        if ((rc = cm_gguf_writer_set_u32(w, K("expert_used_count"), (uint32_t)p.n_expert_used))) goto done;
        if (p.n_ff_expert &&
            (rc = cm_gguf_writer_set_u32(w, K("expert_feed_forward_length"), (uint32_t)p.n_ff_expert)))
            goto done;
    }
    /* Converters express Llama 3.1 scaling as the rope_freqs.weight tensor
     * only; llama.cpp refuses a rope.scaling.type of "llama3", so the keys
     * are written only when asked for instead of the tensor. */
    if (p.rope_llama3_factor > 0 && p.rope_llama3_keys_only) {
        if ((rc = cm_gguf_writer_set_str(w, K("rope.scaling.type"), "llama3"))) goto done;
        if ((rc = cm_gguf_writer_set_f32(w, K("rope.scaling.factor"), p.rope_llama3_factor))) goto done;
        if ((rc = cm_gguf_writer_set_f32(w, K("rope.scaling.low_freq_factor"), p.rope_low_freq_factor))) goto done;
        if ((rc = cm_gguf_writer_set_f32(w, K("rope.scaling.high_freq_factor"), p.rope_high_freq_factor))) goto done;
        if ((rc = cm_gguf_writer_set_u32(w, K("rope.scaling.original_context_length"), (uint32_t)p.rope_orig_ctx)))
            goto done;
    }
#undef K
    if (vsrc) {
        for (int64_t i = 0; i < cm_gguf_n_kv(vsrc); i++)
            if (!strncmp(cm_gguf_kv_key(vsrc, i), "tokenizer.", 10) && (rc = cm_gguf_writer_copy_kv(w, vsrc, i)))
                goto done;
    } else if ((rc = write_builtin_tokenizer(w, p.n_vocab))) {
        goto done;
    }

    for (int i = 0; i < s.n_t; i++) {
        const synth_tensor *t = &s.t[i];
        if ((rc = cm_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne))) goto done;
        s.bytes_total += cm_type_row_bytes(t->type, t->ne[0]) * (uint64_t)(t->ne[1] * t->ne[2]);
    }
    if ((rc = cm_pool_create(p.n_threads, &s.pool))) goto done;
    s.rowbuf = malloc((size_t)cm_pool_n_threads(s.pool) * (size_t)s.max_row * sizeof(float));
    if (!s.rowbuf) {
        rc = CM_ENOMEM;
        goto done;
    }
    s.t0 = cm_now_s();
    rc = cm_gguf_writer_write(w, path, fill, &s);
    if (rc == CM_OK && p.progress)
        fprintf(stderr, "wrote %s: %d tensors, %.1f MiB in %.1fs\n", path, s.n_t, (double)s.bytes_total / 1048576.0,
                cm_now_s() - s.t0);
done:
    free(s.rowbuf);
    if (s.pool) cm_pool_destroy(s.pool);
    free(s.t);
    cm_gguf_writer_destroy(w);
    cm_gguf_close(vsrc);
    return rc;
}
