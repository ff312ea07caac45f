/* gguf_write.c - the GGUF writer: collects metadata and tensor shapes, then
 * streams a version 3 file.
 *
 * Output layout (little endian; see gguf.h): header | kvs in insertion order
 * | tensor infos in declaration order | zero padding to the alignment | each
 * tensor's data, every one starting at an aligned offset from the data
 * section start and followed by zero padding to the alignment. That is the
 * layout llama.cpp both writes and expects (it requires each tensor at the
 * offset implied by the previous ones).
 *
 * Each kv's value is encoded when it is set, so the writer holds only the
 * encoded metadata plus one tensor's data at a time. The file is written to
 * PATH.tmp and renamed over PATH only after every byte has been flushed, so a
 * failed write never leaves a partial PATH behind.
 *
 * Alignment is 32 unless general.alignment was set (as u32, a power of two). */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/status.h"
#include "gguf/gguf.h"
#include "gguf/gguf_internal.h"
#include "gguf/types.h"

/* llama.cpp rejects tensor names of GGML_MAX_NAME (64) bytes or more. */
#define MAX_TENSOR_NAME 63
#define DEFAULT_ALIGNMENT 32

struct buf {
    uint8_t *p;
    size_t n, cap;
};

struct wkv {
    char *key;
    struct buf val; /* u32 type | encoded value */
};

struct wtensor {
    char *name;
    int type, n_dims;
    int64_t ne[CM_GGUF_MAX_DIMS];
    uint64_t n_bytes, offset;
};

struct cm_gguf_writer {
    struct wkv *kvs;
    size_t n_kv, cap_kv;
    struct wtensor *ts;
    size_t n_t, cap_t;
    uint32_t alignment;
};

static int buf_reserve(struct buf *b, size_t more) {
    if (more <= b->cap - b->n) return CM_OK;
    if (more > SIZE_MAX / 2 - b->n) return CM_ENOMEM;
    size_t cap = b->cap ? b->cap : 64;
    while (cap - b->n < more) cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) return CM_ENOMEM;
    b->p = p;
    b->cap = cap;
    return CM_OK;
}

static int buf_put(struct buf *b, const void *src, size_t n) {
    int rc = buf_reserve(b, n);
    if (rc) return rc;
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
    return CM_OK;
}

static int buf_u32(struct buf *b, uint32_t v) {
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    return buf_put(b, x, 4);
}

static int buf_u64(struct buf *b, uint64_t v) {
    int rc = buf_u32(b, (uint32_t)v);
    return rc ? rc : buf_u32(b, (uint32_t)(v >> 32));
}

static int buf_str(struct buf *b, const char *s, uint64_t len) {
    int rc = buf_u64(b, len);
    return rc ? rc : buf_put(b, s, (size_t)len);
}

int cm_gguf_writer_create(cm_gguf_writer **out) {
    *out = calloc(1, sizeof **out);
    if (!*out) return CM_ENOMEM;
    (*out)->alignment = DEFAULT_ALIGNMENT;
    return CM_OK;
}

void cm_gguf_writer_destroy(cm_gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kvs[i].key);
        free(w->kvs[i].val.p);
    }
    for (size_t i = 0; i < w->n_t; i++) free(w->ts[i].name);
    free(w->kvs);
    free(w->ts);
    free(w);
}

/* Stores key with the encoded value `val` (ownership taken, also on error):
 * replaces the value of an existing key in place, so insertion order is the
 * order keys were first set. */
static int put_kv(cm_gguf_writer *w, const char *key, struct buf *val) {
    int rc = CM_OK;
    if (!key || !*key) {
        rc = cm_errorf(CM_EINVAL, "gguf writer: empty metadata key");
        goto fail;
    }
    for (size_t i = 0; i < w->n_kv; i++) {
        if (!strcmp(w->kvs[i].key, key)) {
            free(w->kvs[i].val.p);
            w->kvs[i].val = *val;
            return CM_OK;
        }
    }
    if (w->n_kv == w->cap_kv) {
        size_t cap = w->cap_kv ? w->cap_kv * 2 : 16;
        struct wkv *k = realloc(w->kvs, cap * sizeof *k);
        if (!k) {
            rc = CM_ENOMEM;
            goto fail;
        }
        w->kvs = k;
        w->cap_kv = cap;
    }
    char *copy = strdup(key);
    if (!copy) {
        rc = CM_ENOMEM;
        goto fail;
    }
    w->kvs[w->n_kv++] = (struct wkv){copy, *val};
    return CM_OK;
fail:
    free(val->p);
    return rc;
}

