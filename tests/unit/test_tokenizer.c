/* test_tokenizer.c - tokenizers against hand-computed results on tiny
 * synthetic vocabularies (always run), and against the expected token ids
 * of real vocabularies under $CELLM_TESTDATA/vocab (skipped, saying so,
 * when that folder is absent). Llama 3 and Qwen2 vocabularies come as
 * Hugging Face tokenizer.json files and go through the importer first. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "gguf/gguf.h"
#include "test.h"
#include "text/hf_import.h"
#include "text/tokenizer.h"
#include "text/unicode.h"

/* ---- helpers ---- */

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)sz + 1);
    size_t got = fread(buf, 1, (size_t)sz, f);
    fclose(f);
    buf[got] = '\0';
    *n = got;
    return buf;
}

static bool file_exists(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f) fclose(f);
    return f != NULL;
}

/* Tokenizes into a fresh array; returns the count or -1. */
static int tok(const cm_tokenizer *t, const char *s, size_t n, bool bos, bool special, int32_t **ids) {
    int n_out = 0;
    int rc = cm_tokenize(t, s, n, bos, special, NULL, 0, &n_out);
    if (rc != CM_OK && rc != CM_ERANGE) return -1;
    *ids = malloc(sizeof(int32_t) * (size_t)(n_out + 1));
    int n2 = 0;
    if (cm_tokenize(t, s, n, bos, special, *ids, n_out, &n2) != CM_OK || n2 != n_out) return -1;
    return n_out;
}

static char *detok(const cm_tokenizer *t, const int32_t *ids, int n, bool special, int *len) {
    int need = cm_detokenize(t, ids, n, NULL, 0, special);
    if (need < 0) return NULL;
    char *buf = malloc((size_t)need + 1);
    int got = cm_detokenize(t, ids, n, buf, need + 1, special);
    if (got != need) {
        free(buf);
        return NULL;
    }
    buf[got] = '\0';
    *len = got;
    return buf;
}

static bool ids_equal(const int32_t *a, int na, const int32_t *b, int nb) {
    return na == nb && (na == 0 || !memcmp(a, b, sizeof(int32_t) * (size_t)na));
}

static void print_escaped(const char *s, size_t n) {
    fputc('"', stderr);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') fputs("\\n", stderr);
        else if (c == '\t') fputs("\\t", stderr);
        else if (c == '\r') fputs("\\r", stderr);
        else if (c < 0x20) fprintf(stderr, "\\x%02x", c);
        else fputc(c, stderr);
    }
    fputc('"', stderr);
}

