/* test_gguf.c - the GGUF reader and writer: a round trip through the writer
 * with every kv type and several tensor types; files encoded by hand here
 * (independently of the writer) for every scalar type and for each kind of
 * malformed input; truncation and byte flips over a whole valid file; the
 * real vocabulary files of the shared test data when present. */
#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/status.h"
#include "gguf/gguf.h"
#include "gguf/gguf_internal.h"
#include "gguf/types.h"
#include "test.h"

/* ---- a hand encoder for test files ---- */

struct gb {
    uint8_t *p;
    size_t n, cap;
};

static void gb_put(struct gb *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void gb_u8(struct gb *b, uint8_t v) { gb_put(b, &v, 1); }
static void gb_u16(struct gb *b, uint16_t v) { gb_u8(b, (uint8_t)v), gb_u8(b, (uint8_t)(v >> 8)); }
static void gb_u32(struct gb *b, uint32_t v) { gb_u16(b, (uint16_t)v), gb_u16(b, (uint16_t)(v >> 16)); }
static void gb_u64(struct gb *b, uint64_t v) { gb_u32(b, (uint32_t)v), gb_u32(b, (uint32_t)(v >> 32)); }
static void gb_str(struct gb *b, const char *s) { gb_u64(b, strlen(s)), gb_put(b, s, strlen(s)); }
static void gb_hdr(struct gb *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    gb_put(b, "GGUF", 4), gb_u32(b, version), gb_u64(b, n_tensors), gb_u64(b, n_kv);
}
static void gb_key(struct gb *b, const char *key, uint32_t type) { gb_str(b, key), gb_u32(b, type); }
static void gb_tinfo(struct gb *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                     uint64_t offset) {
    gb_str(b, name), gb_u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++) gb_u64(b, ne[d]);
    gb_u32(b, type), gb_u64(b, offset);
}
static void gb_pad(struct gb *b, size_t al) {
    while (b->n % al) gb_u8(b, 0);
}
static void gb_zeros(struct gb *b, size_t n) {
    while (n--) gb_u8(b, 0);
}

/* Opens bytes from an exact-size heap copy, so ASan sees any overread. The
 * copy must outlive the cm_gguf; tests hold one file open at a time, so it
 * is kept in g_copy until close_bytes. */
static void *g_copy;

static int open_bytes(const void *p, size_t n, cm_gguf **g) {
    free(g_copy);
    g_copy = malloc(n ? n : 1);
    if (n) memcpy(g_copy, p, n);
    cm_error_clear();
    return cm_gguf_open_memory(g_copy, n, "t.gguf", g);
}

static void close_bytes(cm_gguf *g) {
    cm_gguf_close(g);
    free(g_copy);
    g_copy = NULL;
}

static int open_fails_with(struct gb *b, int want, const char *needle1, const char *needle2) {
    cm_gguf *g = NULL;
    int rc = open_bytes(b->p, b->n, &g);
    int ok = rc == want && !g;
    const char *msg = cm_last_error(rc);
    if (needle1 && !strstr(msg, needle1)) ok = 0;
    if (needle2 && !strstr(msg, needle2)) ok = 0;
    if (!ok) fprintf(stderr, "  got rc %d (want %d): %s\n", rc, want, msg);
    close_bytes(g);
    free(b->p);
    memset(b, 0, sizeof *b);
    return ok;
}

/* Reads everything an opened file offers; returns a checksum so nothing is
 * optimized away and ASan sees every byte read. */
static uint64_t touch_all(const cm_gguf *g) {
    uint64_t sum = cm_gguf_version(g) + cm_gguf_alignment(g) + cm_gguf_file_bytes(g);
    for (int64_t i = 0; i < cm_gguf_n_kv(g); i++) {
        const char *key = cm_gguf_kv_key(g, i);
        sum += strlen(key) + (uint64_t)cm_gguf_kv_type(g, i);
        if (cm_gguf_find_kv(g, key) < 0) sum += 1000;
        uint32_t u;
        int64_t v;
        float f;
        bool b;
        const char *s;
        size_t len;
        int et;
        uint64_t n;
        if (!cm_gguf_get_u32(g, key, &u)) sum += u;
        if (!cm_gguf_get_i64(g, key, &v)) sum += (uint64_t)v;
        if (!cm_gguf_get_f32(g, key, &f)) sum += f == f;
        if (!cm_gguf_get_bool(g, key, &b)) sum += b;
        if (!cm_gguf_get_str(g, key, &s, &len)) sum += len + (uint8_t)s[len];
        if (!cm_gguf_get_arr_info(g, key, &et, &n)) {
            sum += n;
            if (et == CM_GGUF_STRING) {
                for (uint64_t j = 0; j < n; j++)
                    if (!cm_gguf_get_arr_str(g, key, j, &s, &len)) sum += len + (uint8_t)s[len] + (len ? (uint8_t)s[0] : 0);
            } else {
                const void *d;
                if (!cm_gguf_get_arr_data(g, key, &d, &n)) {
                    size_t bytes = (size_t)n * cm_gguf_type_size(et);
                    for (size_t k = 0; k < bytes; k++) sum += ((const uint8_t *)d)[k];
                }
            }
        }
    }
    for (int64_t i = 0; i < cm_gguf_n_tensors(g); i++) {
        const cm_gguf_tensor *t = cm_gguf_tensor_at(g, i);
        sum += strlen(t->name) + (uint64_t)t->type + t->n_bytes;
        if (cm_gguf_find_tensor(g, t->name) != t) sum += 1000;
        if (t->n_bytes) sum += ((const uint8_t *)t->data)[0] + ((const uint8_t *)t->data)[t->n_bytes - 1];
    }
    return sum;
}

/* ---- round trip through the writer ---- */

static uint8_t pattern(int64_t i, uint64_t j) { return (uint8_t)(i * 31 + j * 7 + (j >> 8)); }

static int fill_pattern(void *user, int64_t i, const char *name, void *buf, uint64_t n_bytes) {
    int *calls = user;
    (*calls)++;
    for (uint64_t j = 0; j < n_bytes; j++) ((uint8_t *)buf)[j] = pattern(i, j);
    return CM_OK;
}

static int fill_fail(void *user, int64_t i, const char *name, void *buf, uint64_t n_bytes) {
    if (i == 1) return cm_errorf(CM_ECANCELED, "fill of %s canceled", name);
    memset(buf, 0, n_bytes);
    return CM_OK;
}

static char g_path[512];
static const char *tmp_path(const char *name) {
    snprintf(g_path, sizeof g_path, "%s/test_gguf_%d_%s", test_tmpdir(), (int)getpid(), name);
    return g_path;
}

