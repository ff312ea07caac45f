/* tokenizer.c - SentencePiece-style and byte-level BPE tokenizers built from
 * GGUF `tokenizer.*` metadata (see tokenizer.h).
 *
 * Load time builds everything a tokenization needs, and nothing is allocated
 * afterwards except scratch that grows with the input:
 *   - one arena holding every token's text, in the form the algorithm works
 *     on: SentencePiece keeps the stored text (spaces as U+2581); byte-level
 *     BPE decodes normal tokens from GPT-2's byte-to-code-point mapping into
 *     raw bytes (control and user-defined tokens are stored raw already), so
 *     merging, matching and detokenizing all happen on plain bytes;
 *   - a text -> id hash map over those texts;
 *   - for BPE, a (left id, right id) -> (rank, merged id) hash map built from
 *     tokenizer.ggml.merges ("a b", rank = position);
 *   - the special tokens (control, user-defined, unknown) sorted longest
 *     first and bucketed by first byte, for the split that runs before the
 *     model's own algorithm.
 *
 * Tokenizing: text is cut at special tokens (user-defined ones always, as
 * Hugging Face and llama.cpp do; control and unknown ones only with
 * parse_special), leftmost match first, longest match at a position. Each
 * plain fragment then goes through:
 *   SPM: ' ' -> U+2581, a U+2581 prefix at the start and after each special
 *        token (add_space_prefix), split into UTF-8 symbols, then repeatedly
 *        merge the adjacent pair whose concatenation is the highest-scoring
 *        token (ties: leftmost); symbols that are not tokens become <0xXX>
 *        byte tokens.
 *   BPE: the pre-tokenizer regex cascade (pretok.c), then per piece start
 *        from single bytes and repeatedly apply the lowest-ranked merge
 *        (ties: leftmost).
 * Both merge loops use a binary heap of candidate pairs with lazy
 * invalidation: a popped pair is stale when either side changed since it
 * was pushed, which the summed byte size detects because symbols only grow.
 *
 * Where this departs from llama.cpp on purpose (identical on valid text):
 *   - invalid UTF-8 is kept byte for byte (no U+FFFD substitution), so
 *     byte-level BPE round-trips any input; SentencePiece makes each invalid
 *     byte its own symbol;
 *   - SentencePiece never merges into control, byte or unused pieces, as
 *     SentencePiece itself does not;
 *   - special tokens are matched leftmost first, then longest.
 *
 * A loaded tokenizer is read-only: cm_tokenize, cm_detokenize and the
 * lookups may run on several threads at once; all scratch is per call. */
#include "text/tokenizer.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/status.h"
#include "text/pretok.h"
#include "text/unicode.h"

enum { TT_UNDEFINED = 0, TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };
enum { KIND_SPM, KIND_BPE };

#define FLAG_EOG 1u

struct tok {
    uint32_t off, len; /* text in the arena */
    float score;
    uint8_t type;
    uint8_t flags;
};

struct merge_slot {
    uint64_t key; /* (left << 32 | right) + 1; 0 = empty */
    int32_t rank, merged;
};

struct cm_tokenizer {
    int kind;
    int n_vocab;
    struct tok *toks;   /* [n_vocab] */
    char *arena;
    size_t n_arena;

    int32_t *map;       /* text -> id, open addressing, -1 = empty */
    size_t map_mask;

    struct merge_slot *merges;
    size_t merges_mask;

    int32_t byte_tok[256]; /* token for a lone byte (SPM: <0xXX>), -1 if none */

    int32_t *specials;     /* special token ids, by first byte then length desc */
    uint32_t spec_start[257];

    cm_pretok *pretok;     /* BPE only */
    bool ignore_merges;

    int32_t bos, eos, unk;
    bool add_bos, add_space_prefix;
    bool spm_word_split; /* no mergeable piece holds U+2581 after another character */
};

/* ---- hashing ---- */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

static const char *tok_text(const cm_tokenizer *t, int32_t id) { return t->arena + t->toks[id].off; }

static int32_t map_find(const cm_tokenizer *t, const char *s, size_t n) {
    size_t i = hash_bytes(s, n) & t->map_mask;
    for (;;) {
        int32_t id = t->map[i];
        if (id < 0) return -1;
        if (t->toks[id].len == n && !memcmp(tok_text(t, id), s, n)) return id;
        i = (i + 1) & t->map_mask;
    }
}

/* On equal texts the normal token wins (it is the one merges produce),
 * otherwise the lower id stays. */
