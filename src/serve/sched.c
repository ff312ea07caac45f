/* sched.c - continuous batching over the engine's sequence slots (see
 * sched.h for the request lifecycle).
 *
 * Threads: HTTP threads call submit/cancel/release/wait; one engine thread
 * owns the slots (sampler, stop filter, positions) and is the only caller of
 * the engine. The lock guards the queue, every request's shared fields and
 * the counters; the engine thread drops it around decode and sampling, so a
 * slow forward pass never blocks an HTTP thread for long.
 *
 * Invariants: a slot's sequence holds exactly slot.n_past positions in the
 * engine cache; a slot is free iff slot.req == NULL, and a free slot's
 * sequence is empty. */
#include "serve/sched.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/log.h"
#include "base/status.h"
#include "base/time.h"
#include "serve/metrics.h"
#include "text/stop.h"

typedef struct slot {
    cm_req *req;          /* NULL when free */
    cm_sampler *smp;
    cm_stop *stop;
    int n_past;           /* positions in the cache */
    int n_fed;            /* prompt tokens fed so far */
    int32_t last_tok;     /* next token to feed once generating */
    bool generating;      /* prompt done */
    int i_logits;         /* entry of this step's batch with logits, or -1 */
    int n_step;           /* entries fed this step */
    uint64_t admitted;    /* admission order, for fair prefill */
    double t_last, t_prev; /* times of the last two tokens (inter-token latency) */
    uint32_t raw_off;     /* bytes of generated pieces so far */
    bool release;         /* finished this step; clean up outside the lock */
    /* output of this step, published under the lock */
    char *pend;           /* emitted bytes */
    size_t n_pend, cap_pend;
    cm_tok_rec rec;
    bool has_rec;
    bool done;
    cm_finish finish;
    int err;
    char err_msg[200];
} slot;

struct cm_sched {
    cm_sched_params p;
    cm_engine *e;
    pthread_mutex_t mu;
    pthread_cond_t wake; /* engine thread: new work, cancel, stop */
    pthread_t thread;
    bool thread_started;
    bool closed;         /* no more submissions */
    bool stop;           /* engine thread exits when idle (or now, if abort) */
    bool abort_all;      /* cancel every running request at the next step */
    cm_req *q_head, *q_tail;
    int n_queued, n_active;
    uint64_t n_admitted;
    slot *slots;
    /* batch buffers, sized n_batch_max once */
    int32_t *b_tok, *b_pos, *b_seq;
    int8_t *b_want;
    float *lp_scratch;   /* n_vocab, logits copy for log-probabilities */
    uint64_t n_steps, n_batch_tokens;
    int64_t kv_used;
};

/* ---- requests ---- */

cm_req *cm_req_create(const int32_t *prompt, int n_prompt, const cm_req_params *p) {
    cm_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->p = *p;
    r->slot = -1;
    r->refs = 1;
    r->prompt = malloc(sizeof(int32_t) * (size_t)(n_prompt > 0 ? n_prompt : 1));
    if (!r->prompt) goto fail;
    if (n_prompt > 0) memcpy(r->prompt, prompt, sizeof(int32_t) * (size_t)n_prompt);
    r->n_prompt = n_prompt;
    if (r->p.n_stop > CM_MAX_STOP) r->p.n_stop = CM_MAX_STOP;
    size_t n_bytes = 0;
    for (int i = 0; i < r->p.n_stop; i++) n_bytes += strlen(p->stop[i]) + 1;
    r->stop_buf = malloc(n_bytes + 1);
    if (!r->stop_buf) goto fail;
    char *w = r->stop_buf;
    for (int i = 0; i < r->p.n_stop; i++) {
        size_t n = strlen(p->stop[i]) + 1;
        memcpy(w, p->stop[i], n);
        r->p.stop[i] = w;
        w += n;
    }
    if (r->p.n_top_logprobs < 0) r->p.n_top_logprobs = 0;
    if (r->p.n_top_logprobs > CM_MAX_TOP_LOGPROBS) r->p.n_top_logprobs = CM_MAX_TOP_LOGPROBS;
    pthread_cond_init(&r->cond, NULL);
    return r;
fail:
    free(r->prompt);
    free(r);
    return NULL;
}

static void req_free(cm_req *r) {
    pthread_cond_destroy(&r->cond);
    free(r->prompt);
    free(r->stop_buf);
    free(r->text);
    free(r->toks);
    free(r);
}

