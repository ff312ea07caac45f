/* ref.c - the portable reference of every kernel: dequantize, quantize and
 * dot product for each type, written for clarity rather than speed.
 *
 * Block layouts are those of quants.h (ggml's, byte for byte). Where an
 * element sits inside a K super-block of 256 is spelled out once, in the
 * unpack_* helpers, which turn a block into small integers (quants, sub-block
 * scales and mins); dequantize and vec_dot are then one formula each:
 *
 *   q2_K  e -> qs[32*(e/128) + e%32] bits 2*((e%128)/32); scale/min nibble e/16
 *   q3_K  same 2 bits, plus hmask[e%32] bit e/32 (clear means "minus 4");
 *         16 x 6-bit signed scales (low 4 bits in scales[0..7] nibbles,
 *         high 2 bits in scales[8..11]) minus 32
 *   q4_K  e -> qs[32*(e/64) + e%32], low nibble if e%64 < 32; 6-bit scale and
 *         min of sub-block e/32 packed as get_scale_min_k4 reads them
 *   q5_K  as q4_K, plus qh[e%32] bit e/32 as bit 4
 *   q6_K  low 4 bits in ql[64*(e/128) + 32*((e%128)/32 & 1) + e%32] (low
 *         nibble for (e%128) < 64), high 2 bits in qh[32*(e/128) + e%32] at
 *         bit 2*((e%128)/32); int8 scale e/16; value minus 32
 *
 * Dot products accumulate integer products per block (exact) and apply the
 * float scales once per block, as ggml's *_generic kernels do; the float
 * types accumulate in double. */
#include "kernels/ref.h"

#include <assert.h>
#include <math.h>
#include <string.h>

#include "base/fp16.h"
#include "kernels/quants.h"

#define QK CM_QK
#define QKK CM_QK_K

static inline float h2f(cm_f16 h) { return cm_f16_to_f32(h); }
static inline cm_f16 f2h(float f) { return cm_f32_to_f16(f); }

/* Round half to even, like ggml's nearest_int (the K formats use it). */
static inline int nearest(float v) { return (int)lrintf(v); }

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* The value of largest magnitude, sign kept (0 for an all-zero block). */
static float signed_absmax(const float *x, int n) {
    float amax = 0, mx = 0;
    for (int i = 0; i < n; i++) {
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            mx = x[i];
        }
    }
    return mx;
}

/* ---- float types ---- */

void cm_dequantize_f32_ref(const void *x, float *y, int64_t n) { memcpy(y, x, (size_t)n * sizeof(float)); }
void cm_quantize_f32_ref(const float *x, void *y, int64_t n) { memcpy(y, x, (size_t)n * sizeof(float)); }

void cm_dequantize_f16_ref(const void *x, float *y, int64_t n) {
    const cm_f16 *h = x;
    for (int64_t i = 0; i < n; i++) y[i] = cm_f16_to_f32(h[i]);
}

void cm_quantize_f16_ref(const float *x, void *y, int64_t n) {
    cm_f16 *h = y;
    for (int64_t i = 0; i < n; i++) h[i] = cm_f32_to_f16(x[i]);
}

void cm_dequantize_bf16_ref(const void *x, float *y, int64_t n) {
    const cm_bf16 *h = x;
    for (int64_t i = 0; i < n; i++) y[i] = cm_bf16_to_f32(h[i]);
}

void cm_quantize_bf16_ref(const float *x, void *y, int64_t n) {
    cm_bf16 *h = y;
    for (int64_t i = 0; i < n; i++) h[i] = cm_f32_to_bf16(x[i]);
}

void cm_vec_dot_f32_f32_ref(int n, float *s, const void *x, const void *y) {
    const float *a = x, *b = y;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += (double)a[i] * b[i];
    *s = (float)sum;
}

void cm_vec_dot_f16_f16_ref(int n, float *s, const void *x, const void *y) {
    const cm_f16 *a = x, *b = y;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += (double)(cm_f16_to_f32(a[i]) * cm_f16_to_f32(b[i]));
    *s = (float)sum;
}

void cm_vec_dot_bf16_bf16_ref(int n, float *s, const void *x, const void *y) {
    const cm_bf16 *a = x, *b = y;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += (double)(cm_bf16_to_f32(a[i]) * cm_bf16_to_f32(b[i]));
    *s = (float)sum;
}

/* ---- 32-wide formats ---- */

void cm_quantize_q4_0_ref(const float *x, void *vy, int64_t n) {
    cm_block_q4_0 *y = vy;
    for (int64_t ib = 0; ib < n / QK; ib++, x += QK) {
        /* The extreme value maps to -8, the one end of [-8, 7] that has no
         * positive twin, so the whole range is used. */
        const float d = signed_absmax(x, QK) / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[ib].d = f2h(d);
        for (int j = 0; j < QK / 2; j++) {
            int q0 = (int)(x[j] * id + 8.5f), q1 = (int)(x[j + QK / 2] * id + 8.5f);
            y[ib].qs[j] = (uint8_t)(clampi(q0, 0, 15) | clampi(q1, 0, 15) << 4);
        }
    }
}

void cm_dequantize_q4_0_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q4_0 *x = vx;
    for (int64_t ib = 0; ib < n / QK; ib++, y += QK) {
        const float d = h2f(x[ib].d);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = ((x[ib].qs[j] & 15) - 8) * d;
            y[j + QK / 2] = ((x[ib].qs[j] >> 4) - 8) * d;
        }
    }
}

static void minmax(const float *x, int n, float *lo, float *hi) {
    *lo = x[0];
    *hi = x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < *lo) *lo = x[i];
        if (x[i] > *hi) *hi = x[i];
    }
}

void cm_quantize_q4_1_ref(const float *x, void *vy, int64_t n) {
    cm_block_q4_1 *y = vy;
    for (int64_t ib = 0; ib < n / QK; ib++, x += QK) {
        float lo, hi;
        minmax(x, QK, &lo, &hi);
        const float d = (hi - lo) / 15;
        const float id = d ? 1.0f / d : 0.0f;
        y[ib].d = f2h(d);
        y[ib].m = f2h(lo);
        for (int j = 0; j < QK / 2; j++) {
            int q0 = (int)((x[j] - lo) * id + 0.5f), q1 = (int)((x[j + QK / 2] - lo) * id + 0.5f);
            y[ib].qs[j] = (uint8_t)(clampi(q0, 0, 15) | clampi(q1, 0, 15) << 4);
        }
    }
}