static void map_insert(cm_tokenizer *t, int32_t id) {
    const char *s = tok_text(t, id);
    size_t n = t->toks[id].len;
    size_t i = hash_bytes(s, n) & t->map_mask;
    for (;;) {
        int32_t cur = t->map[i];
        if (cur < 0) {
            t->map[i] = id;
            return;
        }
        if (t->toks[cur].len == n && !memcmp(tok_text(t, cur), s, n)) {
            if (t->toks[cur].type != TT_NORMAL && t->toks[id].type == TT_NORMAL) t->map[i] = id;
            return;
        }
        i = (i + 1) & t->map_mask;
    }
}

static const struct merge_slot *merge_find(const cm_tokenizer *t, int32_t a, int32_t b) {
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t i = hash_u64(key) & t->merges_mask;
    for (;;) {
        const struct merge_slot *s = &t->merges[i];
        if (s->key == 0) return NULL;
        if (s->key == key) return s;
        i = (i + 1) & t->merges_mask;
    }
}

/* Keeps the first (lowest-ranked) occurrence of a pair. */
static void merge_insert(cm_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t merged) {
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t i = hash_u64(key) & t->merges_mask;
    for (;;) {
        struct merge_slot *s = &t->merges[i];
        if (s->key == key) return;
        if (s->key == 0) {
            s->key = key, s->rank = rank, s->merged = merged;
            return;
        }
        i = (i + 1) & t->merges_mask;
    }
}

/* ---- loading ---- */

static int32_t get_token_id(const cm_gguf *g, const char *key, int n_vocab, int32_t dflt) {
    int64_t v;
    int rc = cm_gguf_get_i64(g, key, &v);
    if (rc == CM_ENOTFOUND) return dflt;
    if (rc != CM_OK) {
        CM_LOGW("tokenizer: %s: %s; ignored", key, cm_last_error(rc));
        return dflt;
    }
    if (v < 0 || v >= n_vocab) {
        /* -1 is a common way of writing "none". */
        if (v != -1) CM_LOGW("tokenizer: %s = %lld is outside the vocabulary (%d tokens); ignored", key, (long long)v, n_vocab);
        return -1;
    }
    return (int32_t)v;
}

static bool get_flag(const cm_gguf *g, const char *key, bool dflt) {
    bool v;
    return cm_gguf_get_bool(g, key, &v) == CM_OK ? v : dflt;
}

/* Reads element i of a numeric GGUF array as an integer. */
static int64_t arr_int(const void *data, int elem_type, uint64_t i) {
    const uint8_t *p = data;
    switch (elem_type) {
    case CM_GGUF_INT8: return (int8_t)p[i];
    case CM_GGUF_UINT8: return p[i];
    case CM_GGUF_INT16: { int16_t v; memcpy(&v, p + 2 * i, 2); return v; }
    case CM_GGUF_UINT16: { uint16_t v; memcpy(&v, p + 2 * i, 2); return v; }
    case CM_GGUF_INT32: { int32_t v; memcpy(&v, p + 4 * i, 4); return v; }
    case CM_GGUF_UINT32: { uint32_t v; memcpy(&v, p + 4 * i, 4); return v; }
    default: return 0;
    }
}

static bool is_eog_text(const char *s, size_t n) {
    static const char *const names[] = {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
        "<EOT>", "<|end_of_text|>", "<｜end▁of▁sentence｜>",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i]) == n && !memcmp(names[i], s, n)) return true;
    return false;
}

struct spec_key {
    uint8_t first;
    uint32_t len;
    int32_t id;
};

