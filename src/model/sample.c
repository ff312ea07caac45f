/* sample.c - picking the next token from a row of logits.
 *
 * The pipeline, in order:
 *   1. penalties over the tokens seen in the last repeat_last_n accepted
 *      tokens: repetition (llama.cpp: a positive logit is divided by the
 *      penalty, a negative one multiplied), then frequency and presence
 *      (OpenAI: logit -= count * frequency + (count > 0) * presence);
 *   2. temperature <= 0: the arg-max (ties to the lowest id), done;
 *   3. temperature scaling, then top-k, top-p and min-p on the resulting
 *      distribution (each later filter sees the probabilities renormalised
 *      after the earlier ones);
 *   4. a draw from the sampler's own xoshiro stream.
 *
 * Invariants: every buffer is allocated in cm_sampler_create for n_vocab
 * entries; sampling allocates nothing. Ties between equal logits are broken
 * by token id, so a given seed, history and logits always give the same token
 * on every platform whose float arithmetic agrees. */
#include "model/sample.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"
#include "base/status.h"

typedef struct cand {
    float v; /* logit, later probability */
    int32_t id;
} cand;

struct cm_sampler {
    cm_sampler_params p;
    int n_vocab;
    cm_rng rng;
    int32_t *counts; /* [n_vocab] occurrences inside the penalty window */
    int32_t *ring;   /* [repeat_last_n] the window, oldest at ring_head once full */
    int ring_cap, ring_n, ring_head;
    cand *c; /* [n_vocab] candidates */
};

cm_sampler_params cm_sampler_defaults(void) {
    cm_sampler_params p = {
        .temperature = 0.8f,
        .top_k = 40,
        .top_p = 0.95f,
        .min_p = 0.05f,
        .repeat_penalty = 1.0f,
        .repeat_last_n = 64,
        .presence_penalty = 0.0f,
        .frequency_penalty = 0.0f,
        .seed = 0,
    };
    return p;
}

int cm_sampler_create(const cm_sampler_params *p, int n_vocab, cm_sampler **out) {
    *out = NULL;
    if (n_vocab <= 0) return cm_errorf(CM_EINVAL, "sampler: vocabulary of %d tokens", n_vocab);
    if (isnan(p->temperature)) return cm_errorf(CM_EINVAL, "sampler: temperature is NaN");
    if (!(p->top_p > 0)) return cm_errorf(CM_EINVAL, "sampler: top_p must be > 0, got %g", (double)p->top_p);
    if (!(p->min_p <= 1) || isnan(p->min_p))
        return cm_errorf(CM_EINVAL, "sampler: min_p must be <= 1, got %g", (double)p->min_p);
    if (!(p->repeat_penalty > 0))
        return cm_errorf(CM_EINVAL, "sampler: repeat_penalty must be > 0, got %g", (double)p->repeat_penalty);
    if (!isfinite(p->presence_penalty) || !isfinite(p->frequency_penalty))
        return cm_errorf(CM_EINVAL, "sampler: presence and frequency penalties must be finite");
    if (p->repeat_last_n < -1)
        return cm_errorf(CM_EINVAL, "sampler: repeat_last_n must be -1 (all), 0 (off) or more, got %d",
                         p->repeat_last_n);

    cm_sampler *s = calloc(1, sizeof *s);
    if (!s) goto fail;
    s->p = *p;
    s->n_vocab = n_vocab;
    s->counts = calloc((size_t)n_vocab, sizeof *s->counts);
    s->c = malloc((size_t)n_vocab * sizeof *s->c);
    if (!s->counts || !s->c) goto fail;
    if (p->repeat_last_n > 0) {
        s->ring_cap = p->repeat_last_n;
        s->ring = malloc((size_t)s->ring_cap * sizeof *s->ring);
        if (!s->ring) goto fail;
    }
    cm_rng_init(&s->rng, p->seed);
    *out = s;
    return CM_OK;
fail:
    cm_sampler_destroy(s);
    return cm_errorf(CM_ENOMEM, "sampler: out of memory for a vocabulary of %d tokens", n_vocab);
}

void cm_sampler_destroy(cm_sampler *s) {
    if (!s) return;
    free(s->counts);
    free(s->ring);
    free(s->c);
    free(s);
}

void cm_sampler_reset(cm_sampler *s, uint64_t seed) {
    memset(s->counts, 0, (size_t)s->n_vocab * sizeof *s->counts);
    s->ring_n = s->ring_head = 0;
    cm_rng_init(&s->rng, seed);
}

void cm_sampler_accept(cm_sampler *s, int32_t token) {
    if (token < 0 || token >= s->n_vocab || s->p.repeat_last_n == 0) return;
    if (s->p.repeat_last_n < 0) { /* the whole sequence */
        s->counts[token]++;
        return;
    }
    if (s->ring_n == s->ring_cap) { /* full: the oldest leaves the window */
        s->counts[s->ring[s->ring_head]]--;
        s->ring[s->ring_head] = token;
        s->ring_head = (s->ring_head + 1) % s->ring_cap;
    } else {
        s->ring[(s->ring_head + s->ring_n) % s->ring_cap] = token;
        s->ring_n++;
    }
    s->counts[token]++;
}

