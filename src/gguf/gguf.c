/* gguf.c - the GGUF reader: maps a file (or takes a buffer) and validates all
 * of it before any accessor can be called.
 *
 * Byte layout (little endian, versions 2 and 3 are identical on disk):
 *
 *   0   u32 magic "GGUF"      4  u32 version      8  u64 n_tensors   16  u64 n_kv
 *   24  n_kv x      { str key | u32 type | value }
 *       n_tensors x { str name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
 *       zero padding up to a multiple of general.alignment (default 32)
 *       data section: tensor t lies at data_start + t.offset
 *   str   = u64 len | len bytes (no NUL)
 *   array = u32 elem_type | u64 n | n elements (elements are scalars or strs)
 *
 * The file is parsed twice by the same code. Pass 1 walks it with every
 * bounds check and only counts (string bytes, string-array elements); then
 * everything is allocated once, exactly sized; pass 2 walks it again with the
 * same checks and copies strings out NUL-terminated into one arena. Checks
 * that need the stored tables (tensor data inside the file, duplicate names,
 * overlapping tensors) run after pass 2.
 *
 * Invariants after a successful open: every kv/tensor pointer is valid until
 * cm_gguf_close; every tensor's [data, data + n_bytes) lies inside the
 * mapping; numeric array data lies inside the mapping; counts fit int64.
 * All position arithmetic is done as "n <= size - pos" so it cannot wrap. */
#include "gguf/gguf.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/status.h"
#include "gguf/gguf_internal.h"
#include "gguf/types.h"

#define HEADER_BYTES 24
/* Smallest encodings, used to bound counts read from the header before any
 * allocation: a kv is an empty key (8) + type (4) + a 1-byte value; a tensor
 * info is an empty name (8) + n_dims (4) + one dim (8) + type (4) + offset (8). */
#define KV_MIN_BYTES 13
#define TENSOR_MIN_BYTES 32
#define DEFAULT_ALIGNMENT 32
/* Real files have well under a hundred keys (a vocabulary is one array kv);
 * the cap keeps a hostile file of millions of tiny kvs from making us
 * allocate ~9 bytes of table per byte of file. */
#define MAX_KV (1u << 20)

struct strref {
    const char *s;
    uint64_t len;
};

struct kv {
    const char *key;
    uint64_t key_len;
    int type;             /* enum cm_gguf_type */
    int elem_type;        /* arrays only */
    uint64_t n;           /* arrays only: element count */
    uint64_t val_pos;     /* byte offset of the value in the file, for messages */
    uint64_t u;           /* unsigned ints and bool, zero-extended */
    int64_t i;            /* signed ints, sign-extended */
    double f;             /* f32 / f64 */
    const char *str;      /* strings: NUL-terminated copy */
    uint64_t str_len;
    const uint8_t *arr;   /* numeric arrays: packed elements in the mapping */
    struct strref *strs;  /* string arrays: n copies */
};

struct htab {
    int64_t *slot; /* index + 1; 0 = empty */
    uint64_t mask;
};

struct cm_gguf {
    char *path;
    const uint8_t *base;
    uint64_t size;
    void *map; /* non-NULL when we own an mmap */
    uint32_t version;
    uint32_t alignment;
    int64_t n_kv, n_tensors;
    uint64_t data_start;
    struct kv *kvs;
    cm_gguf_tensor *tensors;
    uint64_t *tensor_pos; /* byte offset of each tensor info, for messages */
    struct strref *strs;  /* storage for every string-array element */
    char *arena;          /* every copied string, NUL-terminated */
    struct htab kv_index, tensor_index;
};

struct parser {
    cm_gguf *g;
    const uint8_t *base;
    uint64_t size, pos;
    bool fill; /* pass 2: store and copy */
    /* counted in pass 1, consumed in pass 2 */
    uint64_t n_str_bytes, n_arr_strs;
    uint64_t arena_used, strs_used;
    /* general.alignment seen while parsing kvs */
    uint32_t alignment;
    /* what is being parsed, for messages */
    int ctx_kind; /* 0 header, 1 kv, 2 tensor */
    uint64_t ctx_index;
    const uint8_t *ctx_name;
    uint64_t ctx_name_len;
    int64_t ctx_elem; /* array element being read, or -1 */
};

static const char *const g_type_names[CM_GGUF_TYPE_COUNT] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
};
/* Bytes of a scalar of each type; 0 for string/array. */
static const uint8_t g_type_size[CM_GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *cm_gguf_type_name(int type) {
    return type >= 0 && type < CM_GGUF_TYPE_COUNT ? g_type_names[type] : "unknown";
}

size_t cm_gguf_type_size(int type) {
    return type >= 0 && type < CM_GGUF_TYPE_COUNT ? g_type_size[type] : 0;
}

static bool is_int_type(int t) {
    return t == CM_GGUF_UINT8 || t == CM_GGUF_INT8 || t == CM_GGUF_UINT16 || t == CM_GGUF_INT16 ||
           t == CM_GGUF_UINT32 || t == CM_GGUF_INT32 || t == CM_GGUF_UINT64 || t == CM_GGUF_INT64;
}

static bool is_signed_type(int t) {
    return t == CM_GGUF_INT8 || t == CM_GGUF_INT16 || t == CM_GGUF_INT32 || t == CM_GGUF_INT64;
}

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }

