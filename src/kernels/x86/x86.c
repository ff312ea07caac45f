/* x86.c - chooses the x86 kernels for this CPU and puts them in the traits
 * table (see kernels/simd.h for the contract).
 *
 * Compiled without ISA flags, so it runs on any x86-64; it only takes the
 * addresses of the kernels in avx2.c / avx512.c, and only after the CPU (and
 * the OS, which must save the wider registers: XCR0) has been found to have
 * what they need:
 *   avx2          AVX2 + FMA + F16C + BMI2
 *   avx512-vnni   the above + AVX-512 F/BW/VL/DQ + VNNI
 * CELLM_KERNELS=avx2 caps the choice at AVX2 (so the AVX2 kernels can be
 * tested on an AVX-512 machine); CELLM_KERNELS=ref is handled by the
 * dispatcher before this runs. CELLM_GEMM=off keeps cm_matmul on the
 * per-row dots (to measure what the blocked kernel gains). A kernel replaces an entry only when the
 * entry's vec_dot_type is the activation type the kernel was written for. */
#include <cpuid.h>
#include <stdbool.h>
#include <stdint.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "kernels/simd.h"
#include "kernels/x86/x86.h"

static const char *chosen;
static bool gemm_off; /* CELLM_GEMM=off: per-row dots only, for comparison */

const char *cm_kernels_x86_name(void) { return chosen; }

static void set_dot(cm_type_traits *table, int n_types, int type, int act_type, cm_vec_dot_fn fn) {
    if (type >= n_types || !table[type].name || !table[type].vec_dot) return;
    if (table[type].vec_dot_type != act_type) return;
    table[type].vec_dot = fn;
}

static void set_from_float(cm_type_traits *table, int n_types, int type, cm_from_float_fn fn) {
    if (type >= n_types || !table[type].name) return;
    table[type].from_float = fn;
}

static void set_to_float(cm_type_traits *table, int n_types, int type, cm_to_float_fn fn) {
    if (type >= n_types || !table[type].name) return;
    table[type].to_float = fn;
}

/* CPU features from cpuid, and whether the OS saves the registers they use
 * (XCR0: bits 1-2 for XMM/YMM, 5-7 for the AVX-512 opmask and ZMM state).
 * Raw cpuid rather than __builtin_cpu_supports, whose feature names differ
 * between compilers. */
static uint64_t xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (uint64_t)hi << 32 | lo;
}

int cm_x86_has_avx2(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
    if (!(fma && osxsave && avx && f16c) || (xcr0() & 0x6) != 0x6) return 0;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return ((b >> 5) & 1) && ((b >> 8) & 1); /* AVX2, BMI2 */
}

int cm_x86_has_avx512_vnni(void) {
    unsigned a, b, c, d;
    if (!cm_x86_has_avx2() || (xcr0() & 0xe6) != 0xe6) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    const int f = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
    const int vnni = (c >> 11) & 1;
    return f && dq && bw && vl && vnni;
}

static void register_avx2(cm_type_traits *t, int n) {
    set_dot(t, n, CM_TYPE_F32, CM_TYPE_F32, cm_vec_dot_f32_f32_avx2);
    set_dot(t, n, CM_TYPE_F16, CM_TYPE_F16, cm_vec_dot_f16_f16_avx2);
    set_dot(t, n, CM_TYPE_BF16, CM_TYPE_BF16, cm_vec_dot_bf16_bf16_avx2);
    set_dot(t, n, CM_TYPE_Q4_0, CM_TYPE_Q8_0, cm_vec_dot_q4_0_q8_0_avx2);
    set_dot(t, n, CM_TYPE_Q4_1, CM_TYPE_Q8_1, cm_vec_dot_q4_1_q8_1_avx2);
    set_dot(t, n, CM_TYPE_Q5_0, CM_TYPE_Q8_0, cm_vec_dot_q5_0_q8_0_avx2);
    set_dot(t, n, CM_TYPE_Q5_1, CM_TYPE_Q8_1, cm_vec_dot_q5_1_q8_1_avx2);
    set_dot(t, n, CM_TYPE_Q8_0, CM_TYPE_Q8_0, cm_vec_dot_q8_0_q8_0_avx2);
    set_dot(t, n, CM_TYPE_Q2_K, CM_TYPE_Q8_K, cm_vec_dot_q2_K_q8_K_avx2);
    set_dot(t, n, CM_TYPE_Q3_K, CM_TYPE_Q8_K, cm_vec_dot_q3_K_q8_K_avx2);
    set_dot(t, n, CM_TYPE_Q4_K, CM_TYPE_Q8_K, cm_vec_dot_q4_K_q8_K_avx2);
    set_dot(t, n, CM_TYPE_Q5_K, CM_TYPE_Q8_K, cm_vec_dot_q5_K_q8_K_avx2);
    set_dot(t, n, CM_TYPE_Q6_K, CM_TYPE_Q8_K, cm_vec_dot_q6_K_q8_K_avx2);
    set_from_float(t, n, CM_TYPE_Q8_0, cm_quantize_q8_0_avx2);
    set_from_float(t, n, CM_TYPE_Q8_1, cm_quantize_q8_1_avx2);
    set_from_float(t, n, CM_TYPE_Q8_K, cm_quantize_q8_K_avx2);
    set_from_float(t, n, CM_TYPE_F16, cm_quantize_f16_avx2);
    set_to_float(t, n, CM_TYPE_F16, cm_dequantize_f16_avx2);
}