void cm_dequantize_q4_1_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q4_1 *x = vx;
    for (int64_t ib = 0; ib < n / QK; ib++, y += QK) {
        const float d = h2f(x[ib].d), m = h2f(x[ib].m);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = (x[ib].qs[j] & 15) * d + m;
            y[j + QK / 2] = (x[ib].qs[j] >> 4) * d + m;
        }
    }
}

/* q5 blocks: bit j of the little-endian 32-bit qh is the 5th bit of weight j. */
static inline uint32_t load_qh(const uint8_t qh[4]) {
    return (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
}

static inline void store_qh(uint8_t qh[4], uint32_t v) {
    for (int i = 0; i < 4; i++) qh[i] = (uint8_t)(v >> (8 * i));
}

/* Weight j (0..31) of a q5 block as an unsigned 5-bit value. */
static inline int q5_get(const uint8_t *qs, uint32_t qh, int j) {
    int lo = j < QK / 2 ? qs[j] & 15 : qs[j - QK / 2] >> 4;
    return lo | (int)((qh >> j) & 1) << 4;
}

static void q5_put(const int q[QK], uint8_t *qs, uint8_t qh[4]) {
    uint32_t h = 0;
    for (int j = 0; j < QK / 2; j++) {
        qs[j] = (uint8_t)((q[j] & 15) | (q[j + QK / 2] & 15) << 4);
        h |= (uint32_t)(q[j] >> 4 & 1) << j;
        h |= (uint32_t)(q[j + QK / 2] >> 4 & 1) << (j + QK / 2);
    }
    store_qh(qh, h);
}

void cm_quantize_q5_0_ref(const float *x, void *vy, int64_t n) {
    cm_block_q5_0 *y = vy;
    for (int64_t ib = 0; ib < n / QK; ib++, x += QK) {
        const float d = signed_absmax(x, QK) / -16;
        const float id = d ? 1.0f / d : 0.0f;
        int q[QK];
        for (int j = 0; j < QK; j++) q[j] = clampi((int)(x[j] * id + 16.5f), 0, 31);
        y[ib].d = f2h(d);
        q5_put(q, y[ib].qs, y[ib].qh);
    }
}

void cm_dequantize_q5_0_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q5_0 *x = vx;
    for (int64_t ib = 0; ib < n / QK; ib++, y += QK) {
        const float d = h2f(x[ib].d);
        const uint32_t qh = load_qh(x[ib].qh);
        for (int j = 0; j < QK; j++) y[j] = (q5_get(x[ib].qs, qh, j) - 16) * d;
    }
}

void cm_quantize_q5_1_ref(const float *x, void *vy, int64_t n) {
    cm_block_q5_1 *y = vy;
    for (int64_t ib = 0; ib < n / QK; ib++, x += QK) {
        float lo, hi;
        minmax(x, QK, &lo, &hi);
        const float d = (hi - lo) / 31;
        const float id = d ? 1.0f / d : 0.0f;
        int q[QK];
        for (int j = 0; j < QK; j++) q[j] = clampi((int)((x[j] - lo) * id + 0.5f), 0, 31);
        y[ib].d = f2h(d);
        y[ib].m = f2h(lo);
        q5_put(q, y[ib].qs, y[ib].qh);
    }
}

void cm_dequantize_q5_1_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q5_1 *x = vx;
    for (int64_t ib = 0; ib < n / QK; ib++, y += QK) {
        const float d = h2f(x[ib].d), m = h2f(x[ib].m);
        const uint32_t qh = load_qh(x[ib].qh);
        for (int j = 0; j < QK; j++) y[j] = q5_get(x[ib].qs, qh, j) * d + m;
    }
}

static float absmax(const float *x, int n) {
    float amax = 0;
    for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i]));
    return amax;
}

void cm_quantize_q8_0_ref(const float *x, void *vy, int64_t n) {
    cm_block_q8_0 *y = vy;
    for (int64_t ib = 0; ib < n / QK; ib++, x += QK) {
        const float d = absmax(x, QK) / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[ib].d = f2h(d);
        for (int j = 0; j < QK; j++) y[ib].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

void cm_dequantize_q8_0_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q8_0 *x = vx;
    for (int64_t ib = 0; ib < n / QK; ib++, y += QK) {
        const float d = h2f(x[ib].d);
        for (int j = 0; j < QK; j++) y[j] = x[ib].qs[j] * d;
    }
}

void cm_quantize_q8_1_ref(const float *x, void *vy, int64_t n) {
    cm_block_q8_1 *y = vy;
    for (int64_t ib = 0; ib < n / QK; ib++, x += QK) {
        const float d = absmax(x, QK) / 127;
        const float id = d ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            y[ib].qs[j] = (int8_t)roundf(x[j] * id);
            sum += y[ib].qs[j];
        }
        y[ib].d = f2h(d);
        /* s carries the block's sum for the min term of q4_1/q5_1 dots. */
        y[ib].s = f2h((float)sum * d);
    }
}

void cm_dequantize_q8_1_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q8_1 *x = vx;
    for (int64_t ib = 0; ib < n / QK; ib++, y += QK) {
        const float d = h2f(x[ib].d);
        for (int j = 0; j < QK; j++) y[j] = x[ib].qs[j] * d;
    }
}

void cm_vec_dot_q4_0_q8_0_ref(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q4_0 *x = vx;
    const cm_block_q8_0 *y = vy;
    float sum = 0;
    for (int ib = 0; ib < n / QK; ib++) {
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++) {
            sumi += ((x[ib].qs[j] & 15) - 8) * y[ib].qs[j];
            sumi += ((x[ib].qs[j] >> 4) - 8) * y[ib].qs[j + QK / 2];
        }
        sum += (float)sumi * (h2f(x[ib].d) * h2f(y[ib].d));
    }
    *s = sum;
}