/* ---- messages ---- */

/* Appends up to 64 bytes of an untrusted name, non-printables as '?'. */
static void put_name(char *dst, size_t cap, const uint8_t *s, uint64_t len) {
    size_t n = strlen(dst), i;
    for (i = 0; i < len && i < 64 && n + 4 < cap; i++) dst[n++] = s[i] >= 0x20 && s[i] < 0x7f ? (char)s[i] : '?';
    if (i < len && n + 4 < cap) dst[n++] = '.', dst[n++] = '.', dst[n++] = '.';
    dst[n] = 0;
}

/* "kv #3 'general.name'" / "tensor 'blk.0.attn_q.weight' (#5)" / "header" */
static void describe(const struct parser *p, char *buf, size_t cap) {
    buf[0] = 0;
    if (p->ctx_kind == 0) {
        snprintf(buf, cap, "header");
        return;
    }
    if (p->ctx_kind == 1) {
        snprintf(buf, cap, "kv #%" PRIu64, p->ctx_index);
        if (p->ctx_name) {
            strncat(buf, " '", cap - strlen(buf) - 1);
            put_name(buf, cap, p->ctx_name, p->ctx_name_len);
            strncat(buf, "'", cap - strlen(buf) - 1);
        }
    } else {
        if (p->ctx_name) {
            snprintf(buf, cap, "tensor '");
            put_name(buf, cap, p->ctx_name, p->ctx_name_len);
            size_t n = strlen(buf);
            snprintf(buf + n, cap - n, "' (#%" PRIu64 ")", p->ctx_index);
        } else {
            snprintf(buf, cap, "tensor #%" PRIu64, p->ctx_index);
        }
    }
    if (p->ctx_elem >= 0) {
        size_t n = strlen(buf);
        snprintf(buf + n, cap - n, " element %" PRId64, p->ctx_elem);
    }
}

/* CM_EFORMAT with "NAME: <where> <fmt...>". */
__attribute__((format(printf, 2, 3))) static int perr(const struct parser *p, const char *fmt, ...) {
    char where[256], what[512];
    describe(p, where, sizeof where);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return cm_errorf(CM_EFORMAT, "%s: %s %s", p->g->path, where, what);
}

/* Fails unless n more bytes are available at the cursor. */
static int need(const struct parser *p, uint64_t n, const char *field) {
    if (n <= p->size - p->pos) return CM_OK;
    return perr(p, "%s at byte %" PRIu64 " needs %" PRIu64 " bytes but the file ends at byte %" PRIu64 " (truncated?)",
                field, p->pos, n, p->size);
}

static int read_u32(struct parser *p, const char *field, uint32_t *v) {
    int rc = need(p, 4, field);
    if (rc) return rc;
    *v = le32(p->base + p->pos);
    p->pos += 4;
    return CM_OK;
}

static int read_u64(struct parser *p, const char *field, uint64_t *v) {
    int rc = need(p, 8, field);
    if (rc) return rc;
    *v = le64(p->base + p->pos);
    p->pos += 8;
    return CM_OK;
}

/* Reads a string; *bytes points at it in the mapping. In pass 2 it is copied
 * into the arena and *copy gets the NUL-terminated copy. */
static int read_str(struct parser *p, const char *field, const uint8_t **bytes, uint64_t *len, const char **copy) {
    uint64_t at = p->pos, n;
    int rc = read_u64(p, field, &n);
    if (rc) return rc;
    if (n > p->size - p->pos)
        return perr(p, "%s at byte %" PRIu64 " is %" PRIu64 " bytes but only %" PRIu64
                       " bytes are left in the file (truncated or corrupt)",
                    field, at, n, p->size - p->pos);
    *bytes = p->base + p->pos;
    *len = n;
    if (p->fill) {
        /* pass 1 counted exactly these bytes, so the arena has room */
        assert(p->arena_used + n + 1 <= p->n_str_bytes);
        char *dst = p->g->arena + p->arena_used;
        if (n) memcpy(dst, *bytes, n);
        dst[n] = 0;
        p->arena_used += n + 1;
        if (copy) *copy = dst;
    } else {
        p->n_str_bytes += n + 1; /* n <= size, count <= size/8: cannot overflow */
        if (copy) *copy = NULL;
    }
    p->pos += n;
    return CM_OK;
}

/* ---- key/values ---- */

static bool key_is(const uint8_t *k, uint64_t len, const char *want) {
    size_t n = strlen(want);
    return len == n && !memcmp(k, want, n);
}

