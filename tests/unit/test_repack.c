/* test_repack.c - the q4_0 and q8_0 repacked layouts (repack.h,
 * x86/repack_avx512.c) as cm_repack_find hands them out, and cm_matmul on
 * repacked weights.
 *
 * Weights come from the reference quantizer (rows of different amplitudes);
 * some q8_0 rows get raw random bytes (so -128 occurs) and some activation
 * blocks raw random bytes too (the full signed range against the unsigned
 * storage offsets). For every shape (16 to 48 rows; 32 to 4096 columns;
 * 1, 3, 8, 17 or 64 tokens):
 *   - bytes() equals the file layout's bytes (a repacked matrix reads no
 *     more per token) and pack writes nothing past it;
 *   - unpack_row(pack(x)) gives back each row byte for byte;
 *   - matmul over all rows, and over the middle group only, equals the
 *     reference vec_dot within 2e-5 of sum |w * a| (float summation order
 *     differs; integer sums are exact, so one wrong weight, scale or offset
 *     lands far above that), and writes nothing outside its rows.
 * Then cm_matmul on a repacked weight (pool of 1 and 2 threads, row groups
 * that do not split evenly) against cm_matmul on the file layout, and
 * CELLM_REPACK=off: cm_repack_find answers NULL, cm_repack_ops_of still
 * answers for an id already handed out. The layout checks skip on CPUs (or
 * builds) without the AVX-512 VNNI kernels; the off switch is checked
 * everywhere. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/pool.h"
#include "base/rng.h"
#include "base/status.h"
#include "kernels/kernels.h"
#include "kernels/quants.h"
#include "kernels/repack.h"
#include "test.h"

static cm_rng rng;

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

/* The layout for `type`, or NULL with the reason in *why. */
static const cm_repack_ops *ops_for(int type, const char **why) {
    const char *k = cm_kernels_init(false);
    const cm_repack_ops *ops = cm_repack_find(type);
    if (!ops) *why = strcmp(k, "avx512-vnni") ? "no AVX-512 VNNI kernels on this CPU or in this build" : "no layout";
    return ops;
}

static size_t file_row_bytes(int type, int64_t n_cols) {
    const cm_type_traits *tr = cm_type_traits_ref(type);
    return (size_t)(n_cols / tr->block_elems) * tr->block_bytes;
}

/* n_rows rows of `type`, row_bytes apart. */
static void make_weights(int type, int64_t n_rows, int64_t n_cols, uint8_t *w, size_t row_bytes) {
    const cm_type_traits *tr = cm_type_traits_ref(type);
    float *x = xmalloc((size_t)n_cols * sizeof *x);
    for (int64_t r = 0; r < n_rows; r++) {
        const float amp = 0.01f + 2.0f * cm_rng_f32(&rng);
        for (int64_t k = 0; k < n_cols; k++) x[k] = amp * cm_rng_normal(&rng);
        uint8_t *row = w + (size_t)r * row_bytes;
        tr->from_float(x, row, n_cols);
        if (type == CM_TYPE_Q8_0 && r % 5 == 2) {
            cm_block_q8_0 *b = (cm_block_q8_0 *)row;
            for (int64_t i = 0; i < n_cols / CM_QK; i++)
                for (int j = 0; j < CM_QK; j++) b[i].qs[j] = (int8_t)(uint8_t)cm_rng_u64(&rng);
            b[0].qs[0] = -128;
        }
    }
    free(x);
}

/* n_tok q8_0 activation rows; every 7th block raw random bytes. */
static void make_act(int64_t n_tok, int64_t n_cols, uint8_t *act, size_t arb) {
    const cm_type_traits *q8 = cm_type_traits_ref(CM_TYPE_Q8_0);
    float *x = xmalloc((size_t)n_cols * sizeof *x);
    for (int64_t t = 0; t < n_tok; t++) {
        for (int64_t k = 0; k < n_cols; k++) x[k] = cm_rng_normal(&rng) * (t % 2 ? 3.0f : 0.5f);
        cm_block_q8_0 *b = (cm_block_q8_0 *)(act + (size_t)t * arb);
        q8->from_float(x, b, n_cols);
        for (int64_t i = t % 7; i < n_cols / CM_QK; i += 7)
            for (int j = 0; j < CM_QK; j++) b[i].qs[j] = (int8_t)(uint8_t)cm_rng_u64(&rng);
    }
    free(x);
}

