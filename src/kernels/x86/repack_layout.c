/* repack_layout.c - bytes, pack and unpack_row of the repacked layouts
 * (repack_layout.h; the layouts are described at the top of
 * repack_avx512.c and repack_k_avx512.c), shared by the AVX-512 VNNI and
 * the AVX2 kernels.
 *
 * Compiled for the baseline x86-64 target on purpose: a model is packed
 * once at load time on whatever CPU runs it, so nothing here may use an
 * instruction that CPU lacks. Packing is a permutation of bytes (and of the
 * 6-bit q4_K/q5_K scale packing, and the q8_0 storage offset), so
 * unpack_row(pack(x)) gives x back byte for byte. */
#include "kernels/x86/repack_layout.h"

#include <assert.h>
#include <stdint.h>
#include <string.h>

#define RR CM_REPACK_ROWS

static_assert(Q4_COL == RR * sizeof(cm_block_q4_0), "q4_0 column holds 16 file blocks' bytes");
static_assert(Q8_COL == RR * sizeof(cm_block_q8_0), "q8_0 column holds 16 file blocks' bytes");
static_assert(K4_TILE == 2368, "q4_K tile layout");
static_assert(K6_TILE == 3360, "q6_K tile layout");
static_assert(K5_TILE == 2880, "q5_K tile layout");
static_assert(K5_D == K4_D && K5_DMIN == K4_DMIN && K5_SC == K4_SC && K5_MN == K4_MN && K5_QH == K4_MN + 8 * RR,
              "q4_K and q5_K tiles share every offset but the quants' (k45_put, k45_get)");

/* ---- q4_0, q8_0 ---- */

size_t cm_repack_q4_0_bytes(int64_t n_rows, int64_t n_cols) {
    return (size_t)(n_rows / RR) * (size_t)(n_cols / CM_QK) * Q4_COL;
}

size_t cm_repack_q8_0_bytes(int64_t n_rows, int64_t n_cols) {
    return (size_t)(n_rows / RR) * (size_t)(n_cols / CM_QK) * Q8_COL;
}

void cm_repack_q4_0_pack(const void *src, size_t src_row_bytes, int64_t n_rows, int64_t n_cols, void *dst) {
    const int64_t nb = n_cols / CM_QK;
    for (int64_t g = 0; g < n_rows / RR; g++) {
        uint8_t *gd = (uint8_t *)dst + (size_t)g * (size_t)nb * Q4_COL;
        for (int r = 0; r < RR; r++) {
            const cm_block_q4_0 *b = (const cm_block_q4_0 *)((const uint8_t *)src + (size_t)(g * RR + r) * src_row_bytes);
            for (int64_t i = 0; i < nb; i++) {
                uint8_t *c = gd + (size_t)i * Q4_COL;
                memcpy(c + 2 * r, &b[i].d, 2);
                for (int k = 0; k < 4; k++) memcpy(c + 2 * RR + 64 * k + 4 * r, b[i].qs + 4 * k, 4);
            }
        }
    }
}

void cm_repack_q4_0_unpack_row(const void *w, int64_t n_cols, int64_t row, void *dst_row) {
    const int64_t nb = n_cols / CM_QK;
    const uint8_t *gd = (const uint8_t *)w + (size_t)(row / RR) * (size_t)nb * Q4_COL;
    const int r = (int)(row % RR);
    cm_block_q4_0 *b = dst_row;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *c = gd + (size_t)i * Q4_COL;
        memcpy(&b[i].d, c + 2 * r, 2);
        for (int k = 0; k < 4; k++) memcpy(b[i].qs + 4 * k, c + 2 * RR + 64 * k + 4 * r, 4);
    }
}

void cm_repack_q8_0_pack(const void *src, size_t src_row_bytes, int64_t n_rows, int64_t n_cols, void *dst) {
    const int64_t nb = n_cols / CM_QK;
    for (int64_t g = 0; g < n_rows / RR; g++) {
        uint8_t *gd = (uint8_t *)dst + (size_t)g * (size_t)nb * Q8_COL;
        for (int r = 0; r < RR; r++) {
            const cm_block_q8_0 *b = (const cm_block_q8_0 *)((const uint8_t *)src + (size_t)(g * RR + r) * src_row_bytes);
            for (int64_t i = 0; i < nb; i++) {
                uint8_t *c = gd + (size_t)i * Q8_COL;
                memcpy(c + 2 * r, &b[i].d, 2);
                for (int k = 0; k < 8; k++) {
                    uint32_t v;
                    memcpy(&v, b[i].qs + 4 * k, 4);
                    v ^= 0x80808080u;
                    memcpy(c + 2 * RR + 64 * k + 4 * r, &v, 4);
                }
            }
        }
    }
}

