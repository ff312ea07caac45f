/* pretok.c - the regex lists of the byte-level BPE pre-tokenizers and the
 * cascade that applies them (see pretok.h).
 *
 * The lists follow the pre-tokenizers of the models' tokenizer.json files as
 * GGUF converters name them. Two deliberate details:
 *  - contractions are spelled '[sS]|'[tT]... rather than (?i:'s|...), so a
 *    caseless match cannot fold other letters (U+017F, U+212A) into them;
 *  - compiled with PCRE2_DOLLAR_ENDONLY: `$` means the end of the piece, as
 *    in the ECMAScript and Rust engines these lists were written for, not
 *    "before a final newline".
 * Patterns are compiled (and JIT-compiled when available) once, at load;
 * matching is thread-safe and needs only a per-call match block. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "text/pretok.h"

#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/status.h"

#define MAX_STAGES 6

struct cm_pretok {
    const char *name;
    bool ignore_merges;
    int n_re;
    pcre2_code *re[MAX_STAGES];
};

#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
#define RE_CONTRACTIONS "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
#define RE_LLAMA3                                                                                           \
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+" \
                    "|\\s+(?!\\S)|\\s+"
#define RE_QWEN2                                                                                        \
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+" \
                    "|\\s+(?!\\S)|\\s+"

struct pre_def {
    const char *name;        /* canonical */
    const char *aliases[8];  /* other tokenizer.ggml.pre values with the same list */
    bool ignore_merges;
    const char *re[MAX_STAGES];
};

static const struct pre_def g_defs[] = {
    {"gpt-2", {"default", "mpt", "olmo", "jais"}, false, {RE_GPT2}},
    {"llama-bpe", {"llama3", "llama-v3", "dbrx", "smaug-bpe", "falcon3", "pixtral"}, true, {RE_LLAMA3}},
    {"chatglm-bpe", {0}, false, {RE_LLAMA3}},
    {"qwen2", {"stablelm2", "qwen3"}, false, {RE_QWEN2}},
    {"deepseek-llm",
     {0},
     false,
     {"[\r\n]",
      "\\s?[A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}\\x{1C4}-"
      "\\x{293}\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}\\x{37F}\\x{386}"
      "\\x{388}-\\x{38A}\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}"
      "\\x{531}-\\x{556}\\x{10A0}-\\x{10C5}\\x{13A0}-\\x{13F5}\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}"
      "\\x{1CBD}-\\x{1CBF}\\x{1D00}-\\x{1D2B}\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}"
      "\\x{1F18}-\\x{1F1D}\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}"
      "\\x{1F5D}\\x{1F5F}-\\x{1F7D}\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}"
      "\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}"
      "\\x{1FF6}-\\x{1FFC}\\x{2102}\\x{2107}\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}"
      "\\x{2126}\\x{2128}\\x{212A}-\\x{212D}\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-\\x{213F}\\x{2145}-"
      "\\x{2149}\\x{214E}\\x{2183}\\x{2184}\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}"
      "\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}\\x{A771}-\\x{A787}"
      "\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}"
      "\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}\\x{104B0}-\\x{104D3}\\x{104D8}-\\x{104FB}\\x{10C80}-"
      "\\x{10CB2}\\x{10CC0}-\\x{10CF2}\\x{118A0}-\\x{118DF}\\x{1E900}-\\x{1E943}]+",
      "\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+", "\\s+$", "[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+", "\\p{N}+"}},
    {"deepseek-coder",
     {0},
     false,
     {"[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", "[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+", "\\p{N}"}},
    {"starcoder", {"refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"}, false, {"\\p{N}", RE_GPT2}},
    {"falcon", {0}, false, {"[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]"}},
};

static const struct pre_def *find_def(const char *pre) {
    if (!pre) return NULL;
    for (size_t i = 0; i < sizeof g_defs / sizeof g_defs[0]; i++) {
        if (!strcmp(g_defs[i].name, pre)) return &g_defs[i];
        for (int a = 0; a < 8 && g_defs[i].aliases[a]; a++)
            if (!strcmp(g_defs[i].aliases[a], pre)) return &g_defs[i];
    }
    return NULL;
}

