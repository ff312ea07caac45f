/* model.h - a model's hyper-parameters and weights, and the forward pass of a
 * *stage*: a contiguous range of layers [layer_begin, layer_end), plus the
 * token embedding when layer_begin == 0 and the output norm, LM head when
 * layer_end == n_layer. A single node loads one stage that holds every layer.
 *
 * A stage's forward takes n_tokens x n_embd hidden states (or token ids on
 * the first stage) and returns the same shape (or logits on the last stage),
 * so a cell can chain stages across the network.
 *
 * Weights are mmap'd from the GGUF and never copied unless a kernel repacks
 * them. KV cache and scratch belong to a cm_ctx, sized once at creation from
 * n_ctx, n_seq_max and n_batch_max; nothing is allocated per token. */
#ifndef CM_MODEL_MODEL_H
#define CM_MODEL_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/pool.h"
#include "gguf/gguf.h"

typedef enum cm_arch {
    CM_ARCH_LLAMA,    /* Llama 2/3, Mistral, Mixtral (experts) */
    CM_ARCH_QWEN2,    /* attention biases */
    CM_ARCH_QWEN3,    /* per-head Q/K RMS norm */
    CM_ARCH_QWEN3MOE, /* Q/K norm + top-k routed experts */
} cm_arch;

typedef struct cm_hparams {
    cm_arch arch;
    char arch_name[32];
    int n_vocab;
    int n_ctx_train;
    int n_embd;
    int n_layer;
    int n_head;
    int n_head_kv;
    int head_dim;        /* attention.key_length, default n_embd / n_head */
    int n_ff;            /* dense FFN width */
    int n_expert;        /* 0 for dense models */
    int n_expert_used;
    int n_ff_expert;
    float norm_eps;
    float rope_freq_base;
    int rope_dim;        /* rope.dimension_count, default head_dim */
    bool rope_neox;      /* NeoX layout (rotate halves) vs normal (adjacent pairs) */
    /* Llama 3.1 frequency scaling (rope.scaling.type == "llama3"); factor 0 = off */
    float rope_scale_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_orig_ctx;
    bool tied_output;    /* no output.weight: the LM head is token_embd */
} cm_hparams;

/* Reads hyper-parameters from GGUF metadata; CM_EFORMAT/CM_EUNSUPPORTED with
 * a message naming the key when something is missing or out of range. */
int cm_hparams_load(const cm_gguf *g, cm_hparams *hp);

typedef struct cm_model cm_model;

typedef struct cm_model_params {
    int layer_begin; /* first layer of the stage */
    int layer_end;   /* one past the last; -1 = n_layer */
} cm_model_params;

/* Opens `path` and binds the tensors of the stage; checks every tensor's
 * presence, type and shape. Takes ownership of nothing; the model keeps its
 * own cm_gguf open. */
int cm_model_load(const char *path, const cm_model_params *params, cm_model **out);
void cm_model_destroy(cm_model *m);
const cm_hparams *cm_model_hparams(const cm_model *m);
const cm_gguf *cm_model_gguf(const cm_model *m);
int cm_model_layer_begin(const cm_model *m);
int cm_model_layer_end(const cm_model *m);
bool cm_model_is_first(const cm_model *m);
bool cm_model_is_last(const cm_model *m);
/* Bytes of weights the stage reads per decoded token (all of its tensors
 * for dense models; shared + n_expert_used experts for MoE). */
uint64_t cm_model_weight_bytes(const cm_model *m);
/* KV cache bytes per token of context for this stage. */
uint64_t cm_model_kv_bytes_per_token(const cm_model *m);

typedef struct cm_ctx cm_ctx;

typedef struct cm_ctx_params {
    int n_ctx;       /* tokens of context per sequence */
    int n_seq_max;   /* sequences that can be live at once */
    int n_batch_max; /* tokens in one forward call */
    int n_threads;   /* <= 0: all cores */
    int kv_type;     /* cm_kv_type: how K and V are stored (0: f16) */
} cm_ctx_params;

/* KV cache element types. q8_0 stores each 32 values of a head's K or V row
 * as 32 signed bytes and one f16 scale (34 bytes instead of 64: the cache
 * takes 53% of the memory), at the cost of rounding every value to 1/254
 * of its block's largest magnitude; it needs head_dim % 32 == 0. */
enum cm_kv_type { CM_KV_F16 = 0, CM_KV_Q8_0 = 1 };
/* "f16" / "q8_0" -> the type; -1 for any other name. */
int cm_kv_type_from_name(const char *name);
const char *cm_kv_type_name(int kv_type);

int cm_ctx_create(cm_model *m, const cm_ctx_params *params, cm_ctx **out);
void cm_ctx_destroy(cm_ctx *c);
const cm_model *cm_ctx_model(const cm_ctx *c);
cm_pool *cm_ctx_pool(cm_ctx *c);

/* One forward call: n_tokens entries, each a (token, position, sequence).
 * Entries of one sequence must be in increasing position order; a sequence's
 * positions continue from what its KV cache holds. want_logits[i] marks the
 * entries whose logits (last stage) are produced; NULL = only the last entry. */
typedef struct cm_batch {
    int n_tokens;
    const int32_t *token;        /* first stage only; NULL otherwise */
    const int32_t *pos;
    const int32_t *seq_id;
    const int8_t *want_logits;
} cm_batch;

/* Runs the stage. First stage: reads batch->token, ignores hidden_in. Other
 * stages: hidden_in is n_tokens x n_embd f32. Last stage: logits for the
 * wanted entries are kept in the ctx (cm_ctx_logits). Other stages: writes
 * n_tokens x n_embd f32 to hidden_out. Errors (position past n_ctx, unknown
 * sequence, too many tokens) leave the KV cache as it was. */
int cm_stage_forward(cm_ctx *c, const cm_batch *batch, const float *hidden_in, float *hidden_out);

/* Convenience for a whole model on one node: cm_stage_forward of a stage that
 * is both first and last. */
int cm_ctx_decode(cm_ctx *c, const cm_batch *batch);

/* Logits (n_vocab floats) of the i-th entry of the last forward call that had
 * want_logits set; NULL if that entry wanted none. Valid until the next call. */
float *cm_ctx_logits(cm_ctx *c, int i_entry);

/* Forgets positions [p0, p1) of a sequence (p1 < 0: to the end). The cache
 * keeps a sequence as one run of positions 0..len-1, so a range that stops
 * short of the end forgets everything from p0 on as well (the caller feeds
 * what followed again); cm_ctx_seq_len tells what is kept. */
void cm_ctx_seq_rm(cm_ctx *c, int seq_id, int p0, int p1);
/* Number of positions a sequence holds in the cache. */
int cm_ctx_seq_len(const cm_ctx *c, int seq_id);
/* Bytes the ctx allocated for KV cache and for scratch. */
uint64_t cm_ctx_kv_bytes(const cm_ctx *c);
uint64_t cm_ctx_scratch_bytes(const cm_ctx *c);

#endif
