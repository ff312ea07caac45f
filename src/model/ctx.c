/* ctx.c - a stage's run-time state: the KV cache, the scratch buffers and the
 * thread pool, all allocated once in cm_ctx_create from n_ctx, n_seq_max and
 * n_batch_max. cm_stage_forward never allocates.
 *
 * KV cache layout, per layer of the stage, for K and for V alike:
 *   f16 [n_seq_max][n_ctx][n_head_kv * head_dim]             (kv_type f16)
 *   q8_0 blocks [n_seq_max][n_ctx][n_head_kv * head_dim / 32] (kv_type q8_0;
 *   head_dim % 32 == 0, so a block never spans two heads)
 * Position p of sequence s lives in slot (s, p): a sequence holds positions
 * 0 .. seq_len[s]-1, each written once, rotated by RoPE before storage. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "kernels/kernels.h"
#include "model/model_internal.h"

/* Tracks bytes as it allocates so that cm_ctx_scratch_bytes is the truth. */
static void *zalloc(size_t n, uint64_t *counter) {
    if (n == 0) n = 1;
    void *p = calloc(1, n);
    if (p) *counter += n;
    return p;
}

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

static size_t mm_need(const cm_weight *w, int64_t n_tokens) {
    return w->data ? cm_matmul_scratch_bytes(w->type, w->n_cols, n_tokens) : 0;
}