static void register_avx512(cm_type_traits *t, int n) {
    set_dot(t, n, CM_TYPE_F32, CM_TYPE_F32, cm_vec_dot_f32_f32_avx512);
    set_dot(t, n, CM_TYPE_F16, CM_TYPE_F16, cm_vec_dot_f16_f16_avx512);
    set_dot(t, n, CM_TYPE_BF16, CM_TYPE_BF16, cm_vec_dot_bf16_bf16_avx512);
    set_dot(t, n, CM_TYPE_Q4_0, CM_TYPE_Q8_0, cm_vec_dot_q4_0_q8_0_avx512);
    set_dot(t, n, CM_TYPE_Q8_0, CM_TYPE_Q8_0, cm_vec_dot_q8_0_q8_0_avx512);
    set_dot(t, n, CM_TYPE_Q4_K, CM_TYPE_Q8_K, cm_vec_dot_q4_K_q8_K_avx512);
    set_dot(t, n, CM_TYPE_Q5_K, CM_TYPE_Q8_K, cm_vec_dot_q5_K_q8_K_avx512);
    set_dot(t, n, CM_TYPE_Q6_K, CM_TYPE_Q8_K, cm_vec_dot_q6_K_q8_K_avx512);
}

void cm_kernels_register_x86(cm_type_traits *table, int n_types) {
    const char *want = getenv("CELLM_KERNELS");
    const char *gemm = getenv("CELLM_GEMM");
    gemm_off = gemm && !strcmp(gemm, "off");
    int cap_avx2 = want && !strcmp(want, "avx2");
    if (want && *want && !cap_avx2 && strcmp(want, "ref") && strcmp(want, "auto") && strcmp(want, "avx512-vnni"))
        CM_LOGW("CELLM_KERNELS=%s is not one of ref, avx2, avx512-vnni, auto: choosing from the CPU", want);
    if (!cm_x86_has_avx2()) return; /* the reference is all there is */
    register_avx2(table, n_types);
    chosen = "avx2";
    if (cap_avx2 || !cm_x86_has_avx512_vnni()) return;
    register_avx512(table, n_types);
    chosen = "avx512-vnni";
}

/* ---- blocked matmul hook ----
 * Per-thread buffers for cm_gemm_x86: the panel being multiplied and the
 * activation block sums and scales. They grow to the largest shape seen and are then
 * reused, so a steady stream of matmuls of the same shapes allocates
 * nothing; they live as long as the (persistent) pool threads. */
static _Thread_local void *tl_panel, *tl_sums;
static _Thread_local size_t tl_panel_bytes, tl_sums_bytes;

/* Frees a thread's buffers when it exits (pool threads end with their pool). */
static pthread_key_t tl_key;
static pthread_once_t tl_once = PTHREAD_ONCE_INIT;

static void tl_free(void *unused) {
    (void)unused;
    free(tl_panel);
    free(tl_sums);
    tl_panel = tl_sums = NULL;
    tl_panel_bytes = tl_sums_bytes = 0;
}

static void tl_make_key(void) { pthread_key_create(&tl_key, tl_free); }

static void *grow(void **p, size_t *have, size_t need) {
    if (need <= *have) return *p;
    pthread_once(&tl_once, tl_make_key);
    pthread_setspecific(tl_key, (void *)1); /* non-NULL: the destructor runs */
    void *q = realloc(*p, need);
    if (!q) return NULL;
    *p = q;
    *have = need;
    return q;
}