static const struct {
    const char *name;
    int type, n_dims;
    int64_t ne[4];
} g_tensors[] = {
    {"token_embd.weight", CM_TYPE_F32, 2, {8, 3, 1, 1}},
    {"blk.0.attn_norm.weight", CM_TYPE_F16, 1, {16, 1, 1, 1}},
    {"blk.0.ffn_up.weight", CM_TYPE_Q4_0, 2, {64, 2, 1, 1}},
    {"blk.0.ffn_down.weight", CM_TYPE_Q8_0, 3, {32, 1, 2, 1}},
    {"blk.0.attn_q.weight", CM_TYPE_Q4_K, 2, {256, 2, 1, 1}},
    {"blk.0.attn_k.weight", CM_TYPE_Q6_K, 2, {256, 1, 1, 1}},
    {"output.weight", CM_TYPE_BF16, 4, {2, 3, 2, 2}},
};
#define N_TENSORS (int)(sizeof g_tensors / sizeof g_tensors[0])

static const char *const g_strs[] = {"hello", "", "with\0nul", "\xe2\x96\x81world", "last"};
static const size_t g_str_lens[] = {5, 0, 8, 8, 4};
static const int32_t g_i32s[] = {-5, 0, 7, INT32_MAX, INT32_MIN};
static const float g_f32s[] = {0.5f, -1.25f, 3e38f};
static const uint8_t g_bools[] = {1, 0, 1};
static const int8_t g_i8s[] = {-128, 127};
static const uint16_t g_u16s[] = {65535, 1, 2};
static const int16_t g_i16s[] = {-32768, 32767};
static const uint32_t g_u32s[] = {4000000000u};
static const uint64_t g_u64s[] = {UINT64_MAX, 42};
static const int64_t g_i64s[] = {INT64_MIN, -1};
static const double g_f64s[] = {3.141592653589793, -0.0};
static const uint8_t g_u8s[] = {0, 255, 9};

/* Writes the round-trip file at `path` with the given alignment (0: default). */
static int write_sample(const char *path, uint32_t alignment, int *fill_calls) {
    cm_gguf_writer *w;
    int rc = cm_gguf_writer_create(&w);
    if (rc) return rc;
    if (alignment) rc = cm_gguf_writer_set_u32(w, "general.alignment", alignment);
    if (!rc) rc = cm_gguf_writer_set_str(w, "general.architecture", "llama");
    if (!rc) rc = cm_gguf_writer_set_u32(w, "test.u32", 4000000000u);
    if (!rc) rc = cm_gguf_writer_set_i32(w, "test.i32", -123456);
    if (!rc) rc = cm_gguf_writer_set_u64(w, "test.u64", 0x123456789abcdefull);
    if (!rc) rc = cm_gguf_writer_set_f32(w, "test.f32", 1e-5f);
    if (!rc) rc = cm_gguf_writer_set_bool(w, "test.bool", true);
    if (!rc) rc = cm_gguf_writer_set_str(w, "test.str", "caf\xc3\xa9 \"quoted\"");
    if (!rc) rc = cm_gguf_writer_set_str(w, "test.empty", "");
    if (!rc) rc = cm_gguf_writer_set_arr_str(w, "test.arr_str", g_strs, g_str_lens, 5);
    if (!rc) rc = cm_gguf_writer_set_arr_str(w, "test.arr_str_empty", NULL, NULL, 0);
    if (!rc) rc = cm_gguf_writer_set_arr(w, "test.arr_i32", CM_GGUF_INT32, g_i32s, 5);
    if (!rc) rc = cm_gguf_writer_set_arr(w, "test.arr_f32", CM_GGUF_FLOAT32, g_f32s, 3);
    if (!rc) rc = cm_gguf_writer_set_arr(w, "test.arr_bool", CM_GGUF_BOOL, g_bools, 3);
    if (!rc) rc = cm_gguf_writer_set_arr(w, "test.arr_u8", CM_GGUF_UINT8, g_u8s, 3);
    if (!rc) rc = cm_gguf_writer_set_arr(w, "test.arr_i8", CM_GGUF_INT8, g_i8s, 2);
    if (!rc) rc = cm_gguf_writer_set_arr(w, "test.arr_u16", CM_GGUF_UINT16, g_u16s, 3);
    if (!rc) rc = cm_gguf_writer_set_arr(w, "test.arr_i16", CM_GGUF_INT16, g_i16s, 2);
    if (!rc) rc = cm_gguf_writer_set_arr(w, "test.arr_u32", CM_GGUF_UINT32, g_u32s, 1);
    if (!rc) rc = cm_gguf_writer_set_arr(w, "test.arr_u64", CM_GGUF_UINT64, g_u64s, 2);
    if (!rc) rc = cm_gguf_writer_set_arr(w, "test.arr_i64", CM_GGUF_INT64, g_i64s, 2);
    if (!rc) rc = cm_gguf_writer_set_arr(w, "test.arr_f64", CM_GGUF_FLOAT64, g_f64s, 2);
    if (!rc) rc = cm_gguf_writer_set_arr(w, "test.arr_empty", CM_GGUF_FLOAT32, NULL, 0);
    /* setting a key again replaces its value and keeps its position */
    if (!rc) rc = cm_gguf_writer_set_u32(w, "test.u32", 3000000000u);
    for (int i = 0; i < N_TENSORS && !rc; i++)
        rc = cm_gguf_writer_add_tensor(w, g_tensors[i].name, g_tensors[i].type, g_tensors[i].n_dims, g_tensors[i].ne);
    if (!rc) rc = cm_gguf_writer_write(w, path, fill_pattern, fill_calls);
    cm_gguf_writer_destroy(w);
    return rc;
}

static const char *const g_keys_in_order[] = {
    "general.architecture", "test.u32", "test.i32", "test.u64", "test.f32", "test.bool", "test.str",
    "test.empty", "test.arr_str", "test.arr_str_empty", "test.arr_i32", "test.arr_f32", "test.arr_bool",
    "test.arr_u8", "test.arr_i8", "test.arr_u16", "test.arr_i16", "test.arr_u32", "test.arr_u64",
    "test.arr_i64", "test.arr_f64", "test.arr_empty",
};
#define N_KEYS (int)(sizeof g_keys_in_order / sizeof g_keys_in_order[0])

static void check_arr_num(const cm_gguf *g, const char *key, int want_type, const void *want, uint64_t want_n) {
    int et = -1;
    uint64_t n = 99;
    const void *d = NULL;
    CHECK_OK(cm_gguf_get_arr_info(g, key, &et, &n));
    CHECK(et == want_type && n == want_n);
    CHECK_OK(cm_gguf_get_arr_data(g, key, &d, &n));
    CHECK(n == want_n);
    CHECK_MSG(want_n == 0 || !memcmp(d, want, (size_t)want_n * cm_gguf_type_size(want_type)), "array %s", key);
}

