/* neon.c - AArch64 kernels that need only ARMv8 NEON (every arm64 CPU):
 * the integer dots of neon_impl.h with a widening multiply-add for DOT16,
 * the f32/f16 dots and the q8_0/q8_K activation quantizers.
 *
 * The quantizers give the reference's bytes: FCVTAS rounds half away from
 * zero as roundf does (q8_0), FCVTNS half to even as lrintf does (q8_K). */
#include <arm_neon.h>
#include <math.h>

/* 16 int8 products summed into 4 i32 lanes: widen to i16 (each product
 * fits: |-128 * -128| = 16384), then add pairs into i32. */
static inline int32x4_t dot16_widening(int32x4_t acc, int8x16_t a, int8x16_t b) {
    const int16x8_t p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    const int16x8_t p1 = vmull_high_s8(a, b);
    return vpadalq_s16(vpadalq_s16(acc, p0), p1);
}

#define CM_ARM_ISA neon
#define DOT16(acc, a, b) dot16_widening((acc), (a), (b))
#include "kernels/arm/neon_impl.h"

void cm_vec_dot_f32_f32_neon(int n, float *s, const void *vx, const void *vy) {
    const float *x = vx, *y = vy;
    float32x4_t a0 = vdupq_n_f32(0), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = vfmaq_f32(a0, vld1q_f32(x + i), vld1q_f32(y + i));
        a1 = vfmaq_f32(a1, vld1q_f32(x + i + 4), vld1q_f32(y + i + 4));
        a2 = vfmaq_f32(a2, vld1q_f32(x + i + 8), vld1q_f32(y + i + 8));
        a3 = vfmaq_f32(a3, vld1q_f32(x + i + 12), vld1q_f32(y + i + 12));
    }
    for (; i + 4 <= n; i += 4) a0 = vfmaq_f32(a0, vld1q_f32(x + i), vld1q_f32(y + i));
    float sum = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
    for (; i < n; i++) sum += x[i] * y[i];
    *s = sum;
}

static inline float32x4_t ld_f16(const cm_f16 *p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }

void cm_vec_dot_f16_f16_neon(int n, float *s, const void *vx, const void *vy) {
    const cm_f16 *x = vx, *y = vy;
    float32x4_t a0 = vdupq_n_f32(0), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = vfmaq_f32(a0, ld_f16(x + i), ld_f16(y + i));
        a1 = vfmaq_f32(a1, ld_f16(x + i + 4), ld_f16(y + i + 4));
        a2 = vfmaq_f32(a2, ld_f16(x + i + 8), ld_f16(y + i + 8));
        a3 = vfmaq_f32(a3, ld_f16(x + i + 12), ld_f16(y + i + 12));
    }
    for (; i + 4 <= n; i += 4) a0 = vfmaq_f32(a0, ld_f16(x + i), ld_f16(y + i));
    float sum = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
    for (; i < n; i++) sum += cm_f16_to_f32(x[i]) * cm_f16_to_f32(y[i]);
    *s = sum;
}

static inline float32x4_t ld_bf16(const cm_bf16 *p) {
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16));
}

void cm_vec_dot_bf16_bf16_neon(int n, float *s, const void *vx, const void *vy) {
    const cm_bf16 *x = vx, *y = vy;
    float32x4_t a0 = vdupq_n_f32(0), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = vfmaq_f32(a0, ld_bf16(x + i), ld_bf16(y + i));
        a1 = vfmaq_f32(a1, ld_bf16(x + i + 4), ld_bf16(y + i + 4));
        a2 = vfmaq_f32(a2, ld_bf16(x + i + 8), ld_bf16(y + i + 8));
        a3 = vfmaq_f32(a3, ld_bf16(x + i + 12), ld_bf16(y + i + 12));
    }
    for (; i + 4 <= n; i += 4) a0 = vfmaq_f32(a0, ld_bf16(x + i), ld_bf16(y + i));
    float sum = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
    for (; i < n; i++) sum += cm_bf16_to_f32(x[i]) * cm_bf16_to_f32(y[i]);
    *s = sum;
}

