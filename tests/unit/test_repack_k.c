/* test_repack_k.c - the repacked K-format layouts of repack_k_avx512.c
 * (q4_K, q6_K, q5_K as far as they are offered), called directly through
 * cm_repack_k_avx512 so that they are checked whatever cm_repack_find
 * selects.
 *
 * Weights are rows from the reference quantizer (realistic blocks) with the
 * scale fields overwritten by random bytes in some rows (every 6-bit scale
 * and min pattern, int8 scales of -128), activations come from the
 * reference q8_K quantizer. For every shape (16, 32 or 48 rows; 256 to 4096
 * columns; 1, 2, 7, 8 or 33 tokens, and 130 tokens of 4096 columns, more
 * than the kernels take per pass):
 *   - bytes() is what the layout holds (a multiple of the tile size per
 *     16-row group);
 *   - unpack_row(pack(x)) gives back each row byte for byte;
 *   - matmul over all rows, and over a middle range of rows only, equals the
 *     reference vec_dot within a tolerance relative to sum |w * a| (float
 *     summation order differs; the integer sums are exact, so a wrong
 *     weight, scale or min shows up far above it), and writes nothing
 *     outside its rows. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"
#include "kernels/kernels.h"
#include "kernels/quants.h"
#include "kernels/ref.h"
#include "kernels/repack.h"
#include "test.h"

#if defined(__x86_64__)
#include "kernels/x86/x86.h"
#define HAVE_X86_KERNELS 1
/* Weak, so that a build without the SIMD kernels (cmake -DCELLM_SIMD=OFF)
 * still links: the functions are then NULL and the tests skip. */
#pragma weak cm_x86_has_avx512_vnni
#pragma weak cm_repack_k_avx512
#endif

static cm_rng rng;

/* The repacked ops for `type`, or NULL with a reason in *why. */
static const cm_repack_ops *ops_for(int type, const char **why) {
#if defined(HAVE_X86_KERNELS)
    if (!cm_x86_has_avx512_vnni || !cm_repack_k_avx512) {
        *why = "built without the x86 SIMD kernels";
        return NULL;
    }
    if (!cm_x86_has_avx512_vnni()) {
        *why = "this CPU has no AVX-512 VNNI";
        return NULL;
    }
    const cm_repack_ops *ops = cm_repack_k_avx512(type);
    if (!ops) *why = "no repacked layout for this type yet";
    return ops;
#else
    (void)type;
    *why = "not an x86-64 build";
    return NULL;
#endif
}

/* n_rows rows of n_cols weights of `type`, row_bytes apart. */
static void make_weights(int type, int64_t n_rows, int64_t n_cols, uint8_t *w, size_t row_bytes) {
    const cm_type_traits *tr = cm_type_traits_ref(type);
    float *x = malloc((size_t)n_cols * sizeof *x);
    for (int64_t r = 0; r < n_rows; r++) {
        const float amp = 0.01f + cm_rng_f32(&rng);
        for (int64_t k = 0; k < n_cols; k++) {
            x[k] = amp * cm_rng_normal(&rng);
            if (cm_rng_u64(&rng) % 97 == 0) x[k] *= 8.0f; /* outliers */
        }
        uint8_t *row = w + (size_t)r * row_bytes;
        tr->from_float(x, row, n_cols);
        if (r % 3 != 1) continue;
        /* every other pattern of the scale fields too */
        for (int64_t i = 0; i < n_cols / CM_QK_K; i++) {
            if (type == CM_TYPE_Q4_K) {
                cm_block_q4_K *b = (cm_block_q4_K *)row + i;
                for (int j = 0; j < CM_K_SCALE_SIZE; j++) b->scales[j] = (uint8_t)cm_rng_u64(&rng);
            } else if (type == CM_TYPE_Q5_K) {
                cm_block_q5_K *b = (cm_block_q5_K *)row + i;
                for (int j = 0; j < CM_K_SCALE_SIZE; j++) b->scales[j] = (uint8_t)cm_rng_u64(&rng);
            } else if (type == CM_TYPE_Q6_K) {
                cm_block_q6_K *b = (cm_block_q6_K *)row + i;
                for (int j = 0; j < 16; j++) b->scales[j] = (int8_t)(uint8_t)cm_rng_u64(&rng);
                if (i == 0) b->scales[0] = -128;
            }
        }
    }
    free(x);
}