int cm_ctx_create(cm_model *m, const cm_ctx_params *params, cm_ctx **out) {
    *out = NULL;
    const cm_hparams *hp = &m->hp;
    if (params->n_ctx < 1 || params->n_seq_max < 1 || params->n_batch_max < 1)
        return cm_errorf(CM_EINVAL, "context needs n_ctx, n_seq_max and n_batch_max >= 1 (got %d, %d, %d)",
                         params->n_ctx, params->n_seq_max, params->n_batch_max);
    if (params->kv_type != CM_KV_F16 && params->kv_type != CM_KV_Q8_0)
        return cm_errorf(CM_EINVAL, "unknown KV cache type %d (f16 or q8_0)", params->kv_type);
    if (params->kv_type == CM_KV_Q8_0 && hp->head_dim % CM_QK != 0)
        return cm_errorf(CM_EINVAL, "a q8_0 KV cache needs a head size that is a multiple of %d (this model's is %d); use the f16 cache (--kv-type f16)",
                         CM_QK, hp->head_dim);
    int rc = CM_ENOMEM;
    cm_ctx *c = calloc(1, sizeof *c);
    if (!c) return CM_ENOMEM;
    c->model = m;
    c->params = *params;
    if ((rc = cm_pool_create(params->n_threads, &c->pool))) goto fail;
    rc = CM_ENOMEM;
    int nl = m->layer_end - m->layer_begin;
    c->n_layer_stage = nl;
    c->n_q = hp->n_head * hp->head_dim;
    c->n_kv = hp->n_head_kv * hp->head_dim;
    c->n_ff_max = hp->n_ff > hp->n_ff_expert ? hp->n_ff : hp->n_ff_expert;
    if (c->n_ff_max < 1) c->n_ff_max = 1;
    size_t nb = (size_t)params->n_batch_max, ne = (size_t)hp->n_embd;

    const bool q8 = params->kv_type == CM_KV_Q8_0;
    const size_t slots = (size_t)params->n_seq_max * (size_t)params->n_ctx;
    size_t per_layer = q8 ? slots * (size_t)(c->n_kv / CM_QK) * sizeof(cm_block_q8_0)
                          : slots * (size_t)c->n_kv * sizeof(cm_f16);
    /* both tables exist (a pointer per layer); only one type's are filled */
    c->k_cache = calloc((size_t)nl, sizeof *c->k_cache);
    c->v_cache = calloc((size_t)nl, sizeof *c->v_cache);
    c->k_q8 = calloc((size_t)nl, sizeof *c->k_q8);
    c->v_q8 = calloc((size_t)nl, sizeof *c->v_q8);
    if (!c->k_cache || !c->v_cache || !c->k_q8 || !c->v_q8) goto fail;
    for (int i = 0; i < nl; i++) {
        /* malloc, not calloc: slots are written before they are read, and
         * untouched pages of a large context stay unbacked. */
        void *k = malloc(per_layer), *v = malloc(per_layer);
        if (q8)
            c->k_q8[i] = k, c->v_q8[i] = v;
        else
            c->k_cache[i] = k, c->v_cache[i] = v;
        if (!k || !v) {
            rc = cm_errorf(CM_ENOMEM, "cannot allocate %llu bytes of KV cache for %d layers (context %d x %d sequences)",
                           (unsigned long long)per_layer * 2u * (unsigned long long)nl, nl, params->n_ctx,
                           params->n_seq_max);
            goto fail;
        }
        c->kv_bytes += 2 * per_layer;
    }

    uint64_t *sb = &c->scratch_bytes;
    if (!(c->seq_len = zalloc((size_t)params->n_seq_max * sizeof(int32_t), sb))) goto fail;
    if (!(c->next_pos = zalloc((size_t)params->n_seq_max * sizeof(int32_t), sb))) goto fail;
    if (!(c->x = zalloc(nb * ne * sizeof(float), sb))) goto fail;
    if (!(c->xb = zalloc(nb * ne * sizeof(float), sb))) goto fail;
    if (!(c->xo = zalloc(nb * ne * sizeof(float), sb))) goto fail;
    if (!(c->q = zalloc(nb * (size_t)c->n_q * sizeof(float), sb))) goto fail;
    if (!(c->k = zalloc(nb * (size_t)c->n_kv * sizeof(float), sb))) goto fail;
    if (!(c->v = zalloc(nb * (size_t)c->n_kv * sizeof(float), sb))) goto fail;
    if (!(c->att = zalloc(nb * (size_t)c->n_q * sizeof(float), sb))) goto fail;
    if (!(c->hb = zalloc(nb * (size_t)c->n_ff_max * sizeof(float), sb))) goto fail;
    if (!(c->hb2 = zalloc(nb * (size_t)c->n_ff_max * sizeof(float), sb))) goto fail;
    if (!(c->rope_cs = zalloc(nb * (size_t)hp->rope_dim * sizeof(float), sb))) goto fail;
    if (!(c->logit_row = zalloc(nb * sizeof(int32_t), sb))) goto fail;
    for (size_t i = 0; i < nb; i++) c->logit_row[i] = -1;
    if (cm_model_is_last(m))
        if (!(c->logits = zalloc(nb * (size_t)hp->n_vocab * sizeof(float), sb))) goto fail;

    size_t mm = 0;
    for (int i = 0; i < nl; i++) {
        const cm_layer *L = &m->layers[i];
        const cm_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->ffn_gate, &L->ffn_up, &L->ffn_down,
                                 &L->gate_inp, &L->gate_exps, &L->up_exps, &L->down_exps};
        for (size_t j = 0; j < sizeof ws / sizeof ws[0]; j++) mm = max_sz(mm, mm_need(ws[j], (int64_t)nb));
    }
    if (cm_model_is_last(m)) mm = max_sz(mm, mm_need(&m->output, (int64_t)nb));
    c->mm_scratch_bytes = mm;
    if (!(c->mm_scratch = zalloc(mm, sb))) goto fail;

    if (hp->n_expert > 0) {
        size_t nx = (size_t)hp->n_expert, k = (size_t)hp->n_expert_used;
        if (!(c->router = zalloc(nb * nx * sizeof(float), sb))) goto fail;
        if (!(c->sel = zalloc(nb * k * sizeof(int32_t), sb))) goto fail;
        if (!(c->sel_w = zalloc(nb * k * sizeof(float), sb))) goto fail;
        if (!(c->exp_count = zalloc(nx * sizeof(int32_t), sb))) goto fail;
        if (!(c->exp_tok = zalloc(nx * nb * sizeof(int32_t), sb))) goto fail;
        if (!(c->exp_w = zalloc(nx * nb * sizeof(float), sb))) goto fail;
        if (!(c->gx = zalloc(nb * ne * sizeof(float), sb))) goto fail;
        if (!(c->gy = zalloc(nb * ne * sizeof(float), sb))) goto fail;
    }
    /* per thread: f32 K and V tiles and the running state of one head group */
    int nth = cm_pool_n_threads(c->pool);
    c->att_scratch_stride = (int)cm_attention_scratch_floats(hp);
    if (!(c->att_scratch = zalloc((size_t)nth * (size_t)c->att_scratch_stride * sizeof(float), sb))) goto fail;

    /* fused decode path: per thread, the normed rows and 3 activation slots,
     * each for CM_DECODE_FUSED_TOKENS tokens; an activation row is at most
     * 4 bytes a column (f32) wide */
    const char *fused = getenv("CELLM_DECODE_FUSED");
    if (hp->n_expert == 0 && nl > 0 && !(fused && strcmp(fused, "off") == 0)) {
        const size_t wide = ne > (size_t)c->n_q ? ne : (size_t)c->n_q;
        const size_t floats = ((size_t)CM_DECODE_FUSED_TOKENS * ne * sizeof(float) + 63) / 64 * 64;
        c->dec_slot0 = floats;
        c->dec_slot_bytes = ((size_t)CM_DECODE_FUSED_TOKENS * wide * sizeof(float) + 63) / 64 * 64;
        c->dec_stride = floats + 3 * c->dec_slot_bytes;
        if (!(c->dec_scratch = zalloc((size_t)nth * c->dec_stride, sb))) goto fail;
        if (!(c->x_next = zalloc(nb * ne * sizeof(float), sb))) goto fail;
    }
    *out = c;
    return CM_OK;
