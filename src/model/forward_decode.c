/* forward_decode.c - a dense layer for a few tokens in three pool jobs.
 *
 * Decoding moves one token per sequence through each layer, so every matmul
 * is short (K and V of a 1B model are 0.3 MB each) and what costs is the
 * meeting of threads: the general path makes 11 pool runs and 7 barriers a
 * layer, and each ends when the slowest thread does. Here a layer is
 *   job 1: x1 = x + xo (the previous layer's FFN output, if any) and the
 *          activations of norm(x1), made by every thread for itself (a few
 *          thousand floats: cheaper than a barrier); then the rows of Wq, Wk
 *          and Wv, handed out in chunks;
 *   job 2: cm_attention, unchanged;
 *   job 3: Wo rows in chunks -> xo; barrier; x2 = x1 + xo and the
 *          activations of norm(x2), per thread again; gate and up rows in
 *          chunks, where the thread that computed a chunk also applies its
 *          SwiGLU and converts it into its slice of Wdown's activations;
 *          barrier; Wdown rows in chunks -> xo, added by the next layer's
 *          job 1 (or by the caller after the last layer).
 *
 * Chunks come from one atomic counter per phase, so a thread that a busy
 * host slows down takes fewer of them and both finish together. A chunk is
 * cm_matmul_chunk_rows long (about 256 KiB of weights, whole row steps of
 * a repacked layout) and, for gate/up, whole blocks of Wdown's activations,
 * so that a chunk's SwiGLU output converts on its own.
 *
 * Invariants: every thread reads all of x but writes only its own slice of
 * the sum, and into the other buffer (c->x_next), swapped in after the job:
 * nothing reads the buffer being written. The results are bit for bit those
 * of the general path: the same norm, the same conversions (block-aligned
 * pieces convert like the whole row) and the same dot per row whichever
 * thread computes it. */
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "base/pool.h"
#include "kernels/kernels.h"
#include "model/model_internal.h"

typedef struct counter {
    _Alignas(64) atomic_long next;
} counter;

typedef struct dec_job {
    cm_ctx *c;
    const cm_batch *b;
    const cm_layer *L;
    int add_xo; /* job 1: xo holds the previous layer's output */
    counter ctr[3];
} dec_job;

static int64_t chunk_rows(const cm_weight *w) { return cm_matmul_chunk_rows(w->type, w->n_cols, 1); }

static int64_t n_chunks(int64_t n_rows, int64_t rows) { return (n_rows + rows - 1) / rows; }

static int64_t act_row_bytes(const cm_weight *w) {
    const int at = cm_matmul_act_type(w->type);
    return at == CM_TYPE_F32 ? w->n_cols * (int64_t)sizeof(float) : (int64_t)cm_matmul_scratch_bytes(w->type, w->n_cols, 1);
}

/* This thread's scratch: CM_DECODE_FUSED_TOKENS rows of n_embd floats, then
 * 3 activation slots as wide as the widest input (n_embd or n_head *
 * head_dim) at 4 bytes a column (ctx.c sizes them). */
static float *thread_floats(const cm_ctx *c, int ith) { return (float *)(c->dec_scratch + (size_t)ith * c->dec_stride); }

static uint8_t *thread_slot(const cm_ctx *c, int ith, int slot) {
    return c->dec_scratch + (size_t)ith * c->dec_stride + c->dec_slot0 + (size_t)slot * c->dec_slot_bytes;
}

/* h[t] = x[t] (+ add[t]); this thread's slice of the sum goes to x_next;
 * then h[t] = norm(h[t]) * nw. */
static void residual_norm(cm_ctx *c, const float *add, const float *nw, int n, float *h, int ith, int nth) {
    const int ne = c->model->hp.n_embd;
    long s0, s1;
    cm_split_range((long)n * ne, ith, nth, &s0, &s1);
    for (int t = 0; t < n; t++) {
        const float *x = c->x + (size_t)t * ne;
        float *ht = h + (size_t)t * ne;
        if (add) {
            const float *a = add + (size_t)t * ne;
            for (int i = 0; i < ne; i++) ht[i] = x[i] + a[i];
            long b = s0 - (long)t * ne, e = s1 - (long)t * ne;
            b = b < 0 ? 0 : b, e = e > ne ? ne : e;
            if (e > b) memcpy(c->x_next + (size_t)t * ne + b, ht + b, (size_t)(e - b) * sizeof(float));
        } else {
            memcpy(ht, x, (size_t)ne * sizeof(float));
        }
        cm_rmsnorm(ht, ht, nw, ne, c->model->hp.norm_eps);
    }
}

/* The activations of n rows of f (cols floats apart) for w: in `slot`, or f
 * itself when w takes floats. Returns their address and row bytes. */
static const void *activations(const cm_weight *w, const float *f, int n, uint8_t *slot, size_t *arb) {
    if (cm_matmul_act_type(w->type) == CM_TYPE_F32) {
        *arb = (size_t)w->n_cols * sizeof(float);
        return f;
    }
    *arb = (size_t)act_row_bytes(w);
    for (int t = 0; t < n; t++) cm_matmul_act_convert(w->type, f + (size_t)t * w->n_cols, w->n_cols, slot + (size_t)t * *arb);
    return slot;
}

/* The rows of n_mat matrices (ws[m] against act[m], into ys[m]) in chunks
 * taken from one counter until none is left. */