static int cmp_special(const void *pa, const void *pb) {
    const struct spec_key *a = pa, *b = pb;
    if (a->first != b->first) return a->first < b->first ? -1 : 1;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

static bool is_special_type(uint8_t ty) { return ty == TT_CONTROL || ty == TT_USER || ty == TT_UNKNOWN; }

static int build_specials(cm_tokenizer *t) {
    int n = 0;
    for (int i = 0; i < t->n_vocab; i++)
        if (is_special_type(t->toks[i].type) && t->toks[i].len > 0) n++;
    struct spec_key *keys = malloc((size_t)(n ? n : 1) * sizeof *keys);
    t->specials = malloc((size_t)(n ? n : 1) * sizeof *t->specials);
    if (!keys || !t->specials) {
        free(keys);
        return cm_errorf(CM_ENOMEM, "tokenizer: out of memory");
    }
    n = 0;
    for (int i = 0; i < t->n_vocab; i++)
        if (is_special_type(t->toks[i].type) && t->toks[i].len > 0)
            keys[n++] = (struct spec_key){(uint8_t)tok_text(t, i)[0], t->toks[i].len, i};
    qsort(keys, (size_t)n, sizeof *keys, cmp_special);
    memset(t->spec_start, 0, sizeof t->spec_start);
    for (int i = 0; i < n; i++) {
        t->specials[i] = keys[i].id;
        t->spec_start[keys[i].first + 1]++;
    }
    for (int b = 0; b < 256; b++) t->spec_start[b + 1] += t->spec_start[b];
    free(keys);
    return CM_OK;
}

static int load_merges(cm_tokenizer *t, const cm_gguf *g) {
    int et;
    uint64_t n;
    int rc = cm_gguf_get_arr_info(g, "tokenizer.ggml.merges", &et, &n);
    if (rc == CM_ENOTFOUND) {
        CM_LOGW("tokenizer: byte-level BPE vocabulary without tokenizer.ggml.merges; every byte will be its own token");
        n = 0;
    } else if (rc != CM_OK) {
        return rc;
    } else if (et != CM_GGUF_STRING) {
        return cm_errorf(CM_EFORMAT, "%s: tokenizer.ggml.merges is an array of type %d, expected strings",
                         cm_gguf_path(g), et);
    }
    if (n > (uint64_t)INT32_MAX) return cm_errorf(CM_EFORMAT, "%s: %llu merges is too many", cm_gguf_path(g), (unsigned long long)n);
    t->merges_mask = pow2_at_least((size_t)n * 2 + 1) - 1;
    t->merges = calloc(t->merges_mask + 1, sizeof *t->merges);
    if (!t->merges) return cm_errorf(CM_ENOMEM, "tokenizer: out of memory for %llu merges", (unsigned long long)n);
    char *buf = NULL;
    size_t cap = 0;
    uint64_t n_skipped = 0;
    for (uint64_t r = 0; r < n; r++) {
        const char *s;
        size_t len;
        rc = cm_gguf_get_arr_str(g, "tokenizer.ggml.merges", r, &s, &len);
        if (rc) goto out;
        /* "a b": the separator is the first space after the first byte. */
        const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
        if (!sp) {
            n_skipped++;
            continue;
        }
        if (len > cap) {
            char *nb = realloc(buf, len);
            if (!nb) {
                rc = cm_errorf(CM_ENOMEM, "tokenizer: out of memory");
                goto out;
            }
            buf = nb, cap = len;
        }
        size_t la = cm_bytelevel_decode(s, (size_t)(sp - s), buf, cap);
        size_t lb = cm_bytelevel_decode(sp + 1, len - (size_t)(sp - s) - 1, buf + la, cap - la);
        int32_t a = map_find(t, buf, la), b = map_find(t, buf + la, lb), m = map_find(t, buf, la + lb);
        /* A merge whose parts or result are not tokens can never help produce
         * a token; leaving it out keeps every merged symbol a real token. */
        if (a < 0 || b < 0 || m < 0) {
            n_skipped++;
            continue;
        }
        merge_insert(t, a, b, (int32_t)r, m);
    }
    if (n_skipped) CM_LOGD("tokenizer: %llu merges name pieces that are not tokens; skipped", (unsigned long long)n_skipped);
    rc = CM_OK;
out:
    free(buf);
    return rc;
}

static bool spm_mergeable(const cm_tokenizer *t, int32_t id);

/* True when no piece the merge loop can produce holds U+2581 right after a
 * character other than U+2581. Then no symbol can ever span the point where
 * a word starts (a U+2581 after something else), so each word can be merged
 * on its own: same result, but heaps of word size instead of text size. */
static bool spm_can_split_words(const cm_tokenizer *t) {
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (!spm_mergeable(t, id)) continue;
        const char *s = tok_text(t, id);
        uint32_t n = t->toks[id].len;
        for (uint32_t i = 1; i + 3 <= n; i++) {
            if (memcmp(s + i, "\xe2\x96\x81", 3)) continue;
            if (i < 3 || memcmp(s + i - 3, "\xe2\x96\x81", 3)) return false;
        }
    }
    return true;
}