fail:
    cm_ctx_destroy(c);
    return rc;
}

void cm_ctx_destroy(cm_ctx *c) {
    if (!c) return;
    for (int i = 0; i < c->n_layer_stage; i++) {
        if (c->k_cache) free(c->k_cache[i]);
        if (c->v_cache) free(c->v_cache[i]);
        if (c->k_q8) free(c->k_q8[i]);
        if (c->v_q8) free(c->v_q8[i]);
    }
    free(c->k_cache);
    free(c->v_cache);
    free(c->k_q8);
    free(c->v_q8);
    void *bufs[] = {c->seq_len, c->next_pos, c->x, c->x_next, c->dec_scratch, c->xb, c->xo, c->q, c->k, c->v, c->att, c->hb, c->hb2, c->rope_cs,
                    c->mm_scratch, c->logits, c->logit_row, c->router, c->sel, c->sel_w, c->exp_count,
                    c->exp_tok, c->exp_w, c->gx, c->gy, c->att_scratch};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    if (c->pool) cm_pool_destroy(c->pool);
    free(c);
}

const cm_model *cm_ctx_model(const cm_ctx *c) { return c->model; }
cm_pool *cm_ctx_pool(cm_ctx *c) { return c->pool; }

float *cm_ctx_logits(cm_ctx *c, int i_entry) {
    if (!c->logits || i_entry < 0 || i_entry >= c->params.n_batch_max) return NULL;
    int row = c->logit_row[i_entry];
    return row < 0 ? NULL : c->logits + (size_t)row * (size_t)c->model->hp.n_vocab;
}

void cm_ctx_seq_rm(cm_ctx *c, int seq_id, int p0, int p1) {
    if (seq_id < 0 || seq_id >= c->params.n_seq_max) return;
    if (p0 < 0) p0 = 0;
    /* Slots are indexed by position and K is stored rotated, so positions
     * cannot close up over a hole: removing any range forgets everything
     * from p0 on (a caller re-feeds what followed the hole). */
    (void)p1;
    if (p0 < c->seq_len[seq_id]) c->seq_len[seq_id] = p0;
}

int cm_ctx_seq_len(const cm_ctx *c, int seq_id) {
    if (seq_id < 0 || seq_id >= c->params.n_seq_max) return 0;
    return c->seq_len[seq_id];
}

uint64_t cm_ctx_kv_bytes(const cm_ctx *c) { return c->kv_bytes; }

int cm_kv_type_from_name(const char *name) {
    if (!strcmp(name, "f16")) return CM_KV_F16;
    if (!strcmp(name, "q8_0")) return CM_KV_Q8_0;
    return -1;
}

const char *cm_kv_type_name(int kv_type) { return kv_type == CM_KV_Q8_0 ? "q8_0" : "f16"; }
uint64_t cm_ctx_scratch_bytes(const cm_ctx *c) { return c->scratch_bytes; }