static void rows_dynamic(int n_mat, const cm_weight *const *ws, const void *const *act, const size_t *arb,
                         float *const *ys, int n, atomic_long *ctr) {
    int64_t rows[3], first[4] = {0};
    for (int m = 0; m < n_mat; m++) {
        rows[m] = chunk_rows(ws[m]);
        first[m + 1] = first[m] + n_chunks(ws[m]->n_rows, rows[m]);
    }
    for (long k; (k = atomic_fetch_add_explicit(ctr, 1, memory_order_relaxed)) < first[n_mat];) {
        int m = 0;
        while (k >= first[m + 1]) m++;
        const cm_weight *w = ws[m];
        const int64_t r0 = (k - first[m]) * rows[m], r1 = r0 + rows[m] < w->n_rows ? r0 + rows[m] : w->n_rows;
        cm_matmul_rows(w->type, w->data, w->row_bytes, w->n_rows, w->n_cols, act[m], arb[m], n, ys[m], r0, r1);
    }
}

static void job_qkv(void *arg, int ith, int nth) {
    dec_job *j = arg;
    cm_ctx *c = j->c;
    const cm_layer *L = j->L;
    const int n = j->b->n_tokens;
    float *h = thread_floats(c, ith);
    residual_norm(c, j->add_xo ? c->xo : NULL, L->attn_norm, n, h, ith, nth);

    const cm_weight *ws[3] = {&L->wq, &L->wk, &L->wv};
    float *const ys[3] = {c->q, c->k, c->v};
    const void *act[3];
    size_t arb[3];
    for (int m = 0; m < 3; m++) {
        /* matrices whose activation type an earlier one has share its slot */
        int same = -1;
        for (int p = 0; p < m && same < 0; p++)
            if (cm_matmul_act_type(ws[p]->type) == cm_matmul_act_type(ws[m]->type)) same = p;
        if (same >= 0)
            act[m] = act[same], arb[m] = arb[same];
        else
            act[m] = activations(ws[m], h, n, thread_slot(c, ith, m), &arb[m]);
    }
    rows_dynamic(3, ws, act, arb, ys, n, &j->ctr[0].next);
}

static void job_out_ffn(void *arg, int ith, int nth) {
    dec_job *j = arg;
    cm_ctx *c = j->c;
    const cm_layer *L = j->L;
    const int n = j->b->n_tokens;
    float *h = thread_floats(c, ith);
    size_t arb;

    /* attention output -> xo */
    const cm_weight *wo = &L->wo;
    const void *act = activations(wo, c->att, n, thread_slot(c, ith, 0), &arb);
    rows_dynamic(1, &wo, &act, &arb, &c->xo, n, &j->ctr[0].next);
    cm_pool_barrier(c->pool);

    residual_norm(c, c->xo, L->ffn_norm, n, h, ith, nth);
    const cm_weight *g = &L->ffn_gate, *u = &L->ffn_up, *d = &L->ffn_down;
    size_t garb, uarb, darb = (size_t)act_row_bytes(d);
    const void *gact = activations(g, h, n, thread_slot(c, ith, 1), &garb), *uact = gact;
    uarb = garb;
    if (cm_matmul_act_type(u->type) != cm_matmul_act_type(g->type))
        uact = activations(u, h, n, thread_slot(c, ith, 2), &uarb);
    const int d_at = cm_matmul_act_type(d->type);
    const cm_type_traits *dvt = cm_type_traits_get(d_at);
    const int64_t ff = g->n_rows;
    /* chunks of whole row steps of both matrices and whole blocks of Wdown's
     * activations (all powers of two, so the larger serves) */
    int64_t align = cm_matmul_row_step(u->type);
    if (d_at != CM_TYPE_F32 && dvt->block_elems > align) align = dvt->block_elems;
    const int64_t rows = cm_matmul_chunk_rows(g->type, g->n_cols, align), nc = n_chunks(ff, rows);
    uint8_t *dact = c->mm_scratch;
    for (long k; (k = atomic_fetch_add_explicit(&j->ctr[1].next, 1, memory_order_relaxed)) < nc;) {
        const int64_t r0 = k * rows, r1 = r0 + rows < ff ? r0 + rows : ff;
        cm_matmul_rows(g->type, g->data, g->row_bytes, ff, g->n_cols, gact, garb, n, c->hb, r0, r1);
        cm_matmul_rows(u->type, u->data, u->row_bytes, ff, u->n_cols, uact, uarb, n, c->hb2, r0, r1);
        for (int t = 0; t < n; t++) {
            float *hb = c->hb + (size_t)t * ff + r0;
            cm_swiglu(hb, c->hb2 + (size_t)t * ff + r0, (long)(r1 - r0));
            if (d_at != CM_TYPE_F32)
                cm_matmul_act_convert(d->type, hb, r1 - r0,
                                      dact + (size_t)t * darb + (size_t)(r0 / dvt->block_elems) * dvt->block_bytes);
        }
    }
    cm_pool_barrier(c->pool);

    /* SwiGLU output -> xo; the residual add waits for the next layer */
    act = d_at == CM_TYPE_F32 ? (const void *)c->hb : dact;
    rows_dynamic(1, &d, &act, &darb, &c->xo, n, &j->ctr[2].next);
}

bool cm_decode_fused_fits(const cm_ctx *c, const cm_batch *b) {
    return c->dec_scratch && b->n_tokens <= CM_DECODE_FUSED_TOKENS && c->model->hp.n_expert == 0;
}

void cm_layer_forward_fused(cm_ctx *c, int il, const cm_batch *b) {
    dec_job j = {.c = c, .b = b, .L = &c->model->layers[il], .add_xo = il > 0};
    cm_pool_run(c->pool, job_qkv, &j);
    if (j.add_xo) {
        float *t = c->x;
        c->x = c->x_next, c->x_next = t;
    }
    cm_attention(c, il, b);
    atomic_store_explicit(&j.ctr[0].next, 0, memory_order_relaxed);
    cm_pool_run(c->pool, job_out_ffn, &j);
    float *t = c->x;
    c->x = c->x_next, c->x_next = t;
}