static void check_shape(const cm_repack_ops *ops, int64_t n_rows, int64_t n_cols, int64_t n_tok) {
    const int type = ops->src_type;
    const cm_type_traits *tr = cm_type_traits_ref(type);
    const cm_type_traits *q8 = cm_type_traits_ref(CM_TYPE_Q8_0);
    const size_t rb = file_row_bytes(type, n_cols);
    const size_t arb = file_row_bytes(CM_TYPE_Q8_0, n_cols);
    uint8_t *w = xmalloc(rb * (size_t)n_rows);
    make_weights(type, n_rows, n_cols, w, rb);

    const size_t bytes = ops->bytes(n_rows, n_cols);
    CHECK(bytes == rb * (size_t)n_rows);
    uint8_t *p = xmalloc(bytes + 64);
    memset(p, 0xa5, bytes + 64);
    ops->pack(w, rb, n_rows, n_cols, p);
    int tail = 1;
    for (int i = 0; i < 64; i++) tail &= p[bytes + i] == 0xa5;
    CHECK_MSG(tail, "%s: pack wrote past bytes()", ops->name);

    uint8_t *back = xmalloc(rb);
    int same = 1;
    for (int64_t r = 0; r < n_rows; r++) {
        memset(back, 0x5a, rb);
        ops->unpack_row(p, n_cols, r, back);
        if (memcmp(back, w + (size_t)r * rb, rb) != 0) same = 0;
    }
    CHECK_MSG(same, "%s %lldx%lld: unpack_row(pack(x)) differs", ops->name, (long long)n_rows, (long long)n_cols);

    uint8_t *act = xmalloc(arb * (size_t)n_tok);
    make_act(n_tok, n_cols, act, arb);
    float *wf = xmalloc((size_t)n_cols * sizeof *wf), *af = xmalloc((size_t)n_cols * sizeof *af);
    float *ref = xmalloc((size_t)(n_rows * n_tok) * sizeof *ref), *tol = xmalloc((size_t)(n_rows * n_tok) * sizeof *tol);
    for (int64_t t = 0; t < n_tok; t++) {
        q8->to_float(act + (size_t)t * arb, af, n_cols);
        for (int64_t r = 0; r < n_rows; r++) {
            tr->to_float(w + (size_t)r * rb, wf, n_cols);
            double mag = 0;
            for (int64_t k = 0; k < n_cols; k++) mag += fabs((double)wf[k] * af[k]);
            tr->vec_dot((int)n_cols, &ref[t * n_rows + r], w + (size_t)r * rb, act + (size_t)t * arb);
            tol[t * n_rows + r] = (float)(2e-5 * mag + 1e-6);
        }
    }

    const int64_t ys = n_rows + 5;
    float *y = xmalloc((size_t)(ys * n_tok) * sizeof *y);
    for (int pass = 0; pass < 2; pass++) {
        const int64_t r0 = pass == 0 ? 0 : CM_REPACK_ROWS;
        const int64_t r1 = pass == 0 ? n_rows : 2 * CM_REPACK_ROWS;
        if (r1 > n_rows) break;
        for (int64_t i = 0; i < ys * n_tok; i++) y[i] = -12345.0f;
        ops->matmul(p, n_cols, r0, r1, act, arb, n_tok, y, ys);
        int bad = 0, outside = 0;
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t r = 0; r < ys; r++) {
                const float got = y[t * ys + r];
                if (r < r0 || r >= r1) {
                    outside += got != -12345.0f;
                    continue;
                }
                const float want = ref[t * n_rows + r];
                if (!(fabsf(got - want) <= tol[t * n_rows + r]) && bad++ < 3)
                    fprintf(stderr, "     %s %lldx%lld tokens %lld rows [%lld, %lld): y[t=%lld, r=%lld] = %g, want %g\n",
                            ops->name, (long long)n_rows, (long long)n_cols, (long long)n_tok, (long long)r0,
                            (long long)r1, (long long)t, (long long)r, got, want);
            }
        CHECK(bad == 0);
        CHECK(outside == 0);
    }
    free(y), free(tol), free(ref), free(af), free(wf), free(act), free(back), free(p), free(w);
}

static void check_type(int type) {
    const char *why = "";
    const cm_repack_ops *ops = ops_for(type, &why);
    if (!ops) {
        TEST_SKIP("%s", why);
        return;
    }
    CHECK(ops->src_type == type);
    CHECK(cm_repack_ops_of(ops->type) == ops);
    CHECK(!cm_type_traits_get(ops->type)); /* never a file type */
    static const struct {
        int64_t rows, cols;
    } shapes[] = {{16, 32}, {32, 256}, {48, 512}, {16, 4096}, {48, 4096}};
    static const int64_t toks[] = {1, 3, 8, 17, 64};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (size_t t = 0; t < sizeof toks / sizeof toks[0]; t++) {
            /* the biggest shape with the most tokens costs the most in the
             * reference loop: once is enough */
            if (shapes[s].cols == 4096 && shapes[s].rows == 48 && toks[t] > 17) continue;
            check_shape(ops, shapes[s].rows, shapes[s].cols, toks[t]);
        }
}