/* Compares an opened sample file against what write_sample wrote. */
static void check_sample(const cm_gguf *g, uint32_t alignment, int kv_offset) {
    CHECK(cm_gguf_version(g) == 3);
    CHECK(cm_gguf_alignment(g) == alignment);
    CHECK(cm_gguf_n_kv(g) == N_KEYS + kv_offset);
    for (int i = 0; i < N_KEYS && i + kv_offset < cm_gguf_n_kv(g); i++)
        CHECK_MSG(!strcmp(cm_gguf_kv_key(g, i + kv_offset), g_keys_in_order[i]), "key %d is %s", i,
                  cm_gguf_kv_key(g, i + kv_offset));
    uint32_t u;
    int64_t v;
    float f;
    bool b;
    const char *s;
    size_t len;
    CHECK_OK(cm_gguf_get_u32(g, "test.u32", &u));
    CHECK(u == 3000000000u);
    CHECK(cm_gguf_kv_type(g, cm_gguf_find_kv(g, "test.u32")) == CM_GGUF_UINT32);
    CHECK_OK(cm_gguf_get_i64(g, "test.i32", &v));
    CHECK(v == -123456);
    CHECK_OK(cm_gguf_get_i64(g, "test.u64", &v));
    CHECK(v == 0x123456789abcdefll);
    CHECK(cm_gguf_get_u32(g, "test.u64", &u) == CM_EFORMAT); /* does not fit */
    CHECK_OK(cm_gguf_get_f32(g, "test.f32", &f));
    CHECK(f == 1e-5f);
    CHECK_OK(cm_gguf_get_bool(g, "test.bool", &b));
    CHECK(b == true);
    CHECK_OK(cm_gguf_get_str(g, "test.str", &s, &len));
    CHECK(len == 14 && !strcmp(s, "caf\xc3\xa9 \"quoted\""));
    CHECK_OK(cm_gguf_get_str(g, "test.empty", &s, NULL));
    CHECK(s && s[0] == 0);
    CHECK_OK(cm_gguf_get_str(g, "general.architecture", &s, NULL));
    CHECK(!strcmp(s, "llama"));

    int et;
    uint64_t n;
    CHECK_OK(cm_gguf_get_arr_info(g, "test.arr_str", &et, &n));
    CHECK(et == CM_GGUF_STRING && n == 5);
    for (uint64_t i = 0; i < 5 && i < n; i++) {
        CHECK_OK(cm_gguf_get_arr_str(g, "test.arr_str", i, &s, &len));
        CHECK_MSG(len == g_str_lens[i] && !memcmp(s, g_strs[i], len) && s[len] == 0, "string %d", (int)i);
    }
    CHECK(cm_gguf_get_arr_str(g, "test.arr_str", 5, &s, &len) == CM_ERANGE);
    CHECK_OK(cm_gguf_get_arr_info(g, "test.arr_str_empty", &et, &n));
    CHECK(et == CM_GGUF_STRING && n == 0);
    check_arr_num(g, "test.arr_i32", CM_GGUF_INT32, g_i32s, 5);
    check_arr_num(g, "test.arr_f32", CM_GGUF_FLOAT32, g_f32s, 3);
    check_arr_num(g, "test.arr_bool", CM_GGUF_BOOL, g_bools, 3);
    check_arr_num(g, "test.arr_u8", CM_GGUF_UINT8, g_u8s, 3);
    check_arr_num(g, "test.arr_i8", CM_GGUF_INT8, g_i8s, 2);
    check_arr_num(g, "test.arr_u16", CM_GGUF_UINT16, g_u16s, 3);
    check_arr_num(g, "test.arr_i16", CM_GGUF_INT16, g_i16s, 2);
    check_arr_num(g, "test.arr_u32", CM_GGUF_UINT32, g_u32s, 1);
    check_arr_num(g, "test.arr_u64", CM_GGUF_UINT64, g_u64s, 2);
    check_arr_num(g, "test.arr_i64", CM_GGUF_INT64, g_i64s, 2);
    check_arr_num(g, "test.arr_f64", CM_GGUF_FLOAT64, g_f64s, 2);
    check_arr_num(g, "test.arr_empty", CM_GGUF_FLOAT32, NULL, 0);

    CHECK(cm_gguf_n_tensors(g) == N_TENSORS);
    uint64_t expect_off = 0;
    for (int i = 0; i < N_TENSORS && i < cm_gguf_n_tensors(g); i++) {
        const cm_gguf_tensor *t = cm_gguf_tensor_at(g, i);
        CHECK(!strcmp(t->name, g_tensors[i].name));
        CHECK(cm_gguf_find_tensor(g, g_tensors[i].name) == t);
        CHECK(t->type == g_tensors[i].type && t->n_dims == g_tensors[i].n_dims);
        int64_t n_elems = 1;
        for (int d = 0; d < 4; d++) {
            CHECK(t->ne[d] == g_tensors[i].ne[d]);
            n_elems *= t->ne[d];
        }
        uint64_t want_bytes = (uint64_t)n_elems / (uint64_t)cm_type_block_elems(t->type) * cm_type_block_bytes(t->type);
        CHECK_MSG(t->n_bytes == want_bytes, "%s: %llu bytes", t->name, (unsigned long long)t->n_bytes);
        /* llama.cpp's layout: each tensor exactly where the previous ones end, aligned */
        CHECK_MSG(t->offset == expect_off, "%s at %llu, expected %llu", t->name, (unsigned long long)t->offset,
                  (unsigned long long)expect_off);
        expect_off = (t->offset + t->n_bytes + alignment - 1) / alignment * alignment;
        CHECK((cm_gguf_data_offset(g) + t->offset) % alignment == 0);
        int bad = 0;
        for (uint64_t j = 0; j < t->n_bytes; j++) bad += ((const uint8_t *)t->data)[j] != pattern(i, j);
        CHECK_MSG(bad == 0, "%s: %d bytes differ", t->name, bad);
    }
    CHECK(cm_gguf_data_offset(g) + expect_off == cm_gguf_file_bytes(g));
    CHECK(cm_gguf_find_tensor(g, "nope") == NULL);
    CHECK(cm_gguf_find_kv(g, "nope") == -1);
}

static uint8_t *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(*n);
    if (fread(p, 1, *n, f) != *n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    return p;
}

static bool file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

TEST(roundtrip_every_kv_type_and_tensors) {
    const char *path = tmp_path("rt.gguf");
    int calls = 0;
    CHECK_OK(write_sample(path, 0, &calls));
    CHECK(calls == N_TENSORS);
    cm_gguf *g = NULL;
    CHECK_OK(cm_gguf_open(path, &g));
    if (!g) return;
    CHECK(!strcmp(cm_gguf_path(g), path));
    check_sample(g, 32, 0);
    cm_gguf_close(g);
    unlink(path);
}

TEST(roundtrip_alignment_64) {
    const char *path = tmp_path("al.gguf");
    int calls = 0;
    CHECK_OK(write_sample(path, 64, &calls));
    cm_gguf *g = NULL;
    CHECK_OK(cm_gguf_open(path, &g));
    if (!g) return;
    CHECK(!strcmp(cm_gguf_kv_key(g, 0), "general.alignment"));
    check_sample(g, 64, 1);
    cm_gguf_close(g);
    unlink(path);
}