/* Packing a panel costs about as much as a few tokens' worth of dots, so
 * below these token counts the per-row dots are as fast or faster
 * (bench_kernels -t 1 --cpu-time --hot -n 2048, CELLM_GEMM=off against on:
 * q4_0 even at 4 tokens and 3-4x at 16; q4_K ahead from 8; q6_K, whose
 * products need a VPMULLD per 16 weights, ahead from 16). */
int cm_gemm_x86_min_tokens(int w_type) {
    switch (w_type) {
    case CM_TYPE_Q4_0:
    case CM_TYPE_Q8_0: return 4;
    case CM_TYPE_Q4_K: return 8;
    case CM_TYPE_Q6_K: return 16;
    default: return 0;
    }
}

bool cm_gemm_x86_applies(int w_type, int64_t n_tokens) {
    const int min = cm_gemm_x86_min_tokens(w_type);
    return chosen && !gemm_off && !strcmp(chosen, "avx512-vnni") && min > 0 && n_tokens >= min;
}

bool cm_gemm_x86(int w_type, const void *w, size_t w_row_bytes, int64_t r0, int64_t r1, int64_t n_cols,
                 const void *act, size_t act_row_bytes, int64_t n_tokens, float *y, int64_t y_row_stride) {
    if (!cm_gemm_x86_applies(w_type, n_tokens)) return false;
    const uint8_t *a = act;
    if (w_type == CM_TYPE_Q4_K || w_type == CM_TYPE_Q6_K) {
        const bool k4 = w_type == CM_TYPE_Q4_K;
        if (n_cols % 256) return false;
        void *panel =
            grow(&tl_panel, &tl_panel_bytes, k4 ? cm_gemm_panel_bytes_k(n_cols) : cm_gemm_panel_bytes_k6(n_cols));
        if (!panel) return false;
        for (int64_t r = r0; r < r1; r += CM_GEMM_ROWS) {
            const int nr = (int)(r1 - r < CM_GEMM_ROWS ? r1 - r : CM_GEMM_ROWS);
            const uint8_t *wr = (const uint8_t *)w + (size_t)r * w_row_bytes;
            if (k4)
                cm_gemm_pack_q4_K_avx512(wr, w_row_bytes, nr, n_cols, panel);
            else
                cm_gemm_pack_q6_K_avx512(wr, w_row_bytes, nr, n_cols, panel);
            for (int64_t t = 0; t < n_tokens; t += CM_GEMM_TOKENS) {
                const int nt = (int)(n_tokens - t < CM_GEMM_TOKENS ? n_tokens - t : CM_GEMM_TOKENS);
                if (k4)
                    cm_gemm_q4_K_avx512(panel, nr, n_cols, a + (size_t)t * act_row_bytes, act_row_bytes, nt,
                                        y + t * y_row_stride + r, (size_t)y_row_stride);
                else
                    cm_gemm_q6_K_avx512(panel, nr, n_cols, a + (size_t)t * act_row_bytes, act_row_bytes, nt,
                                        y + t * y_row_stride + r, (size_t)y_row_stride);
            }
        }
        return true;
    }
    if (n_cols % 32) return false;
    const int64_t nb = n_cols / 32;
    void *panel = grow(&tl_panel, &tl_panel_bytes, cm_gemm_panel_bytes(n_cols));
    cm_gemm_act_info *info = grow(&tl_sums, &tl_sums_bytes, (size_t)n_tokens * (size_t)nb * sizeof *info);
    if (!panel || !info) return false;
    if (r1 <= r0) return true;
    cm_gemm_act_info_avx512(w_type, act, act_row_bytes, (int)n_tokens, n_cols, info);
    for (int64_t r = r0; r < r1; r += CM_GEMM_ROWS) {
        const int nr = (int)(r1 - r < CM_GEMM_ROWS ? r1 - r : CM_GEMM_ROWS);
        cm_gemm_pack_avx512(w_type, (const uint8_t *)w + (size_t)r * w_row_bytes, w_row_bytes, nr, n_cols, panel);
        for (int64_t t = 0; t < n_tokens; t += CM_GEMM_TOKENS) {
            const int nt = (int)(n_tokens - t < CM_GEMM_TOKENS ? n_tokens - t : CM_GEMM_TOKENS);
            cm_gemm_q8_0_avx512(w_type, panel, nr, n_cols, a + (size_t)t * act_row_bytes, act_row_bytes,
                                info + (size_t)t * (size_t)nb, nt, y + t * y_row_stride + r, (size_t)y_row_stride);
        }
    }
    return true;
}