void cm_vec_dot_q4_1_q8_1_ref(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q4_1 *x = vx;
    const cm_block_q8_1 *y = vy;
    float sum = 0;
    for (int ib = 0; ib < n / QK; ib++) {
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++) {
            sumi += (x[ib].qs[j] & 15) * y[ib].qs[j];
            sumi += (x[ib].qs[j] >> 4) * y[ib].qs[j + QK / 2];
        }
        /* sum_j (d*q_j + m) * dy*y_j = d*dy*sumi + m * (dy * sum_j y_j) */
        sum += (float)sumi * (h2f(x[ib].d) * h2f(y[ib].d)) + h2f(x[ib].m) * h2f(y[ib].s);
    }
    *s = sum;
}

void cm_vec_dot_q5_0_q8_0_ref(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q5_0 *x = vx;
    const cm_block_q8_0 *y = vy;
    float sum = 0;
    for (int ib = 0; ib < n / QK; ib++) {
        const uint32_t qh = load_qh(x[ib].qh);
        int sumi = 0;
        for (int j = 0; j < QK; j++) sumi += (q5_get(x[ib].qs, qh, j) - 16) * y[ib].qs[j];
        sum += (float)sumi * (h2f(x[ib].d) * h2f(y[ib].d));
    }
    *s = sum;
}

void cm_vec_dot_q5_1_q8_1_ref(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q5_1 *x = vx;
    const cm_block_q8_1 *y = vy;
    float sum = 0;
    for (int ib = 0; ib < n / QK; ib++) {
        const uint32_t qh = load_qh(x[ib].qh);
        int sumi = 0;
        for (int j = 0; j < QK; j++) sumi += q5_get(x[ib].qs, qh, j) * y[ib].qs[j];
        sum += (float)sumi * (h2f(x[ib].d) * h2f(y[ib].d)) + h2f(x[ib].m) * h2f(y[ib].s);
    }
    *s = sum;
}

void cm_vec_dot_q8_0_q8_0_ref(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q8_0 *x = vx;
    const cm_block_q8_0 *y = vy;
    float sum = 0;
    for (int ib = 0; ib < n / QK; ib++) {
        int sumi = 0;
        for (int j = 0; j < QK; j++) sumi += x[ib].qs[j] * y[ib].qs[j];
        sum += (float)sumi * (h2f(x[ib].d) * h2f(y[ib].d));
    }
    *s = sum;
}

/* ---- K formats: unpacking ---- */

/* 2-bit field of element e in the q2_K/q3_K qs array. */
static inline int k_2bit(const uint8_t *qs, int e) {
    return (qs[32 * (e >> 7) + (e & 31)] >> (2 * ((e & 127) >> 5))) & 3;
}

static void unpack_q2_K(const cm_block_q2_K *b, int8_t q[QKK]) {
    for (int e = 0; e < QKK; e++) q[e] = (int8_t)k_2bit(b->qs, e);
}

static void unpack_q3_K(const cm_block_q3_K *b, int8_t q[QKK], int sc[16]) {
    for (int e = 0; e < QKK; e++) {
        int high = (b->hmask[e & 31] >> (e >> 5)) & 1;
        q[e] = (int8_t)(k_2bit(b->qs, e) - (high ? 0 : 4));
    }
    for (int j = 0; j < 16; j++) {
        int lo = j < 8 ? b->scales[j] & 15 : b->scales[j - 8] >> 4;
        int hi = (b->scales[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
        sc[j] = (lo | hi << 4) - 32;
    }
}

/* Scale and min of sub-block j (0..7) from the 12 packed bytes of q4_K/q5_K:
 * bytes 0-3 hold scales 0-3 (low 6 bits), bytes 4-7 mins 0-3, bytes 8-11 the
 * low nibbles of scale (lo) and min (hi) 4-7, whose top 2 bits ride in the
 * top 2 bits of bytes 0-3 (scales) and 4-7 (mins). */
static inline void k4_scale_min(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | (s[j - 4] >> 6) << 4;
        *m = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
    }
}

static void k4_pack(uint8_t *s, const int sc[8], const int m[8]) {
    memset(s, 0, CM_K_SCALE_SIZE);
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            s[j] |= (uint8_t)sc[j];
            s[j + 4] |= (uint8_t)m[j];
        } else {
            s[j + 4] = (uint8_t)((sc[j] & 15) | (m[j] & 15) << 4);
            s[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
            s[j] |= (uint8_t)((m[j] >> 4) << 6);
        }
    }
}

static inline int q4k_nibble(const uint8_t *qs, int e) {
    uint8_t byte = qs[32 * (e >> 6) + (e & 31)];
    return (e & 63) < 32 ? byte & 15 : byte >> 4;
}

static void unpack_q4_K(const cm_block_q4_K *b, int8_t q[QKK], int sc[8], int m[8]) {
    for (int e = 0; e < QKK; e++) q[e] = (int8_t)q4k_nibble(b->qs, e);
    for (int j = 0; j < 8; j++) k4_scale_min(b->scales, j, &sc[j], &m[j]);
}

static void unpack_q5_K(const cm_block_q5_K *b, int8_t q[QKK], int sc[8], int m[8]) {
    for (int e = 0; e < QKK; e++) q[e] = (int8_t)(q4k_nibble(b->qs, e) | ((b->qh[e & 31] >> (e >> 5)) & 1) << 4);
    for (int j = 0; j < 8; j++) k4_scale_min(b->scales, j, &sc[j], &m[j]);
}

static void unpack_q6_K(const cm_block_q6_K *b, int8_t q[QKK]) {
    for (int e = 0; e < QKK; e++) {
        int h = e >> 7, r = e & 127, k = r >> 5, l = e & 31;
        uint8_t lo = b->ql[64 * h + 32 * (k & 1) + l];
        int nib = k < 2 ? lo & 15 : lo >> 4;
        int hi = (b->qh[32 * h + l] >> (2 * k)) & 3;
        q[e] = (int8_t)((nib | hi << 4) - 32);
    }
}

/* ---- K formats: dequantize ---- */