static void print_ids(const char *label, const int32_t *ids, int n) {
    fprintf(stderr, "    %s:", label);
    for (int i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
    fputc('\n', stderr);
}

static cm_tokenizer *load_path(const char *path, cm_gguf **g) {
    cm_tokenizer *t = NULL;
    if (cm_gguf_open(path, g) != CM_OK) {
        fprintf(stderr, "    %s: %s\n", path, cm_last_error(CM_EIO));
        return NULL;
    }
    int rc = cm_tokenizer_load(*g, &t);
    if (rc) {
        fprintf(stderr, "    %s: %s\n", path, cm_last_error(rc));
        cm_gguf_close(*g);
        *g = NULL;
    }
    return t;
}

/* ---- synthetic SentencePiece vocabulary ----
 *   0 <unk>  1 <s>  2 </s>  3..258 <0x00>..<0xFF>
 *   259 ▁ (-1)  260 h (-2)  261 e (-2)  262 l (-2)  263 o (-2)  264 ll (-1.5)
 *   265 he (-1.2)  266 hell (-1.1)  267 hello (-0.5)  268 ▁hello (-0.1)
 *   269 <user> (user-defined) */
static const char *write_spm_vocab(char *path, size_t n_path) {
    snprintf(path, n_path, "%s/tok-synth-spm.gguf", test_tmpdir());
    const char *pieces[] = {"\xe2\x96\x81", "h", "e", "l", "o", "ll", "he", "hell", "hello", "\xe2\x96\x81hello", "<user>"};
    const float piece_scores[] = {-1, -2, -2, -2, -2, -1.5f, -1.2f, -1.1f, -0.5f, -0.1f, 0};
    enum { N = 3 + 256 + 11 };
    char store[N][16];
    const char *strs[N];
    size_t lens[N];
    float scores[N];
    int32_t types[N];
    for (int i = 0; i < N; i++) {
        if (i < 3) snprintf(store[i], 16, "%s", i == 0 ? "<unk>" : i == 1 ? "<s>" : "</s>");
        else if (i < 259) snprintf(store[i], 16, "<0x%02X>", i - 3);
        else snprintf(store[i], 16, "%s", pieces[i - 259]);
        strs[i] = store[i];
        lens[i] = strlen(store[i]);
        scores[i] = i >= 259 ? piece_scores[i - 259] : 0;
        types[i] = i == 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : i == N - 1 ? 4 : 1;
    }
    cm_gguf_writer *w;
    if (cm_gguf_writer_create(&w)) return NULL;
    int rc = cm_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
    if (!rc) rc = cm_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", strs, lens, N);
    if (!rc) rc = cm_gguf_writer_set_arr(w, "tokenizer.ggml.scores", CM_GGUF_FLOAT32, scores, N);
    if (!rc) rc = cm_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", CM_GGUF_INT32, types, N);
    if (!rc) rc = cm_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
    if (!rc) rc = cm_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
    if (!rc) rc = cm_gguf_writer_write(w, path, NULL, NULL);
    cm_gguf_writer_destroy(w);
    return rc ? NULL : path;
}

static void check_ids(const cm_tokenizer *t, const char *text, bool bos, bool special, const int32_t *want, int n_want) {
    int32_t *ids = NULL;
    int n = tok(t, text, strlen(text), bos, special, &ids);
    bool ok = n >= 0 && ids_equal(ids, n, want, n_want);
    CHECK_MSG(ok, "tokenize(\"%s\", bos=%d, special=%d)", text, bos, special);
    if (!ok && n >= 0) {
        print_ids("want", want, n_want);
        print_ids("got ", ids, n);
    }
    free(ids);
}

static void check_text(const cm_tokenizer *t, const int32_t *ids, int n, bool special, const char *want) {
    int len = 0;
    char *s = detok(t, ids, n, special, &len);
    CHECK_MSG(s && (size_t)len == strlen(want) && !memcmp(s, want, (size_t)len), "detokenize gave \"%s\", want \"%s\"",
              s ? s : "(error)", want);
    free(s);
}

/* Each text tokenizes (with a BOS when bos) to some ids that detokenize
 * back to exactly the text. */
static void check_roundtrip(const cm_tokenizer *t, const char *const *texts, size_t n_texts, bool bos) {
    for (size_t i = 0; i < n_texts; i++) {
        int32_t *ids = NULL;
        int n = tok(t, texts[i], strlen(texts[i]), bos, false, &ids);
        CHECK(n > 0);
        if (n > 0) check_text(t, ids, n, false, texts[i]);
        free(ids);
    }
}

/* Loads the vocabulary a write_*_vocab call just wrote: path is that
 * call's result, NULL when writing failed. Both steps are checks. */
static cm_tokenizer *load_synthetic(const char *path, cm_gguf **g) {
    *g = NULL;
    if (!path) {
        CHECK(!"writing the synthetic vocabulary failed");
        return NULL;
    }
    cm_tokenizer *t = load_path(path, g);
    CHECK(t != NULL);
    return t;
}

TEST(spm_synthetic) {
    char path[512];
    cm_gguf *g;
    cm_tokenizer *t = load_synthetic(write_spm_vocab(path, sizeof path), &g);
    if (!t) return;
    CHECK(cm_tokenizer_n_vocab(t) == 270);
    CHECK(cm_tokenizer_bos(t) == 1 && cm_tokenizer_eos(t) == 2);
    CHECK(cm_tokenizer_add_bos(t)); /* SentencePiece default */
    CHECK(cm_tokenizer_is_eog(t, 2) && !cm_tokenizer_is_eog(t, 1));
    CHECK(cm_tokenizer_is_control(t, 1) && !cm_tokenizer_is_control(t, 268));
    CHECK(cm_tokenizer_find(t, "\xe2\x96\x81hello") == 268);
    CHECK(cm_tokenizer_find(t, "nope") == -1);

    /* he, ll, he+ll, hell+o, ▁+hello: highest score first. */
    check_ids(t, "hello", false, false, (int32_t[]){268}, 1);
    check_ids(t, "hello", true, false, (int32_t[]){1, 268}, 2);
    /* No pair of "▁hi" is a token: ▁, h, then byte fallback for 'i'. */
    check_ids(t, "hi", false, false, (int32_t[]){259, 260, 3 + 'i'}, 3);
    check_ids(t, "", false, false, NULL, 0);
    check_ids(t, "", true, false, (int32_t[]){1}, 1);
    /* Control tokens only with parse_special; a space prefix follows them. */
    check_ids(t, "<s>hello", false, true, (int32_t[]){1, 268}, 2);
    check_ids(t, "<s>hello", false, false, (int32_t[]){259, 3 + '<', 3 + 's', 3 + '>', 267}, 5);
    /* User-defined tokens are matched even without parse_special. */
    check_ids(t, "hello <user>o", false, false, (int32_t[]){268, 259, 269, 259, 263}, 5);
    /* Multi-byte characters without a piece fall back to their bytes. */
    check_ids(t, "\xc3\xa9", false, false, (int32_t[]){259, 3 + 0xc3, 3 + 0xa9}, 3);

    check_text(t, (int32_t[]){268}, 1, false, "hello");
    check_text(t, (int32_t[]){1, 268}, 2, false, "hello");
    check_text(t, (int32_t[]){1, 268}, 2, true, "<s> hello");
    check_text(t, (int32_t[]){259, 260, 3 + 'i', 268}, 4, false, "hi hello");
    check_text(t, (int32_t[]){259, 3 + 0xc3, 3 + 0xa9}, 3, false, "\xc3\xa9");

    char piece[8];
    CHECK(cm_token_to_piece(t, 268, piece, sizeof piece, false) == 6 && !memcmp(piece, " hello", 6));
    CHECK(cm_token_to_piece(t, 3 + 'A', piece, sizeof piece, false) == 1 && piece[0] == 'A');
    CHECK(cm_token_to_piece(t, 1, piece, sizeof piece, false) == 0);
    CHECK(cm_token_to_piece(t, 1, piece, sizeof piece, true) == 3);
    CHECK(cm_token_to_piece(t, 268, piece, 2, false) == 6); /* full length even when clipped */
    CHECK(cm_token_to_piece(t, 9999, piece, sizeof piece, false) < 0);

    /* Too small an output array: CM_ERANGE and the full count. */
    int32_t one[1];
    int n_out = 0;
    CHECK(cm_tokenize(t, "hi", 2, false, false, one, 1, &n_out) == CM_ERANGE && n_out == 3 && one[0] == 259);

    const char *rt[] = {"hello world", " leading space", "a  b\n\ttab", "\xe4\xbd\xa0\xe5\xa5\xbd", "trailing "};
    check_roundtrip(t, rt, sizeof rt / sizeof rt[0], true);
    cm_tokenizer_destroy(t);
    cm_gguf_close(g);
}

/* ---- synthetic byte-level BPE vocabulary ----
 * ids 0..255: the byte-level code point of byte i; then merges
 *   h e -> 256 he, l l -> 257 ll, he ll -> 258 hell, hell o -> 259 hello,
 *   Ġ hello -> 260 Ġhello, Ġ w -> 261 Ġw, o r -> 262 or, Ġw or -> 263 Ġwor
 * 264 <|endoftext|> (control, EOS), 265 <|im_end|> (control), 266 <tool> (user),
 * then 3 4 -> 267 34, 2 3 -> 268 23, 1 23 -> 269 123 (digits show which
 * pre-tokenizer ran). */
static const char *write_bpe_vocab(char *path, size_t n_path, const char *pre) {
    snprintf(path, n_path, "%s/tok-synth-bpe-%s.gguf", test_tmpdir(), pre);
    enum { N = 270 };
    char store[256][4];
    const char *strs[N];
    size_t lens[N];
    int32_t types[N];
    for (int i = 0; i < 256; i++) {
        int k = cm_utf8_encode(cm_bytelevel_cp((uint8_t)i), store[i]);
        strs[i] = store[i];
        lens[i] = (size_t)k;
        types[i] = 1;
    }
    const char *more[] = {"he", "ll", "hell", "hello", "\xc4\xa0hello", "\xc4\xa0w", "or", "\xc4\xa0wor",
                          "<|endoftext|>", "<|im_end|>", "<tool>", "34", "23", "123"};
    for (int i = 256; i < N; i++) {
        strs[i] = more[i - 256];
        lens[i] = strlen(strs[i]);
        types[i] = (i < 264 || i > 266) ? 1 : i < 266 ? 3 : 4;
    }
    const char *merges[] = {"h e", "l l", "he ll", "hell o", "\xc4\xa0 hello", "\xc4\xa0 w", "o r", "\xc4\xa0w or",
                            "3 4", "2 3", "1 23"};
    size_t mlens[11];
    for (int i = 0; i < 11; i++) mlens[i] = strlen(merges[i]);
    cm_gguf_writer *w;
    if (cm_gguf_writer_create(&w)) return NULL;
    int rc = cm_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    if (!rc) rc = cm_gguf_writer_set_str(w, "tokenizer.ggml.pre", pre);
    if (!rc) rc = cm_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", strs, lens, N);
    if (!rc) rc = cm_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", CM_GGUF_INT32, types, N);
    if (!rc) rc = cm_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges, mlens, 11);
    if (!rc) rc = cm_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 264);
    if (!rc) rc = cm_gguf_writer_write(w, path, NULL, NULL);
    cm_gguf_writer_destroy(w);
    return rc ? NULL : path;
}

