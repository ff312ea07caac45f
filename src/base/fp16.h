/* fp16.h - IEEE half and bfloat16 conversions, portable and exact
 * (round to nearest even on the way down; NaN stays NaN). */
#ifndef CM_BASE_FP16_H
#define CM_BASE_FP16_H

#include <stdint.h>
#include <string.h>

typedef uint16_t cm_f16;
typedef uint16_t cm_bf16;

static inline uint32_t cm_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float cm_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float cm_f16_to_f32(cm_f16 h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    if (exp == 0x1f) return cm_bits_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        if (man == 0) return cm_bits_f32(sign);
        /* subnormal: value = man * 2^-24 */
        float v = (float)man * 0x1.0p-24f;
        return sign ? -v : v;
    }
    return cm_bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

static inline cm_f16 cm_f32_to_f16(float f) {
    uint32_t x = cm_f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (cm_f16)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
    if (ax >= 0x477ff000u) return (cm_f16)(sign | 0x7c00); /* overflow to inf */
    if (ax < 0x38800000u) {                                  /* subnormal or zero in half */
        float a = cm_bits_f32(ax);
        /* a * 2^24 rounded to nearest even integer */
        float m = a * 0x1.0p24f;
        uint32_t mi = (uint32_t)m;
        float frac = m - (float)mi;
        if (frac > 0.5f || (frac == 0.5f && (mi & 1))) mi++;
        return (cm_f16)(sign | mi);
    }
    uint32_t exp = ((ax >> 23) - 112) << 10;
    uint32_t man = (ax >> 13) & 0x3ff;
    uint32_t rest = ax & 0x1fff;
    uint32_t h = exp | man;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return (cm_f16)(sign | h);
}

static inline float cm_bf16_to_f32(cm_bf16 h) { return cm_bits_f32((uint32_t)h << 16); }

static inline cm_bf16 cm_f32_to_bf16(float f) {
    uint32_t x = cm_f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (cm_bf16)((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1);
    return (cm_bf16)(x >> 16);
}

#endif