void cm_dequantize_q2_K_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q2_K *x = vx;
    int8_t q[QKK];
    for (int64_t ib = 0; ib < n / QKK; ib++, y += QKK) {
        const float d = h2f(x[ib].d), dmin = h2f(x[ib].dmin);
        unpack_q2_K(&x[ib], q);
        for (int e = 0; e < QKK; e++) {
            const uint8_t sm = x[ib].scales[e / 16];
            y[e] = d * (sm & 15) * q[e] - dmin * (sm >> 4);
        }
    }
}

void cm_dequantize_q3_K_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q3_K *x = vx;
    int8_t q[QKK];
    int sc[16];
    for (int64_t ib = 0; ib < n / QKK; ib++, y += QKK) {
        const float d = h2f(x[ib].d);
        unpack_q3_K(&x[ib], q, sc);
        for (int e = 0; e < QKK; e++) y[e] = d * sc[e / 16] * q[e];
    }
}

void cm_dequantize_q4_K_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q4_K *x = vx;
    int8_t q[QKK];
    int sc[8], m[8];
    for (int64_t ib = 0; ib < n / QKK; ib++, y += QKK) {
        const float d = h2f(x[ib].d), dmin = h2f(x[ib].dmin);
        unpack_q4_K(&x[ib], q, sc, m);
        for (int e = 0; e < QKK; e++) y[e] = d * sc[e / 32] * q[e] - dmin * m[e / 32];
    }
}

void cm_dequantize_q5_K_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q5_K *x = vx;
    int8_t q[QKK];
    int sc[8], m[8];
    for (int64_t ib = 0; ib < n / QKK; ib++, y += QKK) {
        const float d = h2f(x[ib].d), dmin = h2f(x[ib].dmin);
        unpack_q5_K(&x[ib], q, sc, m);
        for (int e = 0; e < QKK; e++) y[e] = d * sc[e / 32] * q[e] - dmin * m[e / 32];
    }
}

void cm_dequantize_q6_K_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q6_K *x = vx;
    int8_t q[QKK];
    for (int64_t ib = 0; ib < n / QKK; ib++, y += QKK) {
        const float d = h2f(x[ib].d);
        unpack_q6_K(&x[ib], q);
        for (int e = 0; e < QKK; e++) y[e] = d * x[ib].scales[e / 16] * q[e];
    }
}

void cm_dequantize_q8_K_ref(const void *vx, float *y, int64_t n) {
    const cm_block_q8_K *x = vx;
    for (int64_t ib = 0; ib < n / QKK; ib++, y += QKK)
        for (int e = 0; e < QKK; e++) y[e] = x[ib].d * x[ib].qs[e];
}

/* ---- K formats: dot products against q8_K ---- */

/* sum over sub-block j of q*y, for sub-blocks of `len` elements */
static void subdots(const int8_t *q, const int8_t *y, int len, int n_sub, int *out) {
    for (int j = 0; j < n_sub; j++) {
        int s = 0;
        for (int l = 0; l < len; l++) s += q[j * len + l] * y[j * len + l];
        out[j] = s;
    }
}

void cm_vec_dot_q2_K_q8_K_ref(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q2_K *x = vx;
    const cm_block_q8_K *y = vy;
    int8_t q[QKK];
    int sd[16];
    float sum = 0;
    for (int ib = 0; ib < n / QKK; ib++) {
        unpack_q2_K(&x[ib], q);
        subdots(q, y[ib].qs, 16, 16, sd);
        int isum = 0, msum = 0;
        for (int j = 0; j < 16; j++) {
            isum += (x[ib].scales[j] & 15) * sd[j];
            msum += (x[ib].scales[j] >> 4) * y[ib].bsums[j];
        }
        sum += y[ib].d * h2f(x[ib].d) * isum - y[ib].d * h2f(x[ib].dmin) * msum;
    }
    *s = sum;
}

void cm_vec_dot_q3_K_q8_K_ref(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q3_K *x = vx;
    const cm_block_q8_K *y = vy;
    int8_t q[QKK];
    int sc[16], sd[16];
    float sum = 0;
    for (int ib = 0; ib < n / QKK; ib++) {
        unpack_q3_K(&x[ib], q, sc);
        subdots(q, y[ib].qs, 16, 16, sd);
        int isum = 0;
        for (int j = 0; j < 16; j++) isum += sc[j] * sd[j];
        sum += y[ib].d * h2f(x[ib].d) * isum;
    }
    *s = sum;
}

/* q4_K and q5_K differ only in unpacking. */
static float dot_k4(const int8_t *q, const int sc[8], const int m[8], cm_f16 d, cm_f16 dmin, const cm_block_q8_K *y) {
    int sd[8];
    subdots(q, y->qs, 32, 8, sd);
    int isum = 0, msum = 0;
    for (int j = 0; j < 8; j++) {
        isum += sc[j] * sd[j];
        msum += m[j] * (y->bsums[2 * j] + y->bsums[2 * j + 1]);
    }
    return y->d * h2f(d) * isum - y->d * h2f(dmin) * msum;
}

void cm_vec_dot_q4_K_q8_K_ref(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q4_K *x = vx;
    const cm_block_q8_K *y = vy;
    int8_t q[QKK];
    int sc[8], m[8];
    float sum = 0;
    for (int ib = 0; ib < n / QKK; ib++) {
        unpack_q4_K(&x[ib], q, sc, m);
        sum += dot_k4(q, sc, m, x[ib].d, x[ib].dmin, &y[ib]);
    }
    *s = sum;
}

void cm_vec_dot_q5_K_q8_K_ref(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q5_K *x = vx;
    const cm_block_q8_K *y = vy;
    int8_t q[QKK];
    int sc[8], m[8];
    float sum = 0;
    for (int ib = 0; ib < n / QKK; ib++) {
        unpack_q5_K(&x[ib], q, sc, m);
        sum += dot_k4(q, sc, m, x[ib].d, x[ib].dmin, &y[ib]);
    }
    *s = sum;
}