int cm_tokenizer_load(const cm_gguf *g, cm_tokenizer **out) {
    *out = NULL;
    const char *path = cm_gguf_path(g) ? cm_gguf_path(g) : "(gguf)";
    const char *model;
    int rc = cm_gguf_get_str(g, "tokenizer.ggml.model", &model, NULL);
    if (rc == CM_ENOTFOUND)
        return cm_errorf(CM_ENOTFOUND, "%s: no tokenizer metadata (tokenizer.ggml.model is missing)", path);
    if (rc) return rc;
    int kind;
    if (!strcmp(model, "llama"))
        kind = KIND_SPM;
    else if (!strcmp(model, "gpt2"))
        kind = KIND_BPE;
    else
        return cm_errorf(CM_EUNSUPPORTED, "%s: tokenizer.ggml.model '%s' is not supported (llama and gpt2 are)", path, model);

    int et;
    uint64_t n;
    rc = cm_gguf_get_arr_info(g, "tokenizer.ggml.tokens", &et, &n);
    if (rc == CM_ENOTFOUND) return cm_errorf(CM_ENOTFOUND, "%s: no tokenizer.ggml.tokens", path);
    if (rc) return rc;
    if (et != CM_GGUF_STRING) return cm_errorf(CM_EFORMAT, "%s: tokenizer.ggml.tokens is not a string array", path);
    if (n == 0 || n > (1u << 26)) return cm_errorf(CM_EFORMAT, "%s: tokenizer.ggml.tokens has %llu entries", path, (unsigned long long)n);

    cm_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return cm_errorf(CM_ENOMEM, "tokenizer: out of memory");
    t->kind = kind;
    t->n_vocab = (int)n;
    t->toks = calloc(n, sizeof *t->toks);
    if (!t->toks) goto nomem;

    /* Types and scores first: the text form depends on the type. */
    const void *data;
    uint64_t n_arr;
    int et_types = -1;
    const void *types = NULL;
    if (cm_gguf_get_arr_info(g, "tokenizer.ggml.token_type", &et_types, &n_arr) == CM_OK) {
        if (n_arr != n || cm_gguf_get_arr_data(g, "tokenizer.ggml.token_type", &types, &n_arr) != CM_OK ||
            (et_types != CM_GGUF_INT32 && et_types != CM_GGUF_UINT32 && et_types != CM_GGUF_INT8 &&
             et_types != CM_GGUF_UINT8 && et_types != CM_GGUF_INT16 && et_types != CM_GGUF_UINT16)) {
            rc = cm_errorf(CM_EFORMAT, "%s: tokenizer.ggml.token_type must be %llu integers", path, (unsigned long long)n);
            goto fail;
        }
    }
    const void *scores = NULL;
    if (cm_gguf_get_arr_info(g, "tokenizer.ggml.scores", &et, &n_arr) == CM_OK) {
        if (n_arr != n || et != CM_GGUF_FLOAT32 || cm_gguf_get_arr_data(g, "tokenizer.ggml.scores", &data, &n_arr) != CM_OK) {
            rc = cm_errorf(CM_EFORMAT, "%s: tokenizer.ggml.scores must be %llu float32 values", path, (unsigned long long)n);
            goto fail;
        }
        scores = data;
    }

    /* Arena: decoded text is never longer than the stored text. */
    size_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        if ((rc = cm_gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s, &len))) goto fail;
        if (len > UINT32_MAX / 2 || total > UINT32_MAX / 2) {
            rc = cm_errorf(CM_EFORMAT, "%s: tokenizer.ggml.tokens is too large", path);
            goto fail;
        }
        total += len + 1;
    }
    t->arena = malloc(total ? total : 1);
    if (!t->arena) goto nomem;
    size_t pos = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        cm_gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s, &len);
        struct tok *tk = &t->toks[i];
        int64_t ty = types ? arr_int(types, et_types, i) : TT_NORMAL;
        tk->type = (ty >= TT_NORMAL && ty <= TT_BYTE) ? (uint8_t)ty : TT_UNDEFINED;
        if (scores) memcpy(&tk->score, (const char *)scores + 4 * i, 4);
        tk->off = (uint32_t)pos;
        if (kind == KIND_BPE && tk->type == TT_NORMAL)
            tk->len = (uint32_t)cm_bytelevel_decode(s, len, t->arena + pos, len);
        else
            memcpy(t->arena + pos, s, len), tk->len = (uint32_t)len;
        t->arena[pos + tk->len] = '\0';
        pos += tk->len + 1;
    }
    t->n_arena = pos;

    t->map_mask = pow2_at_least(n * 2) - 1;
    t->map = malloc((t->map_mask + 1) * sizeof *t->map);
    if (!t->map) goto nomem;
    memset(t->map, 0xff, (t->map_mask + 1) * sizeof *t->map);
    for (int i = 0; i < t->n_vocab; i++) map_insert(t, i);

    t->unk = get_token_id(g, "tokenizer.ggml.unknown_token_id", t->n_vocab, kind == KIND_SPM ? 0 : -1);
    t->bos = get_token_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, kind == KIND_SPM && n > 1 ? 1 : -1);
    t->eos = get_token_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, kind == KIND_SPM && n > 2 ? 2 : -1);
    t->add_bos = get_flag(g, "tokenizer.ggml.add_bos_token", kind == KIND_SPM) && t->bos >= 0;
    t->add_space_prefix = kind == KIND_SPM && get_flag(g, "tokenizer.ggml.add_space_prefix", true);

    /* Lone-byte tokens: SPM's <0xXX> byte fallback (or the byte itself as a
     * token), BPE's 256 base tokens. */
    for (int b = 0; b < 256; b++) {
        char one = (char)b, hex[8];
        int32_t id = -1;
        if (kind == KIND_SPM) {
            snprintf(hex, sizeof hex, "<0x%02X>", b);
            id = map_find(t, hex, 6);
        }
        if (id < 0) id = map_find(t, &one, 1);
        if (id < 0 && kind == KIND_SPM) id = t->unk;
        t->byte_tok[b] = id;
    }

    /* End of generation: the declared ids plus the usual end-of-turn texts,
     * which are forced to control so that they are never rendered as text. */
    int32_t eot = get_token_id(g, "tokenizer.ggml.eot_token_id", t->n_vocab, -1);
    int32_t eom = get_token_id(g, "tokenizer.ggml.eom_token_id", t->n_vocab, -1);
    if (t->eos >= 0) t->toks[t->eos].flags |= FLAG_EOG;
    if (eot >= 0) t->toks[eot].flags |= FLAG_EOG;
    if (eom >= 0) t->toks[eom].flags |= FLAG_EOG;
    for (int i = 0; i < t->n_vocab; i++) {
        struct tok *tk = &t->toks[i];
        if (tk->type != TT_NORMAL && is_eog_text(tok_text(t, i), tk->len)) {
            tk->flags |= FLAG_EOG;
            if (tk->type == TT_USER) tk->type = TT_CONTROL;
        }
    }

    if ((rc = build_specials(t))) goto fail;
    if (kind == KIND_SPM) t->spm_word_split = spm_can_split_words(t);

    if (kind == KIND_BPE) {
        const char *pre = NULL;
        if (cm_gguf_get_str(g, "tokenizer.ggml.pre", &pre, NULL) != CM_OK) pre = NULL;
        if ((rc = cm_pretok_create(pre, &t->pretok, NULL))) goto fail;
        t->ignore_merges = cm_pretok_ignore_merges(t->pretok);
        if ((rc = load_merges(t, g))) goto fail;
    }
    *out = t;
    return CM_OK;