static void check_shape(const cm_repack_ops *ops, int64_t n_rows, int64_t n_cols, int64_t n_tok) {
    const int type = ops->src_type;
    const cm_type_traits *tr = cm_type_traits_ref(type);
    const cm_type_traits *q8 = cm_type_traits_ref(CM_TYPE_Q8_K);
    const size_t row_bytes = (size_t)(n_cols / tr->block_elems) * tr->block_bytes;
    const size_t act_bytes = (size_t)(n_cols / CM_QK_K) * sizeof(cm_block_q8_K);
    uint8_t *w = malloc(row_bytes * (size_t)n_rows);
    make_weights(type, n_rows, n_cols, w, row_bytes);

    /* bytes(): per 16-row group the same amount, linear in the groups */
    const size_t bytes = ops->bytes(n_rows, n_cols);
    CHECK(bytes > 0);
    CHECK(bytes == (size_t)(n_rows / CM_REPACK_ROWS) * ops->bytes(CM_REPACK_ROWS, n_cols));
    CHECK(ops->bytes(CM_REPACK_ROWS, 2 * n_cols) == 2 * ops->bytes(CM_REPACK_ROWS, n_cols));
    /* within a few % of the file's bytes */
    CHECK(bytes >= row_bytes * (size_t)n_rows && bytes <= row_bytes * (size_t)n_rows * 105 / 100);

    uint8_t *p = malloc(bytes + 64);
    memset(p, 0xa5, bytes + 64);
    ops->pack(w, row_bytes, n_rows, n_cols, p);
    for (int i = 0; i < 64; i++) CHECK(p[bytes + i] == 0xa5); /* stays within bytes() */

    uint8_t *back = malloc(row_bytes);
    int same = 1;
    for (int64_t r = 0; r < n_rows; r++) {
        ops->unpack_row(p, n_cols, r, back);
        if (memcmp(back, w + (size_t)r * row_bytes, row_bytes) != 0) same = 0;
    }
    CHECK_MSG(same, "%s %lldx%lld: unpack_row(pack(x)) differs", ops->name, (long long)n_rows, (long long)n_cols);

    /* activations and the reference */
    float *xf = malloc((size_t)n_cols * sizeof *xf);
    float *wf = malloc((size_t)n_cols * sizeof *wf);
    float *af = malloc((size_t)n_cols * sizeof *af);
    uint8_t *act = malloc(act_bytes * (size_t)n_tok);
    float *ref = malloc((size_t)(n_rows * n_tok) * sizeof *ref);
    float *tol = malloc((size_t)(n_rows * n_tok) * sizeof *tol);
    for (int64_t t = 0; t < n_tok; t++) {
        for (int64_t k = 0; k < n_cols; k++) xf[k] = cm_rng_normal(&rng) * (t % 2 ? 3.0f : 0.5f);
        q8->from_float(xf, act + (size_t)t * act_bytes, n_cols);
    }
    for (int64_t r = 0; r < n_rows; r++) {
        tr->to_float(w + (size_t)r * row_bytes, wf, n_cols);
        for (int64_t t = 0; t < n_tok; t++) {
            q8->to_float(act + (size_t)t * act_bytes, af, n_cols);
            double mag = 0;
            for (int64_t k = 0; k < n_cols; k++) mag += fabs((double)wf[k] * af[k]);
            tr->vec_dot((int)n_cols, &ref[t * n_rows + r], w + (size_t)r * row_bytes, act + (size_t)t * act_bytes);
            tol[t * n_rows + r] = (float)(2e-5 * mag + 1e-6);
        }
    }

    /* all rows, then the middle group(s) only */
    const int64_t y_stride = n_rows + 3;
    float *y = malloc((size_t)(y_stride * n_tok) * sizeof *y);
    for (int pass = 0; pass < 2; pass++) {
        const int64_t r0 = pass == 0 ? 0 : CM_REPACK_ROWS;
        const int64_t r1 = pass == 0 ? n_rows : (n_rows > CM_REPACK_ROWS ? n_rows - CM_REPACK_ROWS : n_rows);
        if (pass == 1 && r0 >= r1) break;
        for (int64_t i = 0; i < y_stride * n_tok; i++) y[i] = -12345.0f;
        ops->matmul(p, n_cols, r0, r1, act, act_bytes, n_tok, y, y_stride);
        int bad = 0, outside = 0;
        for (int64_t t = 0; t < n_tok; t++) {
            for (int64_t r = 0; r < y_stride; r++) {
                const float got = y[t * y_stride + r];
                if (r < r0 || r >= r1) {
                    if (got != -12345.0f) outside++;
                    continue;
                }
                const float want = ref[t * n_rows + r];
                if (!(fabsf(got - want) <= tol[t * n_rows + r])) {
                    if (bad++ < 3)
                        fprintf(stderr, "     %s rows %lld cols %lld tokens %lld: y[t=%lld, r=%lld] = %g, want %g (tol %g)\n",
                                ops->name, (long long)n_rows, (long long)n_cols, (long long)n_tok, (long long)t,
                                (long long)r, got, want, tol[t * n_rows + r]);
                }
            }
        }
        CHECK(bad == 0);
        CHECK(outside == 0);
    }

    free(y);
    free(tol);
    free(ref);
    free(act);
    free(af);
    free(wf);
    free(xf);
    free(back);
    free(p);
    free(w);
}