void cm_repack_q8_0_unpack_row(const void *w, int64_t n_cols, int64_t row, void *dst_row) {
    const int64_t nb = n_cols / CM_QK;
    const uint8_t *gd = (const uint8_t *)w + (size_t)(row / RR) * (size_t)nb * Q8_COL;
    const int r = (int)(row % RR);
    cm_block_q8_0 *b = dst_row;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *c = gd + (size_t)i * Q8_COL;
        memcpy(&b[i].d, c + 2 * r, 2);
        for (int k = 0; k < 8; k++) {
            uint32_t v;
            memcpy(&v, c + 2 * RR + 64 * k + 4 * r, 4);
            v ^= 0x80808080u;
            memcpy(b[i].qs + 4 * k, &v, 4);
        }
    }
}

/* ---- q4_K, q5_K, q6_K ---- */


/* The 6-bit packing of a q4_K block's 8 scales and 8 mins, both ways. */
static void k4_scales_get(const uint8_t s[12], uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (uint8_t)((s[j + 8] & 0x0f) | ((s[j] >> 6) << 4));
        mn[j + 4] = (uint8_t)((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
    }
}

static void k4_scales_put(const uint8_t sc[8], const uint8_t mn[8], uint8_t s[12]) {
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)(sc[j] | ((sc[j + 4] >> 4) << 6));
        s[j + 4] = (uint8_t)(mn[j] | ((mn[j + 4] >> 4) << 6));
        s[j + 8] = (uint8_t)((sc[j + 4] & 0x0f) | ((mn[j + 4] & 0x0f) << 4));
    }
}

size_t cm_repack_q4_K_bytes(int64_t n_rows, int64_t n_cols) {
    return (size_t)(n_rows / RR) * (size_t)(n_cols / CM_QK_K) * K4_TILE;
}


/* Row r's part of one q4_K / q5_K tile from the file block's fields, and
 * back: d and dmin, unpacked scales and mins, the 5th-bit planes (q5_K:
 * qh != NULL, at K5_QH) and the quants at qs_at. The two layouts share
 * every offset but the quants'. */
static void k45_put(uint8_t *out, int r, const cm_f16 *d, const cm_f16 *dmin, const uint8_t scales[12],
                    const uint8_t *qh, const uint8_t *qs, size_t qs_at) {
    uint8_t sc[8], mn[8];
    k4_scales_get(scales, sc, mn);
    memcpy(out + K4_D + 2 * r, d, 2);
    memcpy(out + K4_DMIN + 2 * r, dmin, 2);
    for (int j = 0; j < 8; j++) out[K4_SC + j * RR + r] = sc[j];
    for (int k = 0; k < 4; k++) {
        out[K4_MN + k * 2 * RR + 2 * r] = mn[2 * k];
        out[K4_MN + k * 2 * RR + 2 * r + 1] = mn[2 * k + 1];
    }
    if (qh)
        for (int g = 0; g < 8; g++) memcpy(out + K4_MN + 8 * RR + (g * RR + r) * 4, qh + 4 * g, 4);
    for (int p = 0; p < 4; p++)
        for (int g = 0; g < 8; g++) memcpy(out + qs_at + ((p * 8 + g) * RR + r) * 4, qs + 32 * p + 4 * g, 4);
}

static void k45_get(const uint8_t *t, int r, cm_f16 *d, cm_f16 *dmin, uint8_t scales[12], uint8_t *qh, uint8_t *qs,
                    size_t qs_at) {
    uint8_t sc[8], mn[8];
    memcpy(d, t + K4_D + 2 * r, 2);
    memcpy(dmin, t + K4_DMIN + 2 * r, 2);
    for (int j = 0; j < 8; j++) sc[j] = t[K4_SC + j * RR + r];
    for (int k = 0; k < 4; k++) {
        mn[2 * k] = t[K4_MN + k * 2 * RR + 2 * r];
        mn[2 * k + 1] = t[K4_MN + k * 2 * RR + 2 * r + 1];
    }
    k4_scales_put(sc, mn, scales);
    if (qh)
        for (int g = 0; g < 8; g++) memcpy(qh + 4 * g, t + K4_MN + 8 * RR + (g * RR + r) * 4, 4);
    for (int p = 0; p < 4; p++)
        for (int g = 0; g < 8; g++) memcpy(qs + 32 * p + 4 * g, t + qs_at + ((p * 8 + g) * RR + r) * 4, 4);
}

void cm_repack_q4_K_pack(const void *src, size_t src_row_bytes, int64_t n_rows, int64_t n_cols, void *dst) {
    const int64_t nb = n_cols / CM_QK_K;
    uint8_t *out = dst;
    for (int64_t g0 = 0; g0 + RR <= n_rows; g0 += RR)
        for (int64_t i = 0; i < nb; i++, out += K4_TILE)
            for (int r = 0; r < RR; r++) {
                const cm_block_q4_K *b =
                    (const cm_block_q4_K *)((const uint8_t *)src + (size_t)(g0 + r) * src_row_bytes) + i;
                k45_put(out, r, &b->d, &b->dmin, b->scales, NULL, b->qs, K4_QS);
            }
}

