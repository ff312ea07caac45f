/* fuzz_gguf.c - fuzz target for the GGUF reader: opens the input with
 * cm_gguf_open_memory and, when it opens, reads everything through every
 * accessor (and copies every kv into a writer) so a sanitizer sees any read
 * outside the input. Seeds are small valid files encoded here. */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "base/status.h"
#include "gguf/gguf.h"
#include "gguf/gguf_internal.h"
#include "gguf/types.h"

static volatile uint64_t g_sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cm_gguf *g = NULL;
    if (cm_gguf_open_memory(data, size, "fuzz.gguf", &g) != CM_OK) {
        /* failure must leave a message and no handle */
        if (g || !cm_last_error(CM_EFORMAT)[0]) __builtin_trap();
        return 0;
    }
    uint64_t sum = cm_gguf_version(g) + cm_gguf_alignment(g) + cm_gguf_file_bytes(g) + strlen(cm_gguf_path(g));
    cm_gguf_writer *w = NULL;
    cm_gguf_writer_create(&w);
    for (int64_t i = 0; i < cm_gguf_n_kv(g); i++) {
        const char *key = cm_gguf_kv_key(g, i);
        int type = cm_gguf_kv_type(g, i);
        if (type < 0 || type >= CM_GGUF_TYPE_COUNT) __builtin_trap();
        if (cm_gguf_find_kv(g, key) != i) __builtin_trap(); /* keys are unique */
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
        if (!cm_gguf_get_str(g, key, &s, &len)) sum += len + (uint8_t)s[len] + (len ? (uint8_t)s[len - 1] : 0);
        if (!cm_gguf_get_arr_info(g, key, &et, &n)) {
            if (et == CM_GGUF_STRING) {
                for (uint64_t j = 0; j < n; j++)
                    if (!cm_gguf_get_arr_str(g, key, j, &s, &len))
                        sum += len + (uint8_t)s[len] + (len ? (uint8_t)s[0] + (uint8_t)s[len - 1] : 0);
                if (cm_gguf_get_arr_str(g, key, n, &s, &len) != CM_ERANGE) __builtin_trap();
            } else {
                const void *d;
                if (!cm_gguf_get_arr_data(g, key, &d, &n)) {
                    size_t bytes = (size_t)n * cm_gguf_type_size(et);
                    for (size_t k = 0; k < bytes; k++) sum += ((const uint8_t *)d)[k];
                }
            }
        }
        if (w) cm_gguf_writer_copy_kv(w, g, i);
    }
    for (int64_t i = 0; i < cm_gguf_n_tensors(g); i++) {
        const cm_gguf_tensor *t = cm_gguf_tensor_at(g, i);
        if (cm_gguf_find_tensor(g, t->name) != t) __builtin_trap();
        if (t->n_dims < 1 || t->n_dims > CM_GGUF_MAX_DIMS || cm_type_block_elems(t->type) == 0) __builtin_trap();
        const uint8_t *p = t->data;
        if (p < data || t->n_bytes > size || p > data + size - t->n_bytes) __builtin_trap();
        sum += t->n_bytes + p[0] + p[t->n_bytes - 1] + (uint64_t)t->ne[0] + strlen(t->name);
        if (w) cm_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne);
    }
    cm_gguf_writer_destroy(w);
    cm_gguf_close(g);
    g_sink += sum;
    return 0;
}

/* ---- seeds ---- */

struct enc {
    uint8_t *p;
    size_t n, cap;
};

static void put(struct enc *e, const void *src, size_t n) {
    if (e->n + n <= e->cap) memcpy(e->p + e->n, src, n);
    e->n += n; /* past cap: counted, not written; the seed is then dropped */
}
static void u8(struct enc *e, uint8_t v) { put(e, &v, 1); }
static void u16(struct enc *e, uint16_t v) { u8(e, (uint8_t)v), u8(e, (uint8_t)(v >> 8)); }
static void u32(struct enc *e, uint32_t v) { u16(e, (uint16_t)v), u16(e, (uint16_t)(v >> 16)); }
static void u64(struct enc *e, uint64_t v) { u32(e, (uint32_t)v), u32(e, (uint32_t)(v >> 32)); }
static void str(struct enc *e, const char *s) { u64(e, strlen(s)), put(e, s, strlen(s)); }
static void key(struct enc *e, const char *k, uint32_t type) { str(e, k), u32(e, type); }
static void tinfo(struct enc *e, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t off) {
    str(e, name), u32(e, n_dims);
    for (uint32_t d = 0; d < n_dims; d++) u64(e, ne[d]);
    u32(e, type), u64(e, off);
}
static void fill_to(struct enc *e, size_t al, uint8_t byte) {
    while (e->n % al) u8(e, byte);
}
static void bytes(struct enc *e, size_t n, uint8_t seed) {
    for (size_t i = 0; i < n; i++) u8(e, (uint8_t)(seed + i * 13));
}

