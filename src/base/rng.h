/* rng.h - small deterministic random numbers (xoshiro256** seeded through
 * splitmix64): the same seed gives the same stream on every platform. */
#ifndef CM_BASE_RNG_H
#define CM_BASE_RNG_H

#include <stdint.h>

typedef struct cm_rng {
    uint64_t s[4];
} cm_rng;

void cm_rng_init(cm_rng *r, uint64_t seed);
uint64_t cm_rng_u64(cm_rng *r);
/* Uniform in [0, 1). */
double cm_rng_f64(cm_rng *r);
float cm_rng_f32(cm_rng *r);
/* Standard normal (Box-Muller). */
float cm_rng_normal(cm_rng *r);

#endif
