/* forward.c - the forward pass of a stage over one batch.
 *
 * Per layer, for the n_tokens entries at once (rows of the scratch buffers):
 *   xb = rmsnorm(x) * attn_norm
 *   q, k, v = Wq xb (+bq), Wk xb (+bk), Wv xb (+bv)
 *   qwen3: q, k per head = rmsnorm(head) * q_norm / k_norm
 *   rope(q), rope(k); K, V -> cache slot (seq, pos) as f16
 *   att = causal GQA attention over the cache (attention.c)
 *   x += Wo att
 *   xb = rmsnorm(x) * ffn_norm
 *   dense: x += Wdown (silu(Wgate xb) * Wup xb)
 *   MoE:   p = softmax(Wrouter xb); top-k experts; weights renormalised over
 *          the k (llama/Mixtral and qwen3moe both do); x += sum_k w_k FFN_k(xb)
 * Last stage: logits = Wout (rmsnorm(x) * output_norm) for wanted entries.
 *
 * Every matmul goes through cm_matmul; nothing is allocated here. The batch
 * is validated in full before anything is written, so an error leaves the
 * KV cache and the sequence lengths exactly as they were. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "base/status.h"
#include "kernels/kernels.h"
#include "model/model_internal.h"

void cm_rmsnorm(float *y, const float *x, const float *w, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++) y[i] = x[i] * r * w[i];
}

static void mm(cm_ctx *c, const cm_weight *w, int64_t mat, const float *x, int n_tokens, float *y) {
    cm_matmul(c->pool, w->type, w->data + (size_t)mat * w->mat_bytes, w->row_bytes, w->n_rows, w->n_cols, x, n_tokens,
              y, c->mm_scratch);
}

static float silu(float x) { return x / (1.0f + expf(-x)); }

/* On x86 the SwiGLU loop is also built for AVX2 and AVX-512, the widest the
 * CPU has picked at load time (no intrinsics here). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FWD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FWD_CLONES
#endif

/* e^x without a libm call, so that loops over it vectorize: x = n ln2 + r
 * with |r| <= ln2/2, e^r by its degree-6 Taylor polynomial (relative error
 * below 2e-7), 2^n built in the exponent bits. x is clamped to [-88, 88]:
 * the result is then 0 below (n = -127 makes a zero scale) and at most
 * 2.4e38 above, finite either way; NaN stays NaN. */
static inline float exp_clamped(float x) {
    x = x < -88.0f ? -88.0f : x > 88.0f ? 88.0f : x;
    const float shift = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float n = (x * 1.44269504f + shift) - shift;
    float r = x - n * 0.693145752f - n * 1.42860677e-6f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    union {
        int32_t i;
        float f;
    } e = {.i = ((int32_t)n + 127) << 23};
    return p * e.f;
}

/* g[i] = silu(g[i]) * u[i]: the SwiGLU gate, a large share of the
 * element-wise work of a prompt (n_ff values per token and layer). */
FWD_CLONES void cm_swiglu(float *restrict g, const float *restrict u, long n) {
    for (long i = 0; i < n; i++) g[i] = g[i] / (1.0f + exp_clamped(-g[i])) * u[i];
}

static int validate(cm_ctx *c, const cm_batch *b, const float *hidden_in, float *hidden_out) {
    const cm_model *m = c->model;
    const int n_seq = c->params.n_seq_max;
    if (b->n_tokens < 1 || b->n_tokens > c->params.n_batch_max)
        return cm_errorf(CM_ERANGE, "batch of %d tokens: must be 1..%d (the context's n_batch_max)", b->n_tokens,
                         c->params.n_batch_max);
    if (!b->pos || !b->seq_id) return cm_errorf(CM_EINVAL, "batch has no positions or sequence ids");
    if (cm_model_is_first(m) && !b->token) return cm_errorf(CM_EINVAL, "first stage needs batch token ids");
    if (!cm_model_is_first(m) && !hidden_in) return cm_errorf(CM_EINVAL, "stage needs input hidden states");
    if (!cm_model_is_last(m) && !hidden_out) return cm_errorf(CM_EINVAL, "stage needs an output buffer");
    for (int s = 0; s < n_seq; s++) c->next_pos[s] = c->seq_len[s];
    for (int i = 0; i < b->n_tokens; i++) {
        int s = b->seq_id[i], p = b->pos[i];
        if (s < 0 || s >= n_seq)
            return cm_errorf(CM_ERANGE, "batch entry %d: sequence id %d is out of range (0..%d)", i, s, n_seq - 1);
        if (p >= c->params.n_ctx)
            return cm_errorf(CM_ERANGE, "batch entry %d: position %d is past the context of %d tokens (sequence %d)",
                             i, p, c->params.n_ctx, s);
        if (p != c->next_pos[s])
            return cm_errorf(CM_EINVAL,
                             "batch entry %d: sequence %d continues at position %d, got position %d (positions of a "
                             "sequence must follow each other)",
                             i, s, c->next_pos[s], p);
        if (cm_model_is_first(m) && (b->token[i] < 0 || b->token[i] >= m->hp.n_vocab))
            return cm_errorf(CM_ERANGE, "batch entry %d: token id %d is out of range (vocabulary of %d)", i,
                             b->token[i], m->hp.n_vocab);
        c->next_pos[s]++;
    }
    return CM_OK;
}