size_t cm_fuzz_seed(int i, uint8_t *buf, size_t cap) {
    struct enc e = {buf, 0, cap};
    switch (i) {
    case 0: { /* a tiny llama-like file: scalars and one f32 tensor */
        uint64_t ne[2] = {4, 2};
        put(&e, "GGUF", 4), u32(&e, 3), u64(&e, 1), u64(&e, 4);
        key(&e, "general.architecture", CM_GGUF_STRING), str(&e, "llama");
        key(&e, "llama.block_count", CM_GGUF_UINT32), u32(&e, 2);
        key(&e, "llama.rope.freq_base", CM_GGUF_FLOAT32), u32(&e, 0x461c4000u);
        key(&e, "tokenizer.ggml.add_bos_token", CM_GGUF_BOOL), u8(&e, 1);
        tinfo(&e, "token_embd.weight", 2, ne, CM_TYPE_F32, 0);
        fill_to(&e, 32, 0), bytes(&e, 32, 1);
        break;
    }
    case 1: { /* arrays and two quantized tensors at alignment 64 */
        uint64_t ne_a[2] = {64, 1}, ne_b[1] = {32};
        put(&e, "GGUF", 4), u32(&e, 3), u64(&e, 2), u64(&e, 4);
        key(&e, "general.alignment", CM_GGUF_UINT32), u32(&e, 64);
        key(&e, "tokenizer.ggml.tokens", CM_GGUF_ARRAY), u32(&e, CM_GGUF_STRING), u64(&e, 4);
        str(&e, "<s>"), str(&e, ""), str(&e, "\xe2\x96\x81the"), str(&e, "a\nb");
        key(&e, "tokenizer.ggml.scores", CM_GGUF_ARRAY), u32(&e, CM_GGUF_FLOAT32), u64(&e, 3);
        u32(&e, 0), u32(&e, 0xbf800000u), u32(&e, 0x7fc00000u);
        key(&e, "tokenizer.ggml.token_type", CM_GGUF_ARRAY), u32(&e, CM_GGUF_INT32), u64(&e, 2), u32(&e, 1),
            u32(&e, 3);
        tinfo(&e, "blk.0.ffn_up.weight", 2, ne_a, CM_TYPE_Q4_0, 0);
        tinfo(&e, "blk.0.ffn_down.weight", 1, ne_b, CM_TYPE_Q8_0, 64);
        fill_to(&e, 64, 0), bytes(&e, 36, 2), fill_to(&e, 64, 0), bytes(&e, 34, 3);
        break;
    }
    case 2: /* version 2, every scalar type, no tensors */
        put(&e, "GGUF", 4), u32(&e, 2), u64(&e, 0), u64(&e, 11);
        key(&e, "a", CM_GGUF_UINT8), u8(&e, 200);
        key(&e, "b", CM_GGUF_INT8), u8(&e, 0x80);
        key(&e, "c", CM_GGUF_UINT16), u16(&e, 65535);
        key(&e, "d", CM_GGUF_INT16), u16(&e, 0x8000);
        key(&e, "e", CM_GGUF_INT32), u32(&e, 0xffffffffu);
        key(&e, "f", CM_GGUF_UINT64), u64(&e, UINT64_MAX);
        key(&e, "g", CM_GGUF_INT64), u64(&e, 1ull << 63);
        key(&e, "h", CM_GGUF_FLOAT64), u64(&e, 0x3ff0000000000000ull);
        key(&e, "i", CM_GGUF_ARRAY), u32(&e, CM_GGUF_UINT64), u64(&e, 1), u64(&e, 5);
        key(&e, "j", CM_GGUF_ARRAY), u32(&e, CM_GGUF_BOOL), u64(&e, 2), u8(&e, 0), u8(&e, 1);
        key(&e, "k", CM_GGUF_ARRAY), u32(&e, CM_GGUF_STRING), u64(&e, 0);
        break;
    case 3: { /* a 4-D f16 tensor and a K-quant tensor */
        uint64_t ne_a[4] = {2, 3, 2, 2}, ne_b[2] = {256, 1};
        put(&e, "GGUF", 4), u32(&e, 3), u64(&e, 2), u64(&e, 1);
        key(&e, "general.name", CM_GGUF_STRING), str(&e, "seed");
        tinfo(&e, "a", 4, ne_a, CM_TYPE_F16, 0);
        tinfo(&e, "b", 2, ne_b, CM_TYPE_Q4_K, 64);
        fill_to(&e, 32, 0), bytes(&e, 48, 4), fill_to(&e, 32, 0), bytes(&e, 144, 5);
        break;
    }
    default: return 0;
    }
    return e.n <= cap ? e.n : 0;
}