static void read_scalar(struct kv *kv, int type, const uint8_t *b) {
    switch (type) {
    case CM_GGUF_UINT8: case CM_GGUF_BOOL: kv->u = b[0]; break;
    case CM_GGUF_INT8: kv->i = (int8_t)b[0]; break;
    case CM_GGUF_UINT16: kv->u = (uint16_t)(b[0] | b[1] << 8); break;
    case CM_GGUF_INT16: kv->i = (int16_t)(uint16_t)(b[0] | b[1] << 8); break;
    case CM_GGUF_UINT32: kv->u = le32(b); break;
    case CM_GGUF_INT32: kv->i = (int32_t)le32(b); break;
    case CM_GGUF_UINT64: kv->u = le64(b); break;
    case CM_GGUF_INT64: kv->i = (int64_t)le64(b); break;
    case CM_GGUF_FLOAT32: {
        uint32_t u = le32(b);
        float f;
        memcpy(&f, &u, 4);
        kv->f = f;
        break;
    }
    case CM_GGUF_FLOAT64: {
        uint64_t u = le64(b);
        memcpy(&kv->f, &u, 8);
        break;
    }
    default: break;
    }
}

static int parse_kv(struct parser *p, uint64_t idx) {
    struct kv tmp, *kv = p->fill ? &p->g->kvs[idx] : &tmp;
    memset(kv, 0, sizeof *kv);
    p->ctx_kind = 1;
    p->ctx_index = idx;
    p->ctx_name = NULL;
    p->ctx_elem = -1;

    const uint8_t *kb = NULL;
    uint64_t klen = 0;
    int rc = read_str(p, "key length", &kb, &klen, &kv->key);
    if (rc) return rc;
    kv->key_len = klen;
    p->ctx_name = kb;
    p->ctx_name_len = klen;

    uint64_t type_pos = p->pos;
    uint32_t type;
    if ((rc = read_u32(p, "value type", &type))) return rc;
    if (type >= CM_GGUF_TYPE_COUNT)
        return perr(p, "value type at byte %" PRIu64 " is %" PRIu32 ", expected 0..%d", type_pos, type,
                    CM_GGUF_TYPE_COUNT - 1);
    kv->type = (int)type;
    kv->val_pos = p->pos;

    if (type == CM_GGUF_STRING) {
        const uint8_t *sb;
        if ((rc = read_str(p, "string length", &sb, &kv->str_len, &kv->str))) return rc;
    } else if (type == CM_GGUF_ARRAY) {
        uint64_t et_pos = p->pos;
        uint32_t et;
        uint64_t n;
        if ((rc = read_u32(p, "array element type", &et))) return rc;
        if (et == CM_GGUF_ARRAY)
            return perr(p, "is an array of arrays (element type at byte %" PRIu64 "), which is not supported", et_pos);
        if (et >= CM_GGUF_TYPE_COUNT)
            return perr(p, "array element type at byte %" PRIu64 " is %" PRIu32 ", expected 0..%d", et_pos, et,
                        CM_GGUF_TYPE_COUNT - 1);
        uint64_t n_pos = p->pos;
        if ((rc = read_u64(p, "array length", &n))) return rc;
        uint64_t esize = et == CM_GGUF_STRING ? 8 : g_type_size[et];
        uint64_t left = p->size - p->pos;
        if (n > left / esize)
            return perr(p, "array length at byte %" PRIu64 " is %" PRIu64 " elements of %s but only %" PRIu64
                           " bytes are left in the file (truncated or corrupt file?)",
                        n_pos, n, g_type_names[et], left);
        kv->elem_type = (int)et;
        kv->n = n;
        if (et == CM_GGUF_STRING) {
            if (p->fill) {
                assert(p->strs_used + n <= p->n_arr_strs);
                kv->strs = p->g->strs + p->strs_used;
                p->strs_used += n;
            } else {
                p->n_arr_strs += n;
            }
            for (uint64_t j = 0; j < n; j++) {
                const uint8_t *sb;
                uint64_t slen;
                const char *copy;
                p->ctx_elem = (int64_t)j;
                if ((rc = read_str(p, "string length", &sb, &slen, &copy))) return rc;
                if (p->fill) kv->strs[j] = (struct strref){copy, slen};
            }
            p->ctx_elem = -1;
        } else {
            kv->arr = p->base + p->pos;
            p->pos += n * esize;
        }
    } else {
        if ((rc = need(p, g_type_size[type], "value"))) return rc;
        read_scalar(kv, (int)type, p->base + p->pos);
        p->pos += g_type_size[type];
    }

    if (key_is(kb, klen, "general.alignment")) {
        uint64_t a;
        if (type == CM_GGUF_UINT32 || type == CM_GGUF_UINT64 || type == CM_GGUF_UINT16 || type == CM_GGUF_UINT8)
            a = kv->u;
        else if (is_signed_type((int)type) && kv->i > 0)
            a = (uint64_t)kv->i;
        else if (is_signed_type((int)type))
            a = 0;
        else
            return perr(p, "at byte %" PRIu64 " has type %s, expected u32", type_pos, g_type_names[type]);
        if (a == 0 || (a & (a - 1)) || a > (1u << 30))
            return perr(p, "value %" PRIu64 " at byte %" PRIu64 " is not a power of two in 1..2^30", a, kv->val_pos);
        p->alignment = (uint32_t)a;
    }
    return CM_OK;
}