static void embed(cm_ctx *c, const cm_batch *b) {
    const cm_weight *w = &c->model->tok_embd;
    const cm_type_traits *tr = cm_type_traits_get(w->type);
    int ne = c->model->hp.n_embd;
    for (int t = 0; t < b->n_tokens; t++)
        tr->to_float(w->data + (size_t)b->token[t] * w->row_bytes, c->x + (size_t)t * ne, ne);
}

/* The element-wise work between matmuls, spread over the pool so that it
 * does not become the serial part on many-core machines. Per-token phases
 * split the batch's entries; element-wise ones split the elements. */
enum ew_phase { EW_NORM, EW_ADD_NORM, EW_ADD, EW_SWIGLU };

static void ew(cm_ctx *c, const cm_batch *b, const cm_layer *L, int il, int phase, const float *w, size_t n);

static void ffn_dense(cm_ctx *c, const cm_layer *L, int n) {
    int ff = (int)L->ffn_gate.n_rows;
    mm(c, &L->ffn_gate, 0, c->xb, n, c->hb);
    mm(c, &L->ffn_up, 0, c->xb, n, c->hb2);
    ew(c, NULL, L, 0, EW_SWIGLU, NULL, (size_t)n * (size_t)ff);
    mm(c, &L->ffn_down, 0, c->hb, n, c->xo);
}

static void ffn_moe(cm_ctx *c, const cm_layer *L, int n) {
    const cm_hparams *hp = &c->model->hp;
    const int nx = hp->n_expert, k = hp->n_expert_used, ne = hp->n_embd, ff = hp->n_ff_expert;
    mm(c, &L->gate_inp, 0, c->xb, n, c->router);
    memset(c->exp_count, 0, (size_t)nx * sizeof *c->exp_count);
    for (int t = 0; t < n; t++) {
        float *r = c->router + (size_t)t * nx;
        float mx = r[0];
        for (int e = 1; e < nx; e++) mx = r[e] > mx ? r[e] : mx;
        float sum = 0;
        for (int e = 0; e < nx; e++) sum += (r[e] = expf(r[e] - mx));
        for (int e = 0; e < nx; e++) r[e] /= sum;
        /* top-k by probability, lower index first on ties; a taken expert
         * is marked -2 (probabilities lie in [0, 1]; a NaN from a broken file
         * still picks some expert, so nothing indexes out of range) */
        int32_t *sel = c->sel + (size_t)t * k;
        float *sw = c->sel_w + (size_t)t * k, wsum = 0;
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int e = 0; e < nx; e++)
                if (r[e] != -2.0f && (best < 0 || r[e] > r[best])) best = e;
            sel[j] = best;
            sw[j] = r[best];
            wsum += r[best];
            r[best] = -2.0f;
        }
        for (int j = 0; j < k; j++) {
            float w = c->model->moe_norm_topk ? sw[j] / wsum : sw[j];
            int e = sel[j], slot = c->exp_count[e]++;
            c->exp_tok[(size_t)e * c->params.n_batch_max + slot] = t;
            c->exp_w[(size_t)e * c->params.n_batch_max + slot] = w;
        }
    }
    memset(c->xo, 0, (size_t)n * ne * sizeof *c->xo);
    for (int e = 0; e < nx; e++) {
        int cnt = c->exp_count[e];
        if (!cnt) continue;
        const int32_t *toks = c->exp_tok + (size_t)e * c->params.n_batch_max;
        const float *ws = c->exp_w + (size_t)e * c->params.n_batch_max;
        for (int j = 0; j < cnt; j++)
            memcpy(c->gx + (size_t)j * ne, c->xb + (size_t)toks[j] * ne, (size_t)ne * sizeof(float));
        mm(c, &L->gate_exps, e, c->gx, cnt, c->hb);
        mm(c, &L->up_exps, e, c->gx, cnt, c->hb2);
        for (size_t i = 0; i < (size_t)cnt * ff; i++) c->hb[i] = silu(c->hb[i]) * c->hb2[i];
        mm(c, &L->down_exps, e, c->hb, cnt, c->gy);
        for (int j = 0; j < cnt; j++) {
            float *o = c->xo + (size_t)toks[j] * ne;
            const float *y = c->gy + (size_t)j * ne;
            for (int i = 0; i < ne; i++) o[i] += ws[j] * y[i];
        }
    }
}


typedef struct ew_job {
    cm_ctx *c;
    const cm_batch *b;
    const cm_layer *L;
    int il;
    int phase;
    const float *w; /* norm weight */
    size_t n;       /* element count for EW_ADD / EW_SWIGLU */
} ew_job;