TEST(bpe_synthetic) {
    char path[512];
    cm_gguf *g;
    cm_tokenizer *t = load_synthetic(write_bpe_vocab(path, sizeof path, "gpt-2"), &g);
    if (!t) return;
    CHECK(cm_tokenizer_n_vocab(t) == 270);
    CHECK(cm_tokenizer_bos(t) == -1 && cm_tokenizer_eos(t) == 264);
    CHECK(!cm_tokenizer_add_bos(t));
    CHECK(cm_tokenizer_is_eog(t, 264) && cm_tokenizer_is_eog(t, 265) && !cm_tokenizer_is_eog(t, 259));
    CHECK(cm_tokenizer_find(t, "<|im_end|>") == 265);
    CHECK(cm_tokenizer_find(t, " hello") == 260);

    /* "hello" | " world": he, ll, hell, hello; Ġw, or, Ġwor, then l, d. */
    check_ids(t, "hello world", false, false, (int32_t[]){259, 263, 'l', 'd'}, 4);
    check_ids(t, "hello hello", true, false, (int32_t[]){259, 260}, 2); /* no BOS in this vocabulary */
    /* The same pair at two places merges leftmost first: "ll" + "l". */
    check_ids(t, "lll", false, false, (int32_t[]){257, 'l'}, 2);
    check_ids(t, "<|im_end|>", false, true, (int32_t[]){265}, 1);
    check_ids(t, "a<|im_end|>b", false, true, (int32_t[]){'a', 265, 'b'}, 3);
    check_ids(t, "<tool>x", false, false, (int32_t[]){266, 'x'}, 2);
    {
        int32_t *ids = NULL;
        int n = tok(t, "<|im_end|>", 10, false, false, &ids);
        bool has_special = false;
        for (int i = 0; i < n; i++) has_special |= ids[i] == 265;
        CHECK(n > 1 && !has_special);
        if (n > 0) check_text(t, ids, n, false, "<|im_end|>");
        free(ids);
    }
    check_text(t, (int32_t[]){259, 265, 260}, 3, false, "hello hello");
    check_text(t, (int32_t[]){259, 265, 260}, 3, true, "hello<|im_end|> hello");

    /* Byte-level BPE is lossless on any bytes, invalid UTF-8 included. */
    const char *rt[] = {"hello world", "  two  spaces  ", "tab\tnew\nline\r\n", "\xff\xfe\x80 \xc3", "caf\xc3\xa9 \xf0\x9f\x98\x80",
                        "it's 12345 o'clock"};
    check_roundtrip(t, rt, sizeof rt / sizeof rt[0], false);
    cm_tokenizer_destroy(t);
    cm_gguf_close(g);
}

