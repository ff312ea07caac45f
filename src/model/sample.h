/* sample.h - turning logits into the next token: penalties, temperature,
 * top-k, top-p, min-p, greedy; a seeded generator so runs are reproducible.
 * A sampler keeps one sequence's history (for the penalties) and its own
 * scratch, allocated once at creation for n_vocab. */
#ifndef CM_MODEL_SAMPLE_H
#define CM_MODEL_SAMPLE_H

#include <stdint.h>

typedef struct cm_sampler_params {
    float temperature;       /* <= 0: greedy */
    int top_k;               /* <= 0: off */
    float top_p;             /* >= 1: off */
    float min_p;             /* <= 0: off */
    float repeat_penalty;    /* 1: off; divides positive logits / multiplies negative ones of recent tokens */
    int repeat_last_n;       /* how many recent tokens the penalties look at; -1 = all */
    float presence_penalty;  /* subtracted once from every token seen */
    float frequency_penalty; /* subtracted per occurrence */
    uint64_t seed;
} cm_sampler_params;

/* Defaults: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, no penalties,
 * repeat_last_n 64, seed 0. */
cm_sampler_params cm_sampler_defaults(void);

typedef struct cm_sampler cm_sampler;

int cm_sampler_create(const cm_sampler_params *p, int n_vocab, cm_sampler **out);
void cm_sampler_destroy(cm_sampler *s);
/* Forget the history and reseed. */
void cm_sampler_reset(cm_sampler *s, uint64_t seed);
/* Record a token of the sequence (prompt or generated) for the penalties. */
void cm_sampler_accept(cm_sampler *s, int32_t token);
/* Picks the next token from logits[n_vocab] (which it may modify). If
 * `logprob` is not NULL it receives log p(token) under the final
 * distribution (before truncation for greedy). */
int32_t cm_sampler_sample(cm_sampler *s, float *logits, float *logprob);

#endif