static void apply_penalties(const cm_sampler *s, float *logits) {
    const float rp = s->p.repeat_penalty, fp = s->p.frequency_penalty, pp = s->p.presence_penalty;
    if (s->p.repeat_last_n == 0 || (rp == 1.0f && fp == 0.0f && pp == 0.0f)) return;
    for (int i = 0; i < s->n_vocab; i++) {
        int n = s->counts[i];
        if (n <= 0) continue;
        float l = logits[i];
        if (rp != 1.0f) l = l > 0 ? l / rp : l * rp;
        logits[i] = l - (float)n * fp - pp;
    }
}

/* a ranks before b: larger value, then smaller id */
static int better(const cand *a, const cand *b) { return a->v > b->v || (a->v == b->v && a->id < b->id); }

static int cmp_cand(const void *x, const void *y) {
    const cand *a = x, *b = y;
    return better(a, b) ? -1 : better(b, a) ? 1 : 0;
}

/* Min-heap on `better`: the root is the worst of the k kept so far. */
static void sift_down(cand *h, int n, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && better(&h[w], &h[l])) w = l;
        if (r < n && better(&h[w], &h[r])) w = r;
        if (w == i) return;
        cand t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

static float finite_or_neg_inf(float v) { return isnan(v) ? -INFINITY : v; }

int32_t cm_sampler_sample(cm_sampler *s, float *logits, float *logprob) {
    const int n_vocab = s->n_vocab;
    apply_penalties(s, logits);

    if (!(s->p.temperature > 0)) {
        int best = 0;
        float bv = finite_or_neg_inf(logits[0]);
        for (int i = 1; i < n_vocab; i++) {
            float v = finite_or_neg_inf(logits[i]);
            if (v > bv) bv = v, best = i;
        }
        if (logprob) {
            if (bv == -INFINITY) {
                *logprob = -INFINITY;
            } else {
                double sum = 0;
                for (int i = 0; i < n_vocab; i++) sum += exp((double)finite_or_neg_inf(logits[i]) - bv);
                *logprob = (float)-log(sum);
            }
        }
        return best;
    }

    cand *c = s->c;
    int n = n_vocab;
    bool sorted = false;
    const int k = s->p.top_k;
    if (k > 0 && k < n_vocab) {
        /* keep the k best in a heap: one pass, no full sort */
        for (int i = 0; i < k; i++) c[i] = (cand){finite_or_neg_inf(logits[i]), i};
        for (int i = k / 2 - 1; i >= 0; i--) sift_down(c, k, i);
        for (int i = k; i < n_vocab; i++) {
            cand x = {finite_or_neg_inf(logits[i]), i};
            if (better(&x, &c[0])) {
                c[0] = x;
                sift_down(c, k, 0);
            }
        }
        qsort(c, (size_t)k, sizeof *c, cmp_cand);
        n = k;
        sorted = true;
    } else {
        for (int i = 0; i < n_vocab; i++) c[i] = (cand){finite_or_neg_inf(logits[i]), i};
    }

    int i_max = 0;
    if (!sorted)
        for (int i = 1; i < n; i++)
            if (better(&c[i], &c[i_max])) i_max = i;
    const float vmax = c[i_max].v;
    if (vmax == -INFINITY) { /* every token masked: nothing to draw from */
        if (logprob) *logprob = -INFINITY;
        return c[i_max].id;
    }

    /* softmax at temperature */
    const float inv_t = 1.0f / s->p.temperature;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        float e = expf((c[i].v - vmax) * inv_t);
        c[i].v = e;
        sum += e;
    }
    const float inv_sum = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) c[i].v *= inv_sum;
    const float pmax = c[i_max].v;

    /* Both top-p and min-p keep a prefix of the candidates ranked by
     * probability, so a threshold can drop most of the tail before any
     * sorting: min-p drops p < min_p * pmax outright, and the tokens below
     * (1 - top_p) / n together hold less than 1 - top_p, so the nucleus never
     * reaches them. The max token always passes both. */
    const bool use_top_p = s->p.top_p < 1.0f;
    float thr = 0;
    if (use_top_p) thr = (float)((1.0 - s->p.top_p) / n) * 0.999f;
    if (s->p.min_p > 0 && s->p.min_p * pmax > thr) thr = s->p.min_p * pmax;
    if (thr > 0) {
        int m = 0;
        for (int i = 0; i < n; i++)
            if (c[i].v >= thr || i == i_max) c[m++] = c[i];
        n = m;
    }
    if (use_top_p) {
        if (!sorted) qsort(c, (size_t)n, sizeof *c, cmp_cand);
        double cum = 0;
        for (int i = 0; i < n; i++) {
            cum += c[i].v; /* probabilities of the full distribution: the prefix sums are exact */
            if (cum >= s->p.top_p) {
                n = i + 1;
                break;
            }
        }
    }

    double total = 0;
    for (int i = 0; i < n; i++) total += c[i].v;
    double r = cm_rng_f64(&s->rng) * total, acc = 0;
    int pick = n - 1;
    for (int i = 0; i < n; i++) {
        acc += c[i].v;
        if (r < acc) {
            pick = i;
            break;
        }
    }
    if (logprob) *logprob = (float)log(c[pick].v / total);
    return c[pick].id;
}