void cm_vec_dot_q6_K_q8_K_ref(int n, float *s, const void *vx, const void *vy) {
    const cm_block_q6_K *x = vx;
    const cm_block_q8_K *y = vy;
    int8_t q[QKK];
    int sd[16];
    float sum = 0;
    for (int ib = 0; ib < n / QKK; ib++) {
        unpack_q6_K(&x[ib], q);
        subdots(q, y[ib].qs, 16, 16, sd);
        int isum = 0;
        for (int j = 0; j < 16; j++) isum += x[ib].scales[j] * sd[j];
        sum += y[ib].d * h2f(x[ib].d) * isum;
    }
    *s = sum;
}

/* ---- K formats: quantizers ----
 *
 * Simpler than ggml's weighted search, same bytes format: each sub-block is
 * fitted on its own, the sub-block scales are quantized to their stored
 * width against the super-block's largest, and finally every weight is
 * rounded again against the scales as they will be decoded, so rounding of
 * the scales does not add to the error twice.
 *
 * The fit of a sub-block is a bounded search: for each of a fixed handful
 * of candidate steps around the min/max (or max-abs) one, the weights are
 * rounded once and the least-squares step (and offset) for those integers
 * is solved in closed form from running sums, as is its squared error, so a
 * candidate costs one pass over the sub-block. The best candidate is then
 * polished by a few rounds of "round against the fit, refit". Every
 * candidate's error is at most that of the plain min/max (max-abs) fit,
 * because the least-squares solution for the same integers can only be
 * better; so the result never loses to that fit. Rounding inside the
 * search uses truncation of a value made non-negative, which compilers turn
 * into vector code; ties (measure zero) may round differently from
 * nearest(), which only moves which candidate wins, not correctness. */

/* Candidate steps are range / (nmax + k/steps) for |k| <= steps: the
 * search spans one quantization level either side of the min/max step.
 * steps per format is the fewest that kept its error (with the refit of the
 * last stage) at or below that of a 21-candidate search on N(0,1) data. */
#define STEPS_Q2_K 3
#define STEPS_Q3_K 3
#define STEPS_Q4_K 2
#define STEPS_Q5_K 2
#define STEPS_Q6_K 3
/* rounds of "round against the fit, refit" after the search */
#define FIT_POLISH 2
/* independent partial sums per loop: sub-block lengths are multiples of
 * it, and the loops vectorize without reassociating float additions */
#define LANES 4

static inline float lane_sum(const float v[LANES]) {
    return (v[0] + v[1]) + (v[2] + v[3]);
}

/* What the asymmetric fit needs of a sub-block besides L: its length, the
 * sum of x and the sum of squares about the mean (sxx). */
typedef struct asym_stats {
    int n;
    float inv_n, sx, sx2, sxx;
} asym_stats;

/* The least-squares (step, mn) of x ~= step*L + mn for the integers whose
 * sums are sl, sl2, sxl, with mn <= 0, and its squared error; returns 0 when
 * the integers do not determine a positive step. Centred sums keep the
 * error, a small difference of large terms, accurate in float. */
static int asym_solve(const asym_stats *st, float sl, float sl2, float sxl, float *step, float *mn, float *err) {
    const float sll = sl2 - sl * sl * st->inv_n, sxlc = sxl - st->sx * sl * st->inv_n;
    if (!(sll > 0)) return 0;
    float s = sxlc / sll, m = (st->sx - s * sl) * st->inv_n, e = st->sxx - s * sxlc;
    if (m > 0) { /* the format's offset is -dmin*m with m >= 0: pin it at 0 */
        m = 0;
        s = sxl / sl2;
        e = st->sx2 - s * sxl;
    }
    if (!(s > 0)) return 0;
    *step = s;
    *mn = m;
    *err = e;
    return 1;
}

/* One pass: L = round((x - mn) * iscale) clamped to [0, nmax], and the sums
 * asym_solve needs. x - mn >= 0 for the starting min, but not always for a
 * refitted one, hence the clamp before truncating. */
static void asym_round(const float *x, int n, int nmax, float iscale, float mn, float *sl, float *sl2, float *sxl) {
    /* LANES independent sums (n is a multiple of 16), so the loop is
     * vectorizable without reassociating float additions */
    float a[LANES] = {0}, b[LANES] = {0}, c[LANES] = {0};
    const float top = (float)nmax;
    for (int i = 0; i < n; i += LANES) {
        for (int j = 0; j < LANES; j++) {
            float v = (x[i + j] - mn) * iscale;
            v = v > 0.0f ? v : 0.0f;
            v = v < top ? v : top;
            const float l = (float)(int)(v + 0.5f);
            a[j] += l;
            b[j] += l * l;
            c[j] += x[i + j] * l;
        }
    }
    *sl = lane_sum(a);
    *sl2 = lane_sum(b);
    *sxl = lane_sum(c);
}

/* Fits x ~= scale*L - the_min with L in [0, nmax] and the_min >= 0 (the
 * formats subtract a non-negative min). Returns scale >= 0. */
static float fit_asym(const float *x, int n, int nmax, int steps, float *the_min) {
    float lo_l[LANES], hi_l[LANES], sx_l[LANES] = {0}, sx2_l[LANES] = {0};
    for (int k = 0; k < LANES; k++) lo_l[k] = hi_l[k] = x[k];
    for (int i = 0; i < n; i += LANES) {
        for (int k = 0; k < LANES; k++) {
            const float v = x[i + k];
            lo_l[k] = v < lo_l[k] ? v : lo_l[k];
            hi_l[k] = v > hi_l[k] ? v : hi_l[k];
            sx_l[k] += v;
            sx2_l[k] += v * v;
        }
    }
    float lo = lo_l[0], hi = hi_l[0];
    for (int k = 1; k < LANES; k++) {
        lo = lo_l[k] < lo ? lo_l[k] : lo;
        hi = hi_l[k] > hi ? hi_l[k] : hi;
    }
    if (lo > 0) lo = 0;
    if (!(hi > lo)) { /* constant block (or NaN): all of it is the min */
        *the_min = -lo;
        return 0;
    }
    asym_stats st = {.n = n, .inv_n = 1.0f / n, .sx = lane_sum(sx_l), .sx2 = lane_sum(sx2_l)};
    st.sxx = st.sx2 - st.sx * st.sx * st.inv_n;
    float sl, sl2, sxl, s, m, err;
    float scale = (hi - lo) / nmax, mn = lo, best = INFINITY;
    for (int k = -steps; k <= steps; k++) {
        asym_round(x, n, nmax, (nmax + (float)k / steps) / (hi - lo), lo, &sl, &sl2, &sxl);
        if (asym_solve(&st, sl, sl2, sxl, &s, &m, &err) && err < best) {
            best = err;
            scale = s;
            mn = m;
        }
    }
    for (int it = 0; it < FIT_POLISH && best < INFINITY; it++) {
        asym_round(x, n, nmax, 1 / scale, mn, &sl, &sl2, &sxl);
        if (!asym_solve(&st, sl, sl2, sxl, &s, &m, &err) || !(err < best)) break;
        best = err;
        scale = s;
        mn = m;
    }
    *the_min = -mn;
    return scale;
}