TEST(copy_kv_reproduces_metadata) {
    char src[512], dst[512];
    snprintf(src, sizeof src, "%s", tmp_path("src.gguf"));
    snprintf(dst, sizeof dst, "%s", tmp_path("dst.gguf"));
    int calls = 0;
    CHECK_OK(write_sample(src, 64, &calls));
    cm_gguf *g = NULL, *h = NULL;
    CHECK_OK(cm_gguf_open(src, &g));
    if (!g) return;
    cm_gguf_writer *w;
    CHECK_OK(cm_gguf_writer_create(&w));
    for (int64_t i = 0; i < cm_gguf_n_kv(g); i++) CHECK_OK(cm_gguf_writer_copy_kv(w, g, i));
    for (int i = 0; i < N_TENSORS; i++)
        CHECK_OK(cm_gguf_writer_add_tensor(w, g_tensors[i].name, g_tensors[i].type, g_tensors[i].n_dims,
                                           g_tensors[i].ne));
    CHECK_OK(cm_gguf_writer_write(w, dst, fill_pattern, &calls));
    cm_gguf_writer_destroy(w);
    CHECK_OK(cm_gguf_open(dst, &h));
    if (h) {
        check_sample(h, 64, 1);
        /* byte-identical: same kvs in the same order, same tensors, same layout */
        CHECK(cm_gguf_file_bytes(g) == cm_gguf_file_bytes(h));
        uint8_t *a = malloc(cm_gguf_file_bytes(g)), *b = malloc(cm_gguf_file_bytes(h));
        FILE *fa = fopen(src, "rb"), *fb = fopen(dst, "rb");
        CHECK(fa && fb && fread(a, 1, cm_gguf_file_bytes(g), fa) == cm_gguf_file_bytes(g) &&
              fread(b, 1, cm_gguf_file_bytes(h), fb) == cm_gguf_file_bytes(h) &&
              !memcmp(a, b, cm_gguf_file_bytes(g)));
        if (fa) fclose(fa);
        if (fb) fclose(fb);
        free(a), free(b);
        cm_gguf_close(h);
    }
    cm_gguf_close(g);
    unlink(src), unlink(dst);
}

/* The header, metadata and tensor infos ggml's own gguf writer produces for
 * the same content (gguf_write_to_file with only_meta, a reference taken once
 * from ggml): the writer must match it byte for byte, padding included. */
static const char g_ggml_meta_hex[] =
    "474755460300000002000000000000000400000000000000140000000000000067656e6572616c2e6172636869746563"
    "747572650800000005000000000000006c6c616d6111000000000000006c6c616d612e626c6f636b5f636f756e740400"
    "000002000000010000000000000061090000000600000002000000000000000000c03f000000c0010000000000000074"
    "090000000800000002000000000000000100000000000000780200000000000000797a01000000000000007702000000"
    "040000000000000002000000000000000000000000000000000000000100000000000000710100000020000000000000"
    "00080000002000000000000000000000";

static int fill_11(void *user, int64_t i, const char *name, void *buf, uint64_t n_bytes) {
    memset(buf, 0x11, n_bytes);
    return CM_OK;
}

TEST(writer_bytes_match_ggml) {
    const char *path = tmp_path("golden.gguf");
    cm_gguf_writer *w;
    CHECK_OK(cm_gguf_writer_create(&w));
    CHECK_OK(cm_gguf_writer_set_str(w, "general.architecture", "llama"));
    CHECK_OK(cm_gguf_writer_set_u32(w, "llama.block_count", 2));
    const float arr[] = {1.5f, -2.0f};
    CHECK_OK(cm_gguf_writer_set_arr(w, "a", CM_GGUF_FLOAT32, arr, 2));
    const char *const strs[] = {"x", "yz"};
    const size_t lens[] = {1, 2};
    CHECK_OK(cm_gguf_writer_set_arr_str(w, "t", strs, lens, 2));
    const int64_t ne_w[2] = {4, 2}, ne_q[1] = {32};
    CHECK_OK(cm_gguf_writer_add_tensor(w, "w", CM_TYPE_F32, 2, ne_w));
    CHECK_OK(cm_gguf_writer_add_tensor(w, "q", CM_TYPE_Q8_0, 1, ne_q));
    CHECK_OK(cm_gguf_writer_write(w, path, fill_11, NULL));
    cm_gguf_writer_destroy(w);
    size_t n = 0;
    uint8_t *file = read_file(path, &n);
    size_t n_meta = sizeof g_ggml_meta_hex / 2;
    /* meta (256) | w: 32 bytes | q: 34 bytes | zero padding to 352 */
    CHECK(file && n == n_meta + 32 + 34 + 30);
    if (!file || n < n_meta) return;
    int bad_meta = 0, bad_data = 0;
    for (size_t i = 0; i < n_meta; i++) {
        unsigned v;
        sscanf(g_ggml_meta_hex + 2 * i, "%2x", &v);
        bad_meta += file[i] != v;
    }
    for (size_t i = n_meta; i < n; i++) bad_data += file[i] != (i < n_meta + 66 ? 0x11 : 0);
    CHECK_MSG(bad_meta == 0, "%d metadata bytes differ from ggml's", bad_meta);
    CHECK(bad_data == 0);
    free(file);
    unlink(path);
}

TEST(writer_failure_leaves_no_file) {
    const char *path = tmp_path("fail.gguf");
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    cm_gguf_writer *w;
    CHECK_OK(cm_gguf_writer_create(&w));
    for (int i = 0; i < 3; i++)
        CHECK_OK(cm_gguf_writer_add_tensor(w, g_tensors[i].name, g_tensors[i].type, g_tensors[i].n_dims,
                                           g_tensors[i].ne));
    CHECK(cm_gguf_writer_write(w, path, fill_fail, NULL) == CM_ECANCELED);
    CHECK(!file_exists(path) && !file_exists(tmp));
    /* a directory that does not exist */
    CHECK(cm_gguf_writer_write(w, "/nonexistent-dir/x.gguf", fill_fail, NULL) == CM_EIO);
    cm_gguf_writer_destroy(w);
}

/* Write errors (a full disk, here a file size limit) and a failed rename
 * report CM_EIO and leave neither PATH nor PATH.tmp behind. */
TEST(writer_io_errors_leave_no_file) {
    const char *path = tmp_path("efbig.gguf");
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    struct rlimit old;
    getrlimit(RLIMIT_FSIZE, &old);
    struct rlimit lim = {200, old.rlim_max};
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    int calls = 0, rc = CM_OK;
    if (setrlimit(RLIMIT_FSIZE, &lim) == 0) {
        rc = write_sample(path, 0, &calls);
        setrlimit(RLIMIT_FSIZE, &old);
        CHECK(rc == CM_EIO);
        CHECK(strstr(cm_last_error(rc), "write failed"));
        CHECK(!file_exists(path) && !file_exists(tmp));
    }
    signal(SIGXFSZ, prev);

    /* PATH is a directory: the rename fails */
    const char *dir = tmp_path("isdir.gguf");
    snprintf(tmp, sizeof tmp, "%s.tmp", dir);
    CHECK(mkdir(dir, 0700) == 0);
    CHECK(write_sample(dir, 0, &calls) == CM_EIO);
    CHECK(strstr(cm_last_error(CM_EIO), "rename"));
    CHECK(!file_exists(tmp));
    rmdir(dir);
}