/* The digits of "1234" are cut differently by each pre-tokenizer: one piece
 * (gpt-2: merges 3 4 first), 123|4 (llama-bpe), 1|2|3|4 (qwen2). An unknown
 * name falls back to gpt-2's regex. */
TEST(bpe_pre_tokenizers) {
    static const struct {
        const char *pre;
        int32_t want[4];
        int n;
    } cases[] = {
        {"gpt-2", {'1', '2', 267}, 3},
        {"llama-bpe", {269, '4'}, 2},
        {"qwen2", {'1', '2', '3', '4'}, 4},
        {"starcoder", {'1', '2', '3', '4'}, 4},
        {"no-such-pre", {'1', '2', 267}, 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[512];
        cm_gguf *g;
        cm_tokenizer *t = load_synthetic(write_bpe_vocab(path, sizeof path, cases[i].pre), &g);
        if (t) check_ids(t, "1234", false, false, cases[i].want, cases[i].n);
        cm_tokenizer_destroy(t);
        cm_gguf_close(g);
    }
}

/* ---- concurrency: one loaded tokenizer, several threads ---- */

struct thread_job {
    const cm_tokenizer *t;
    const char *const *texts;
    int n_texts;
    const uint64_t *want; /* per-text hash of the single-threaded ids */
    int bad;
};

static uint64_t hash_ids(const int32_t *ids, int n) {
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < n; i++) h = (h ^ (uint32_t)ids[i]) * 1099511628211ull;
    return h ^ (uint64_t)n;
}

static void *tokenize_job(void *arg) {
    struct thread_job *j = arg;
    for (int rep = 0; rep < 50; rep++) {
        for (int i = 0; i < j->n_texts; i++) {
            int32_t *ids = NULL;
            int n = tok(j->t, j->texts[i], strlen(j->texts[i]), true, true, &ids);
            if (n < 0 || hash_ids(ids, n) != j->want[i]) j->bad++;
            free(ids);
        }
    }
    return NULL;
}

TEST(concurrent_tokenize) {
    char path[512];
    cm_gguf *g;
    cm_tokenizer *t = load_synthetic(write_bpe_vocab(path, sizeof path, "llama-bpe"), &g);
    if (!t) return;
    static const char *const texts[] = {"hello world hello", "1234 5678 <|im_end|> tail", "  spaces\n\n\ttabs ",
                                        "caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd \xff\xfe", "<tool>hello<|endoftext|>"};
    enum { N_TEXTS = sizeof texts / sizeof texts[0], N_THREADS = 4 };
    uint64_t want[N_TEXTS];
    for (int i = 0; i < N_TEXTS; i++) {
        int32_t *ids = NULL;
        int n = tok(t, texts[i], strlen(texts[i]), true, true, &ids);
        want[i] = n >= 0 ? hash_ids(ids, n) : 0;
        free(ids);
    }
    pthread_t th[N_THREADS];
    struct thread_job jobs[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        jobs[i] = (struct thread_job){t, texts, N_TEXTS, want, 0};
        CHECK(pthread_create(&th[i], NULL, tokenize_job, &jobs[i]) == 0);
    }
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(th[i], NULL);
        CHECK_MSG(jobs[i].bad == 0, "thread %d got %d differing tokenizations", i, jobs[i].bad);
    }
    cm_tokenizer_destroy(t);
    cm_gguf_close(g);
}

TEST(no_tokenizer_metadata) {
    char path[512];
    snprintf(path, sizeof path, "%s/tok-none.gguf", test_tmpdir());
    cm_gguf_writer *w;
    CHECK_OK(cm_gguf_writer_create(&w));
    CHECK_OK(cm_gguf_writer_set_str(w, "general.architecture", "llama"));
    CHECK_OK(cm_gguf_writer_write(w, path, NULL, NULL));
    cm_gguf_writer_destroy(w);
    cm_gguf *g = NULL;
    CHECK_OK(cm_gguf_open(path, &g));
    if (!g) return;
    cm_tokenizer *t = NULL;
    int rc = cm_tokenizer_load(g, &t);
    CHECK(rc == CM_ENOTFOUND && t == NULL);
    CHECK(strstr(cm_last_error(rc), "tokenizer.ggml.model") != NULL);
    cm_gguf_close(g);
}

/* ---- real vocabularies ---- */