/* Lock held. */
static void req_unref(cm_req *r) {
    if (--r->refs == 0) req_free(r);
}

/* Lock held: the request ends with an error. */
static void req_fail(cm_sched *s, cm_req *r, int err, const char *msg) {
    r->state = CM_REQ_DONE;
    r->err = err;
    snprintf(r->err_msg, sizeof r->err_msg, "%s", msg);
    r->t_done = cm_now_s();
    pthread_cond_broadcast(&r->cond);
}

static bool append_text(cm_req *r, const char *b, size_t n) {
    if (r->n_text + n > r->cap_text) {
        size_t cap = r->cap_text ? r->cap_text * 2 : 256;
        while (cap < r->n_text + n) cap *= 2;
        char *t = realloc(r->text, cap);
        if (!t) return false;
        r->text = t;
        r->cap_text = cap;
    }
    memcpy(r->text + r->n_text, b, n);
    r->n_text += n;
    return true;
}

static bool append_rec(cm_req *r, const cm_tok_rec *rec) {
    if (r->n_toks == r->cap_toks) {
        int cap = r->cap_toks ? r->cap_toks * 2 : 16;
        cm_tok_rec *t = realloc(r->toks, sizeof *t * (size_t)cap);
        if (!t) return false;
        r->toks = t;
        r->cap_toks = cap;
    }
    r->toks[r->n_toks++] = *rec;
    return true;
}

/* ---- queue (lock held) ---- */

static void q_push(cm_sched *s, cm_req *r) {
    r->next = NULL;
    if (s->q_tail)
        s->q_tail->next = r;
    else
        s->q_head = r;
    s->q_tail = r;
    s->n_queued++;
}

static cm_req *q_pop(cm_sched *s) {
    cm_req *r = s->q_head;
    if (!r) return NULL;
    s->q_head = r->next;
    if (!s->q_head) s->q_tail = NULL;
    r->next = NULL;
    s->n_queued--;
    return r;
}

static void q_remove(cm_sched *s, cm_req *r) {
    cm_req *prev = NULL;
    for (cm_req *it = s->q_head; it; prev = it, it = it->next) {
        if (it != r) continue;
        if (prev)
            prev->next = it->next;
        else
            s->q_head = it->next;
        if (s->q_tail == it) s->q_tail = prev;
        it->next = NULL;
        s->n_queued--;
        return;
    }
}

/* ---- slots (engine thread) ---- */

static void slot_release(cm_sched *s, slot *sl, int i_slot) {
    if (sl->n_past > 0) s->e->seq_rm(s->e->impl, i_slot, 0, -1);
    cm_sampler_destroy(sl->smp);
    cm_stop_destroy(sl->stop);
    char *pend = sl->pend;
    size_t cap = sl->cap_pend;
    memset(sl, 0, sizeof *sl);
    sl->pend = pend; /* kept: allocated once per slot */
    sl->cap_pend = cap;
    sl->i_logits = -1;
}

static bool pend_add(slot *sl, const char *b, size_t n) {
    if (!n) return true;
    if (sl->n_pend + n > sl->cap_pend) {
        size_t cap = sl->cap_pend ? sl->cap_pend * 2 : 256;
        while (cap < sl->n_pend + n) cap *= 2;
        char *t = realloc(sl->pend, cap);
        if (!t) return false;
        sl->pend = t;
        sl->cap_pend = cap;
    }
    memcpy(sl->pend + sl->n_pend, b, n);
    sl->n_pend += n;
    return true;
}

/* Engine thread, lock held: moves queued requests into free slots. */
static void admit(cm_sched *s) {
    for (int i = 0; i < s->e->n_seq_max && s->q_head; i++) {
        slot *sl = &s->slots[i];
        if (sl->req) continue;
        cm_req *r = q_pop(s);
        int rc = cm_sampler_create(&r->p.sampler, s->e->n_vocab, &sl->smp);
        if (rc == CM_OK) rc = cm_stop_create(r->p.stop, r->p.n_stop, &sl->stop);
        if (rc != CM_OK) {
            cm_sampler_destroy(sl->smp);
            sl->smp = NULL;
            req_fail(s, r, rc, "could not set up sampling for the request (out of memory?)");
            req_unref(r);
            i--; /* the slot is still free */
            continue;
        }
        sl->req = r;
        sl->i_logits = -1;
        sl->admitted = s->n_admitted++;
        r->slot = i;
        r->state = CM_REQ_RUNNING;
        s->n_active++;
    }
}