/* ---- tensor infos ---- */

static int parse_tensor(struct parser *p, uint64_t idx) {
    cm_gguf_tensor tmp, *t = p->fill ? &p->g->tensors[idx] : &tmp;
    memset(t, 0, sizeof *t);
    p->ctx_kind = 2;
    p->ctx_index = idx;
    p->ctx_name = NULL;
    p->ctx_elem = -1;
    if (p->fill) p->g->tensor_pos[idx] = p->pos;

    const uint8_t *nb;
    uint64_t nlen;
    int rc = read_str(p, "name length", &nb, &nlen, &t->name);
    if (rc) return rc;
    p->ctx_name = nb;
    p->ctx_name_len = nlen;

    uint64_t at = p->pos;
    uint32_t n_dims;
    if ((rc = read_u32(p, "n_dims", &n_dims))) return rc;
    if (n_dims < 1 || n_dims > CM_GGUF_MAX_DIMS)
        return perr(p, "n_dims at byte %" PRIu64 " is %" PRIu32 ", expected 1..%d", at, n_dims, CM_GGUF_MAX_DIMS);
    t->n_dims = (int)n_dims;
    uint64_t n_elems = 1;
    for (int d = 0; d < CM_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        uint64_t v;
        at = p->pos;
        if ((rc = read_u64(p, "dimension", &v))) return rc;
        if (v == 0 || v > (uint64_t)INT64_MAX)
            return perr(p, "dimension %" PRIu32 " at byte %" PRIu64 " is %" PRId64 ", expected > 0", d, at, (int64_t)v);
        if (__builtin_mul_overflow(n_elems, v, &n_elems) || n_elems > (uint64_t)INT64_MAX)
            return perr(p, "dimension %" PRIu32 " at byte %" PRIu64 " makes the element count overflow", d, at);
        t->ne[d] = (int64_t)v;
    }
    at = p->pos;
    uint32_t type;
    if ((rc = read_u32(p, "type", &type))) return rc;
    int block = cm_type_block_elems((int)type);
    if (type > INT32_MAX || block == 0)
        return perr(p, "type at byte %" PRIu64 " is %" PRIu32 ", which is not a ggml type cellm knows", at, type);
    t->type = (int)type;
    if ((uint64_t)t->ne[0] % (uint64_t)block)
        return perr(p, "row length %" PRId64 " is not a multiple of the %s block size %d", t->ne[0],
                    cm_type_name(t->type), block);
    /* bytes = (ne0/block * block_bytes) * rows, overflow-checked */
    uint64_t row_bytes, rows = n_elems / (uint64_t)t->ne[0];
    if (__builtin_mul_overflow((uint64_t)t->ne[0] / (uint64_t)block, (uint64_t)cm_type_block_bytes(t->type),
                               &row_bytes) ||
        __builtin_mul_overflow(row_bytes, rows, &t->n_bytes))
        return perr(p, "size in bytes overflows");
    at = p->pos;
    if ((rc = read_u64(p, "offset", &t->offset))) return rc;
    if (t->offset % p->alignment)
        return perr(p, "offset %" PRIu64 " at byte %" PRIu64 " is not a multiple of the alignment %" PRIu32, t->offset,
                    at, p->alignment);
    return CM_OK;
}