/* One pass of the symmetric fit: L = round(x * iscale) clamped to
 * [-nlo, nlo-1]; returns sum L^2 and sets *sxl = sum x*L. */
static float sym_round(const float *x, int n, int nlo, float iscale, float *sxl) {
    float b[LANES] = {0}, c[LANES] = {0};
    const float lo = (float)-nlo, hi = (float)(nlo - 1), off = (float)nlo + 0.5f;
    for (int i = 0; i < n; i += LANES) {
        for (int j = 0; j < LANES; j++) {
            float v = x[i + j] * iscale;
            v = v > lo ? v : lo;
            v = v < hi ? v : hi;
            const float l = (float)(int)(v + off) - nlo;
            b[j] += l * l;
            c[j] += x[i + j] * l;
        }
    }
    *sxl = lane_sum(c);
    return lane_sum(b);
}

/* Fits x ~= scale*L with L in [-nlo, nlo-1]. The scale is signed so that
 * the value of largest magnitude lands near -nlo, the end without a positive
 * twin. For fixed L the least-squares step is sxl/sl2 and its squared error
 * sx2 - sxl^2/sl2, so maximizing sxl^2/sl2 picks the best candidate. */
static float fit_sym(const float *x, int n, int nlo, int steps) {
    const float mx = signed_absmax(x, n);
    if (mx == 0) return 0;
    float sxl, sl2, scale = mx / -nlo, best = -1;
    for (int k = -steps; k <= steps; k++) {
        sl2 = sym_round(x, n, nlo, -(nlo + (float)k / steps) / mx, &sxl);
        if (sl2 > 0 && sxl != 0 && sxl * sxl / sl2 > best) {
            best = sxl * sxl / sl2;
            scale = sxl / sl2;
        }
    }
    for (int it = 0; it < FIT_POLISH; it++) {
        sl2 = sym_round(x, n, nlo, 1 / scale, &sxl);
        if (!(sl2 > 0 && sxl != 0 && sxl * sxl / sl2 > best)) break;
        best = sxl * sxl / sl2;
        scale = sxl / sl2;
    }
    return scale;
}

/* Quantizes n_sub non-negative values v to integers in [0, qmax] against
 * their maximum; returns the step (0 when all are 0). */
static float quant_pos(const float *v, int n_sub, int qmax, int *out) {
    float mx = 0;
    for (int j = 0; j < n_sub; j++) mx = fmaxf(mx, v[j]);
    float inv = mx > 0 ? qmax / mx : 0;
    for (int j = 0; j < n_sub; j++) out[j] = clampi(nearest(inv * v[j]), 0, qmax);
    return mx / qmax;
}

/* ---- the last stage: super-block scales refitted to the final integers ----
 *
 * Once the sub-block scales are integers, every weight of a super-block is
 * x ~= d*sc[j]*L (symmetric formats) or d*sc[j]*L - dmin*m[j] (asymmetric
 * ones), linear in d (and dmin). For the integers rounded against the first
 * d, the least-squares d (and dmin) is solved in closed form from per
 * sub-block sums gathered while rounding, stored as f16, and the weights
 * rounded again against it; the result is kept only when its squared error
 * is lower, so this stage never makes a block worse. */

/* Per sub-block sums of one rounding pass. */
typedef struct round_sums {
    double err;                 /* squared error of the whole super-block */
    float sl[16], sl2[16], sxl[16]; /* sum L, L^2, x*L of sub-block j */
} round_sums;

/* Rounds a symmetric super-block against d: L in [-nlo, nlo-1]. */
static void round_sym(const float *x, const int *sc, int sub, int nlo, float d, int L[QKK], round_sums *rs) {
    const float lo = (float)-nlo, hi = (float)(nlo - 1), off = (float)nlo + 0.5f;
    double err = 0;
    for (int j = 0; j < QKK / sub; j++) {
        const float dl = d * sc[j], idl = dl ? 1 / dl : 0;
        float b[LANES] = {0}, c[LANES] = {0}, r2[LANES] = {0};
        for (int i = sub * j; i < sub * (j + 1); i += LANES) {
            for (int k = 0; k < LANES; k++) {
                float v = x[i + k] * idl;
                v = v > lo ? v : lo;
                v = v < hi ? v : hi;
                const int l = (int)(v + off) - nlo;
                const float lf = (float)l, r = dl * lf - x[i + k];
                L[i + k] = l;
                b[k] += lf * lf;
                c[k] += x[i + k] * lf;
                r2[k] += r * r;
            }
        }
        rs->sl2[j] = lane_sum(b);
        rs->sxl[j] = lane_sum(c);
        err += lane_sum(r2);
    }
    rs->err = err;
}