struct vocab_case {
    char **inputs;
    size_t *input_lens;
    int32_t **ids;
    int *n_ids;
    int n;
};

static void free_case(struct vocab_case *c) {
    for (int i = 0; i < c->n; i++) {
        free(c->inputs[i]);
        free(c->ids[i]);
    }
    free(c->inputs);
    free(c->input_lens);
    free(c->ids);
    free(c->n_ids);
}

/* NAME.gguf.inp: each input is followed by "\n__ggml_vocab_test__\n" (so an
 * input's own trailing newlines are kept). NAME.gguf.out: one line of ids
 * per input. */
static bool read_case(const char *dir, const char *name, struct vocab_case *c) {
    char path[1024];
    size_t n_inp, n_out;
    snprintf(path, sizeof path, "%s/vocab/ggml-vocab-%s.gguf.inp", dir, name);
    char *inp = slurp(path, &n_inp);
    snprintf(path, sizeof path, "%s/vocab/ggml-vocab-%s.gguf.out", dir, name);
    char *outs = slurp(path, &n_out);
    if (!inp || !outs) {
        free(inp);
        free(outs);
        return false;
    }
    memset(c, 0, sizeof *c);
    static const char sep[] = "\n__ggml_vocab_test__\n";
    size_t cap = 64;
    c->inputs = malloc(cap * sizeof *c->inputs);
    c->input_lens = malloc(cap * sizeof *c->input_lens);
    c->ids = calloc(cap, sizeof *c->ids);
    c->n_ids = calloc(cap, sizeof *c->n_ids);
    size_t pos = 0;
    while (pos < n_inp && c->n < (int)cap) {
        char *hit = memmem(inp + pos, n_inp - pos, sep, sizeof sep - 1);
        if (!hit) break;
        size_t len = (size_t)(hit - (inp + pos));
        c->inputs[c->n] = malloc(len + 1);
        memcpy(c->inputs[c->n], inp + pos, len);
        c->inputs[c->n][len] = '\0';
        c->input_lens[c->n] = len;
        c->n++;
        pos += len + sizeof sep - 1;
    }
    char *line = outs;
    for (int i = 0; i < c->n && line && line <= outs + n_out; i++) {
        char *eol = strchr(line, '\n');
        if (eol) *eol = '\0';
        c->ids[i] = malloc(sizeof(int32_t) * (strlen(line) / 2 + 2));
        char *p = line, *end;
        for (;;) {
            long v = strtol(p, &end, 10);
            if (end == p) break;
            c->ids[i][c->n_ids[i]++] = (int32_t)v;
            p = end;
        }
        line = eol ? eol + 1 : NULL;
    }
    free(inp);
    free(outs);
    return c->n > 0;
}

/* Runs every input; returns the number that match exactly. */
static int run_case(const char *name, const cm_tokenizer *t, const struct vocab_case *c, int *n_roundtrip) {
    int pass = 0;
    *n_roundtrip = 0;
    for (int i = 0; i < c->n; i++) {
        int32_t *ids = NULL;
        int n = tok(t, c->inputs[i], c->input_lens[i], false, false, &ids);
        if (n >= 0 && ids_equal(ids, n, c->ids[i], c->n_ids[i])) {
            pass++;
        } else {
            fprintf(stderr, "  %s input %d mismatch: ", name, i);
            print_escaped(c->inputs[i], c->input_lens[i]);
            fputc('\n', stderr);
            print_ids("want", c->ids[i], c->n_ids[i]);
            if (n >= 0) print_ids("got ", ids, n);
        }
        int len = 0;
        char *back = n >= 0 ? detok(t, ids, n, false, &len) : NULL;
        if (back && (size_t)len == c->input_lens[i] && !memcmp(back, c->inputs[i], (size_t)len)) {
            (*n_roundtrip)++;
        } else {
            fprintf(stderr, "  %s input %d does not round-trip: ", name, i);
            print_escaped(c->inputs[i], c->input_lens[i]);
            fputs(" -> ", stderr);
            if (back) print_escaped(back, (size_t)len);
            fputc('\n', stderr);
        }
        free(back);
        free(ids);
    }
    return pass;
}

static void check_vocab(const char *name, const cm_tokenizer *t, const struct vocab_case *c) {
    int n_rt = 0;
    int pass = run_case(name, t, c, &n_rt);
    fprintf(stderr, "  vocab %-13s %d/%d inputs match, %d/%d round-trip\n", name, pass, c->n, n_rt, c->n);
    CHECK_MSG(pass == c->n, "%s: %d of %d inputs differ from the expected ids", name, c->n - pass, c->n);
    CHECK_MSG(n_rt == c->n, "%s: %d of %d inputs do not round-trip", name, c->n - n_rt, c->n);
}

static void gguf_vocab(const char *name) {
    const char *dir = test_datadir();
    char path[1024];
    if (dir) snprintf(path, sizeof path, "%s/vocab/ggml-vocab-%s.gguf", dir, name);
    if (!dir || !file_exists(path)) TEST_SKIP("no testdata (CELLM_TESTDATA/vocab/ggml-vocab-%s.gguf)", name);
    struct vocab_case c;
    if (!read_case(dir, name, &c)) {
        CHECK_MSG(0, "%s: cannot read the .inp/.out files", name);
        return;
    }
    cm_gguf *g = NULL;
    cm_tokenizer *t = load_path(path, &g);
    CHECK(t != NULL);
    if (t) check_vocab(name, t, &c);
    cm_tokenizer_destroy(t);
    cm_gguf_close(g);
    free_case(&c);
}