static void check_type(int type) {
    const char *why = "";
    const cm_repack_ops *ops = ops_for(type, &why);
    if (!ops) {
        TEST_SKIP("%s", why);
        return;
    }
    CHECK(ops->src_type == type);
    CHECK(ops->type >= 32 && ops->type < CM_TYPE_COUNT);
    static const int64_t rows[] = {16, 32, 48};
    static const int64_t cols[] = {256, 512, 768, 2048, 4096};
    static const int64_t toks[] = {1, 2, 7, 8, 33};
    int s = 0;
    for (int ri = 0; ri < 3; ri++)
        for (int ci = 0; ci < 5; ci++)
            for (int ti = 0; ti < 5; ti++, s++) {
                /* the widest rows with the small token counts only: keeps
                 * the reference side (per-row dequantize) fast under ASan */
                if (cols[ci] == 4096 && toks[ti] > 8) continue;
                if ((s % 3) != 0 && cols[ci] >= 2048 && rows[ri] == 48) continue;
                check_shape(ops, rows[ri], cols[ci], toks[ti]);
            }
    /* more tokens than one activation chunk of the kernel (512 KiB of q8_K
     * rows: 112 rows of 4096 columns) */
    check_shape(ops, 16, 4096, 130);
}

/* cm_repack_find hands out these layouts when the AVX-512 VNNI kernels are
 * selected (and CELLM_REPACK is not off), and cm_repack_ops_of knows their
 * ids. (Calling cm_repack_find also links repack.o, which pulls in the
 * kernels this test calls directly.) */
TEST(registry) {
    const char *why = "";
    const int types[] = {CM_TYPE_Q4_K, CM_TYPE_Q6_K, CM_TYPE_Q5_K};
    int checked = 0;
    for (int i = 0; i < 3; i++) {
        const cm_repack_ops *found = cm_repack_find(types[i]);
        const cm_repack_ops *ops = ops_for(types[i], &why);
        const char *env = getenv("CELLM_REPACK");
        const bool offered = ops && strcmp(cm_kernels_name(), "avx512-vnni") == 0 && !(env && !strcmp(env, "off"));
        if (!offered) continue;
        CHECK(found == ops);
        CHECK(cm_repack_ops_of(ops->type) == ops);
        checked++;
    }
    CHECK(cm_repack_ops_of(CM_TYPE_Q4_K) == NULL); /* a file type is not a repacked id */
    if (!checked)
        TEST_SKIP("no K layout offered (kernels %s, CELLM_REPACK=%s%s%s)", cm_kernels_name(),
                  getenv("CELLM_REPACK") ? getenv("CELLM_REPACK") : "", *why ? ", " : "", why);
}

TEST(q4_K) { check_type(CM_TYPE_Q4_K); }
TEST(q6_K) { check_type(CM_TYPE_Q6_K); }
TEST(q5_K) { check_type(CM_TYPE_Q5_K); }

int main(void) {
    cm_rng_init(&rng, 20261123);
    cm_kernels_init(false);
    RUN(registry);
    RUN(q4_K);
    RUN(q6_K);
    RUN(q5_K);
    return test_summary();
}