static int set_scalar(cm_gguf_writer *w, const char *key, int type, uint64_t bits) {
    struct buf b = {0};
    int rc = buf_u32(&b, (uint32_t)type);
    size_t size = cm_gguf_type_size(type);
    for (size_t i = 0; i < size && !rc; i++) {
        uint8_t x = (uint8_t)(bits >> (8 * i));
        rc = buf_put(&b, &x, 1);
    }
    if (rc) {
        free(b.p);
        return rc;
    }
    return put_kv(w, key, &b);
}

/* general.alignment must be a u32 power of two: llama.cpp reads it as u32. */
static int check_alignment_kv(cm_gguf_writer *w, const char *key, int type, uint64_t v) {
    if (!key || strcmp(key, "general.alignment")) return CM_OK;
    if (type != CM_GGUF_UINT32)
        return cm_errorf(CM_EINVAL, "gguf writer: general.alignment must be set as u32, not %s",
                         cm_gguf_type_name(type));
    if (v == 0 || (v & (v - 1)) || v > (1u << 30))
        return cm_errorf(CM_EINVAL, "gguf writer: general.alignment %" PRIu64 " is not a power of two in 1..2^30", v);
    w->alignment = (uint32_t)v;
    return CM_OK;
}

int cm_gguf_writer_set_u32(cm_gguf_writer *w, const char *key, uint32_t v) {
    int rc = check_alignment_kv(w, key, CM_GGUF_UINT32, v);
    return rc ? rc : set_scalar(w, key, CM_GGUF_UINT32, v);
}

int cm_gguf_writer_set_i32(cm_gguf_writer *w, const char *key, int32_t v) {
    int rc = check_alignment_kv(w, key, CM_GGUF_INT32, (uint64_t)(int64_t)v);
    return rc ? rc : set_scalar(w, key, CM_GGUF_INT32, (uint32_t)v);
}

int cm_gguf_writer_set_u64(cm_gguf_writer *w, const char *key, uint64_t v) {
    int rc = check_alignment_kv(w, key, CM_GGUF_UINT64, v);
    return rc ? rc : set_scalar(w, key, CM_GGUF_UINT64, v);
}

int cm_gguf_writer_set_f32(cm_gguf_writer *w, const char *key, float v) {
    uint32_t bits;
    memcpy(&bits, &v, 4);
    int rc = check_alignment_kv(w, key, CM_GGUF_FLOAT32, 0);
    return rc ? rc : set_scalar(w, key, CM_GGUF_FLOAT32, bits);
}

int cm_gguf_writer_set_bool(cm_gguf_writer *w, const char *key, bool v) {
    int rc = check_alignment_kv(w, key, CM_GGUF_BOOL, 0);
    return rc ? rc : set_scalar(w, key, CM_GGUF_BOOL, v ? 1 : 0);
}

int cm_gguf_writer_set_str(cm_gguf_writer *w, const char *key, const char *v) {
    struct buf b = {0};
    int rc = check_alignment_kv(w, key, CM_GGUF_STRING, 0);
    if (rc) return rc;
    if (!v) return cm_errorf(CM_EINVAL, "gguf writer: key '%s': NULL string", key);
    if ((rc = buf_u32(&b, CM_GGUF_STRING)) || (rc = buf_str(&b, v, strlen(v)))) {
        free(b.p);
        return rc;
    }
    return put_kv(w, key, &b);
}

int cm_gguf_writer_set_arr(cm_gguf_writer *w, const char *key, int elem_type, const void *data, uint64_t n) {
    struct buf b = {0};
    size_t esize = cm_gguf_type_size(elem_type);
    int rc = check_alignment_kv(w, key, CM_GGUF_ARRAY, 0);
    if (rc) return rc;
    if (esize == 0)
        return cm_errorf(CM_EINVAL, "gguf writer: key '%s': array element type %s is not numeric (use set_arr_str)",
                         key, cm_gguf_type_name(elem_type));
    if (n > SIZE_MAX / esize || (n && !data)) return cm_errorf(CM_EINVAL, "gguf writer: key '%s': bad array", key);
    if ((rc = buf_u32(&b, CM_GGUF_ARRAY)) || (rc = buf_u32(&b, (uint32_t)elem_type)) || (rc = buf_u64(&b, n)) ||
        (rc = buf_put(&b, data, (size_t)n * esize))) {
        free(b.p);
        return rc;
    }
    return put_kv(w, key, &b);
}

int cm_gguf_writer_set_arr_str(cm_gguf_writer *w, const char *key, const char *const *strs, const size_t *lens,
                               uint64_t n) {
    struct buf b = {0};
    int rc = check_alignment_kv(w, key, CM_GGUF_ARRAY, 0);
    if (rc) return rc;
    if (n && (!strs || !lens)) return cm_errorf(CM_EINVAL, "gguf writer: key '%s': NULL string array", key);
    if ((rc = buf_u32(&b, CM_GGUF_ARRAY)) || (rc = buf_u32(&b, CM_GGUF_STRING)) || (rc = buf_u64(&b, n))) goto fail;
    for (uint64_t i = 0; i < n; i++)
        if ((rc = buf_str(&b, strs[i], lens[i]))) goto fail;
    return put_kv(w, key, &b);
fail:
    free(b.p);
    return rc;
}