static cm_tokenizer *import_hf(const char *dir, const char *hf, const char *gguf_name, cm_gguf **g,
                               cm_hf_import_info *info) {
    char json[1024], cfg[1024], out[1024];
    snprintf(json, sizeof json, "%s/hf-tokenizers/%s-tokenizer.json", dir, hf);
    snprintf(cfg, sizeof cfg, "%s/hf-tokenizers/%s-tokenizer_config.json", dir, hf);
    snprintf(out, sizeof out, "%s/tok-import-%s.gguf", test_tmpdir(), gguf_name);
    cm_gguf_writer *w;
    if (cm_gguf_writer_create(&w)) return NULL;
    int rc = cm_hf_import(json, file_exists(cfg) ? cfg : NULL, w, NULL, info);
    if (!rc) rc = cm_gguf_writer_write(w, out, NULL, NULL);
    cm_gguf_writer_destroy(w);
    CHECK_OK(rc);
    if (rc) return NULL;
    return load_path(out, g);
}

static void hf_vocab(const char *name, const char *hf, const char *want_pre) {
    const char *dir = test_datadir();
    char path[1024];
    if (dir) snprintf(path, sizeof path, "%s/hf-tokenizers/%s-tokenizer.json", dir, hf);
    if (!dir || !file_exists(path)) TEST_SKIP("no testdata (CELLM_TESTDATA/hf-tokenizers/%s-tokenizer.json)", hf);
    struct vocab_case c;
    if (!read_case(dir, name, &c)) {
        CHECK_MSG(0, "%s: cannot read the .inp/.out files", name);
        return;
    }
    cm_gguf *g = NULL;
    cm_hf_import_info info;
    cm_tokenizer *t = import_hf(dir, hf, name, &g, &info);
    CHECK(t != NULL);
    if (t) {
        CHECK_MSG(!strcmp(info.pre, want_pre), "detected pre %s, want %s", info.pre, want_pre);
        CHECK(info.has_chat_template);
        check_vocab(name, t, &c);
    }
    cm_tokenizer_destroy(t);
    cm_gguf_close(g);
    free_case(&c);
}


/* ---- importer on a hand-written tokenizer.json ---- */

static bool write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    fputs(text, f);
    return fclose(f) == 0;
}

static const char k_tiny_json[] =
    "{\"version\":\"1.0\",\"added_tokens\":["
    "{\"id\":6,\"content\":\"<s>\",\"special\":true},"
    "{\"id\":7,\"content\":\"<x y>\",\"special\":false},"
    "{\"id\":8,\"content\":\"<|foo|>\",\"special\":false}],"
    "\"pre_tokenizer\":%s,"
    "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"\\u0120\":3,\"\\u0120ab\":5},"
    "\"merges\":%s}}";

static char *import_tiny(const char *pre_tokenizer, const char *merges, const char *config, const char *pre,
                         int *rc_out, cm_hf_import_info *info) {
    static char json_path[512], cfg_path[512], out_path[512];
    char json[2048];
    snprintf(json, sizeof json, k_tiny_json, pre_tokenizer, merges);
    snprintf(json_path, sizeof json_path, "%s/tok-tiny-tokenizer.json", test_tmpdir());
    snprintf(cfg_path, sizeof cfg_path, "%s/tok-tiny-config.json", test_tmpdir());
    snprintf(out_path, sizeof out_path, "%s/tok-tiny.gguf", test_tmpdir());
    if (!write_text(json_path, json) || (config && !write_text(cfg_path, config))) return NULL;
    cm_gguf_writer *w;
    if (cm_gguf_writer_create(&w)) return NULL;
    cm_hf_import_opts opts = {pre};
    int rc = cm_hf_import(json_path, config ? cfg_path : NULL, w, &opts, info);
    if (!rc) rc = cm_gguf_writer_write(w, out_path, NULL, NULL);
    cm_gguf_writer_destroy(w);
    *rc_out = rc;
    return rc ? NULL : out_path;
}

static const char k_llama3_pre[] =
    "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
    "\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+"
    "[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},\"behavior\":\"Isolated\",\"invert\":false},"
    "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":false}]}";

