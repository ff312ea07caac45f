/* attention.c - causal grouped-query attention over the f16 KV cache, in
 * tiles with an online softmax.
 *
 * For entry t (sequence s, position p) and query head h (KV head
 * h / (n_head / n_head_kv)), the scores against positions 0..p of s are
 * visited CM_ATT_TILE at a time. A running maximum m, running sum l and
 * running output o are kept; each tile rescales them by exp(m_old - m_new),
 * so the result equals softmax(scores) V without ever holding more than one
 * tile of scores: no n_ctx x n_ctx (or even n_ctx) buffer exists. The K and V
 * rows of the batch itself were written to the cache before this runs, so
 * entries of one sequence in one batch see each other causally.
 *
 * Work items (entry, head) are split evenly over the pool's threads; each
 * thread uses its own slice of c->att_scratch. */
#include <math.h>
#include <string.h>

#include "model/model_internal.h"

typedef struct att_job {
    cm_ctx *c;
    int il;
    const cm_batch *batch;
} att_job;

static void att_worker(void *arg, int ith, int nth) {
    const att_job *j = arg;
    cm_ctx *c = j->c;
    const cm_hparams *hp = &c->model->hp;
    const int hd = hp->head_dim, n_head = hp->n_head, group = hp->n_head / hp->n_head_kv;
    const int n_kv = c->n_kv, n_q = c->n_q;
    const float scale = 1.0f / sqrtf((float)hd);
    float *scr = c->att_scratch + (size_t)ith * (size_t)c->att_scratch_stride;
    float *scores = scr;                 /* CM_ATT_TILE */
    float *acc = scr + CM_ATT_TILE;      /* hd */
    float *qv = acc + hd;                /* hd */
    const cm_f16 *kc = c->k_cache[j->il], *vc = c->v_cache[j->il];

    long b, e;
    cm_split_range((long)j->batch->n_tokens * n_head, ith, nth, &b, &e);
    for (long it = b; it < e; it++) {
        int t = (int)(it / n_head), h = (int)(it % n_head), kvh = h / group;
        int pos = j->batch->pos[t], seq = j->batch->seq_id[t];
        const float *q = c->q + (size_t)t * n_q + (size_t)h * hd;
        for (int d = 0; d < hd; d++) qv[d] = q[d] * scale;
        memset(acc, 0, (size_t)hd * sizeof *acc);
        float m = -INFINITY, l = 0.0f;
        size_t base = (size_t)seq * (size_t)c->params.n_ctx;
        for (int p0 = 0; p0 <= pos; p0 += CM_ATT_TILE) {
            int n = pos + 1 - p0 < CM_ATT_TILE ? pos + 1 - p0 : CM_ATT_TILE;
            float tmax = -INFINITY;
            for (int i = 0; i < n; i++) {
                const cm_f16 *kr = kc + (base + (size_t)(p0 + i)) * (size_t)n_kv + (size_t)kvh * hd;
                float s = 0.0f;
                for (int d = 0; d < hd; d++) s += qv[d] * cm_f16_to_f32(kr[d]);
                scores[i] = s;
                if (s > tmax) tmax = s;
            }
            float m_new = tmax > m ? tmax : m;
            float corr = expf(m - m_new); /* 0 on the first tile: m is -inf */
            l *= corr;
            for (int d = 0; d < hd; d++) acc[d] *= corr;
            for (int i = 0; i < n; i++) {
                float w = expf(scores[i] - m_new);
                l += w;
                const cm_f16 *vr = vc + (base + (size_t)(p0 + i)) * (size_t)n_kv + (size_t)kvh * hd;
                for (int d = 0; d < hd; d++) acc[d] += w * cm_f16_to_f32(vr[d]);
            }
            m = m_new;
        }
        float *o = c->att + (size_t)t * n_q + (size_t)h * hd;
        float inv = 1.0f / l;
        for (int d = 0; d < hd; d++) o[d] = acc[d] * inv;
    }
}

void cm_attention(cm_ctx *c, int il, const cm_batch *batch) {
    att_job j = {c, il, batch};
    cm_pool_run(c->pool, att_worker, &j);
}