TEST(q4_0_layout) { check_type(CM_TYPE_Q4_0); }
TEST(q8_0_layout) { check_type(CM_TYPE_Q8_0); }

/* cm_matmul on the repacked copy equals cm_matmul on the file (the blocked
 * path for many tokens, the row dots for few). */
static void check_cm_matmul(int type, cm_pool *pool, int64_t n_rows, int64_t n_cols, int64_t n_tok) {
    const cm_repack_ops *ops = cm_repack_find(type);
    const size_t rb = file_row_bytes(type, n_cols);
    uint8_t *w = xmalloc(rb * (size_t)n_rows);
    make_weights(type, n_rows, n_cols, w, rb);
    uint8_t *p = xmalloc(ops->bytes(n_rows, n_cols));
    ops->pack(w, rb, n_rows, n_cols, p);
    float *x = xmalloc((size_t)(n_cols * n_tok) * sizeof *x);
    for (int64_t i = 0; i < n_cols * n_tok; i++) x[i] = cm_rng_normal(&rng);
    CHECK(cm_matmul_scratch_bytes(ops->type, n_cols, n_tok) == cm_matmul_scratch_bytes(type, n_cols, n_tok));
    void *scratch = xmalloc(cm_matmul_scratch_bytes(type, n_cols, n_tok));
    float *y0 = xmalloc((size_t)(n_rows * n_tok) * sizeof *y0), *y1 = xmalloc((size_t)(n_rows * n_tok) * sizeof *y1);
    for (int64_t i = 0; i < n_rows * n_tok; i++) y0[i] = y1[i] = NAN;
    cm_matmul(pool, type, w, rb, n_rows, n_cols, x, n_tok, y0, scratch);
    cm_matmul(pool, ops->type, p, rb, n_rows, n_cols, x, n_tok, y1, scratch);
    int bad = 0;
    for (int64_t i = 0; i < n_rows * n_tok; i++)
        if (!(fabsf(y0[i] - y1[i]) <= 1e-4f * (1.0f + fabsf(y0[i]))) && bad++ < 3)
            fprintf(stderr, "     %s %lldx%lld tokens %lld: y[%lld] = %g repacked, %g file\n", ops->name,
                    (long long)n_rows, (long long)n_cols, (long long)n_tok, (long long)i, y1[i], y0[i]);
    CHECK(bad == 0);
    free(y1), free(y0), free(scratch), free(x), free(p), free(w);
}

TEST(cm_matmul_repacked_equals_file) {
    const char *why = "";
    if (!ops_for(CM_TYPE_Q4_0, &why) || !ops_for(CM_TYPE_Q8_0, &why)) {
        TEST_SKIP("%s", why);
        return;
    }
    cm_pool *pool = NULL;
    CHECK_OK(cm_pool_create(2, &pool));
    const int types[] = {CM_TYPE_Q4_0, CM_TYPE_Q8_0};
    for (int i = 0; i < 2; i++) {
        /* 5 groups: 2 and 3 per thread */
        check_cm_matmul(types[i], NULL, 80, 512, 1);
        check_cm_matmul(types[i], pool, 80, 512, 1);
        check_cm_matmul(types[i], pool, 80, 512, 5);
        check_cm_matmul(types[i], pool, 16, 2048, 33);
        check_cm_matmul(types[i], pool, 48, 256, 64);
    }
    cm_pool_destroy(pool);
}

TEST(repack_off_switch) {
    cm_kernels_init(false);
    const cm_repack_ops *q4 = cm_repack_find(CM_TYPE_Q4_0);
    setenv("CELLM_REPACK", "off", 1);
    CHECK(cm_repack_find(CM_TYPE_Q4_0) == NULL);
    CHECK(cm_repack_find(CM_TYPE_Q8_0) == NULL);
    CHECK(cm_repack_find(CM_TYPE_Q4_K) == NULL);
    /* an id already handed out stays computable */
    if (q4) CHECK(cm_repack_ops_of(q4->type) == q4);
    unsetenv("CELLM_REPACK");
    CHECK(cm_repack_find(CM_TYPE_Q4_0) == q4);
    /* not repacked ids, and types without a layout */
    CHECK(cm_repack_ops_of(CM_TYPE_Q4_0) == NULL);
    CHECK(cm_repack_ops_of(-1) == NULL);
    CHECK(cm_repack_ops_of(1000) == NULL);
    CHECK(cm_repack_find(CM_TYPE_F32) == NULL);
    CHECK(cm_repack_find(CM_TYPE_Q4_1) == NULL);
}

int main(void) {
    cm_rng_init(&rng, 20261123);
    unsetenv("CELLM_REPACK");
    RUN(q4_0_layout);
    RUN(q8_0_layout);
    RUN(cm_matmul_repacked_equals_file);
    RUN(repack_off_switch);
    return test_summary();
}