/* Lock held: ends a running request; engine-side cleanup follows. */
static void finish_locked(cm_sched *s, slot *sl) {
    cm_req *r = sl->req;
    r->state = CM_REQ_DONE;
    r->t_done = cm_now_s();
    r->slot = -1;
    if (sl->err) {
        r->err = sl->err;
        snprintf(r->err_msg, sizeof r->err_msg, "%s", sl->err_msg);
    } else {
        r->finish = sl->finish;
    }
    if (s->p.metrics && !sl->err && r->t_first > 0) cm_metrics_request_time(s->p.metrics, r->t_done - r->t_submit);
    pthread_cond_broadcast(&r->cond);
    s->n_active--;
    req_unref(r);
}

/* Log-softmax statistics over raw logits: top-n alternatives and the
 * normaliser, so any token's logprob is logits[t] - lse. */
static float log_sum_exp(const float *x, int n) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (x[i] > mx) mx = x[i];
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)(x[i] - mx));
    return mx + (float)log(sum);
}

static void top_n(const float *x, int n_vocab, int n, int32_t *ids, float *vals) {
    int k = 0;
    for (int i = 0; i < n_vocab; i++) {
        if (k == n && x[i] <= vals[k - 1]) continue;
        int j = k < n ? k++ : n - 1;
        while (j > 0 && vals[j - 1] < x[i]) {
            vals[j] = vals[j - 1];
            ids[j] = ids[j - 1];
            j--;
        }
        vals[j] = x[i];
        ids[j] = i;
    }
}

/* Engine thread, lock not held: turns this step's logits of a slot into a
 * token and its text. */
static void sample_slot(cm_sched *s, slot *sl, float *logits, double now) {
    cm_req *r = sl->req;
    const cm_pieces *pc = s->p.pieces;
    int n_vocab = s->e->n_vocab;
    float lse = 0;
    if (r->p.logprobs) {
        memcpy(s->lp_scratch, logits, sizeof(float) * (size_t)n_vocab);
        lse = log_sum_exp(s->lp_scratch, n_vocab);
    }
    int32_t tok = cm_sampler_sample(sl->smp, logits, NULL);
    if (tok < 0 || tok >= n_vocab) {
        sl->done = true;
        sl->err = CM_EINVAL;
        snprintf(sl->err_msg, sizeof sl->err_msg, "sampler returned token %d outside the vocabulary", (int)tok);
        return;
    }
    cm_sampler_accept(sl->smp, tok);
    sl->t_prev = sl->t_last;
    sl->t_last = now;
    if (r->p.logprobs) {
        sl->rec.token = tok;
        sl->rec.logprob = s->lp_scratch[tok] - lse;
        sl->rec.n_top = r->p.n_top_logprobs;
        if (sl->rec.n_top > 0) {
            top_n(s->lp_scratch, n_vocab, sl->rec.n_top, sl->rec.top_id, sl->rec.top_lp);
            for (int i = 0; i < sl->rec.n_top; i++) sl->rec.top_lp[i] -= lse;
        }
        sl->rec.text_off = sl->raw_off;
        sl->has_rec = !(tok < pc->n_vocab && pc->eog[tok] && !r->p.ignore_eos);
    }
    sl->last_tok = tok;
    bool eog = tok < pc->n_vocab && pc->eog[tok] && !r->p.ignore_eos;
    const char *emit;
    size_t n_emit;
    if (eog) {
        sl->done = true;
        sl->finish = CM_FINISH_STOP;
    } else {
        const char *piece = "";
        size_t n_piece = 0;
        if (tok < pc->n_vocab) {
            piece = pc->bytes + pc->off[tok];
            n_piece = pc->off[tok + 1] - pc->off[tok];
        }
        sl->raw_off += (uint32_t)n_piece;
        if (cm_stop_feed(sl->stop, piece, n_piece, &emit, &n_emit)) {
            sl->done = true;
            sl->finish = CM_FINISH_STOP;
        }
        pend_add(sl, emit, n_emit);
    }
    int n_gen = r->n_gen + 1; /* r->n_gen is only advanced under the lock */
    if (!sl->done && (n_gen >= r->p.max_tokens || sl->n_past >= s->e->n_ctx)) {
        sl->done = true;
        sl->finish = CM_FINISH_LENGTH;
    }
    if (sl->done && sl->finish == CM_FINISH_LENGTH) {
        cm_stop_flush(sl->stop, &emit, &n_emit);
        pend_add(sl, emit, n_emit);
    }
    if (eog) {
        cm_stop_flush(sl->stop, &emit, &n_emit);
        pend_add(sl, emit, n_emit);
    }
}