void cm_repack_q4_K_unpack_row(const void *w, int64_t n_cols, int64_t row, void *dst_row) {
    const int64_t nb = n_cols / CM_QK_K;
    const uint8_t *t = (const uint8_t *)w + (size_t)(row / RR) * (size_t)nb * K4_TILE;
    cm_block_q4_K *b = dst_row;
    for (int64_t i = 0; i < nb; i++, t += K4_TILE, b++)
        k45_get(t, (int)(row % RR), &b->d, &b->dmin, b->scales, NULL, b->qs, K4_QS);
}

size_t cm_repack_q6_K_bytes(int64_t n_rows, int64_t n_cols) {
    return (size_t)(n_rows / RR) * (size_t)(n_cols / CM_QK_K) * K6_TILE;
}

void cm_repack_q6_K_pack(const void *src, size_t src_row_bytes, int64_t n_rows, int64_t n_cols, void *dst) {
    const int64_t nb = n_cols / CM_QK_K;
    uint8_t *out = dst;
    for (int64_t g0 = 0; g0 + RR <= n_rows; g0 += RR) {
        for (int64_t i = 0; i < nb; i++, out += K6_TILE) {
            for (int r = 0; r < RR; r++) {
                const cm_block_q6_K *b =
                    (const cm_block_q6_K *)((const uint8_t *)src + (size_t)(g0 + r) * src_row_bytes) + i;
                memcpy(out + K6_D + 2 * r, &b->d, 2);
                for (int m = 0; m < 8; m++) {
                    out[K6_SC + m * 2 * RR + 2 * r] = (uint8_t)b->scales[2 * m];
                    out[K6_SC + m * 2 * RR + 2 * r + 1] = (uint8_t)b->scales[2 * m + 1];
                }
                for (int h = 0; h < 2; h++)
                    for (int g = 0; g < 8; g++) {
                        memcpy(out + k6_ql_at(h, 0, g, r), b->ql + 64 * h + 4 * g, 4);
                        memcpy(out + k6_ql_at(h, 1, g, r), b->ql + 64 * h + 32 + 4 * g, 4);
                        memcpy(out + k6_qh_at(h, g, r), b->qh + 32 * h + 4 * g, 4);
                    }
            }
        }
    }
}

void cm_repack_q6_K_unpack_row(const void *w, int64_t n_cols, int64_t row, void *dst_row) {
    const int64_t nb = n_cols / CM_QK_K;
    const uint8_t *t = (const uint8_t *)w + (size_t)(row / RR) * (size_t)nb * K6_TILE;
    const int r = (int)(row % RR);
    cm_block_q6_K *b = dst_row;
    for (int64_t i = 0; i < nb; i++, t += K6_TILE, b++) {
        memcpy(&b->d, t + K6_D + 2 * r, 2);
        for (int m = 0; m < 8; m++) {
            b->scales[2 * m] = (int8_t)t[K6_SC + m * 2 * RR + 2 * r];
            b->scales[2 * m + 1] = (int8_t)t[K6_SC + m * 2 * RR + 2 * r + 1];
        }
        for (int h = 0; h < 2; h++)
            for (int g = 0; g < 8; g++) {
                memcpy(b->ql + 64 * h + 4 * g, t + k6_ql_at(h, 0, g, r), 4);
                memcpy(b->ql + 64 * h + 32 + 4 * g, t + k6_ql_at(h, 1, g, r), 4);
                memcpy(b->qh + 32 * h + 4 * g, t + k6_qh_at(h, g, r), 4);
            }
    }
}

size_t cm_repack_q5_K_bytes(int64_t n_rows, int64_t n_cols) {
    return (size_t)(n_rows / RR) * (size_t)(n_cols / CM_QK_K) * K5_TILE;
}

void cm_repack_q5_K_pack(const void *src, size_t src_row_bytes, int64_t n_rows, int64_t n_cols, void *dst) {
    const int64_t nb = n_cols / CM_QK_K;
    uint8_t *out = dst;
    for (int64_t g0 = 0; g0 + RR <= n_rows; g0 += RR)
        for (int64_t i = 0; i < nb; i++, out += K5_TILE)
            for (int r = 0; r < RR; r++) {
                const cm_block_q5_K *b =
                    (const cm_block_q5_K *)((const uint8_t *)src + (size_t)(g0 + r) * src_row_bytes) + i;
                k45_put(out, r, &b->d, &b->dmin, b->scales, b->qh, b->qs, K5_QS);
            }
}

void cm_repack_q5_K_unpack_row(const void *w, int64_t n_cols, int64_t row, void *dst_row) {
    const int64_t nb = n_cols / CM_QK_K;
    const uint8_t *t = (const uint8_t *)w + (size_t)(row / RR) * (size_t)nb * K5_TILE;
    cm_block_q5_K *b = dst_row;
    for (int64_t i = 0; i < nb; i++, t += K5_TILE, b++)
        k45_get(t, (int)(row % RR), &b->d, &b->dmin, b->scales, b->qh, b->qs, K5_QS);
}