/* Sets L for the super-block and returns the f16 d to store (d0 or better). */
static cm_f16 refit_sym(const float *x, const int *sc, int sub, int nlo, cm_f16 d0, int L[QKK]) {
    int L1[QKK];
    round_sums r0, r1;
    round_sym(x, sc, sub, nlo, h2f(d0), L, &r0);
    double num = 0, den = 0;
    for (int j = 0; j < QKK / sub; j++) {
        num += (double)sc[j] * r0.sxl[j];
        den += (double)sc[j] * sc[j] * r0.sl2[j];
    }
    if (!(den > 0)) return d0;
    const cm_f16 d1 = f2h((float)(num / den));
    if (d1 == d0 || !isfinite(h2f(d1))) return d0;
    round_sym(x, sc, sub, nlo, h2f(d1), L1, &r1);
    if (!(r1.err < r0.err)) return d0;
    memcpy(L, L1, sizeof L1);
    return d1;
}

/* Rounds an asymmetric super-block: L in [0, nmax]. */
static void round_asym(const float *x, const int *ls, const int *lm, int sub, int nmax, float d, float dmin,
                       int L[QKK], round_sums *rs) {
    const float top = (float)nmax;
    double err = 0;
    for (int j = 0; j < QKK / sub; j++) {
        const float dl = d * ls[j], ml = dmin * lm[j], idl = dl ? 1 / dl : 0;
        float a[LANES] = {0}, b[LANES] = {0}, c[LANES] = {0}, r2[LANES] = {0};
        for (int i = sub * j; i < sub * (j + 1); i += LANES) {
            for (int k = 0; k < LANES; k++) {
                float v = (x[i + k] + ml) * idl;
                v = v > 0.0f ? v : 0.0f;
                v = v < top ? v : top;
                const int l = (int)(v + 0.5f);
                const float lf = (float)l, r = dl * lf - ml - x[i + k];
                L[i + k] = l;
                a[k] += lf;
                b[k] += lf * lf;
                c[k] += x[i + k] * lf;
                r2[k] += r * r;
            }
        }
        rs->sl[j] = lane_sum(a);
        rs->sl2[j] = lane_sum(b);
        rs->sxl[j] = lane_sum(c);
        err += lane_sum(r2);
    }
    rs->err = err;
}

/* Sets L and the (d, dmin) pair to store, (d0, dmin0) or better: x ~= d*A -
 * dmin*B with A = ls*L, B = lm is a 2x2 least-squares problem. */
static void refit_asym(const float *x, const int *ls, const int *lm, int sub, int nmax, cm_f16 *d, cm_f16 *dmin,
                       int L[QKK]) {
    int L1[QKK];
    round_sums r0, r1;
    round_asym(x, ls, lm, sub, nmax, h2f(*d), h2f(*dmin), L, &r0);
    double aa = 0, bb = 0, ab = 0, xa = 0, xb = 0;
    for (int j = 0; j < QKK / sub; j++) {
        float sx = 0;
        for (int i = sub * j; i < sub * (j + 1); i++) sx += x[i];
        aa += (double)ls[j] * ls[j] * r0.sl2[j];
        bb += (double)lm[j] * lm[j] * sub;
        ab += (double)ls[j] * lm[j] * r0.sl[j];
        xa += (double)ls[j] * r0.sxl[j];
        xb += (double)lm[j] * sx;
    }
    const double det = aa * bb - ab * ab;
    if (!(aa > 0) || !(det > 1e-9 * aa * bb)) return; /* no min term, or A and B collinear */
    const cm_f16 d1 = f2h((float)((xa * bb - ab * xb) / det)), m1 = f2h((float)((ab * xa - aa * xb) / det));
    if ((d1 == *d && m1 == *dmin) || !isfinite(h2f(d1)) || !isfinite(h2f(m1)) || !(h2f(d1) > 0) || h2f(m1) < 0)
        return;
    round_asym(x, ls, lm, sub, nmax, h2f(d1), h2f(m1), L1, &r1);
    if (!(r1.err < r0.err)) return;
    memcpy(L, L1, sizeof L1);
    *d = d1;
    *dmin = m1;
}

void cm_quantize_q2_K_ref(const float *x, void *vy, int64_t n) {
    cm_block_q2_K *y = vy;
    int L[QKK];
    for (int64_t ib = 0; ib < n / QKK; ib++, x += QKK) {
        float scales[16], mins[16];
        int ls[16], lm[16];
        for (int j = 0; j < 16; j++) scales[j] = fit_asym(x + 16 * j, 16, 3, STEPS_Q2_K, &mins[j]);
        y[ib].d = f2h(quant_pos(scales, 16, 15, ls));
        y[ib].dmin = f2h(quant_pos(mins, 16, 15, lm));
        refit_asym(x, ls, lm, 16, 3, &y[ib].d, &y[ib].dmin, L);
        for (int j = 0; j < 16; j++) y[ib].scales[j] = (uint8_t)(ls[j] | lm[j] << 4);
        /* element 128*h + 32*k + i: byte 32*h + i, bits 2*k */
        for (int h = 0; h < 2; h++)
            for (int i = 0; i < 32; i++) {
                const int *l = L + 128 * h + i;
                y[ib].qs[32 * h + i] = (uint8_t)(l[0] | l[32] << 2 | l[64] << 4 | l[96] << 6);
            }
    }
}

void cm_quantize_q3_K_ref(const float *x, void *vy, int64_t n) {
    cm_block_q3_K *y = vy;
    int L[QKK];
    for (int64_t ib = 0; ib < n / QKK; ib++, x += QKK) {
        float scales[16];
        int sc[16];
        for (int j = 0; j < 16; j++) scales[j] = fit_sym(x + 16 * j, 16, 4, STEPS_Q3_K);
        const float smax = signed_absmax(scales, 16);
        memset(y[ib].scales, 0, sizeof(y[ib].scales));
        memset(y[ib].hmask, 0, sizeof(y[ib].hmask));
        memset(y[ib].qs, 0, sizeof(y[ib].qs));
        /* 6-bit signed sub-scales in [-32, 31]; the largest maps to -32. */
        const float inv = smax ? -32 / smax : 0;
        for (int j = 0; j < 16; j++) {
            sc[j] = clampi(nearest(inv * scales[j]), -32, 31);
            const int u = sc[j] + 32;
            if (j < 8)
                y[ib].scales[j] |= (uint8_t)(u & 15);
            else
                y[ib].scales[j - 8] |= (uint8_t)((u & 15) << 4);
            y[ib].scales[8 + (j & 3)] |= (uint8_t)((u >> 4) << (2 * (j >> 2)));
        }
        y[ib].d = refit_sym(x, sc, 16, 4, f2h(smax ? 1 / inv : 0.0f), L);
        /* stored as L+4 in 3 bits: the high bit (hmask[i] bit e/32) set
         * means "no -4"; low bits placed as q2_K's */
        for (int e = 0; e < QKK; e++) L[e] += 4;
        for (int i = 0; i < 32; i++) {
            int hm = 0;
            for (int k = 0; k < 8; k++) hm |= (L[32 * k + i] >> 2) << k;
            y[ib].hmask[i] = (uint8_t)hm;
        }
        for (int h = 0; h < 2; h++)
            for (int i = 0; i < 32; i++) {
                const int *l = L + 128 * h + i;
                y[ib].qs[32 * h + i] = (uint8_t)((l[0] & 3) | (l[32] & 3) << 2 | (l[64] & 3) << 4 | (l[96] & 3) << 6);
            }
    }
}