TEST(hf_import_tiny) {
    int rc = 0;
    cm_hf_import_info info;
    const char *cfg = "{\"bos_token\":{\"content\":\"<s>\",\"lstrip\":false},\"eos_token\":\"<|foo|>\","
                      "\"chat_template\":[{\"name\":\"tool_use\",\"template\":\"T\"},{\"name\":\"default\",\"template\":\"D\"}]}";
    /* Array-form merges, a gap at id 4, added tokens of each kind. */
    const char *path = import_tiny(k_llama3_pre, "[[\"a\",\"b\"],[\"\\u0120\",\"ab\"]]", cfg, NULL, &rc, &info);
    CHECK_OK(rc);
    if (!path) return;
    CHECK(info.n_vocab == 9 && info.n_gaps == 1 && info.n_merges == 2 && info.n_added == 3);
    CHECK(!strcmp(info.pre, "llama-bpe"));
    CHECK(info.bos == 6 && info.eos == 8 && info.add_bos);
    cm_gguf *g = NULL;
    CHECK_OK(cm_gguf_open(path, &g));
    if (!g) return;
    const char *s;
    size_t len;
    CHECK(cm_gguf_get_str(g, "tokenizer.ggml.model", &s, NULL) == CM_OK && !strcmp(s, "gpt2"));
    CHECK(cm_gguf_get_str(g, "tokenizer.ggml.pre", &s, NULL) == CM_OK && !strcmp(s, "llama-bpe"));
    CHECK(cm_gguf_get_str(g, "tokenizer.chat_template", &s, NULL) == CM_OK && !strcmp(s, "D"));
    CHECK(cm_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 4, &s, &len) == CM_OK && !strcmp(s, "[PAD4]"));
    CHECK(cm_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 5, &s, &len) == CM_OK && !strcmp(s, "\xc4\xa0" "ab"));
    CHECK(cm_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 7, &s, &len) == CM_OK && !strcmp(s, "<x y>"));
    CHECK(cm_gguf_get_arr_str(g, "tokenizer.ggml.merges", 1, &s, &len) == CM_OK && !strcmp(s, "\xc4\xa0 ab"));
    const void *types;
    uint64_t n;
    CHECK_OK(cm_gguf_get_arr_data(g, "tokenizer.ggml.token_type", &types, &n));
    if (n == 9) {
        int32_t ty[9];
        memcpy(ty, types, sizeof ty);
        CHECK(ty[0] == 1 && ty[4] == 5 && ty[5] == 1 && ty[6] == 3 && ty[7] == 4 && ty[8] == 3);
    }
    cm_tokenizer *t = NULL;
    CHECK_OK(cm_tokenizer_load(g, &t));
    if (t) {
        check_ids(t, "ab ab", true, false, (int32_t[]){6, 2, 5}, 3);
        /* user-defined "<x y>" matches without parse_special, control "<s>" does not */
        check_ids(t, "<x y>ab", false, false, (int32_t[]){7, 2}, 2);
        check_ids(t, "<s>ab", false, true, (int32_t[]){6, 2}, 2);
        CHECK(cm_tokenizer_is_eog(t, 8));
    }
    cm_tokenizer_destroy(t);
    cm_gguf_close(g);

    /* String-form merges and a GPT-2 ByteLevel pre-tokenizer; no config. */
    path = import_tiny("{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}", "[\"a b\",\"\\u0120 ab\"]",
                       NULL, NULL, &rc, &info);
    CHECK_OK(rc);
    CHECK(path && !strcmp(info.pre, "gpt-2") && info.n_merges == 2 && info.bos == -1 && !info.add_bos);

    /* An unknown regex is refused unless the pre-tokenizer is named. */
    const char *odd = "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[a-z]+\"},\"behavior\":\"Isolated\"}";
    path = import_tiny(odd, "[]", NULL, NULL, &rc, &info);
    CHECK(path == NULL && rc == CM_EUNSUPPORTED && strstr(cm_last_error(rc), "--pre"));
    path = import_tiny(odd, "[]", NULL, "qwen2", &rc, &info);
    CHECK(path != NULL && !strcmp(info.pre, "qwen2"));

    /* SentencePiece-style tokenizer.json (Llama 2, Mistral) is refused. */
    path = import_tiny("{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\"}", "[]", NULL, NULL, &rc, &info);
    CHECK(path == NULL && rc == CM_EUNSUPPORTED && strstr(cm_last_error(rc), "SentencePiece"));

    /* Malformed files give a message naming the file. */
    char bad[512];
    snprintf(bad, sizeof bad, "%s/tok-bad.json", test_tmpdir());
    write_text(bad, "{\"model\": {\"type\": \"BPE\", \"vocab\": [1,2]");
    cm_gguf_writer *w;
    CHECK_OK(cm_gguf_writer_create(&w));
    rc = cm_hf_import(bad, NULL, w, NULL, NULL);
    CHECK(rc == CM_EFORMAT && strstr(cm_last_error(rc), "tok-bad.json"));
    rc = cm_hf_import("/nonexistent/tokenizer.json", NULL, w, NULL, NULL);
    CHECK(rc == CM_EIO);
    cm_gguf_writer_destroy(w);
}

/* ---- special tokens on real vocabularies ---- */

/* tokenize(pre + special + post, parse_special) == tok(pre) + [id] + tok(post),
 * and without parse_special the special id does not appear and the text
 * round-trips. */