int cm_pretok_create(const char *pre, cm_pretok **out, bool *fell_back) {
    *out = NULL;
    const struct pre_def *def = find_def(pre);
    if (fell_back) *fell_back = def == NULL;
    if (!def) {
        CM_LOGW("tokenizer: pre-tokenizer '%s' is not known; using gpt-2's regex (tokenization may differ "
                "from the model's own)",
                pre ? pre : "(none)");
        def = &g_defs[0];
    }
    cm_pretok *p = calloc(1, sizeof *p);
    if (!p) return cm_errorf(CM_ENOMEM, "tokenizer: out of memory");
    p->name = def->name;
    p->ignore_merges = def->ignore_merges;
    for (int i = 0; i < MAX_STAGES && def->re[i]; i++) {
        int err;
        PCRE2_SIZE err_off;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)def->re[i], PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | PCRE2_DOLLAR_ENDONLY,
                                       &err, &err_off, NULL);
        if (!re) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(err, msg, sizeof msg);
            cm_pretok_destroy(p);
            return cm_errorf(CM_EINVAL, "tokenizer: pre-tokenizer %s regex %d does not compile at %zu: %s",
                             def->name, i, (size_t)err_off, (const char *)msg);
        }
        /* JIT is an optimisation only; the interpreter gives the same matches. */
        (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
        p->re[p->n_re++] = re;
    }
    *out = p;
    return CM_OK;
}

void cm_pretok_destroy(cm_pretok *p) {
    if (!p) return;
    for (int i = 0; i < p->n_re; i++) pcre2_code_free(p->re[i]);
    free(p);
}

const char *cm_pretok_name(const cm_pretok *p) { return p->name; }
bool cm_pretok_ignore_merges(const cm_pretok *p) { return p->ignore_merges; }

/* Cuts each span of `in` into matches of re and the gaps between them. */
static int split_stage(const pcre2_code *re, pcre2_match_data *md, const char *text, const cm_span *in, size_t n_in,
                       cm_span *out, size_t *n_out) {
    size_t n = 0;
    for (size_t s = 0; s < n_in; s++) {
        const PCRE2_SPTR subj = (PCRE2_SPTR)(text + in[s].off);
        const size_t len = in[s].len;
        size_t pos = 0, gap = 0;
        while (pos < len) {
            int rc = pcre2_match(re, subj, len, pos, 0, md, NULL);
            if (rc == PCRE2_ERROR_NOMATCH) break;
            if (rc < 0) {
                PCRE2_UCHAR msg[160];
                pcre2_get_error_message(rc, msg, sizeof msg);
                return cm_errorf(CM_EINVAL, "tokenizer: pre-tokenizer regex failed: %s", (const char *)msg);
            }
            const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            size_t m0 = ov[0], m1 = ov[1];
            if (m1 <= m0) {
                /* None of the lists matches the empty string; guard anyway so
                 * the loop always advances. */
                pos = m0 + 1;
                continue;
            }
            if (m0 > gap) out[n++] = (cm_span){in[s].off + gap, m0 - gap};
            out[n++] = (cm_span){in[s].off + m0, m1 - m0};
            gap = pos = m1;
        }
        if (len > gap) out[n++] = (cm_span){in[s].off + gap, len - gap};
    }
    *n_out = n;
    return CM_OK;
}

int cm_pretok_split(const cm_pretok *p, const char *text, size_t len, cm_span *spans, cm_span *scratch,
                    size_t *n_spans) {
    *n_spans = 0;
    if (len == 0) return CM_OK;
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md) return cm_errorf(CM_ENOMEM, "tokenizer: out of memory");
    /* Stages alternate between the two buffers; the last one must land in spans. */
    cm_span *cur = (p->n_re % 2) ? scratch : spans;
    cm_span *next = (p->n_re % 2) ? spans : scratch;
    size_t n = 1;
    cur[0] = (cm_span){0, len};
    int rc = CM_OK;
    for (int i = 0; i < p->n_re; i++) {
        size_t n_next = 0;
        rc = split_stage(p->re[i], md, text, cur, n, next, &n_next);
        if (rc) goto fail;
        cm_span *t = cur;
        cur = next, next = t, n = n_next;
    }
    if (p->n_re == 0) spans[0] = cur[0];
    *n_spans = n;
fail:
    pcre2_match_data_free(md);
    return rc;
}