TEST(writer_rejects_bad_input) {
    cm_gguf_writer *w;
    CHECK_OK(cm_gguf_writer_create(&w));
    int64_t ne[4] = {33, 2, 1, 1};
    CHECK(cm_gguf_writer_add_tensor(w, "a", CM_TYPE_Q4_0, 2, ne) == CM_EINVAL); /* 33 % 32 */
    CHECK(strstr(cm_last_error(CM_EINVAL), "multiple"));
    ne[0] = 32;
    CHECK(cm_gguf_writer_add_tensor(w, "a", 4, 2, ne) == CM_EINVAL);            /* unknown type */
    CHECK(cm_gguf_writer_add_tensor(w, "a", CM_TYPE_F32, 0, ne) == CM_EINVAL);  /* n_dims 0 */
    CHECK(cm_gguf_writer_add_tensor(w, "a", CM_TYPE_F32, 5, ne) == CM_EINVAL);  /* n_dims 5 */
    ne[1] = 0;
    CHECK(cm_gguf_writer_add_tensor(w, "a", CM_TYPE_F32, 2, ne) == CM_EINVAL);  /* zero dim */
    ne[1] = 2;
    CHECK_OK(cm_gguf_writer_add_tensor(w, "a", CM_TYPE_F32, 2, ne));
    CHECK(cm_gguf_writer_add_tensor(w, "a", CM_TYPE_F32, 2, ne) == CM_EINVAL);  /* duplicate */
    char longname[80];
    memset(longname, 'x', 64);
    longname[64] = 0;
    CHECK(cm_gguf_writer_add_tensor(w, longname, CM_TYPE_F32, 2, ne) == CM_EINVAL);
    CHECK(cm_gguf_writer_set_u32(w, "general.alignment", 48) == CM_EINVAL);
    CHECK(cm_gguf_writer_set_u32(w, "general.alignment", 0) == CM_EINVAL);
    CHECK(cm_gguf_writer_set_u64(w, "general.alignment", 64) == CM_EINVAL);
    CHECK(cm_gguf_writer_set_str(w, "general.alignment", "64") == CM_EINVAL);
    CHECK(cm_gguf_writer_set_arr(w, "x", CM_GGUF_STRING, NULL, 0) == CM_EINVAL);
    CHECK(cm_gguf_writer_set_arr(w, "x", CM_GGUF_ARRAY, NULL, 0) == CM_EINVAL);
    CHECK(cm_gguf_writer_set_u32(w, "", 1) == CM_EINVAL);
    cm_gguf_writer_destroy(w);
}

/* ---- hand-encoded files ---- */

TEST(every_scalar_type_and_getter_rules) {
    struct gb b = {0};
    gb_hdr(&b, 2, 0, 15);
    gb_key(&b, "u8", CM_GGUF_UINT8), gb_u8(&b, 200);
    gb_key(&b, "i8", CM_GGUF_INT8), gb_u8(&b, 0x80); /* -128 */
    gb_key(&b, "u16", CM_GGUF_UINT16), gb_u16(&b, 65535);
    gb_key(&b, "i16", CM_GGUF_INT16), gb_u16(&b, 0xfffe); /* -2 */
    gb_key(&b, "u32", CM_GGUF_UINT32), gb_u32(&b, 4294967295u);
    gb_key(&b, "i32", CM_GGUF_INT32), gb_u32(&b, 0xffffffffu); /* -1 */
    gb_key(&b, "f32", CM_GGUF_FLOAT32), gb_u32(&b, 0x3fc00000u); /* 1.5 */
    gb_key(&b, "bool", CM_GGUF_BOOL), gb_u8(&b, 1);
    gb_key(&b, "str", CM_GGUF_STRING), gb_str(&b, "abc");
    gb_key(&b, "u64", CM_GGUF_UINT64), gb_u64(&b, UINT64_MAX);
    gb_key(&b, "i64", CM_GGUF_INT64), gb_u64(&b, (uint64_t)INT64_MIN);
    gb_key(&b, "f64", CM_GGUF_FLOAT64), gb_u64(&b, 0xc004000000000000ull); /* -2.5 */
    gb_key(&b, "small_u64", CM_GGUF_UINT64), gb_u64(&b, 7);
    gb_key(&b, "big_f64", CM_GGUF_FLOAT64), gb_u64(&b, 0x7e37e43c8800759cull); /* 1e300 */
    gb_key(&b, "arr", CM_GGUF_ARRAY), gb_u32(&b, CM_GGUF_UINT16), gb_u64(&b, 2), gb_u16(&b, 1), gb_u16(&b, 2);
    cm_gguf *g = NULL;
    CHECK_OK(open_bytes(b.p, b.n, &g));
    free(b.p);
    if (!g) return;
    CHECK(cm_gguf_version(g) == 2 && cm_gguf_n_kv(g) == 15 && cm_gguf_n_tensors(g) == 0);
    uint32_t u;
    int64_t v;
    float f;
    bool bo;
    const char *s;
    size_t len;
    CHECK(!cm_gguf_get_u32(g, "u8", &u) && u == 200);
    CHECK(!cm_gguf_get_i64(g, "i8", &v) && v == -128);
    CHECK(cm_gguf_get_u32(g, "i8", &u) == CM_EFORMAT); /* negative */
    CHECK(strstr(cm_last_error(CM_EFORMAT), "'i8'") && strstr(cm_last_error(CM_EFORMAT), "u32"));
    CHECK(!cm_gguf_get_u32(g, "u16", &u) && u == 65535);
    CHECK(!cm_gguf_get_i64(g, "i16", &v) && v == -2);
    CHECK(!cm_gguf_get_u32(g, "u32", &u) && u == 4294967295u);
    CHECK(!cm_gguf_get_i64(g, "u32", &v) && v == 4294967295ll);
    CHECK(!cm_gguf_get_i64(g, "i32", &v) && v == -1);
    CHECK(!cm_gguf_get_f32(g, "f32", &f) && f == 1.5f);
    CHECK(!cm_gguf_get_f32(g, "f64", &f) && f == -2.5f);
    CHECK(!cm_gguf_get_bool(g, "bool", &bo) && bo);
    CHECK(cm_gguf_get_f32(g, "big_f64", &f) == CM_EFORMAT); /* beyond FLT_MAX */
    CHECK(!cm_gguf_get_str(g, "str", &s, &len) && len == 3 && !strcmp(s, "abc"));
    CHECK(cm_gguf_get_i64(g, "u64", &v) == CM_EFORMAT); /* > INT64_MAX */
    CHECK(!cm_gguf_get_i64(g, "i64", &v) && v == INT64_MIN);
    CHECK(!cm_gguf_get_u32(g, "small_u64", &u) && u == 7);
    /* type mismatches name key and both types */
    CHECK(cm_gguf_get_f32(g, "u32", &f) == CM_EFORMAT);
    CHECK(strstr(cm_last_error(CM_EFORMAT), "'u32'") && strstr(cm_last_error(CM_EFORMAT), "type u32") &&
          strstr(cm_last_error(CM_EFORMAT), "expected f32"));
    CHECK(cm_gguf_get_u32(g, "str", &u) == CM_EFORMAT);
    CHECK(strstr(cm_last_error(CM_EFORMAT), "type string"));
    CHECK(cm_gguf_get_u32(g, "f32", &u) == CM_EFORMAT);
    CHECK(cm_gguf_get_u32(g, "bool", &u) == CM_EFORMAT);
    CHECK(cm_gguf_get_bool(g, "u8", &bo) == CM_EFORMAT);
    CHECK(cm_gguf_get_str(g, "arr", &s, &len) == CM_EFORMAT);
    CHECK(strstr(cm_last_error(CM_EFORMAT), "array of u16"));
    CHECK(cm_gguf_get_arr_info(g, "str", NULL, NULL) == CM_EFORMAT);
    CHECK(cm_gguf_get_arr_str(g, "arr", 0, &s, &len) == CM_EFORMAT);
    CHECK(cm_gguf_get_u32(g, "missing", &u) == CM_ENOTFOUND);
    CHECK(cm_gguf_get_str(g, "missing", &s, &len) == CM_ENOTFOUND);
    close_bytes(g);
}