int cm_gguf_writer_copy_kv(cm_gguf_writer *w, const cm_gguf *src, int64_t i) {
    struct cm_gguf_kv_raw kv;
    struct buf b = {0};
    int rc = cm_gguf__kv_raw(src, i, &kv);
    if (rc) return rc;
    if (kv.type == CM_GGUF_UINT32) {
        const uint8_t *s = kv.scalar; /* only a u32 can be general.alignment */
        uint32_t v = (uint32_t)s[0] | (uint32_t)s[1] << 8 | (uint32_t)s[2] << 16 | (uint32_t)s[3] << 24;
        if ((rc = check_alignment_kv(w, kv.key, CM_GGUF_UINT32, v))) return rc;
    } else if ((rc = check_alignment_kv(w, kv.key, kv.type, 0))) {
        return rc;
    }
    if ((rc = buf_u32(&b, (uint32_t)kv.type))) goto fail;
    if (kv.type == CM_GGUF_STRING) {
        rc = buf_str(&b, kv.str, kv.str_len);
    } else if (kv.type == CM_GGUF_ARRAY) {
        if ((rc = buf_u32(&b, (uint32_t)kv.elem_type)) || (rc = buf_u64(&b, kv.n))) goto fail;
        if (kv.elem_type == CM_GGUF_STRING) {
            for (uint64_t j = 0; j < kv.n && !rc; j++) {
                const char *s;
                uint64_t len;
                cm_gguf__kv_arr_str(src, i, j, &s, &len);
                rc = buf_str(&b, s, len);
            }
        } else {
            /* the reader proved n * size fits inside the file */
            rc = buf_put(&b, kv.arr, (size_t)(kv.n * cm_gguf_type_size(kv.elem_type)));
        }
    } else {
        rc = buf_put(&b, kv.scalar, cm_gguf_type_size(kv.type));
    }
    if (rc) goto fail;
    return put_kv(w, kv.key, &b);
fail:
    free(b.p);
    return rc;
}

int cm_gguf_writer_add_tensor(cm_gguf_writer *w, const char *name, int type, int n_dims, const int64_t *ne) {
    if (!name || !*name || strlen(name) > MAX_TENSOR_NAME)
        return cm_errorf(CM_EINVAL, "gguf writer: tensor name '%s' must have 1..%d bytes", name ? name : "(null)",
                         MAX_TENSOR_NAME);
    int block = cm_type_block_elems(type);
    if (block == 0) return cm_errorf(CM_EINVAL, "gguf writer: tensor '%s': unknown type %d", name, type);
    if (n_dims < 1 || n_dims > CM_GGUF_MAX_DIMS)
        return cm_errorf(CM_EINVAL, "gguf writer: tensor '%s': n_dims %d, expected 1..%d", name, n_dims,
                         CM_GGUF_MAX_DIMS);
    uint64_t n_elems = 1;
    for (int d = 0; d < n_dims; d++)
        if (ne[d] <= 0 || __builtin_mul_overflow(n_elems, (uint64_t)ne[d], &n_elems) || n_elems > INT64_MAX)
            return cm_errorf(CM_EINVAL, "gguf writer: tensor '%s': dimension %d = %" PRId64 " is invalid", name, d,
                             ne[d]);
    if (ne[0] % block)
        return cm_errorf(CM_EINVAL, "gguf writer: tensor '%s': row length %" PRId64 " is not a multiple of %d (%s)",
                         name, ne[0], block, cm_type_name(type));
    uint64_t n_bytes;
    if (__builtin_mul_overflow((uint64_t)(n_elems / (uint64_t)block), (uint64_t)cm_type_block_bytes(type), &n_bytes))
        return cm_errorf(CM_EINVAL, "gguf writer: tensor '%s': size overflows", name);
    for (size_t i = 0; i < w->n_t; i++)
        if (!strcmp(w->ts[i].name, name))
            return cm_errorf(CM_EINVAL, "gguf writer: tensor '%s' declared twice", name);
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? w->cap_t * 2 : 64;
        struct wtensor *t = realloc(w->ts, cap * sizeof *t);
        if (!t) return CM_ENOMEM;
        w->ts = t;
        w->cap_t = cap;
    }
    struct wtensor *t = &w->ts[w->n_t];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return CM_ENOMEM;
    t->type = type;
    t->n_dims = n_dims;
    for (int d = 0; d < CM_GGUF_MAX_DIMS; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
    t->n_bytes = n_bytes;
    w->n_t++;
    return CM_OK;
}

static int put(FILE *f, const void *p, size_t n) { return n == 0 || fwrite(p, 1, n, f) == n ? CM_OK : CM_EIO; }

