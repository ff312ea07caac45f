/* model_internal.h - the structures behind cm_model and cm_ctx, shared by the
 * files of src/model (model.c binds, ctx.c allocates, forward.c, attention.c
 * and rope.c compute). Not part of any other layer's view.
 *
 * Invariants once cm_model_load returns:
 *   - every cm_weight points inside the model's mmap'd GGUF, has a type with
 *     kernels (cm_type_traits_get != NULL) and ne[0] a multiple of its block;
 *     or it was repacked (model.c): then type is a repacked id of
 *     kernels/repack.h (cm_type_traits_get == NULL, cm_repack_ops_of != NULL),
 *     data a model-owned buffer in that layout, mat_bytes its bytes per
 *     matrix and row_bytes mat_bytes / n_rows (rows are not row_bytes apart:
 *     only cm_matmul may read such a weight). tok_embd is never repacked;
 *   - every small vector (norms, biases, rope factors) is an f32 copy owned by
 *     the model (they are tiny, and copying lets norms be stored as f16/bf16);
 *   - layers[] holds exactly the stage's layers, layers[i] is layer
 *     layer_begin + i. */
#ifndef CM_MODEL_INTERNAL_H
#define CM_MODEL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/fp16.h"
#include "base/pool.h"
#include "gguf/gguf.h"
#include "kernels/quants.h"
#include "model/model.h"

/* A 2-D (or 3-D, for stacked experts) weight matrix as the file stores it:
 * n_mat matrices of n_rows rows of n_cols elements, rows row_bytes apart
 * (or repacked at load time, see above; matrices still mat_bytes apart). */
typedef struct cm_weight {
    const char *name;
    int type;
    int64_t n_cols;   /* ne[0]: the input dimension */
    int64_t n_rows;   /* ne[1]: the output dimension */
    int64_t n_mat;    /* ne[2]: experts; 1 otherwise */
    size_t row_bytes;
    size_t mat_bytes; /* n_rows * row_bytes */
    const uint8_t *data;
} cm_weight;

typedef struct cm_layer {
    float *attn_norm;               /* (n_embd) */
    cm_weight wq;                   /* (n_head*head_dim rows, n_embd cols) */
    cm_weight wk, wv;               /* (n_head_kv*head_dim rows, n_embd cols) */
    cm_weight wo;                   /* (n_embd rows, n_head*head_dim cols) */
    float *bq, *bk, *bv;            /* qwen2 biases, NULL elsewhere */
    float *q_norm, *k_norm;         /* (head_dim) qwen3/qwen3moe, NULL elsewhere */
    float *ffn_norm;                /* (n_embd) */
    cm_weight ffn_gate, ffn_up;     /* dense: (n_ff rows, n_embd cols) */
    cm_weight ffn_down;             /* dense: (n_embd rows, n_ff cols) */
    cm_weight gate_inp;             /* MoE router: (n_expert rows, n_embd cols) */
    cm_weight gate_exps, up_exps;   /* MoE: n_expert x (n_ff_expert rows, n_embd cols) */
    cm_weight down_exps;            /* MoE: n_expert x (n_embd rows, n_ff_expert cols) */
} cm_layer;

struct cm_model {
    cm_gguf *gguf;
    cm_hparams hp;
    int layer_begin, layer_end;
    bool moe_norm_topk;   /* renormalize the top-k router weights */
    cm_layer *layers;     /* layer_end - layer_begin */
    cm_weight tok_embd;   /* (n_vocab rows, n_embd cols); bound on the first stage, and on the last when tied */
    float *output_norm;   /* (n_embd) last stage */
    cm_weight output;     /* (n_vocab rows, n_embd cols) last stage; == tok_embd when tied */
    float *rope_freq;     /* (rope_dim/2) angle per position of each rotated pair, scaling applied */
    void **owned;         /* f32 copies to free */
    int n_owned, cap_owned;
    uint8_t *arena;       /* repacked weights (one mapping, huge pages where the kernel gives them) */
    size_t arena_bytes, arena_used;
};