static void *engine_main(void *arg) {
    cm_sched *s = arg;
    cm_engine *e = s->e;
    int n_slots = e->n_seq_max;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        double now = cm_now_s();
        /* Queued requests past their deadline leave without a slot. */
        for (cm_req *r = s->q_head, *nx; r; r = nx) {
            nx = r->next;
            if (r->p.timeout_s > 0 && now - r->t_submit > r->p.timeout_s) {
                q_remove(s, r);
                req_fail(s, r, CM_ETIMEDOUT, "the request timed out while queued");
                req_unref(r);
            }
        }
        admit(s);
        /* Cancellations, timeouts and shutdown of running requests. */
        for (int i = 0; i < n_slots; i++) {
            slot *sl = &s->slots[i];
            cm_req *r = sl->req;
            if (!r) continue;
            if (r->cancel || s->abort_all || (r->p.timeout_s > 0 && now - r->t_submit > r->p.timeout_s)) {
                sl->err = r->cancel ? CM_ECANCELED : s->abort_all ? CM_ECANCELED : CM_ETIMEDOUT;
                snprintf(sl->err_msg, sizeof sl->err_msg, "%s",
                         r->cancel ? "the client went away"
                         : s->abort_all ? "the server is shutting down"
                                        : "the request timed out");
                s->kv_used -= sl->n_past;
                finish_locked(s, sl);
                pthread_mutex_unlock(&s->mu);
                slot_release(s, sl, i);
                pthread_mutex_lock(&s->mu);
            }
        }
        if (s->n_active == 0) {
            if (s->stop) break;
            if (s->q_head) continue;
            pthread_cond_wait(&s->wake, &s->mu);
            continue;
        }
        pthread_mutex_unlock(&s->mu);

        /* Build the step: decode tokens first, then prompt chunks. */
        int n = 0;
        for (int i = 0; i < n_slots; i++) {
            slot *sl = &s->slots[i];
            sl->i_logits = -1;
            sl->n_step = 0;
            if (!sl->req || !sl->generating) continue;
            s->b_tok[n] = sl->last_tok;
            s->b_pos[n] = sl->n_past;
            s->b_seq[n] = i;
            s->b_want[n] = 1;
            sl->i_logits = n;
            sl->n_step = 1;
            n++;
        }
        int budget = s->p.prefill_chunk;
        if (budget > e->n_batch_max - n) budget = e->n_batch_max - n;
        while (budget > 0) {
            /* The earliest admitted request still in its prompt goes first. */
            slot *best = NULL;
            int i_best = -1;
            for (int i = 0; i < n_slots; i++) {
                slot *sl = &s->slots[i];
                if (!sl->req || sl->generating || sl->n_step) continue;
                if (!best || sl->admitted < best->admitted) best = sl, i_best = i;
            }
            if (!best) break;
            cm_req *r = best->req;
            int k = r->n_prompt - best->n_fed;
            if (k > budget) k = budget;
            for (int j = 0; j < k; j++) {
                s->b_tok[n + j] = r->prompt[best->n_fed + j];
                s->b_pos[n + j] = best->n_past + j;
                s->b_seq[n + j] = i_best;
                s->b_want[n + j] = 0;
            }
            if (best->n_fed + k == r->n_prompt) {
                s->b_want[n + k - 1] = 1;
                best->i_logits = n + k - 1;
            }
            best->n_step = k;
            n += k;
            budget -= k;
        }
        int rc = CM_OK;
        if (n > 0) {
            cm_batch b = {.n_tokens = n, .token = s->b_tok, .pos = s->b_pos, .seq_id = s->b_seq, .want_logits = s->b_want};
            rc = e->decode(e->impl, &b);
        }
        double t = cm_now_s();
        for (int i = 0; i < n_slots; i++) {
            slot *sl = &s->slots[i];
            if (!sl->req || !sl->n_step) continue;
            if (rc != CM_OK) {
                sl->done = true;
                sl->err = rc;
                snprintf(sl->err_msg, sizeof sl->err_msg, "the engine failed: %s", cm_last_error(rc));
                continue;
            }
            int fed = sl->n_step;
            sl->n_past += fed;
            if (!sl->generating) sl->n_fed += fed;
            if (sl->i_logits < 0) continue;
            float *logits = e->logits(e->impl, sl->i_logits);
            if (!logits) {
                sl->done = true;
                sl->err = CM_EINVAL;
                snprintf(sl->err_msg, sizeof sl->err_msg, "the engine returned no logits");
                continue;
            }
            sl->generating = true;
            sample_slot(s, sl, logits, t);
        }
        if (rc != CM_OK) CM_LOGE("serve: decode of %d tokens failed: %s", n, cm_last_error(rc));

        /* Publish. */
        pthread_mutex_lock(&s->mu);
        s->n_steps++;
        s->n_batch_tokens += (uint64_t)n;
        for (int i = 0; i < n_slots; i++) {
            slot *sl = &s->slots[i];
            cm_req *r = sl->req;
            if (!r || !sl->n_step) continue;
            if (rc == CM_OK) s->kv_used += sl->n_step;
            if (sl->i_logits >= 0 && !sl->err) {
                if (r->n_gen == 0) {
                    r->t_first = t;
                    if (s->p.metrics) {
                        cm_metrics_ttft(s->p.metrics, t - r->t_submit);
                        cm_metrics_prompt_tokens(s->p.metrics, (uint64_t)r->n_prompt);
                    }
                } else if (s->p.metrics) {
                    cm_metrics_itl(s->p.metrics, t - sl->t_prev);
                }
                if (s->p.metrics) cm_metrics_generated_tokens(s->p.metrics, 1);
                r->n_gen++;
                if (sl->has_rec && !append_rec(r, &sl->rec) && !sl->err) {
                    sl->done = true;
                    sl->err = CM_ENOMEM;
                    snprintf(sl->err_msg, sizeof sl->err_msg, "out of memory recording log-probabilities");
                }
                sl->has_rec = false;
                pthread_cond_broadcast(&r->cond);
            }
            if (sl->n_pend) {
                if (!append_text(r, sl->pend, sl->n_pend) && !sl->err) {
                    sl->done = true;
                    sl->err = CM_ENOMEM;
                    snprintf(sl->err_msg, sizeof sl->err_msg, "out of memory holding the generated text");
                }
                sl->n_pend = 0;
            }
            if (sl->done) {
                s->kv_used -= sl->n_past;
                finish_locked(s, sl);
                sl->req = NULL; /* engine-side cleanup below, outside the lock */
                sl->release = true;
            }
        }
        pthread_mutex_unlock(&s->mu);
        for (int i = 0; i < n_slots; i++)
            if (s->slots[i].release) slot_release(s, &s->slots[i], i);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- public ---- */

int cm_sched_create(const cm_sched_params *p, cm_sched **out) {
    *out = NULL;
    cm_engine *e = p->engine;
    if (e->n_seq_max < 1 || e->n_batch_max < e->n_seq_max + 1 || e->n_ctx < 2 || p->prefill_chunk < 1)
        return cm_errorf(CM_EINVAL, "serve: engine with %d slots, batches of %d, context %d and prompt chunks of %d "
                                    "cannot schedule (need batches larger than the slot count)",
                         e->n_seq_max, e->n_batch_max, e->n_ctx, p->prefill_chunk);
    cm_sched *s = calloc(1, sizeof *s);
    if (!s) return CM_ENOMEM;
    s->p = *p;
    s->e = e;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->wake, NULL);
    size_t nb = (size_t)e->n_batch_max;
    s->slots = calloc((size_t)e->n_seq_max, sizeof *s->slots);
    s->b_tok = malloc(nb * sizeof(int32_t));
    s->b_pos = malloc(nb * sizeof(int32_t));
    s->b_seq = malloc(nb * sizeof(int32_t));
    s->b_want = malloc(nb);
    s->lp_scratch = malloc(sizeof(float) * (size_t)e->n_vocab);
    if (!s->slots || !s->b_tok || !s->b_pos || !s->b_seq || !s->b_want || !s->lp_scratch) goto fail;
    for (int i = 0; i < e->n_seq_max; i++) s->slots[i].i_logits = -1;
    if (pthread_create(&s->thread, NULL, engine_main, s) != 0) {
        cm_errorf(CM_ENOMEM, "serve: could not start the engine thread");
        goto fail;
    }
    s->thread_started = true;
    *out = s;
    return CM_OK;
fail:
    cm_sched_destroy(s);
    return CM_ENOMEM;
}

