/* fuzz_tokenize.c - fuzz target for the tokenizers: arbitrary bytes (invalid
 * UTF-8 included) through small built-in vocabularies, one byte-level BPE
 * per pre-tokenizer family and one SentencePiece. Checks that tokenizing
 * never fails or reads out of bounds, that every id is in the vocabulary,
 * and that detokenize(tokenize(x)) == x: always for byte-level BPE, and for
 * SentencePiece when x holds no U+2581 (which SentencePiece itself turns
 * into a space). The vocabularies are encoded as GGUF in memory here.
 *
 * Input: byte 0 picks the vocabulary (low 2 bits) and parse_special (bit 2);
 * the rest is the text. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "gguf/gguf.h"
#include "text/tokenizer.h"
#include "text/unicode.h"

struct buf {
    uint8_t *p;
    size_t n, cap;
};

static void put(struct buf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 256;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void put_u32(struct buf *b, uint32_t v) { put(b, &v, 4); } /* little-endian hosts only */
static void put_u64(struct buf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(struct buf *b, const char *s, size_t n) {
    put_u64(b, n);
    put(b, s, n);
}
static void kv_head(struct buf *b, const char *key, uint32_t type) {
    put_str(b, key, strlen(key));
    put_u32(b, type);
}

enum { V_BPE_GPT2, V_BPE_LLAMA3, V_BPE_QWEN2, V_SPM, N_VOCABS };

static uint8_t *g_file[N_VOCABS];
static cm_gguf *g_gguf[N_VOCABS];
static cm_tokenizer *g_tok[N_VOCABS];

static void build_bpe(struct buf *b, const char *pre) {
    static const char *extra[] = {"he", "ll", "hell", "hello", "\xc4\xa0t", "\xc4\xa0the", "in", "ing", "\xc4\xa0\xc4\xa0",
                                  "<|endoftext|>", "<u>"};
    static const char *merges[] = {"h e", "l l", "he ll", "hell o", "\xc4\xa0 t", "\xc4\xa0t he", "i n", "in g",
                                   "\xc4\xa0 \xc4\xa0", "t h", "e h"};
    const int n_extra = sizeof extra / sizeof extra[0], n_merges = sizeof merges / sizeof merges[0];
    const uint64_t n = 256 + (uint64_t)n_extra;
    put(b, "GGUF", 4);
    put_u32(b, 3);
    put_u64(b, 0);
    put_u64(b, 5);
    kv_head(b, "tokenizer.ggml.model", CM_GGUF_STRING);
    put_str(b, "gpt2", 4);
    kv_head(b, "tokenizer.ggml.pre", CM_GGUF_STRING);
    put_str(b, pre, strlen(pre));
    kv_head(b, "tokenizer.ggml.tokens", CM_GGUF_ARRAY);
    put_u32(b, CM_GGUF_STRING);
    put_u64(b, n);
    for (int i = 0; i < 256; i++) {
        char s[4];
        int k = cm_utf8_encode(cm_bytelevel_cp((uint8_t)i), s);
        put_str(b, s, (size_t)k);
    }
    for (int i = 0; i < n_extra; i++) put_str(b, extra[i], strlen(extra[i]));
    kv_head(b, "tokenizer.ggml.token_type", CM_GGUF_ARRAY);
    put_u32(b, CM_GGUF_INT32);
    put_u64(b, n);
    for (uint64_t i = 0; i < n; i++) put_u32(b, i == n - 2 ? 3 : i == n - 1 ? 4 : 1);
    kv_head(b, "tokenizer.ggml.merges", CM_GGUF_ARRAY);
    put_u32(b, CM_GGUF_STRING);
    put_u64(b, (uint64_t)n_merges);
    for (int i = 0; i < n_merges; i++) put_str(b, merges[i], strlen(merges[i]));
}

static void build_spm(struct buf *b) {
    static const char *pieces[] = {"\xe2\x96\x81", "a", "b", "c", "ab", "abc", "\xe2\x96\x81" "a", "\xe2\x96\x81" "ab",
                                   "\xc3\xa9", "x"};
    const int n_pieces = sizeof pieces / sizeof pieces[0];
    const uint64_t n = 3 + 256 + (uint64_t)n_pieces;
    put(b, "GGUF", 4);
    put_u32(b, 3);
    put_u64(b, 0);
    put_u64(b, 4);
    kv_head(b, "tokenizer.ggml.model", CM_GGUF_STRING);
    put_str(b, "llama", 5);
    kv_head(b, "tokenizer.ggml.tokens", CM_GGUF_ARRAY);
    put_u32(b, CM_GGUF_STRING);
    put_u64(b, n);
    put_str(b, "<unk>", 5);
    put_str(b, "<s>", 3);
    put_str(b, "</s>", 4);
    for (int i = 0; i < 256; i++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", i);
        put_str(b, s, 6);
    }
    for (int i = 0; i < n_pieces; i++) put_str(b, pieces[i], strlen(pieces[i]));
    kv_head(b, "tokenizer.ggml.scores", CM_GGUF_ARRAY);
    put_u32(b, CM_GGUF_FLOAT32);
    put_u64(b, n);
    for (uint64_t i = 0; i < n; i++) {
        float s = i < 259 ? 0.0f : -(float)((i * 7) % 5) - 1.0f;
        put(b, &s, 4);
    }
    kv_head(b, "tokenizer.ggml.token_type", CM_GGUF_ARRAY);
    put_u32(b, CM_GGUF_INT32);
    put_u64(b, n);
    for (uint64_t i = 0; i < n; i++) put_u32(b, i == 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1);
}

static void setup(void) {
    if (g_tok[0]) return;
    for (int v = 0; v < N_VOCABS; v++) {
        struct buf b = {0};
        if (v == V_SPM) build_spm(&b);
        else build_bpe(&b, v == V_BPE_GPT2 ? "gpt-2" : v == V_BPE_LLAMA3 ? "llama-bpe" : "qwen2");
        while (b.n % 32) put(&b, "", 1);
        g_file[v] = b.p;
        if (cm_gguf_open_memory(b.p, b.n, "fuzz-vocab.gguf", &g_gguf[v]) != CM_OK ||
            cm_tokenizer_load(g_gguf[v], &g_tok[v]) != CM_OK) {
            fprintf(stderr, "fuzz_tokenize: built-in vocabulary %d: %s\n", v, cm_last_error(CM_EFORMAT));
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    setup();
    if (size == 0) return 0;
    const int v = data[0] & 3;
    const bool special = (data[0] >> 2) & 1;
    const char *text = (const char *)data + 1;
    const size_t len = size - 1;
    const cm_tokenizer *t = g_tok[v];

    int n = 0;
    int rc = cm_tokenize(t, text, len, false, special, NULL, 0, &n);
    if (rc != CM_OK && rc != CM_ERANGE) __builtin_trap();
    if (n < 0 || (size_t)n > 2 * len + 2) __builtin_trap();
    int32_t *ids = malloc(sizeof *ids * (size_t)(n + 1));
    int n2 = -1;
    if (cm_tokenize(t, text, len, false, special, ids, n, &n2) != CM_OK || n2 != n) __builtin_trap();
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= cm_tokenizer_n_vocab(t)) __builtin_trap();

    /* Rendering control tokens gives back their text, so the round trip
     * holds with parse_special too. */
    int need = cm_detokenize(t, ids, n, NULL, 0, true);
    if (need < 0) __builtin_trap();
    char *back = malloc((size_t)need + 1);
    if (cm_detokenize(t, ids, n, back, need, true) != need) __builtin_trap();
    bool check = v != V_SPM || (!special && !memmem(text, len, "\xe2\x96\x81", 3));
    if (check && ((size_t)need != len || memcmp(back, text, len))) {
        fprintf(stderr, "fuzz_tokenize: vocabulary %d: %zu bytes came back as %d different bytes:", v, len, need);
        for (size_t i = 0; i < len; i++) fprintf(stderr, " %02x", (uint8_t)text[i]);
        fputc('\n', stderr);
        __builtin_trap();
    }
    /* Pieces of arbitrary ids, in range or not, never crash. */
    char piece[8];
    for (size_t i = 0; i + 1 < len && i < 16; i += 2) {
        int32_t id = (int32_t)(((uint8_t)text[i] << 8 | (uint8_t)text[i + 1]) % 300) - 10;
        (void)cm_token_to_piece(t, id, piece, (int)(i % 9), i & 2);
    }
    free(back);
    free(ids);
    return 0;
}

size_t cm_fuzz_seed(int i, uint8_t *buf, size_t cap) {
    static const char *seeds[] = {
        "\x00hello the thing",   "\x01Hello World! it's 123456 <u>",   "\x02\xe4\xbd\xa0\xe5\xa5\xbd  \n\n\t x",
        ("\x03" "abc ab a \xc3\xa9x"), "\x04<|endoftext|>hello<|endoftext|>", "\x01\xff\xfe\x80\xc3 \xe2\x82",
        "\x02   \r\n  leading and trailing   ",
    };
    if (i < 0 || i >= (int)(sizeof seeds / sizeof seeds[0])) return 0;
    size_t n = strlen(seeds[i] + 1) + 1;
    if (n > cap) n = cap;
    memcpy(buf, seeds[i], n);
    return n;
}