nomem:
    rc = cm_errorf(CM_ENOMEM, "%s: out of memory loading a %llu-token vocabulary", path, (unsigned long long)n);
fail:
    cm_tokenizer_destroy(t);
    return rc;
}

void cm_tokenizer_destroy(cm_tokenizer *t) {
    if (!t) return;
    cm_pretok_destroy(t->pretok);
    free(t->specials);
    free(t->merges);
    free(t->map);
    free(t->arena);
    free(t->toks);
    free(t);
}

int cm_tokenizer_n_vocab(const cm_tokenizer *t) { return t->n_vocab; }
int32_t cm_tokenizer_bos(const cm_tokenizer *t) { return t->bos; }
int32_t cm_tokenizer_eos(const cm_tokenizer *t) { return t->eos; }
bool cm_tokenizer_add_bos(const cm_tokenizer *t) { return t->add_bos; }

bool cm_tokenizer_is_eog(const cm_tokenizer *t, int32_t token) {
    return token >= 0 && token < t->n_vocab && (t->toks[token].flags & FLAG_EOG);
}

bool cm_tokenizer_is_control(const cm_tokenizer *t, int32_t token) {
    return token >= 0 && token < t->n_vocab && t->toks[token].type == TT_CONTROL;
}

/* Looks the piece up as the tokenizer sees text: raw bytes for byte-level
 * BPE (" hello" finds "Ġhello"), the stored form for SentencePiece
 * ("▁hello"); control tokens are found by their text in both. */
int32_t cm_tokenizer_find(const cm_tokenizer *t, const char *piece) {
    return map_find(t, piece, strlen(piece));
}

/* ---- tokenizing ---- */

struct sym {
    int32_t prev, next;
    uint32_t off, n; /* bytes in the fragment buffer; n == 0 once merged away */
    int32_t id;      /* BPE: current token */
};

struct cand {
    float key;       /* larger first: SPM score, BPE -rank */
    int32_t left, right;
    uint32_t size;   /* left.n + right.n when pushed */
    int32_t id;      /* token of the merged pair */
};

struct scratch {
    char *buf;
    size_t buf_cap;
    struct sym *syms;
    size_t syms_cap;
    struct cand *heap;
    size_t heap_cap, heap_n;
    cm_span *spans, *spans2;
    size_t spans_cap, spans2_cap;
};

struct emit {
    int32_t *out;
    int n_max;
    int64_t n;
};

static void emit(struct emit *e, int32_t id) {
    if (e->n < e->n_max) e->out[e->n] = id;
    e->n++;
}

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return CM_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *np = realloc(*p, c * elem);
    if (!np) return cm_errorf(CM_ENOMEM, "tokenizer: out of memory for %zu-byte scratch", c * elem);
    *p = np, *cap = c;
    return CM_OK;
}

static int reserve_syms(struct scratch *s, size_t n_syms) {
    int rc = grow((void **)&s->syms, &s->syms_cap, n_syms, sizeof *s->syms);
    if (!rc) rc = grow((void **)&s->heap, &s->heap_cap, 3 * n_syms + 1, sizeof *s->heap);
    return rc;
}

