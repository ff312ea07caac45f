/* attention.h - attention.c beyond cm_attention (which model_internal.h
 * declares): a window on the f16 converters of its decode kernel builds, so
 * tests can hold each build the CPU runs to cm_f16_to_f32, and a switch to
 * run a narrower build than the CPU allows. */
#ifndef CM_MODEL_ATTENTION_H
#define CM_MODEL_ATTENTION_H

#include <stdbool.h>
#include <stddef.h>

#include "base/fp16.h"

/* The decode kernel's builds, narrowest first. */
enum cm_att_build {
    CM_ATT_BUILD_PORTABLE = 0, /* integer vector ops, every target */
    CM_ATT_BUILD_F16C,         /* x86-64-v3: vcvtph2ps, 8 halves per instruction */
    CM_ATT_BUILD_AVX512,       /* x86-64-v4: vcvtph2ps, 16 halves per instruction */
    CM_ATT_BUILD_COUNT
};

/* The widest build this CPU runs: the one decode attention uses. */
int cm_attention_build(void);

/* Tests only: decode attention runs `build` from now on when the CPU runs
 * it (-1, or a build it lacks: the widest again). Not thread-safe: set it
 * while no cm_attention call is under way. */
void cm_attention_set_build(int build);

/* dst[i] = src[i] for i < n (n a multiple of 16), converted as `build`'s
 * kernel converts K and V. False, with nothing written, when this binary or
 * CPU lacks that build. */
bool cm_attention_convert_f16(int build, float *dst, const cm_f16 *src, size_t n);

#endif