static void ew_worker(void *arg, int ith, int nth) {
    const ew_job *j = arg;
    cm_ctx *c = j->c;
    const cm_hparams *hp = &c->model->hp;
    const size_t ne = (size_t)hp->n_embd;
    long b, e;
    if (j->phase == EW_ADD || j->phase == EW_SWIGLU) {
        cm_split_range((long)j->n, ith, nth, &b, &e);
        if (j->phase == EW_ADD)
            for (long i = b; i < e; i++) c->x[i] += c->xo[i];
        else
            cm_swiglu(c->hb + b, c->hb2 + b, e - b);
        return;
    }
    cm_split_range(j->b->n_tokens, ith, nth, &b, &e);
    for (long t = b; t < e; t++) {
        float *x = c->x + (size_t)t * ne;
        switch (j->phase) {
        case EW_ADD_NORM:
            for (size_t i = 0; i < ne; i++) x[i] += c->xo[(size_t)t * ne + i];
            /* fall through */
        case EW_NORM:
            cm_rmsnorm(c->xb + (size_t)t * ne, x, j->w, (int)ne, hp->norm_eps);
            break;
        }
    }
}

static void ew(cm_ctx *c, const cm_batch *b, const cm_layer *L, int il, int phase, const float *w, size_t n) {
    ew_job j = {c, b, L, il, phase, w, n};
    cm_pool_run(c->pool, ew_worker, &j);
}

/* The FFN's residual add (x += xo) is left to the next layer's first step,
 * fused with its norm, and after the last layer to the caller: one pool run
 * fewer per layer, which counts at one token per decode step. */
static void layer_forward(cm_ctx *c, int il, const cm_batch *b) {
    const cm_hparams *hp = &c->model->hp;
    const cm_layer *L = &c->model->layers[il];
    const int n = b->n_tokens;

    ew(c, b, L, il, il > 0 ? EW_ADD_NORM : EW_NORM, L->attn_norm, 0);
    mm(c, &L->wq, 0, c->xb, n, c->q);
    mm(c, &L->wk, 0, c->xb, n, c->k);
    mm(c, &L->wv, 0, c->xb, n, c->v);
    cm_attention(c, il, b); /* biases, q/k norms, RoPE, K/V into the cache, attention: one pool run */
    mm(c, &L->wo, 0, c->att, n, c->xo);
    ew(c, b, L, il, EW_ADD_NORM, L->ffn_norm, 0); /* x += attention; xb = norm(x) */
    if (hp->n_expert > 0)
        ffn_moe(c, L, n);
    else
        ffn_dense(c, L, n);
}

int cm_stage_forward(cm_ctx *c, const cm_batch *b, const float *hidden_in, float *hidden_out) {
    int rc = validate(c, b, hidden_in, hidden_out);
    if (rc) return rc;
    const cm_model *m = c->model;
    const cm_hparams *hp = &m->hp;
    const int n = b->n_tokens, ne = hp->n_embd;
    if (cm_model_is_first(m))
        embed(c, b);
    else
        memcpy(c->x, hidden_in, (size_t)n * ne * sizeof(float));
    for (int t = 0; t < n; t++) cm_rope_angles(hp, m->rope_freq, b->pos[t], c->rope_cs + (size_t)t * hp->rope_dim);
    const bool fused = cm_decode_fused_fits(c, b);
    for (int il = 0; il < c->n_layer_stage; il++) {
        if (fused)
            cm_layer_forward_fused(c, il, b);
        else
            layer_forward(c, il, b);
    }
    if (c->n_layer_stage > 0) ew(c, b, NULL, 0, EW_ADD, NULL, (size_t)n * (size_t)ne); /* the last FFN's residual */

    for (int i = 0; i < c->params.n_batch_max; i++) c->logit_row[i] = -1;
    if (cm_model_is_last(m)) {
        int n_out = 0;
        for (int t = 0; t < n; t++) {
            bool want = b->want_logits ? b->want_logits[t] != 0 : t == n - 1;
            if (!want) continue;
            cm_rmsnorm(c->xb + (size_t)n_out * ne, c->x + (size_t)t * ne, m->output_norm, ne, hp->norm_eps);
            c->logit_row[t] = n_out++;
        }
        if (n_out) mm(c, &m->output, 0, c->xb, n_out, c->logits);
    } else {
        memcpy(hidden_out, c->x, (size_t)n * ne * sizeof(float));
    }
    for (int t = 0; t < n; t++)
        if (b->pos[t] + 1 > c->seq_len[b->seq_id[t]]) c->seq_len[b->seq_id[t]] = b->pos[t] + 1;
    return CM_OK;
}

int cm_ctx_decode(cm_ctx *c, const cm_batch *batch) {
    if (!cm_model_is_first(c->model) || !cm_model_is_last(c->model))
        return cm_errorf(CM_EINVAL, "cm_ctx_decode needs a stage holding the whole model (layers 0..%d)",
                         c->model->hp.n_layer);
    return cm_stage_forward(c, batch, NULL, NULL);
}
