/* engine_local.c - the scheduler's engine backed by one local cm_ctx that
 * holds every layer of the model (first and last stage at once). */
#include "serve/engine.h"

static int local_decode(void *impl, const cm_batch *batch) { return cm_ctx_decode((cm_ctx *)impl, batch); }

static float *local_logits(void *impl, int i_entry) { return cm_ctx_logits((cm_ctx *)impl, i_entry); }

static void local_seq_rm(void *impl, int seq_id, int p0, int p1) { cm_ctx_seq_rm((cm_ctx *)impl, seq_id, p0, p1); }

void cm_engine_local_init(cm_engine *e, cm_ctx *ctx, int n_ctx, int n_seq_max, int n_batch_max) {
    e->impl = ctx;
    e->n_vocab = cm_model_hparams(cm_ctx_model(ctx))->n_vocab;
    e->n_ctx = n_ctx;
    e->n_seq_max = n_seq_max;
    e->n_batch_max = n_batch_max;
    e->decode = local_decode;
    e->logits = local_logits;
    e->seq_rm = local_seq_rm;
}