/* A valid one-tensor file, with fields the malformed cases below vary. */
struct spec {
    uint32_t version, ttype, n_dims;
    uint64_t ne[5], offset, n_tensors_hdr, n_kv_hdr;
    int alignment_kind; /* 0 none, 1 u32 value, 2 string */
    uint32_t alignment;
    size_t data_bytes;
};

static struct spec default_spec(void) {
    struct spec s = {3, CM_TYPE_F32, 2, {4, 2, 1, 1, 1}, 0, 1, 1, 0, 0, 32};
    return s;
}

static void build(struct gb *b, const struct spec *s) {
    gb_hdr(b, s->version, s->n_tensors_hdr, s->n_kv_hdr + (s->alignment_kind ? 1 : 0));
    if (s->alignment_kind == 1) gb_key(b, "general.alignment", CM_GGUF_UINT32), gb_u32(b, s->alignment);
    if (s->alignment_kind == 2) gb_key(b, "general.alignment", CM_GGUF_STRING), gb_str(b, "32");
    gb_key(b, "general.architecture", CM_GGUF_STRING), gb_str(b, "llama");
    gb_tinfo(b, "blk.3.ffn_up.weight", s->n_dims, s->ne, s->ttype, s->offset);
    gb_pad(b, s->alignment_kind == 1 && s->alignment && !(s->alignment & (s->alignment - 1)) ? s->alignment : 32);
    gb_zeros(b, s->data_bytes);
}

static int spec_fails(struct spec s, int want, const char *n1, const char *n2) {
    struct gb b = {0};
    build(&b, &s);
    return open_fails_with(&b, want, n1, n2);
}

TEST(spec_baseline_is_valid) {
    struct gb b = {0};
    struct spec s = default_spec();
    build(&b, &s);
    cm_gguf *g = NULL;
    CHECK_OK(open_bytes(b.p, b.n, &g));
    if (g) {
        CHECK(cm_gguf_n_tensors(g) == 1 && cm_gguf_tensor_at(g, 0)->n_bytes == 32);
        close_bytes(g);
    }
    free(b.p);
}

TEST(malformed_header) {
    struct gb b = {0};
    gb_put(&b, "GGUX", 4), gb_u32(&b, 3), gb_u64(&b, 0), gb_u64(&b, 0);
    CHECK(open_fails_with(&b, CM_EFORMAT, "magic", "byte 0"));
    struct spec s = default_spec();
    s.version = 1;
    CHECK(spec_fails(s, CM_EUNSUPPORTED, "version 1", NULL));
    s.version = 4;
    CHECK(spec_fails(s, CM_EUNSUPPORTED, "version 4", NULL));
    s.version = 0x03000000u;
    CHECK(spec_fails(s, CM_EUNSUPPORTED, "big-endian", NULL));
    s = default_spec();
    s.n_kv_hdr = 1ull << 62;
    CHECK(spec_fails(s, CM_EFORMAT, "n_kv at byte 16", "4611686018427387904"));
    /* more kvs than accepted, though the bytes could hold them */
    size_t big = ((1u << 20) + 1) * 13;
    gb_hdr(&b, 3, 0, (1u << 20) + 1), gb_zeros(&b, big);
    CHECK(open_fails_with(&b, CM_EFORMAT, "n_kv at byte 16 is 1048577", "accepts"));
    s = default_spec();
    s.n_tensors_hdr = 1ull << 62;
    CHECK(spec_fails(s, CM_EFORMAT, "n_tensors at byte 8", NULL));
    s = default_spec();
    s.n_tensors_hdr = 5; /* fits the byte bound but the infos are not there */
    CHECK(spec_fails(s, CM_EFORMAT, "tensor", NULL));
    CHECK(open_fails_with(&b, CM_EFORMAT, "magic", "truncated")); /* empty buffer */
}