static bool cand_before(const struct cand *a, const struct cand *b) {
    return a->key > b->key || (a->key == b->key && a->left < b->left);
}

static void heap_push(struct scratch *s, struct cand c) {
    /* Capacity: n-1 initial pairs plus at most two per merge (< 3n). */
    size_t i = s->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_before(&c, &s->heap[p])) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = c;
}

static struct cand heap_pop(struct scratch *s) {
    struct cand top = s->heap[0], last = s->heap[--s->heap_n];
    size_t i = 0, n = s->heap_n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const struct cand *best = &last;
        if (l < n && cand_before(&s->heap[l], best)) m = l, best = &s->heap[l];
        if (r < n && cand_before(&s->heap[r], best)) m = r;
        if (m == i) break;
        s->heap[i] = s->heap[m];
        i = m;
    }
    if (n) s->heap[i] = last;
    return top;
}

static bool spm_mergeable(const cm_tokenizer *t, int32_t id) {
    /* SentencePiece merges only normal and user-defined pieces; control,
     * byte and unused pieces never come out of the merge loop. */
    return id >= 0 && (t->toks[id].type == TT_NORMAL || t->toks[id].type == TT_USER);
}

static void spm_try_pair(const cm_tokenizer *t, struct scratch *s, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const struct sym *a = &s->syms[l], *b = &s->syms[r];
    int32_t id = map_find(t, s->buf + a->off, a->n + b->n);
    if (!spm_mergeable(t, id)) return;
    heap_push(s, (struct cand){t->toks[id].score, l, r, a->n + b->n, id});
}

/* Merges s->buf[start..start+n) (SentencePiece) and emits its tokens. */
static int spm_segment(const cm_tokenizer *t, struct scratch *s, size_t start, size_t n, struct emit *e) {
    int rc = reserve_syms(s, n);
    if (rc) return rc;
    int32_t n_syms = 0;
    for (size_t off = start; off < start + n;) {
        /* A valid UTF-8 character is one symbol; a byte that does not start
         * one is a symbol of its own, so it cannot swallow the next character
         * (the lead-byte-length rule alone would). */
        uint32_t cp;
        size_t cl = (size_t)cm_utf8_decode((const uint8_t *)s->buf + off, start + n - off, &cp);
        if (cl == 0) cl = 1;
        s->syms[n_syms] = (struct sym){n_syms - 1, -1, (uint32_t)off, (uint32_t)cl, -1};
        if (n_syms > 0) s->syms[n_syms - 1].next = n_syms;
        n_syms++;
        off += cl;
    }
    s->heap_n = 0;
    for (int32_t i = 1; i < n_syms; i++) spm_try_pair(t, s, i - 1, i);
    while (s->heap_n) {
        struct cand c = heap_pop(s);
        struct sym *a = &s->syms[c.left], *b = &s->syms[c.right];
        if (a->n == 0 || b->n == 0 || a->next != c.right || a->n + b->n != c.size) continue;
        a->n += b->n;
        b->n = 0;
        a->next = b->next;
        if (b->next >= 0) s->syms[b->next].prev = c.left;
        spm_try_pair(t, s, a->prev, c.left);
        spm_try_pair(t, s, c.left, a->next);
    }
    for (int32_t i = 0; i != -1; i = s->syms[i].next) {
        const struct sym *a = &s->syms[i];
        int32_t id = map_find(t, s->buf + a->off, a->n);
        if (spm_mergeable(t, id)) {
            emit(e, id);
            continue;
        }
        for (uint32_t k = 0; k < a->n; k++) {
            int32_t b = t->byte_tok[(uint8_t)s->buf[a->off + k]];
            if (b >= 0) emit(e, b);
        }
    }
    return CM_OK;
}

/* One plain-text fragment, SentencePiece style. */
static int spm_fragment(const cm_tokenizer *t, struct scratch *s, const char *text, size_t len, bool prefix,
                        struct emit *e) {
    static const char kSpace[3] = {'\xe2', '\x96', '\x81'}; /* U+2581 */
    int rc = grow((void **)&s->buf, &s->buf_cap, 3 * len + 3, 1);
    if (rc) return rc;
    size_t n = 0;
    if (prefix) memcpy(s->buf, kSpace, 3), n = 3;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ')
            memcpy(s->buf + n, kSpace, 3), n += 3;
        else
            s->buf[n++] = text[i];
    }
    if (n == 0) return CM_OK;
    if (!t->spm_word_split) return spm_segment(t, s, 0, n, e);
    size_t start = 0;
    for (size_t i = 3; i + 3 <= n; i++) {
        if (!memcmp(s->buf + i, kSpace, 3) && memcmp(s->buf + i - 3, kSpace, 3)) {
            if ((rc = spm_segment(t, s, start, i - start, e))) return rc;
            start = i;
        }
    }
    return spm_segment(t, s, start, n - start, e);
}