/* One complete walk of header, kvs and tensor infos. */
static int parse(struct parser *p) {
    cm_gguf *g = p->g;
    p->pos = 0;
    p->ctx_kind = 0;
    p->ctx_elem = -1;
    p->alignment = DEFAULT_ALIGNMENT;
    int rc;
    if ((rc = need(p, 4, "magic"))) return rc;
    const uint8_t *m = p->base;
    if (memcmp(m, "GGUF", 4))
        return cm_errorf(CM_EFORMAT,
                         "%s: not a GGUF file: magic bytes at byte 0 are %02x %02x %02x %02x, expected 'GGUF' "
                         "(47 47 55 46)",
                         g->path, m[0], m[1], m[2], m[3]);
    p->pos = 4;
    uint32_t version;
    if ((rc = read_u32(p, "version", &version))) return rc;
    if (version != 2 && version != 3) {
        if (version == 1)
            return cm_errorf(CM_EUNSUPPORTED,
                             "%s: GGUF version 1 (at byte 4) is not supported, only versions 2 and 3; convert the "
                             "file again with a current llama.cpp",
                             g->path);
        if (version == 0x02000000u || version == 0x03000000u)
            return cm_errorf(CM_EUNSUPPORTED, "%s: big-endian GGUF files are not supported (version at byte 4)",
                             g->path);
        return cm_errorf(CM_EUNSUPPORTED, "%s: GGUF version %" PRIu32 " (at byte 4) is not supported, only 2 and 3",
                         g->path, version);
    }
    g->version = version;
    uint64_t n_tensors, n_kv;
    if ((rc = read_u64(p, "n_tensors", &n_tensors))) return rc;
    if ((rc = read_u64(p, "n_kv", &n_kv))) return rc;
    uint64_t left = p->size - p->pos;
    if (n_kv > left / KV_MIN_BYTES)
        return perr(p, "n_kv at byte 16 is %" PRIu64 " but the remaining %" PRIu64 " bytes can hold at most %" PRIu64
                       " key/values (truncated or corrupt file?)",
                    n_kv, left, left / KV_MIN_BYTES);
    if (n_kv > MAX_KV)
        return perr(p, "n_kv at byte 16 is %" PRIu64 ", more than the %u key/values cellm accepts", n_kv, MAX_KV);
    if (n_tensors > (left - n_kv * KV_MIN_BYTES) / TENSOR_MIN_BYTES)
        return perr(p, "n_tensors at byte 8 is %" PRIu64 " but the remaining %" PRIu64
                       " bytes can hold at most %" PRIu64 " tensor infos (truncated or corrupt file?)",
                    n_tensors, left, (left - n_kv * KV_MIN_BYTES) / TENSOR_MIN_BYTES);
    g->n_kv = (int64_t)n_kv;
    g->n_tensors = (int64_t)n_tensors;
    for (uint64_t i = 0; i < n_kv; i++)
        if ((rc = parse_kv(p, i))) return rc;
    for (uint64_t i = 0; i < n_tensors; i++)
        if ((rc = parse_tensor(p, i))) return rc;
    g->alignment = p->alignment;
    g->data_start = (p->pos + p->alignment - 1) / p->alignment * p->alignment;
    return CM_OK;
}

/* ---- name index (open addressing, FNV-1a) ---- */

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static int htab_init(struct htab *h, int64_t n) {
    uint64_t cap = 16;
    while (cap < (uint64_t)n * 2) cap <<= 1;
    h->slot = calloc(cap, sizeof *h->slot);
    h->mask = cap - 1;
    return h->slot ? CM_OK : CM_ENOMEM;
}

/* Inserts idx under name; returns the index already there under the same
 * name, or -1. */
static int64_t htab_insert(struct htab *h, const char *name, int64_t idx, const char *(*name_of)(const cm_gguf *, int64_t),
                           const cm_gguf *g) {
    for (uint64_t s = hash_str(name) & h->mask;; s = (s + 1) & h->mask) {
        if (!h->slot[s]) {
            h->slot[s] = idx + 1;
            return -1;
        }
        if (!strcmp(name_of(g, h->slot[s] - 1), name)) return h->slot[s] - 1;
    }
}

static int64_t htab_find(const struct htab *h, const char *name, const char *(*name_of)(const cm_gguf *, int64_t),
                         const cm_gguf *g) {
    if (!h->slot) return -1;
    for (uint64_t s = hash_str(name) & h->mask; h->slot[s]; s = (s + 1) & h->mask)
        if (!strcmp(name_of(g, h->slot[s] - 1), name)) return h->slot[s] - 1;
    return -1;
}

static const char *kv_name(const cm_gguf *g, int64_t i) { return g->kvs[i].key; }
static const char *tensor_name(const cm_gguf *g, int64_t i) { return g->tensors[i].name; }

/* ---- checks over the stored tables ---- */

struct span {
    uint64_t off, end;
    int64_t idx;
};

