/* sched.h - the request scheduler: one engine thread runs the batch loop of
 * continuous batching over the sequence slots of an engine (engine.h).
 *
 * Request lifecycle (state changes under the scheduler lock):
 *
 *   submit --> QUEUED --(free slot)--> RUNNING --(eog | stop | length)--> DONE
 *                 |                       |
 *                 +--cancel / timeout-----+--cancel / timeout / shutdown--> DONE (err set)
 *
 * Each step the engine thread builds one batch: one decode token for every
 * RUNNING request that has finished its prompt, then chunks of the prompts
 * of newly admitted requests up to `prefill_chunk` tokens in all, so a long
 * prompt never stalls the others. Requests join and leave at these token
 * boundaries; a finished or cancelled request's sequence is removed from the
 * cache (seq_rm) before its slot is reused.
 *
 * Ownership: a request is reference counted; the submitter holds one
 * reference and the scheduler another while the request is queued or
 * running. Output fields are written by the engine thread and read by the
 * submitter, both under cm_sched_lock. */
#ifndef CM_SERVE_SCHED_H
#define CM_SERVE_SCHED_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/sample.h"
#include "serve/engine.h"

struct cm_metrics;

/* The text of every token, built once so that the engine thread never
 * touches the tokenizer: token t is bytes[off[t] .. off[t+1]), eog[t] marks
 * end-of-generation tokens. */
typedef struct cm_pieces {
    int n_vocab;
    char *bytes;
    uint32_t *off; /* n_vocab + 1 */
    uint8_t *eog;  /* n_vocab */
} cm_pieces;

#define CM_MAX_TOP_LOGPROBS 20
#define CM_MAX_STOP 16

typedef enum cm_req_state { CM_REQ_QUEUED, CM_REQ_RUNNING, CM_REQ_DONE } cm_req_state;
typedef enum cm_finish { CM_FINISH_NONE, CM_FINISH_STOP, CM_FINISH_LENGTH } cm_finish;

typedef struct cm_req_params {
    int max_tokens; /* tokens to generate at most (> 0) */
    cm_sampler_params sampler;
    const char *stop[CM_MAX_STOP]; /* copied at cm_req_create */
    int n_stop;
    bool logprobs;     /* record each generated token's log-probability */
    int n_top_logprobs; /* and that many alternatives (0..CM_MAX_TOP_LOGPROBS) */
    double timeout_s;  /* from submission to the end; <= 0: none */
    bool ignore_eos;   /* end-of-generation tokens do not end the request */
} cm_req_params;

/* One generated token, recorded when params.logprobs is set. text_off is the
 * byte offset in the generated text where the token's bytes begin. */
typedef struct cm_tok_rec {
    int32_t token;
    float logprob;
    uint32_t text_off;
    int n_top;
    int32_t top_id[CM_MAX_TOP_LOGPROBS];
    float top_lp[CM_MAX_TOP_LOGPROBS];
} cm_tok_rec;

typedef struct cm_req cm_req;
struct cm_req {
    /* ---- immutable after cm_req_create ---- */
    int32_t *prompt;
    int n_prompt;
    cm_req_params p;
    char *stop_buf; /* storage of p.stop strings */

    /* ---- shared, under the scheduler lock ---- */
    cm_req_state state;
    bool cancel;        /* the submitter has gone */
    char *text;         /* generated text after stop strings, n_text bytes (not NUL-terminated) */
    size_t n_text, cap_text;
    cm_tok_rec *toks;   /* n_toks records when p.logprobs */
    int n_toks, cap_toks;
    int n_gen;          /* tokens sampled (the end-of-generation token included) */
    cm_finish finish;
    int err;            /* CM_OK, or CM_ETIMEDOUT / CM_ECANCELED (shutdown) / an engine error */
    char err_msg[200];
    double t_submit, t_first, t_done; /* cm_now_s() */
    pthread_cond_t cond; /* signalled whenever output grows or the request ends */
    int refs;
    cm_req *next;       /* queue link */
    int slot;           /* sequence slot while RUNNING, else -1 */
};

typedef struct cm_sched cm_sched;

typedef struct cm_sched_params {
    cm_engine *engine;        /* borrowed; outlives the scheduler */
    const cm_pieces *pieces;  /* borrowed */
    int max_queue;            /* queued (not yet running) requests at most */
    int prefill_chunk;        /* prompt tokens per step, all requests together */
    struct cm_metrics *metrics; /* optional */
} cm_sched_params;

typedef struct cm_sched_stats {
    int n_queued;
    int n_active;
    int n_slots;
    int64_t kv_used_tokens;   /* positions held by live sequences */
    int64_t kv_cap_tokens;    /* n_slots x n_ctx */
    uint64_t n_steps;         /* decode calls so far */
    uint64_t n_batch_tokens;  /* entries over all decode calls */
    uint64_t kv_bytes;        /* KV cache memory allocated; set by the owner of the engine, 0 = unknown */
} cm_sched_stats;

/* Starts the engine thread. */
int cm_sched_create(const cm_sched_params *p, cm_sched **out);
/* Stops accepting, cancels what is queued, lets running requests finish for
 * up to grace_s seconds, then cancels them; returns when nothing runs. */
void cm_sched_drain(cm_sched *s, double grace_s);
/* Stops the engine thread (after a drain, or cancelling everything) and
 * frees the scheduler. Requests still referenced by submitters stay valid
 * until they release them. */
void cm_sched_destroy(cm_sched *s);

/* A new request with one reference (the caller's). Copies prompt and stop
 * strings. NULL when out of memory. */
cm_req *cm_req_create(const int32_t *prompt, int n_prompt, const cm_req_params *p);
/* Queues a request; the scheduler takes its own reference. CM_EFULL when
 * the queue holds max_queue requests, CM_ECLOSED while shutting down,
 * CM_EINVAL (with a message) for a prompt that does not fit the context. */
int cm_sched_submit(cm_sched *s, cm_req *r);
/* The submitter no longer wants the result: a queued request leaves the
 * queue, a running one frees its slot at the next step. */
void cm_sched_cancel(cm_sched *s, cm_req *r);
/* Drops the caller's reference. */
void cm_sched_release(cm_sched *s, cm_req *r);

/* Reading a request's output: lock, read fields, unlock. cm_sched_wait
 * (lock held) sleeps until the request changes or timeout_ms passes. */
void cm_sched_lock(cm_sched *s);
void cm_sched_unlock(cm_sched *s);
void cm_sched_wait(cm_sched *s, cm_req *r, int timeout_ms);

void cm_sched_stats_get(cm_sched *s, cm_sched_stats *st);

#endif