/* Zero bytes from `pos` up to the next multiple of the alignment. */
static int pad(FILE *f, uint64_t pos, uint32_t alignment) {
    static const uint8_t zeros[256];
    uint64_t n = (alignment - pos % alignment) % alignment;
    while (n) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        if (put(f, zeros, k)) return CM_EIO;
        n -= k;
    }
    return CM_OK;
}

int cm_gguf_writer_write(cm_gguf_writer *w, const char *path, cm_gguf_fill_fn fill, void *user) {
    int rc = CM_OK;
    FILE *f = NULL;
    char *tmp = NULL, *fbuf = NULL;
    uint8_t *data = NULL;
    struct buf head = {0};
    uint64_t max_bytes = 0, off = 0;
    const uint32_t al = w->alignment;

    /* data offsets: each tensor starts aligned, relative to the data section */
    for (size_t i = 0; i < w->n_t; i++) {
        w->ts[i].offset = off;
        uint64_t end = off + w->ts[i].n_bytes;
        if (end < off || end > UINT64_MAX - al) {
            rc = cm_errorf(CM_EINVAL, "gguf writer: %s: tensor data exceeds 2^64 bytes", path);
            goto fail;
        }
        off = (end + al - 1) / al * al;
        if (w->ts[i].n_bytes > max_bytes) max_bytes = w->ts[i].n_bytes;
    }
    if (max_bytes > SIZE_MAX) {
        rc = cm_errorf(CM_ENOMEM, "gguf writer: %s: tensor of %" PRIu64 " bytes does not fit in memory", path,
                       max_bytes);
        goto fail;
    }

    /* header, kvs, tensor infos: all in memory (they are small) */
    if ((rc = buf_put(&head, "GGUF", 4)) || (rc = buf_u32(&head, 3)) || (rc = buf_u64(&head, w->n_t)) ||
        (rc = buf_u64(&head, w->n_kv)))
        goto fail;
    for (size_t i = 0; i < w->n_kv; i++)
        if ((rc = buf_str(&head, w->kvs[i].key, strlen(w->kvs[i].key))) ||
            (rc = buf_put(&head, w->kvs[i].val.p, w->kvs[i].val.n)))
            goto fail;
    for (size_t i = 0; i < w->n_t; i++) {
        const struct wtensor *t = &w->ts[i];
        if ((rc = buf_str(&head, t->name, strlen(t->name))) || (rc = buf_u32(&head, (uint32_t)t->n_dims))) goto fail;
        for (int d = 0; d < t->n_dims; d++)
            if ((rc = buf_u64(&head, (uint64_t)t->ne[d]))) goto fail;
        if ((rc = buf_u32(&head, (uint32_t)t->type)) || (rc = buf_u64(&head, t->offset))) goto fail;
    }

    size_t plen = strlen(path);
    if (!(tmp = malloc(plen + 5))) {
        rc = CM_ENOMEM;
        goto fail;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    f = fopen(tmp, "wb");
    if (!f) {
        rc = cm_errorf(CM_EIO, "%s: cannot create: %s", tmp, strerror(errno));
        goto fail;
    }
    enum { FBUF = 1 << 20 };
    if ((fbuf = malloc(FBUF))) setvbuf(f, fbuf, _IOFBF, FBUF);
    if ((rc = put(f, head.p, head.n)) || (rc = pad(f, head.n, al))) goto io_fail;
    if (!(data = malloc(max_bytes ? (size_t)max_bytes : 1))) {
        rc = cm_errorf(CM_ENOMEM, "gguf writer: %s: no memory for a %" PRIu64 "-byte tensor", path, max_bytes);
        goto fail;
    }
    for (size_t i = 0; i < w->n_t; i++) {
        const struct wtensor *t = &w->ts[i];
        if ((rc = fill(user, (int64_t)i, t->name, data, t->n_bytes))) goto fail;
        if ((rc = put(f, data, (size_t)t->n_bytes)) || (rc = pad(f, t->offset + t->n_bytes, al))) goto io_fail;
    }
    /* flushed and synced before the rename, so PATH is never a partial file */
    if (fflush(f) || ferror(f) || fsync(fileno(f))) goto io_fail;
    int c = fclose(f);
    f = NULL;
    if (c) goto io_fail;
    if (rename(tmp, path)) {
        rc = cm_errorf(CM_EIO, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
        goto fail;
    }
    free(tmp);
    tmp = NULL;
    goto done;
io_fail:
    rc = cm_errorf(CM_EIO, "%s: write failed: %s", tmp, strerror(errno));
fail:
    if (f) fclose(f);
    f = NULL;
    if (tmp) unlink(tmp);
done:
    free(tmp);
    free(fbuf);
    free(data);
    free(head.p);
    return rc;
}