static void bpe_try_pair(const cm_tokenizer *t, struct scratch *s, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const struct sym *a = &s->syms[l], *b = &s->syms[r];
    if (a->id < 0 || b->id < 0) return;
    const struct merge_slot *m = merge_find(t, a->id, b->id);
    if (!m) return;
    heap_push(s, (struct cand){-(float)m->rank, l, r, a->n + b->n, m->merged});
}

/* One pre-tokenizer piece, byte-level BPE. */
static int bpe_piece(const cm_tokenizer *t, struct scratch *s, const char *p, size_t len, struct emit *e) {
    if (t->ignore_merges) {
        int32_t id = map_find(t, p, len);
        if (id >= 0 && t->toks[id].type == TT_NORMAL) {
            emit(e, id);
            return CM_OK;
        }
    }
    if (len == 1) {
        if (t->byte_tok[(uint8_t)p[0]] >= 0) emit(e, t->byte_tok[(uint8_t)p[0]]);
        return CM_OK;
    }
    int rc = reserve_syms(s, len);
    if (rc) return rc;
    int32_t n_syms = (int32_t)len;
    for (int32_t i = 0; i < n_syms; i++)
        s->syms[i] = (struct sym){i - 1, i + 1 < n_syms ? i + 1 : -1, (uint32_t)i, 1, t->byte_tok[(uint8_t)p[i]]};
    s->heap_n = 0;
    for (int32_t i = 1; i < n_syms; i++) bpe_try_pair(t, s, i - 1, i);
    while (s->heap_n) {
        struct cand c = heap_pop(s);
        struct sym *a = &s->syms[c.left], *b = &s->syms[c.right];
        if (a->n == 0 || b->n == 0 || a->next != c.right || a->n + b->n != c.size) continue;
        a->n += b->n;
        a->id = c.id;
        b->n = 0;
        a->next = b->next;
        if (b->next >= 0) s->syms[b->next].prev = c.left;
        bpe_try_pair(t, s, a->prev, c.left);
        bpe_try_pair(t, s, c.left, a->next);
    }
    for (int32_t i = 0; i != -1; i = s->syms[i].next) {
        const struct sym *a = &s->syms[i];
        if (a->id >= 0) {
            emit(e, a->id);
            continue;
        }
        /* Only a byte with no base token gets here; it is dropped, as there
         * is no token that could stand for it. */
    }
    return CM_OK;
}

static int bpe_fragment(const cm_tokenizer *t, struct scratch *s, const char *text, size_t len, struct emit *e) {
    if (len == 0) return CM_OK;
    int rc = grow((void **)&s->spans, &s->spans_cap, len, sizeof *s->spans);
    if (!rc) rc = grow((void **)&s->spans2, &s->spans2_cap, len, sizeof *s->spans2);
    if (rc) return rc;
    size_t n_spans;
    if ((rc = cm_pretok_split(t->pretok, text, len, s->spans, s->spans2, &n_spans))) return rc;
    for (size_t i = 0; i < n_spans; i++)
        if ((rc = bpe_piece(t, s, text + s->spans[i].off, s->spans[i].len, e))) return rc;
    return CM_OK;
}

/* The longest special token starting at text[pos], or -1. */
static int32_t match_special(const cm_tokenizer *t, const char *text, size_t len, size_t pos, bool parse_special) {
    uint8_t b = (uint8_t)text[pos];
    for (uint32_t k = t->spec_start[b]; k < t->spec_start[b + 1]; k++) {
        int32_t id = t->specials[k];
        const struct tok *tk = &t->toks[id];
        if (tk->type != TT_USER && !parse_special) continue;
        if (tk->len <= len - pos && !memcmp(text + pos, tok_text(t, id), tk->len)) return id;
    }
    return -1;
}