void cm_sched_drain(cm_sched *s, double grace_s) {
    pthread_mutex_lock(&s->mu);
    s->closed = true;
    cm_req *r;
    while ((r = q_pop(s))) {
        req_fail(s, r, CM_ECANCELED, "the server is shutting down");
        req_unref(r);
    }
    pthread_mutex_unlock(&s->mu);
    double t_end = cm_now_s() + grace_s;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        int n = s->n_active;
        if (n > 0 && cm_now_s() >= t_end) {
            s->abort_all = true;
            pthread_cond_signal(&s->wake);
        }
        pthread_mutex_unlock(&s->mu);
        if (n == 0) break;
        cm_sleep_ms(10);
    }
}

void cm_sched_destroy(cm_sched *s) {
    if (!s) return;
    if (s->thread_started) {
        pthread_mutex_lock(&s->mu);
        s->closed = true;
        s->stop = true;
        s->abort_all = true;
        cm_req *r;
        while ((r = q_pop(s))) {
            req_fail(s, r, CM_ECANCELED, "the server is shutting down");
            req_unref(r);
        }
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    if (s->slots) {
        for (int i = 0; i < s->e->n_seq_max; i++) free(s->slots[i].pend);
    }
    free(s->slots);
    free(s->b_tok);
    free(s->b_pos);
    free(s->b_seq);
    free(s->b_want);
    free(s->lp_scratch);
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

int cm_sched_submit(cm_sched *s, cm_req *r) {
    if (r->n_prompt < 1 || r->n_prompt >= s->e->n_ctx)
        return cm_errorf(CM_EINVAL, "the prompt has %d tokens; this server's context holds %d per request", r->n_prompt,
                         s->e->n_ctx);
    for (int i = 0; i < r->n_prompt; i++)
        if (r->prompt[i] < 0 || r->prompt[i] >= s->e->n_vocab)
            return cm_errorf(CM_EINVAL, "prompt token %d is %d, outside the vocabulary of %d", i, (int)r->prompt[i],
                             s->e->n_vocab);
    pthread_mutex_lock(&s->mu);
    int rc = CM_OK;
    if (s->closed) {
        rc = cm_errorf(CM_ECLOSED, "the server is shutting down");
    } else if (s->n_queued >= s->p.max_queue + (s->e->n_seq_max - s->n_active)) {
        /* Queued requests that free slots will take at the next step do not
         * count against max_queue. */
        rc = cm_errorf(CM_EFULL, "%d requests are waiting already; try again shortly", s->n_queued);
    } else {
        r->refs++;
        r->state = CM_REQ_QUEUED;
        r->t_submit = cm_now_s();
        q_push(s, r);
        pthread_cond_signal(&s->wake);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void cm_sched_cancel(cm_sched *s, cm_req *r) {
    pthread_mutex_lock(&s->mu);
    if (r->state == CM_REQ_QUEUED && r->refs > 1) {
        q_remove(s, r);
        req_fail(s, r, CM_ECANCELED, "the client went away");
        req_unref(r);
    } else if (r->state == CM_REQ_RUNNING) {
        r->cancel = true;
        pthread_cond_signal(&s->wake);
    }
    pthread_mutex_unlock(&s->mu);
}

void cm_sched_release(cm_sched *s, cm_req *r) {
    if (!r) return;
    pthread_mutex_lock(&s->mu);
    req_unref(r);
    pthread_mutex_unlock(&s->mu);
}

void cm_sched_lock(cm_sched *s) { pthread_mutex_lock(&s->mu); }
void cm_sched_unlock(cm_sched *s) { pthread_mutex_unlock(&s->mu); }

void cm_sched_wait(cm_sched *s, cm_req *r, int timeout_ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    pthread_cond_timedwait(&r->cond, &s->mu, &ts);
}

void cm_sched_stats_get(cm_sched *s, cm_sched_stats *st) {
    pthread_mutex_lock(&s->mu);
    st->n_queued = s->n_queued;
    st->n_active = s->n_active;
    st->n_slots = s->e->n_seq_max;
    st->kv_used_tokens = s->kv_used;
    st->kv_cap_tokens = (int64_t)s->e->n_seq_max * s->e->n_ctx;
    st->n_steps = s->n_steps;
    st->n_batch_tokens = s->n_batch_tokens;
    st->kv_bytes = 0;
    pthread_mutex_unlock(&s->mu);
}
