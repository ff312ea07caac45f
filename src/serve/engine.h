/* engine.h - what the scheduler needs from whatever runs the model: one
 * forward call over a batch that mixes several sequences, the logits of the
 * entries that asked for them, and forgetting a sequence's cache.
 *
 * Today the engine is one local stage holding every layer (cm_engine_local_*,
 * a cm_ctx). Later it can be a pipeline of stages spread over a cell: the
 * scheduler only ever calls these function pointers, from its one engine
 * thread, so nothing in it knows where the layers live.
 *
 * Contract: decode() is called with at most n_batch_max entries, sequence
 * ids in [0, n_seq_max) and positions below n_ctx; logits(i) is valid until
 * the next decode(); seq_rm() may be called between decodes. All calls come
 * from one thread. */
#ifndef CM_SERVE_ENGINE_H
#define CM_SERVE_ENGINE_H

#include <stdint.h>

#include "model/model.h"

typedef struct cm_engine {
    void *impl;
    int n_vocab;
    int n_ctx;       /* positions per sequence */
    int n_seq_max;   /* sequence slots */
    int n_batch_max; /* entries per decode call */
    int (*decode)(void *impl, const cm_batch *batch);
    float *(*logits)(void *impl, int i_entry);
    void (*seq_rm)(void *impl, int seq_id, int p0, int p1);
} cm_engine;

/* A local engine over one ctx of a whole-model stage. The ctx stays owned by
 * the caller and must outlive the engine. */
void cm_engine_local_init(cm_engine *e, cm_ctx *ctx, int n_ctx, int n_seq_max, int n_batch_max);

#endif