TEST(malformed_strings_and_kvs) {
    struct gb b = {0};
    gb_hdr(&b, 3, 0, 1), gb_u64(&b, 1ull << 63), gb_zeros(&b, 16);
    CHECK(open_fails_with(&b, CM_EFORMAT, "key length at byte 24", "9223372036854775808"));
    gb_hdr(&b, 3, 0, 1), gb_key(&b, "k", CM_GGUF_STRING), gb_u64(&b, 1ull << 63), gb_zeros(&b, 16);
    CHECK(open_fails_with(&b, CM_EFORMAT, "kv #0 'k' string length at byte 37", NULL));
    gb_hdr(&b, 3, 0, 1), gb_key(&b, "k", 13), gb_zeros(&b, 16);
    CHECK(open_fails_with(&b, CM_EFORMAT, "value type at byte 33 is 13", NULL));
    gb_hdr(&b, 3, 0, 1), gb_key(&b, "k", CM_GGUF_ARRAY), gb_u32(&b, CM_GGUF_ARRAY), gb_u64(&b, 1), gb_zeros(&b, 16);
    CHECK(open_fails_with(&b, CM_EFORMAT, "array of arrays", "'k'"));
    gb_hdr(&b, 3, 0, 1), gb_key(&b, "k", CM_GGUF_ARRAY), gb_u32(&b, 77), gb_u64(&b, 1), gb_zeros(&b, 16);
    CHECK(open_fails_with(&b, CM_EFORMAT, "element type", "77"));
    gb_hdr(&b, 3, 0, 1), gb_key(&b, "k", CM_GGUF_ARRAY), gb_u32(&b, CM_GGUF_UINT64), gb_u64(&b, 1ull << 61),
        gb_zeros(&b, 16);
    CHECK(open_fails_with(&b, CM_EFORMAT, "array length at byte 41", NULL));
    gb_hdr(&b, 3, 0, 1), gb_key(&b, "tok", CM_GGUF_ARRAY), gb_u32(&b, CM_GGUF_STRING), gb_u64(&b, 3), gb_str(&b, "a"),
        gb_u64(&b, 1000), gb_zeros(&b, 20);
    CHECK(open_fails_with(&b, CM_EFORMAT, "'tok' element 1 string length", NULL));
    gb_hdr(&b, 3, 0, 2), gb_key(&b, "k", CM_GGUF_UINT8), gb_u8(&b, 1), gb_key(&b, "k", CM_GGUF_UINT8), gb_u8(&b, 2);
    CHECK(open_fails_with(&b, CM_EFORMAT, "'k'", "repeats kv #0"));
    gb_hdr(&b, 3, 0, 1), gb_key(&b, "k", CM_GGUF_UINT64), gb_u32(&b, 0);
    CHECK(open_fails_with(&b, CM_EFORMAT, "value at byte 37 needs 8 bytes", "truncated"));
}

TEST(malformed_alignment) {
    struct spec s = default_spec();
    s.alignment_kind = 1, s.alignment = 0;
    CHECK(spec_fails(s, CM_EFORMAT, "general.alignment", "power of two"));
    s.alignment = 48;
    CHECK(spec_fails(s, CM_EFORMAT, "general.alignment", "48"));
    s.alignment_kind = 2;
    CHECK(spec_fails(s, CM_EFORMAT, "general.alignment", "string"));
    /* any integer type is read; a negative one is not a power of two */
    struct gb b = {0};
    gb_hdr(&b, 3, 0, 1), gb_key(&b, "general.alignment", CM_GGUF_INT32), gb_u32(&b, 64);
    cm_gguf *g = NULL;
    CHECK_OK(open_bytes(b.p, b.n, &g));
    if (g) CHECK(cm_gguf_alignment(g) == 64);
    close_bytes(g);
    free(b.p);
    memset(&b, 0, sizeof b);
    gb_hdr(&b, 3, 0, 1), gb_key(&b, "general.alignment", CM_GGUF_INT32), gb_u32(&b, (uint32_t)-64);
    CHECK(open_fails_with(&b, CM_EFORMAT, "general.alignment", "power of two"));
    s = default_spec();
    s.alignment_kind = 1, s.alignment = 64, s.offset = 32;
    s.data_bytes = 128;
    CHECK(spec_fails(s, CM_EFORMAT, "offset 32 at byte", "alignment 64"));
}

TEST(malformed_tensors) {
    struct spec s = default_spec();
    s.ttype = 4; /* a removed ggml type */
    CHECK(spec_fails(s, CM_EFORMAT, "tensor 'blk.3.ffn_up.weight' (#0) type", "is 4"));
    s.ttype = 0xffffffffu;
    CHECK(spec_fails(s, CM_EFORMAT, "type", NULL));
    s = default_spec(), s.n_dims = 0;
    CHECK(spec_fails(s, CM_EFORMAT, "n_dims", "is 0"));
    s = default_spec(), s.n_dims = 5;
    CHECK(spec_fails(s, CM_EFORMAT, "n_dims", "is 5"));
    s = default_spec(), s.ne[1] = 0;
    CHECK(spec_fails(s, CM_EFORMAT, "dimension 1", "expected > 0"));
    s = default_spec(), s.ne[0] = (uint64_t)-4;
    CHECK(spec_fails(s, CM_EFORMAT, "dimension 0", "-4"));
    s = default_spec(), s.ne[0] = 1ull << 40, s.ne[1] = 1ull << 40;
    CHECK(spec_fails(s, CM_EFORMAT, "dimension 1", "overflow"));
    s = default_spec(), s.ttype = CM_TYPE_Q4_0, s.ne[0] = 33;
    CHECK(spec_fails(s, CM_EFORMAT, "row length 33", "q4_0"));
    s = default_spec(), s.ttype = CM_TYPE_F32, s.n_dims = 4, s.ne[0] = 1ull << 20, s.ne[1] = 1ull << 20,
    s.ne[2] = 1ull << 20, s.ne[3] = 1ull << 2; /* 2^62 elements: fits i64, bytes overflow */
    CHECK(spec_fails(s, CM_EFORMAT, "overflow", NULL));
    s = default_spec(), s.offset = 3;
    CHECK(spec_fails(s, CM_EFORMAT, "offset 3 at byte", "multiple of the alignment 32"));
    s = default_spec(), s.data_bytes = 16; /* 32 needed */
    CHECK(spec_fails(s, CM_EFORMAT, "tensor 'blk.3.ffn_up.weight' (#0) data ends at byte", "truncated download"));
    s = default_spec(), s.offset = 1ull << 63, s.data_bytes = 32;
    CHECK(spec_fails(s, CM_EFORMAT, "data ends at byte 9223372036854775968 but the file has 160 bytes", NULL));
    s = default_spec(), s.offset = UINT64_MAX - 31;
    CHECK(spec_fails(s, CM_EFORMAT, "offset 18446744073709551584", "beyond the end of the file"));

    /* duplicate names; overlapping data */
    struct gb b = {0};
    uint64_t ne[1] = {8};
    gb_hdr(&b, 3, 2, 0), gb_tinfo(&b, "a", 1, ne, CM_TYPE_F32, 0), gb_tinfo(&b, "a", 1, ne, CM_TYPE_F32, 32);
    gb_pad(&b, 32), gb_zeros(&b, 64);
    CHECK(open_fails_with(&b, CM_EFORMAT, "tensor 'a' (#1", "same name as tensor #0"));
    ne[0] = 16;
    gb_hdr(&b, 3, 2, 0), gb_tinfo(&b, "a", 1, ne, CM_TYPE_F32, 0), gb_tinfo(&b, "b", 1, ne, CM_TYPE_F32, 32);
    gb_pad(&b, 32), gb_zeros(&b, 128);
    CHECK(open_fails_with(&b, CM_EFORMAT, "tensor 'b' (#1) data at offset 32 overlaps tensor 'a'", NULL));
    /* a file ending before its data section */
    ne[0] = 8;
    gb_hdr(&b, 3, 1, 0), gb_tinfo(&b, "a", 1, ne, CM_TYPE_F32, 0);
    CHECK(open_fails_with(&b, CM_EFORMAT, "data section starts at byte", "truncated"));
}