/* q4_K and q5_K share everything but the width of a quant. */
static void quantize_k4(const float *x, int nmax, cm_f16 *d_out, cm_f16 *dmin_out, uint8_t *scales, int L[QKK]) {
    float sub_scale[8], sub_min[8];
    int ls[8], lm[8];
    for (int j = 0; j < 8; j++) sub_scale[j] = fit_asym(x + 32 * j, 32, nmax, nmax == 15 ? STEPS_Q4_K : STEPS_Q5_K, &sub_min[j]);
    *d_out = f2h(quant_pos(sub_scale, 8, 63, ls));
    *dmin_out = f2h(quant_pos(sub_min, 8, 63, lm));
    k4_pack(scales, ls, lm);
    refit_asym(x, ls, lm, 32, nmax, d_out, dmin_out, L);
}

void cm_quantize_q4_K_ref(const float *x, void *vy, int64_t n) {
    cm_block_q4_K *y = vy;
    int L[QKK];
    for (int64_t ib = 0; ib < n / QKK; ib++, x += QKK) {
        quantize_k4(x, 15, &y[ib].d, &y[ib].dmin, y[ib].scales, L);
        /* element 64*c + i: low nibble of byte 32*c + i; 64*c + 32 + i: high */
        for (int c = 0; c < 4; c++)
            for (int i = 0; i < 32; i++) y[ib].qs[32 * c + i] = (uint8_t)(L[64 * c + i] | L[64 * c + 32 + i] << 4);
    }
}

void cm_quantize_q5_K_ref(const float *x, void *vy, int64_t n) {
    cm_block_q5_K *y = vy;
    int L[QKK];
    for (int64_t ib = 0; ib < n / QKK; ib++, x += QKK) {
        quantize_k4(x, 31, &y[ib].d, &y[ib].dmin, y[ib].scales, L);
        /* nibbles as q4_K; bit 4 of element 32*k + i is qh[i] bit k */
        for (int c = 0; c < 4; c++)
            for (int i = 0; i < 32; i++)
                y[ib].qs[32 * c + i] = (uint8_t)((L[64 * c + i] & 15) | (L[64 * c + 32 + i] & 15) << 4);
        for (int i = 0; i < 32; i++) {
            int hb = 0;
            for (int k = 0; k < 8; k++) hb |= (L[32 * k + i] >> 4) << k;
            y[ib].qh[i] = (uint8_t)hb;
        }
    }
}

void cm_quantize_q6_K_ref(const float *x, void *vy, int64_t n) {
    cm_block_q6_K *y = vy;
    int L[QKK];
    for (int64_t ib = 0; ib < n / QKK; ib++, x += QKK) {
        float scales[16];
        int sc[16];
        for (int j = 0; j < 16; j++) scales[j] = fit_sym(x + 16 * j, 16, 32, STEPS_Q6_K);
        const float smax = signed_absmax(scales, 16);
        memset(&y[ib], 0, sizeof(y[ib]));
        if (smax == 0) continue; /* all zero: d = 0 decodes to zeros */
        /* int8 sub-scales; the largest maps to -128. */
        const float inv = -128 / smax;
        for (int j = 0; j < 16; j++) {
            sc[j] = clampi(nearest(inv * scales[j]), -128, 127);
            y[ib].scales[j] = (int8_t)sc[j];
        }
        y[ib].d = refit_sym(x, sc, 16, 32, f2h(1 / inv), L);
        /* u = L+32 of element 128*h + 32*k + i: low 4 bits in ql[64*h +
         * 32*(k&1) + i] (high nibble for k >= 2), top 2 in qh[32*h + i] bits
         * 2*k */
        for (int e = 0; e < QKK; e++) L[e] += 32;
        for (int h = 0; h < 2; h++)
            for (int i = 0; i < 32; i++) {
                const int *u = L + 128 * h + i;
                y[ib].ql[64 * h + i] = (uint8_t)((u[0] & 15) | (u[64] & 15) << 4);
                y[ib].ql[64 * h + 32 + i] = (uint8_t)((u[32] & 15) | (u[96] & 15) << 4);
                y[ib].qh[32 * h + i] = (uint8_t)(u[0] >> 4 | (u[32] >> 4) << 2 | (u[64] >> 4) << 4 | (u[96] >> 4) << 6);
            }
    }
}

void cm_quantize_q8_K_ref(const float *x, void *vy, int64_t n) {
    cm_block_q8_K *y = vy;
    for (int64_t ib = 0; ib < n / QKK; ib++, x += QKK) {
        const float mx = signed_absmax(x, QKK);
        if (mx == 0) {
            memset(&y[ib], 0, sizeof(y[ib]));
            continue;
        }
        /* -127 rather than -128 keeps every quant in [-127, 127]. */
        const float iscale = -127.f / mx;
        for (int e = 0; e < QKK; e++) y[ib].qs[e] = (int8_t)clampi(nearest(iscale * x[e]), -127, 127);
        for (int j = 0; j < 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) sum += y[ib].qs[16 * j + l];
            y[ib].bsums[j] = (int16_t)sum;
        }
        y[ib].d = 1 / iscale;
    }
}