int cm_tokenize(const cm_tokenizer *t, const char *text, size_t len, bool add_bos, bool parse_special, int32_t *out,
                int n_max, int *n_out) {
    *n_out = 0;
    if (len > (size_t)INT_MAX / 4) return cm_errorf(CM_ERANGE, "tokenizer: a %zu-byte text is too long", len);
    if (n_max < 0 || (n_max > 0 && !out)) return cm_errorf(CM_EINVAL, "tokenizer: bad output buffer");
    struct emit e = {out, n_max, 0};
    struct scratch s = {0};
    int rc = CM_OK;
    if (add_bos && t->bos >= 0) emit(&e, t->bos);

    bool after_special = true; /* SPM: a space prefix starts the text and follows each special token */
    size_t frag = 0;
    for (size_t pos = 0; pos <= len;) {
        int32_t sp = -1;
        if (pos < len && t->spec_start[(uint8_t)text[pos] + 1] > t->spec_start[(uint8_t)text[pos]])
            sp = match_special(t, text, len, pos, parse_special);
        if (sp < 0 && pos < len) {
            pos++;
            continue;
        }
        if (pos > frag) {
            if (t->kind == KIND_SPM)
                rc = spm_fragment(t, &s, text + frag, pos - frag, t->add_space_prefix && after_special, &e);
            else
                rc = bpe_fragment(t, &s, text + frag, pos - frag, &e);
            if (rc) goto done;
            after_special = false;
        }
        if (sp < 0) break; /* pos == len */
        emit(&e, sp);
        after_special = true;
        pos += t->toks[sp].len;
        frag = pos;
    }
    *n_out = e.n > INT_MAX ? INT_MAX : (int)e.n;
    if (e.n > n_max) rc = CM_ERANGE;
done:
    free(s.buf);
    free(s.syms);
    free(s.heap);
    free(s.spans);
    free(s.spans2);
    return rc;
}

/* ---- detokenizing ---- */

static int put(char *buf, int n_buf, int at, const char *src, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((size_t)at + i < (size_t)n_buf) buf[at + i] = src[i];
    return (int)n;
}

/* Writes the piece at buf+at (clipped to n_buf); strip_space drops one
 * leading space. Returns the piece's full length. */
static int piece_at(const cm_tokenizer *t, int32_t token, char *buf, int n_buf, int at, bool render_special,
                    bool strip_space) {
    const struct tok *tk = &t->toks[token];
    const char *s = tok_text(t, token);
    switch (tk->type) {
    case TT_CONTROL:
    case TT_UNKNOWN:
        return render_special ? put(buf, n_buf, at, s, tk->len) : 0;
    case TT_USER:
        return put(buf, n_buf, at, s, tk->len);
    case TT_BYTE:
        if (t->kind == KIND_SPM && tk->len == 6 && !memcmp(s, "<0x", 3)) {
            char byte = (char)strtol(s + 3, NULL, 16);
            return put(buf, n_buf, at, &byte, 1);
        }
        return put(buf, n_buf, at, s, tk->len);
    case TT_NORMAL:
    case TT_UNDEFINED:
        break;
    default: /* unused */
        return 0;
    }
    if (t->kind == KIND_BPE) return put(buf, n_buf, at, s, tk->len);
    /* SentencePiece: U+2581 is a space. */
    int n = 0;
    size_t i = 0;
    if (strip_space && tk->len >= 3 && !memcmp(s, "\xe2\x96\x81", 3)) i = 3;
    else if (strip_space && tk->len && s[0] == ' ') i = 1;
    while (i < tk->len) {
        if (tk->len - i >= 3 && !memcmp(s + i, "\xe2\x96\x81", 3)) {
            n += put(buf, n_buf, at + n, " ", 1);
            i += 3;
        } else {
            n += put(buf, n_buf, at + n, s + i, 1);
            i++;
        }
    }
    return n;
}

int cm_token_to_piece(const cm_tokenizer *t, int32_t token, char *buf, int n_buf, bool render_special) {
    if (token < 0 || token >= t->n_vocab)
        return cm_errorf(CM_EINVAL, "tokenizer: token %d is outside the vocabulary (%d tokens)", token, t->n_vocab);
    if (n_buf < 0 || (n_buf > 0 && !buf)) return cm_errorf(CM_EINVAL, "tokenizer: bad output buffer");
    return piece_at(t, token, buf, n_buf, 0, render_special, false);
}

int cm_detokenize(const cm_tokenizer *t, const int32_t *tokens, int n, char *buf, int n_buf, bool render_special) {
    if (n_buf < 0 || (n_buf > 0 && !buf) || n < 0 || (n > 0 && !tokens))
        return cm_errorf(CM_EINVAL, "tokenizer: bad detokenize arguments");
    /* The space SentencePiece put in front of the text comes off the first
     * piece that produces any bytes, i.e. after BOS and other control
     * tokens that render as nothing. */
    bool strip = t->kind == KIND_SPM && t->add_space_prefix;
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= t->n_vocab)
            return cm_errorf(CM_EINVAL, "tokenizer: token %d (position %d) is outside the vocabulary (%d tokens)",
                             tokens[i], i, t->n_vocab);
        int at = total > INT_MAX ? INT_MAX : (int)total;
        int k = piece_at(t, tokens[i], buf, n_buf, at, render_special, strip);
        if (k > 0 || (strip && t->toks[tokens[i]].type != TT_CONTROL && t->toks[tokens[i]].type != TT_UNKNOWN))
            strip = false;
        total += k;
        if (total > INT_MAX) return cm_errorf(CM_ERANGE, "tokenizer: detokenized text exceeds 2 GiB");
    }
    return (int)total;
}