/* Per-forward view of the batch with validated per-entry data. */
struct cm_ctx {
    cm_model *model;
    cm_ctx_params params;
    cm_pool *pool;
    int n_layer_stage;
    int n_q, n_kv;             /* n_head*head_dim, n_head_kv*head_dim */
    int n_ff_max;              /* widest FFN hidden (dense or expert) */
    cm_f16 **k_cache, **v_cache; /* per stage layer: (n_seq_max, n_ctx, n_kv) f16 (kv_type f16) */
    cm_block_q8_0 **k_q8, **v_q8; /* per stage layer: (n_seq_max, n_ctx, n_kv / 32) blocks (kv_type q8_0) */
    int32_t *seq_len;          /* positions each sequence holds */
    int32_t *next_pos;         /* (n_seq_max) validation scratch */
    /* scratch, all sized for n_batch_max tokens */
    float *x;                  /* (n_batch, n_embd) residual stream */
    float *x_next;             /* (n_batch, n_embd) the fused decode path's next residual, swapped with x */
    float *xb;                 /* (n_batch, n_embd) normed input */
    float *xo;                 /* (n_batch, n_embd) layer output before residual add */
    float *q;                  /* (n_batch, n_q) */
    float *k, *v;              /* (n_batch, n_kv) */
    float *att;                /* (n_batch, n_q) attention output */
    float *hb, *hb2;           /* (n_batch, n_ff_max) */
    float *rope_cs;            /* (n_batch, rope_dim/2, 2) cos, sin of each entry's angles */
    void *mm_scratch;          /* activations converted for cm_matmul */
    size_t mm_scratch_bytes;
    float *logits;             /* (n_batch, n_vocab) last stage */
    int32_t *logit_row;        /* (n_batch) entry -> row in logits, -1 = none */
    /* MoE scratch */
    float *router;             /* (n_batch, n_expert) */
    int32_t *sel;              /* (n_batch, n_expert_used) chosen experts */
    float *sel_w;              /* (n_batch, n_expert_used) their weights */
    int32_t *exp_count;        /* (n_expert) */
    int32_t *exp_tok;          /* (n_expert, n_batch) token of each routed slot */
    float *exp_w;              /* (n_expert, n_batch) weight of each routed slot */
    float *gx;                 /* (n_batch, n_embd) gathered tokens of one expert */
    float *gy;                 /* (n_batch, n_embd) that expert's output */
    /* attention: per-thread tile scratch */
    float *att_scratch;        /* (n_threads, att_scratch_stride) */
    int att_scratch_stride;
    /* fused decode path (forward_decode.c): per thread, CM_DECODE_FUSED_TOKENS
     * rows of floats, then 3 activation slots; NULL when the path is off */
    uint8_t *dec_scratch;
    size_t dec_stride, dec_slot0, dec_slot_bytes;
    uint64_t kv_bytes, scratch_bytes;
};

/* forward_decode.c: a dense layer for batches of up to this many tokens in
 * three pool jobs (CELLM_DECODE_FUSED=off in the environment at context
 * creation keeps the general path, for comparisons). */
#define CM_DECODE_FUSED_TOKENS 8
bool cm_decode_fused_fits(const cm_ctx *c, const cm_batch *b);
void cm_layer_forward_fused(cm_ctx *c, int il, const cm_batch *b);

/* Positions per attention tile: the score buffer of one thread. */
#define CM_ATT_TILE 128

/* rope.c */
/* Fills freq[rope_dim/2] with the rotation speed of each pair: base^(-2i/d)
 * divided by the scaling factor of that pair (1 without scaling). */
void cm_rope_freqs_default(const cm_hparams *hp, float *freq);
/* Llama 3.1 factor of pair i (the amount its frequency is divided by). */
float cm_rope_llama3_factor(const cm_hparams *hp, int i);
/* cs[rope_dim/2][2] = cos, sin of pos * freq[i]: computed once per entry
 * and shared by every head of every layer. */
void cm_rope_angles(const cm_hparams *hp, const float *freq, int pos, float *cs);
/* Rotates one head vector x[head_dim] in place by the angles cs. */
void cm_rope_apply(const cm_hparams *hp, const float *cs, float *x);

/* attention.c: att[t, h] = softmax(q[t,h] . K[seq, 0..pos]) V for every
 * entry t of the batch and every head h, reading the cache of stage layer il. */
void cm_attention(cm_ctx *c, int il, const cm_batch *batch);
/* Floats of per-thread scratch cm_attention needs. */
size_t cm_attention_scratch_floats(const cm_hparams *hp);

/* forward.c helpers used by others */
void cm_rmsnorm(float *y, const float *x, const float *w, int n, float eps);
/* g[i] = silu(g[i]) * u[i] for i < n. */
void cm_swiglu(float *restrict g, const float *restrict u, long n);

#endif