static int cmp_span(const void *a, const void *b) {
    const struct span *x = a, *y = b;
    if (x->off != y->off) return x->off < y->off ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static int check_tables(cm_gguf *g) {
    int rc = CM_OK;
    struct span *spans = NULL;
    if ((rc = htab_init(&g->kv_index, g->n_kv)) || (rc = htab_init(&g->tensor_index, g->n_tensors))) goto fail;
    for (int64_t i = 0; i < g->n_kv; i++) {
        int64_t prev = htab_insert(&g->kv_index, g->kvs[i].key, i, kv_name, g);
        if (prev >= 0) {
            rc = cm_errorf(CM_EFORMAT, "%s: kv #%" PRId64 " key '%.64s' (at byte %" PRIu64 ") repeats kv #%" PRId64,
                           g->path, i, g->kvs[i].key, g->kvs[i].val_pos, prev);
            goto fail;
        }
    }
    if (g->n_tensors > 0 && g->data_start > g->size) {
        rc = cm_errorf(CM_EFORMAT,
                       "%s: the data section starts at byte %" PRIu64 " but the file has %" PRIu64
                       " bytes (truncated download?)",
                       g->path, g->data_start, g->size);
        goto fail;
    }
    spans = malloc((size_t)(g->n_tensors ? g->n_tensors : 1) * sizeof *spans);
    if (!spans) {
        rc = CM_ENOMEM;
        goto fail;
    }
    for (int64_t i = 0; i < g->n_tensors; i++) {
        cm_gguf_tensor *t = &g->tensors[i];
        int64_t prev = htab_insert(&g->tensor_index, t->name, i, tensor_name, g);
        if (prev >= 0) {
            rc = cm_errorf(CM_EFORMAT, "%s: tensor '%.64s' (#%" PRId64 ", info at byte %" PRIu64
                           ") has the same name as tensor #%" PRId64,
                           g->path, t->name, i, g->tensor_pos[i], prev);
            goto fail;
        }
        uint64_t left = g->size - g->data_start;
        if (t->offset > left || t->n_bytes > left - t->offset) {
            /* end may not fit in u64 for hostile offsets; print what does */
            uint64_t end;
            if (__builtin_add_overflow(g->data_start, t->offset, &end) ||
                __builtin_add_overflow(end, t->n_bytes, &end))
                rc = cm_errorf(CM_EFORMAT,
                               "%s: tensor '%.64s' (#%" PRId64 ") offset %" PRIu64 " (info at byte %" PRIu64
                               ") lies beyond the end of the file (%" PRIu64 " bytes)",
                               g->path, t->name, i, t->offset, g->tensor_pos[i], g->size);
            else
                rc = cm_errorf(CM_EFORMAT,
                               "%s: tensor '%.64s' (#%" PRId64 ") data ends at byte %" PRIu64 " but the file has %" PRIu64
                               " bytes (truncated download?)",
                               g->path, t->name, i, end, g->size);
            goto fail;
        }
        t->data = g->base + g->data_start + t->offset;
        spans[i] = (struct span){t->offset, t->offset + t->n_bytes, i};
    }
    qsort(spans, (size_t)g->n_tensors, sizeof *spans, cmp_span);
    for (int64_t i = 1; i < g->n_tensors; i++) {
        if (spans[i].off < spans[i - 1].end) {
            const cm_gguf_tensor *a = &g->tensors[spans[i - 1].idx], *b = &g->tensors[spans[i].idx];
            rc = cm_errorf(CM_EFORMAT,
                           "%s: tensor '%.64s' (#%" PRId64 ") data at offset %" PRIu64 " overlaps tensor '%.64s' (#%" PRId64
                           ") at offsets %" PRIu64 "..%" PRIu64,
                           g->path, b->name, spans[i].idx, b->offset, a->name, spans[i - 1].idx, a->offset,
                           spans[i - 1].end);
            goto fail;
        }
    }
fail:
    free(spans);
    return rc;
}

/* ---- open / close ---- */

static int open_common(cm_gguf *g) {
    struct parser p = {.g = g, .base = g->base, .size = g->size};
    int rc = parse(&p);
    if (rc) return rc;
    /* pass 1 proved the counts are bounded by the file size */
    if (p.n_str_bytes > SIZE_MAX || p.n_arr_strs > SIZE_MAX / sizeof(struct strref)) return CM_ENOMEM;
    g->arena = malloc(p.n_str_bytes ? (size_t)p.n_str_bytes : 1);
    g->strs = malloc(p.n_arr_strs ? (size_t)p.n_arr_strs * sizeof *g->strs : 1);
    g->kvs = calloc(g->n_kv ? (size_t)g->n_kv : 1, sizeof *g->kvs);
    g->tensors = calloc(g->n_tensors ? (size_t)g->n_tensors : 1, sizeof *g->tensors);
    g->tensor_pos = calloc(g->n_tensors ? (size_t)g->n_tensors : 1, sizeof *g->tensor_pos);
    if (!g->arena || !g->strs || !g->kvs || !g->tensors || !g->tensor_pos)
        return cm_errorf(CM_ENOMEM, "%s: out of memory for %" PRIu64 " bytes of metadata strings", g->path,
                         p.n_str_bytes);
    p.fill = true;
    if ((rc = parse(&p))) return rc;
    return check_tables(g);
}

static int new_gguf(const char *name, cm_gguf **out) {
    *out = NULL;
    cm_gguf *g = calloc(1, sizeof *g);
    if (!g) return CM_ENOMEM;
    g->path = strdup(name ? name : "(memory)");
    if (!g->path) {
        free(g);
        return CM_ENOMEM;
    }
    *out = g;
    return CM_OK;
}

int cm_gguf_open_memory(const void *data, size_t n_bytes, const char *name, cm_gguf **out) {
    cm_gguf *g;
    int rc = new_gguf(name, &g);
    *out = NULL;
    if (rc) return rc;
    g->base = data;
    g->size = n_bytes;
    if (!data && n_bytes) {
        rc = cm_errorf(CM_EINVAL, "%s: NULL buffer", g->path);
        goto fail;
    }
    if ((rc = open_common(g))) goto fail;
    *out = g;
    return CM_OK;
fail:
    cm_gguf_close(g);
    return rc;
}

int cm_gguf_open(const char *path, cm_gguf **out) {
    cm_gguf *g;
    int fd = -1;
    int rc = new_gguf(path, &g);
    *out = NULL;
    if (rc) return rc;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = cm_errorf(CM_EIO, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        rc = cm_errorf(CM_EIO, "%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = cm_errorf(CM_EIO, "%s: not a regular file", path);
        goto fail;
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        rc = cm_errorf(CM_EIO, "%s: %lld bytes do not fit in the address space", path, (long long)st.st_size);
        goto fail;
    }
    g->size = (uint64_t)st.st_size;
    if (g->size > 0) {
        void *m = mmap(NULL, (size_t)g->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            rc = cm_errorf(CM_EIO, "%s: cannot mmap %" PRIu64 " bytes: %s", path, g->size, strerror(errno));
            goto fail;
        }
        g->map = m;
        g->base = m;
    }
    close(fd);
    fd = -1;
    if ((rc = open_common(g))) goto fail;
    *out = g;
    return CM_OK;
fail:
    if (fd >= 0) close(fd);
    cm_gguf_close(g);
    return rc;
}

void cm_gguf_close(cm_gguf *g) {
    if (!g) return;
    if (g->map) munmap(g->map, (size_t)g->size);
    free(g->kv_index.slot);
    free(g->tensor_index.slot);
    free(g->kvs);
    free(g->tensors);
    free(g->tensor_pos);
    free(g->strs);
    free(g->arena);
    free(g->path);
    free(g);
}

/* ---- accessors ---- */

const char *cm_gguf_path(const cm_gguf *g) { return g->path; }
uint32_t cm_gguf_version(const cm_gguf *g) { return g->version; }
uint64_t cm_gguf_file_bytes(const cm_gguf *g) { return g->size; }
uint32_t cm_gguf_alignment(const cm_gguf *g) { return g->alignment; }
uint64_t cm_gguf_data_offset(const cm_gguf *g) { return g->data_start; }
int64_t cm_gguf_n_kv(const cm_gguf *g) { return g->n_kv; }

const char *cm_gguf_kv_key(const cm_gguf *g, int64_t i) {
    assert(i >= 0 && i < g->n_kv);
    return g->kvs[i].key;
}

int cm_gguf_kv_type(const cm_gguf *g, int64_t i) {
    assert(i >= 0 && i < g->n_kv);
    return g->kvs[i].type;
}

int64_t cm_gguf_find_kv(const cm_gguf *g, const char *key) { return htab_find(&g->kv_index, key, kv_name, g); }

static int lookup(const cm_gguf *g, const char *key, const struct kv **out) {
    int64_t i = cm_gguf_find_kv(g, key);
    if (i < 0) {
        *out = NULL;
        return cm_errorf(CM_ENOTFOUND, "%s: metadata key '%s' is missing", g->path, key);
    }
    *out = &g->kvs[i];
    return CM_OK;
}

static int type_error(const cm_gguf *g, const struct kv *kv, const char *expected) {
    if (kv->type == CM_GGUF_ARRAY)
        return cm_errorf(CM_EFORMAT, "%s: key '%s' (value at byte %" PRIu64 ") is an array of %s, expected %s",
                         g->path, kv->key, kv->val_pos, g_type_names[kv->elem_type], expected);
    return cm_errorf(CM_EFORMAT, "%s: key '%s' (value at byte %" PRIu64 ") has type %s, expected %s", g->path, kv->key,
                     kv->val_pos, g_type_names[kv->type], expected);
}

/* An integer kv as a sign and magnitude check: fits in [lo, hi]? */
static int get_int_in(const cm_gguf *g, const char *key, const char *want, int64_t lo, uint64_t hi, int64_t *si,
                      uint64_t *ui) {
    const struct kv *kv;
    int rc = lookup(g, key, &kv);
    if (rc) return rc;
    if (!is_int_type(kv->type)) return type_error(g, kv, want);
    if (is_signed_type(kv->type)) {
        if (kv->i < lo || (kv->i >= 0 && (uint64_t)kv->i > hi))
            return cm_errorf(CM_EFORMAT, "%s: key '%s' = %" PRId64 " (%s) does not fit in %s", g->path, key, kv->i,
                             g_type_names[kv->type], want);
        *si = kv->i;
        *ui = (uint64_t)kv->i;
    } else {
        if (kv->u > hi)
            return cm_errorf(CM_EFORMAT, "%s: key '%s' = %" PRIu64 " (%s) does not fit in %s", g->path, key, kv->u,
                             g_type_names[kv->type], want);
        *si = (int64_t)kv->u;
        *ui = kv->u;
    }
    return CM_OK;
}

int cm_gguf_get_u32(const cm_gguf *g, const char *key, uint32_t *out) {
    int64_t si = 0;
    uint64_t ui = 0;
    int rc = get_int_in(g, key, "u32", 0, UINT32_MAX, &si, &ui);
    if (rc) return rc;
    *out = (uint32_t)ui;
    return CM_OK;
}

int cm_gguf_get_i64(const cm_gguf *g, const char *key, int64_t *out) {
    int64_t si = 0;
    uint64_t ui = 0;
    int rc = get_int_in(g, key, "i64", INT64_MIN, INT64_MAX, &si, &ui);
    if (rc) return rc;
    *out = si;
    return CM_OK;
}

int cm_gguf_get_f32(const cm_gguf *g, const char *key, float *out) {
    const struct kv *kv;
    int rc = lookup(g, key, &kv);
    if (rc) return rc;
    if (kv->type != CM_GGUF_FLOAT32 && kv->type != CM_GGUF_FLOAT64) return type_error(g, kv, "f32 or f64");
    if (isfinite(kv->f) && fabs(kv->f) > FLT_MAX)
        return cm_errorf(CM_EFORMAT, "%s: key '%s' = %g (f64) does not fit in f32", g->path, key, kv->f);
    *out = (float)kv->f;
    return CM_OK;
}

int cm_gguf_get_bool(const cm_gguf *g, const char *key, bool *out) {
    const struct kv *kv;
    int rc = lookup(g, key, &kv);
    if (rc) return rc;
    if (kv->type != CM_GGUF_BOOL) return type_error(g, kv, "bool");
    *out = kv->u != 0;
    return CM_OK;
}

int cm_gguf_get_str(const cm_gguf *g, const char *key, const char **out, size_t *len) {
    const struct kv *kv;
    int rc = lookup(g, key, &kv);
    if (rc) return rc;
    if (kv->type != CM_GGUF_STRING) return type_error(g, kv, "string");
    *out = kv->str;
    if (len) *len = (size_t)kv->str_len;
    return CM_OK;
}

int cm_gguf_get_arr_info(const cm_gguf *g, const char *key, int *elem_type, uint64_t *n) {
    const struct kv *kv;
    int rc = lookup(g, key, &kv);
    if (rc) return rc;
    if (kv->type != CM_GGUF_ARRAY) return type_error(g, kv, "an array");
    if (elem_type) *elem_type = kv->elem_type;
    if (n) *n = kv->n;
    return CM_OK;
}

int cm_gguf_get_arr_str(const cm_gguf *g, const char *key, uint64_t i, const char **out, size_t *len) {
    const struct kv *kv;
    int rc = lookup(g, key, &kv);
    if (rc) return rc;
    if (kv->type != CM_GGUF_ARRAY || kv->elem_type != CM_GGUF_STRING) return type_error(g, kv, "an array of string");
    if (i >= kv->n)
        return cm_errorf(CM_ERANGE, "%s: key '%s' has %" PRIu64 " strings, index %" PRIu64 " is out of range", g->path,
                         key, kv->n, i);
    *out = kv->strs[i].s;
    if (len) *len = (size_t)kv->strs[i].len;
    return CM_OK;
}

int cm_gguf_get_arr_data(const cm_gguf *g, const char *key, const void **data, uint64_t *n) {
    const struct kv *kv;
    int rc = lookup(g, key, &kv);
    if (rc) return rc;
    if (kv->type != CM_GGUF_ARRAY || kv->elem_type == CM_GGUF_STRING) return type_error(g, kv, "a numeric array");
    *data = kv->arr;
    if (n) *n = kv->n;
    return CM_OK;
}

int64_t cm_gguf_n_tensors(const cm_gguf *g) { return g->n_tensors; }

const cm_gguf_tensor *cm_gguf_tensor_at(const cm_gguf *g, int64_t i) {
    assert(i >= 0 && i < g->n_tensors);
    return &g->tensors[i];
}

const cm_gguf_tensor *cm_gguf_find_tensor(const cm_gguf *g, const char *name) {
    int64_t i = htab_find(&g->tensor_index, name, tensor_name, g);
    return i < 0 ? NULL : &g->tensors[i];
}

/* ---- for the writer's copy_kv ---- */

int cm_gguf__kv_raw(const cm_gguf *g, int64_t i, struct cm_gguf_kv_raw *out) {
    assert(i >= 0 && i < g->n_kv);
    const struct kv *kv = &g->kvs[i];
    memset(out, 0, sizeof *out);
    out->key = kv->key;
    out->type = kv->type;
    out->elem_type = kv->elem_type;
    out->n = kv->n;
    out->str = kv->str;
    out->str_len = kv->str_len;
    out->arr = kv->arr;
    if (kv->type != CM_GGUF_STRING && kv->type != CM_GGUF_ARRAY)
        out->scalar = g->base + kv->val_pos; /* the raw little-endian bytes */
    return CM_OK;
}

int cm_gguf__kv_arr_str(const cm_gguf *g, int64_t i, uint64_t j, const char **s, uint64_t *len) {
    assert(i >= 0 && i < g->n_kv && g->kvs[i].type == CM_GGUF_ARRAY && j < g->kvs[i].n);
    *s = g->kvs[i].strs[j].s;
    *len = g->kvs[i].strs[j].len;
    return CM_OK;
}