TEST(open_errors) {
    cm_gguf *g = (cm_gguf *)1;
    CHECK(cm_gguf_open("/nonexistent/file.gguf", &g) == CM_EIO && g == NULL);
    CHECK(strstr(cm_last_error(CM_EIO), "/nonexistent/file.gguf"));
    CHECK(cm_gguf_open("/", &g) == CM_EIO);
    const char *path = tmp_path("empty.gguf");
    FILE *f = fopen(path, "wb");
    if (f) fclose(f);
    CHECK(cm_gguf_open(path, &g) == CM_EFORMAT && g == NULL);
    CHECK(strstr(cm_last_error(CM_EFORMAT), path));
    unlink(path);
}

/* ---- truncation and byte flips over a whole written file ---- */

TEST(truncation_everywhere_fails_cleanly) {
    const char *path = tmp_path("trunc.gguf");
    int calls = 0;
    CHECK_OK(write_sample(path, 0, &calls));
    size_t n = 0;
    uint8_t *file = read_file(path, &n);
    cm_gguf *g = NULL;
    CHECK_OK(cm_gguf_open(path, &g));
    if (!file || !g) return;
    const cm_gguf_tensor *last = cm_gguf_tensor_at(g, cm_gguf_n_tensors(g) - 1);
    uint64_t data_end = cm_gguf_data_offset(g) + last->offset + last->n_bytes;
    uint64_t meta_end = cm_gguf_data_offset(g);
    cm_gguf_close(g);
    int bad = 0, tried = 0;
    char first_bad[600] = "";
    for (uint64_t len = 0; len < data_end; len += len < meta_end + 64 ? 1 : 13) {
        cm_gguf *h = NULL;
        int rc = open_bytes(file, (size_t)len, &h);
        tried++;
        if (rc != CM_EFORMAT || h) {
            if (!bad++) snprintf(first_bad, sizeof first_bad, "len %llu: rc %d %s", (unsigned long long)len, rc,
                                 cm_last_error(rc));
            close_bytes(h);
        }
    }
    CHECK_MSG(bad == 0, "%d of %d truncations did not fail with CM_EFORMAT; first: %s", bad, tried, first_bad);
    CHECK(tried > 1000);
    /* a cut inside the last tensor info's offset field names tensor, field and bytes */
    const uint8_t *name = memmem(file, n, "output.weight", 13);
    CHECK(name != NULL);
    if (name) {
        size_t at = (size_t)(name - file) + 13 + 4 + 4 * 8 + 4; /* name | n_dims | ne[4] | type */
        cm_gguf *h = NULL;
        CHECK(open_bytes(file, at + 4, &h) == CM_EFORMAT);
        char want[200];
        snprintf(want, sizeof want,
                 "t.gguf: tensor 'output.weight' (#6) offset at byte %zu needs 8 bytes but the file ends at byte %zu",
                 at, at + 4);
        const char *msg = cm_last_error(CM_EFORMAT);
        CHECK_MSG(strstr(msg, want), "%s", msg);
    }
    free(file);
    unlink(path);
}

TEST(byte_flips_open_or_fail_cleanly) {
    const char *path = tmp_path("flip.gguf");
    int calls = 0;
    CHECK_OK(write_sample(path, 0, &calls));
    size_t n = 0;
    uint8_t *file = read_file(path, &n);
    cm_gguf *g = NULL;
    CHECK_OK(cm_gguf_open(path, &g));
    if (!file || !g) return;
    size_t meta_end = (size_t)cm_gguf_data_offset(g);
    cm_gguf_close(g);
    static const uint8_t xors[] = {0x01, 0x80, 0xff, 0x40};
    int opened = 0, failed = 0, wrong = 0;
    uint64_t sink = 0;
    for (size_t pos = 0; pos < n; pos += pos < meta_end ? 1 : 29) {
        for (size_t k = 0; k < sizeof xors; k++) {
            file[pos] ^= xors[k];
            cm_gguf *h = NULL;
            int rc = open_bytes(file, n, &h);
            if (rc == CM_OK) {
                opened++;
                sink += touch_all(h);
                close_bytes(h);
            } else if (rc == CM_EFORMAT || rc == CM_EUNSUPPORTED) {
                failed++;
                if (!strstr(cm_last_error(rc), "t.gguf: ")) wrong++;
            } else {
                wrong++;
            }
            file[pos] ^= xors[k];
        }
    }
    CHECK(wrong == 0);
    CHECK(opened > 0 && failed > 0);
    fprintf(stderr, "  byte flips: %d opened, %d rejected (checksum %llu)\n", opened, failed,
            (unsigned long long)sink);
    free(file);
    unlink(path);
}

/* ---- shared test data ---- */

TEST(real_vocab_files) {
    const char *dir = test_datadir();
    if (!dir) TEST_SKIP("CELLM_TESTDATA is not set");
    char vdir[512];
    snprintf(vdir, sizeof vdir, "%s/vocab", dir);
    DIR *d = opendir(vdir);
    if (!d) TEST_SKIP("%s is absent", vdir);
    int n_files = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 5, ".gguf")) continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", vdir, e->d_name);
        cm_gguf *g = NULL;
        CHECK_OK(cm_gguf_open(path, &g));
        if (!g) continue;
        n_files++;
        int et = -1;
        uint64_t n = 0;
        CHECK_OK(cm_gguf_get_arr_info(g, "tokenizer.ggml.tokens", &et, &n));
        CHECK_MSG(et == CM_GGUF_STRING && n > 1000, "%s: tokens type %d count %llu", e->d_name, et,
                  (unsigned long long)n);
        uint64_t total = 0;
        for (uint64_t i = 0; i < n; i++) {
            const char *s;
            size_t len2;
            if (cm_gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s, &len2) == CM_OK) total += len2 > 0;
        }
        CHECK_MSG(total > n - 10, "%s: %llu of %llu tokens non-empty", e->d_name, (unsigned long long)total,
                  (unsigned long long)n);
        const char *model;
        CHECK_OK(cm_gguf_get_str(g, "tokenizer.ggml.model", &model, NULL));
        cm_gguf_close(g);
    }
    closedir(d);
    if (!n_files) TEST_SKIP("no .gguf files in %s", vdir);
}

int main(void) {
    RUN(roundtrip_every_kv_type_and_tensors);
    RUN(roundtrip_alignment_64);
    RUN(copy_kv_reproduces_metadata);
    RUN(writer_bytes_match_ggml);
    RUN(writer_failure_leaves_no_file);
    RUN(writer_io_errors_leave_no_file);
    RUN(writer_rejects_bad_input);
    RUN(every_scalar_type_and_getter_rules);
    RUN(spec_baseline_is_valid);
    RUN(malformed_header);
    RUN(malformed_strings_and_kvs);
    RUN(malformed_alignment);
    RUN(malformed_tensors);
    RUN(open_errors);
    RUN(truncation_everywhere_fails_cleanly);
    RUN(byte_flips_open_or_fail_cleanly);
    RUN(real_vocab_files);
    return test_summary();
}