static void check_special_split(const cm_tokenizer *t, const char *pre, const char *special, const char *post) {
    int32_t id = cm_tokenizer_find(t, special);
    CHECK_MSG(id >= 0, "%s is not in the vocabulary", special);
    if (id < 0) return;
    char text[256];
    snprintf(text, sizeof text, "%s%s%s", pre, special, post);
    int32_t *a = NULL, *b = NULL, *c = NULL, *plain = NULL;
    int na = tok(t, pre, strlen(pre), false, true, &a);
    int nb = tok(t, post, strlen(post), false, true, &b);
    int nc = tok(t, text, strlen(text), false, true, &c);
    int np = tok(t, text, strlen(text), false, false, &plain);
    CHECK(na >= 0 && nb >= 0 && nc == na + 1 + nb);
    if (nc == na + 1 + nb) {
        CHECK(na == 0 || !memcmp(c, a, sizeof(int32_t) * (size_t)na));
        CHECK(c[na] == id);
        CHECK(nb == 0 || !memcmp(c + na + 1, b, sizeof(int32_t) * (size_t)nb));
        check_text(t, c, nc, true, text);
    }
    bool found = false;
    for (int i = 0; i < np; i++) found |= plain[i] == id;
    CHECK_MSG(np > 1 && !found, "%s matched without parse_special", special);
    if (np > 0) check_text(t, plain, np, false, text);
    free(a), free(b), free(c), free(plain);
}

TEST(special_tokens_real) {
    const char *dir = test_datadir();
    char path[1024];
    if (dir) snprintf(path, sizeof path, "%s/hf-tokenizers/qwen3-tokenizer.json", dir);
    if (!dir || !file_exists(path)) TEST_SKIP("no testdata (CELLM_TESTDATA/hf-tokenizers)");

    cm_gguf *g = NULL;
    cm_hf_import_info info;
    cm_tokenizer *t = import_hf(dir, "llama3", "llama-bpe", &g, &info);
    CHECK(t != NULL);
    if (t) {
        CHECK(cm_tokenizer_bos(t) == 128000 && cm_tokenizer_eos(t) == 128001 && cm_tokenizer_add_bos(t));
        CHECK(cm_tokenizer_find(t, "<|eot_id|>") == 128009);
        CHECK(cm_tokenizer_is_eog(t, 128009) && cm_tokenizer_is_eog(t, 128001) && !cm_tokenizer_is_eog(t, 128000));
        CHECK(cm_tokenizer_is_control(t, 128006) && !cm_tokenizer_is_control(t, 9906));
        check_special_split(t, "Hello world", "<|eot_id|>", " and more");
        check_special_split(t, "", "<|start_header_id|>", "user");
        /* The longest special token wins where several start at a position. */
        check_special_split(t, "x", "<|reserved_special_token_10|>", "");
        int32_t *ids = NULL;
        int n = tok(t, "Hello", 5, true, false, &ids);
        CHECK(n == 2 && ids[0] == 128000);
        if (n > 0) check_text(t, ids, n, false, "Hello");
        free(ids);
    }
    cm_tokenizer_destroy(t);
    cm_gguf_close(g);

    t = import_hf(dir, "qwen3", "qwen2", &g, &info);
    CHECK(t != NULL);
    if (t) {
        CHECK(cm_tokenizer_bos(t) == -1 && !cm_tokenizer_add_bos(t) && cm_tokenizer_eos(t) == 151645);
        CHECK(cm_tokenizer_is_eog(t, 151645) && cm_tokenizer_is_eog(t, 151643));
        check_special_split(t, "", "<|im_start|>", "user\nhi");
        check_special_split(t, "hi", "<|im_end|>", "\n");
        /* <think> is a non-special added token: matched even without parse_special. */
        int32_t think = cm_tokenizer_find(t, "<think>");
        int32_t *ids = NULL;
        int n = tok(t, "a<think>b", 9, false, false, &ids);
        CHECK(think >= 0 && n == 3 && ids[1] == think);
        if (n > 0) check_text(t, ids, n, false, "a<think>b");
        free(ids);
    }
    cm_tokenizer_destroy(t);
    cm_gguf_close(g);

    snprintf(path, sizeof path, "%s/vocab/ggml-vocab-llama-spm.gguf", dir);
    t = load_path(path, &g);
    if (t) {
        check_ids(t, "<s>", false, true, (int32_t[]){1}, 1);
        int32_t *ids = NULL;
        int n = tok(t, "Hello</s>", 9, true, true, &ids);
        CHECK(n >= 3 && ids[0] == 1 && ids[n - 1] == 2);
        if (n > 0) check_text(t, ids, n, false, "Hello");
        free(ids);
    }
    cm_tokenizer_destroy(t);
    cm_gguf_close(g);
}

TEST(vocab_gpt2) { gguf_vocab("gpt-2"); }
TEST(vocab_llama_spm) { gguf_vocab("llama-spm"); }
TEST(vocab_deepseek_llm) { gguf_vocab("deepseek-llm"); }
TEST(vocab_starcoder) { gguf_vocab("starcoder"); }
TEST(vocab_falcon) { gguf_vocab("falcon"); }
TEST(vocab_llama_bpe) { hf_vocab("llama-bpe", "llama3", "llama-bpe"); }
TEST(vocab_qwen2) { hf_vocab("qwen2", "qwen3", "qwen2"); }

int main(void) {
    RUN(spm_synthetic);
    RUN(bpe_synthetic);
    RUN(bpe_pre_tokenizers);
    RUN(concurrent_tokenize);
    RUN(no_tokenizer_metadata);
    RUN(vocab_gpt2);
    RUN(vocab_llama_spm);
    RUN(vocab_deepseek_llm);
    RUN(vocab_starcoder);
    RUN(vocab_falcon);
    RUN(vocab_llama_bpe);
    RUN(vocab_qwen2);
    RUN(hf_import_tiny);
    RUN(special_tokens_real);
    return test_summary();
}