/* 16 i32 -> 16 i8 (values already in range) */
static inline int8x16_t narrow16(int32x4_t a, int32x4_t b, int32x4_t c, int32x4_t d) {
    const int16x8_t ab = vcombine_s16(vqmovn_s32(a), vqmovn_s32(b));
    const int16x8_t cd = vcombine_s16(vqmovn_s32(c), vqmovn_s32(d));
    return vcombine_s8(vqmovn_s16(ab), vqmovn_s16(cd));
}

/* One 32-wide block: the quants, and d = max|x| / 127. */
static inline float q8_block(const float *x, int8_t *qs) {
    float32x4_t v[8];
    float32x4_t m = vdupq_n_f32(0);
    for (int k = 0; k < 8; k++) {
        v[k] = vld1q_f32(x + 4 * k);
        m = vmaxq_f32(m, vabsq_f32(v[k]));
    }
    const float d = vmaxvq_f32(m) / 127;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int32x4_t q[8];
    for (int k = 0; k < 8; k++) q[k] = vcvtaq_s32_f32(vmulq_n_f32(v[k], id));
    vst1q_s8(qs, narrow16(q[0], q[1], q[2], q[3]));
    vst1q_s8(qs + 16, narrow16(q[4], q[5], q[6], q[7]));
    return d;
}

void cm_quantize_q8_0_neon(const float *x, void *vy, int64_t n) {
    cm_block_q8_0 *y = vy;
    for (int64_t ib = 0; ib < n / CM_QK; ib++, x += CM_QK) y[ib].d = cm_f32_to_f16(q8_block(x, y[ib].qs));
}

void cm_quantize_q8_1_neon(const float *x, void *vy, int64_t n) {
    cm_block_q8_1 *y = vy;
    for (int64_t ib = 0; ib < n / CM_QK; ib++, x += CM_QK) {
        const float d = q8_block(x, y[ib].qs);
        const int sum = vaddlvq_s8(vld1q_s8(y[ib].qs)) + vaddlvq_s8(vld1q_s8(y[ib].qs + 16));
        y[ib].d = cm_f32_to_f16(d);
        y[ib].s = cm_f32_to_f16((float)sum * d);
    }
}

void cm_quantize_q8_K_neon(const float *x, void *vy, int64_t n) {
    cm_block_q8_K *y = vy;
    for (int64_t ib = 0; ib < n / CM_QK_K; ib++, x += CM_QK_K) {
        float32x4_t m = vdupq_n_f32(0);
        for (int k = 0; k < CM_QK_K; k += 4) m = vmaxq_f32(m, vabsq_f32(vld1q_f32(x + k)));
        const float amax = vmaxvq_f32(m);
        if (amax == 0.0f) {
            memset(&y[ib], 0, sizeof y[ib]);
            continue;
        }
        /* the reference keeps the signed value of the first element of
         * largest magnitude; its sign decides which end gets -127 */
        float mx = 0.0f;
        for (int k = 0; k < CM_QK_K; k++) {
            if (fabsf(x[k]) == amax) {
                mx = x[k];
                break;
            }
        }
        const float iscale = -127.0f / mx;
        const int32x4_t lo = vdupq_n_s32(-127), hi = vdupq_n_s32(127);
        for (int k = 0; k < CM_QK_K; k += 16) {
            int32x4_t q[4];
            for (int j = 0; j < 4; j++)
                q[j] = vminq_s32(vmaxq_s32(vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + k + 4 * j), iscale)), lo), hi);
            const int8x16_t b = narrow16(q[0], q[1], q[2], q[3]);
            vst1q_s8(y[ib].qs + k, b);
            y[ib].bsums[k / 16] = (int16_t)vaddlvq_s8(b);
        }
        y[ib].d = 1 / iscale;
    }
}
