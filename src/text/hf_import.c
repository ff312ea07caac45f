/* hf_import.c - Hugging Face tokenizer.json -> GGUF tokenizer metadata.
 *
 * Only byte-level BPE models are accepted (model.type "BPE" with a
 * ByteLevel pre-tokenizer or decoder); SentencePiece models keep their
 * vocabulary in tokenizer.model, which this importer does not read.
 * Normal tokens are written exactly as tokenizer.json spells them (GPT-2
 * byte-level code points); added tokens are written as their content, which
 * is raw text, the way GGUF converters store them. */
#include "text/hf_import.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/status.h"

#define MAX_VOCAB (1 << 24)

static int read_json(const char *path, cJSON **out) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return cm_errorf(CM_EIO, "%s: cannot open (does the file exist?)", path);
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 1 << 20;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return cm_errorf(CM_ENOMEM, "%s: out of memory reading it", path);
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return cm_errorf(CM_EIO, "%s: read error", path);
    }
    cJSON *j = cJSON_ParseWithLength(buf, n);
    if (!j) {
        const char *at = cJSON_GetErrorPtr();
        long off = at && at >= buf && at <= buf + n ? (long)(at - buf) : -1;
        free(buf);
        return cm_errorf(CM_EFORMAT, "%s: not valid JSON (error near byte %ld)", path, off);
    }
    free(buf);
    *out = j;
    return CM_OK;
}

/* The Split regex of a pre_tokenizer (possibly inside a Sequence), or NULL. */
static const char *find_split_regex(const cJSON *pt) {
    if (!cJSON_IsObject(pt)) return NULL;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(pt, "type");
    if (cJSON_IsString(type) && !strcmp(type->valuestring, "Split")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(pt, "pattern");
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        return cJSON_IsString(re) ? re->valuestring : NULL;
    }
    const cJSON *seq = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers");
    const cJSON *it;
    cJSON_ArrayForEach(it, seq) {
        const char *r = find_split_regex(it);
        if (r) return r;
    }
    return NULL;
}

/* Whether the pre_tokenizer holds a component of this type (and, for
 * ByteLevel, use_regex true; for Digits, individual_digits true). */
static bool has_component(const cJSON *pt, const char *want) {
    if (!cJSON_IsObject(pt)) return false;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(pt, "type");
    if (cJSON_IsString(type) && !strcmp(type->valuestring, want)) {
        if (!strcmp(want, "ByteLevel")) return !cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(pt, "use_regex"));
        if (!strcmp(want, "Digits")) return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(pt, "individual_digits"));
        return true;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers")) {
        if (has_component(it, want)) return true;
    }
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(pt, "decoders")) {
        if (has_component(it, want)) return true;
    }
    return false;
}

static const char *detect_pre(const cJSON *root) {
    static const char re_llama3[] =
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
        "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    static const char re_qwen2[] =
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
        "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    const char *re = find_split_regex(pt);
    if (re) {
        if (!strcmp(re, re_llama3)) return "llama-bpe";
        if (!strcmp(re, re_qwen2)) return "qwen2";
        return NULL;
    }
    if (has_component(pt, "ByteLevel")) return has_component(pt, "Digits") ? "starcoder" : "gpt-2";
    return NULL;
}

/* bos_token / eos_token: "text" or {"content": "text"}. */
static const char *special_text(const cJSON *v) {
    if (cJSON_IsString(v)) return v->valuestring;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(c) ? c->valuestring : NULL;
}

static bool looks_special(const char *s) {
    size_t n = strlen(s);
    if (n >= 4 && !strncmp(s, "<|", 2) && !strcmp(s + n - 2, "|>")) return true;
    /* fullwidth bars, as in DeepSeek's <｜...｜> */
    return n >= 8 && !strncmp(s, "<\xef\xbd\x9c", 4) && !strcmp(s + n - 4, "\xef\xbd\x9c>");
}

static int32_t find_text(char **tokens, int n, const char *s) {
    /* Added tokens sit at the end; search from there. */
    for (int i = n - 1; i >= 0; i--)
        if (tokens[i] && !strcmp(tokens[i], s)) return i;
    return -1;
}

int cm_hf_import(const char *tokenizer_json_path, const char *tokenizer_config_path, cm_gguf_writer *w,
                 const cm_hf_import_opts *opts, cm_hf_import_info *info) {
    const char *path = tokenizer_json_path;
    cJSON *root = NULL, *cfg = NULL;
    char **tokens = NULL;
    char **owned = NULL; /* strings this function made ([PADn], merges) */
    size_t *lens = NULL;
    int32_t *types = NULL;
    char **merges = NULL;
    size_t *merge_lens = NULL;
    int n_vocab = 0, n_merges = 0, n_owned = 0;
    cm_hf_import_info inf;
    memset(&inf, 0, sizeof inf);
    inf.bos = inf.eos = -1;

    int rc = read_json(path, &root);
    if (rc) goto fail;
    if (tokenizer_config_path && (rc = read_json(tokenizer_config_path, &cfg))) goto fail;

    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *mtype = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (!cJSON_IsObject(model)) {
        rc = cm_errorf(CM_EFORMAT, "%s: no \"model\" object (is this a tokenizer.json?)", path);
        goto fail;
    }
    if (mtype && (!cJSON_IsString(mtype) || strcmp(mtype->valuestring, "BPE"))) {
        rc = cm_errorf(CM_EUNSUPPORTED, "%s: model.type is %s; only byte-level BPE tokenizers can be imported", path,
                       cJSON_IsString(mtype) ? mtype->valuestring : "not a string");
        goto fail;
    }
    /* Llama 2 / Mistral style tokenizer.json files are BPE too, but
     * SentencePiece-flavoured (U+2581 for spaces, byte fallback); written
     * as "gpt2" they would tokenize wrongly, so they are refused. */
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback")) ||
        has_component(cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), "Metaspace") ||
        has_component(cJSON_GetObjectItemCaseSensitive(root, "decoder"), "Metaspace")) {
        rc = cm_errorf(CM_EUNSUPPORTED,
                       "%s: a SentencePiece-style tokenizer (Metaspace / byte_fallback); only byte-level BPE "
                       "tokenizer.json files can be imported (use a GGUF converted from tokenizer.model)",
                       path);
        goto fail;
    }
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (!cJSON_IsObject(vocab)) {
        rc = cm_errorf(CM_EFORMAT, "%s: model.vocab is not an object", path);
        goto fail;
    }

    /* Vocabulary size: the largest id anywhere, plus one. */
    int max_id = -1;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= MAX_VOCAB) {
            rc = cm_errorf(CM_EFORMAT, "%s: model.vocab[\"%s\"] is not a token id in 0..%d", path, it->string, MAX_VOCAB - 1);
            goto fail;
        }
        if (it->valueint > max_id) max_id = it->valueint;
    }
    cJSON_ArrayForEach(it, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= MAX_VOCAB || !cJSON_IsString(content)) {
            rc = cm_errorf(CM_EFORMAT, "%s: added_tokens entry %d needs an id in 0..%d and a content string", path,
                           inf.n_added, MAX_VOCAB - 1);
            goto fail;
        }
        if (id->valueint > max_id) max_id = id->valueint;
        inf.n_added++;
    }
    if (max_id < 0) {
        rc = cm_errorf(CM_EFORMAT, "%s: the vocabulary is empty", path);
        goto fail;
    }
    n_vocab = max_id + 1;
    tokens = calloc((size_t)n_vocab, sizeof *tokens);
    lens = calloc((size_t)n_vocab, sizeof *lens);
    types = calloc((size_t)n_vocab, sizeof *types);
    owned = calloc((size_t)n_vocab, sizeof *owned);
    if (!tokens || !lens || !types || !owned) goto nomem;
    cJSON_ArrayForEach(it, vocab) {
        tokens[it->valueint] = it->string;
        types[it->valueint] = 1;
    }
    cJSON_ArrayForEach(it, added) {
        int id = cJSON_GetObjectItemCaseSensitive(it, "id")->valueint;
        const char *content = cJSON_GetObjectItemCaseSensitive(it, "content")->valuestring;
        bool special = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "special"));
        tokens[id] = (char *)content;
        types[id] = (special || looks_special(content)) ? 3 : 4;
    }
    for (int i = 0; i < n_vocab; i++) {
        if (!tokens[i]) {
            char pad[32];
            snprintf(pad, sizeof pad, "[PAD%d]", i);
            if (!(owned[n_owned] = strdup(pad))) goto nomem;
            tokens[i] = owned[n_owned++];
            types[i] = 5;
            inf.n_gaps++;
        }
        lens[i] = strlen(tokens[i]);
    }

    /* Merges: "a b" strings (older files) or ["a", "b"] pairs (newer). */
    const cJSON *jm = cJSON_GetObjectItemCaseSensitive(model, "merges");
    int n_jm = cJSON_IsArray(jm) ? cJSON_GetArraySize(jm) : 0;
    merges = calloc((size_t)(n_jm ? n_jm : 1), sizeof *merges);
    merge_lens = calloc((size_t)(n_jm ? n_jm : 1), sizeof *merge_lens);
    if (!merges || !merge_lens) goto nomem;
    cJSON_ArrayForEach(it, jm) {
        if (cJSON_IsString(it)) {
            merges[n_merges] = strdup(it->valuestring);
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
            const char *a = cJSON_GetArrayItem(it, 0)->valuestring, *b = cJSON_GetArrayItem(it, 1)->valuestring;
            size_t la = strlen(a), lb = strlen(b);
            merges[n_merges] = malloc(la + lb + 2);
            if (merges[n_merges]) {
                memcpy(merges[n_merges], a, la);
                merges[n_merges][la] = ' ';
                memcpy(merges[n_merges] + la + 1, b, lb + 1);
            }
        } else {
            rc = cm_errorf(CM_EFORMAT, "%s: model.merges[%d] is neither \"a b\" nor [\"a\", \"b\"]", path, n_merges);
            goto fail;
        }
        if (!merges[n_merges]) goto nomem;
        merge_lens[n_merges] = strlen(merges[n_merges]);
        n_merges++;
    }

    const char *pre = opts && opts->pre ? opts->pre : detect_pre(root);
    if (!pre) {
        rc = cm_errorf(CM_EUNSUPPORTED,
                       "%s: the pre_tokenizer is not one this importer recognises; name it explicitly "
                       "(--pre llama-bpe | qwen2 | gpt-2 | starcoder | falcon | deepseek-llm ...)",
                       path);
        goto fail;
    }
    snprintf(inf.pre, sizeof inf.pre, "%s", pre);

    /* BOS/EOS and add_bos: the config is authoritative; then the
     * post-processor's template; then the pre-tokenizer's convention. */
    int have_add_bos = 0;
    if (cfg) {
        const char *s = special_text(cJSON_GetObjectItemCaseSensitive(cfg, "bos_token"));
        if (s && (inf.bos = find_text(tokens, n_vocab, s)) < 0)
            CM_LOGW("%s: bos_token '%s' is not in the vocabulary; ignored", tokenizer_config_path, s);
        s = special_text(cJSON_GetObjectItemCaseSensitive(cfg, "eos_token"));
        if (s && (inf.eos = find_text(tokens, n_vocab, s)) < 0)
            CM_LOGW("%s: eos_token '%s' is not in the vocabulary; ignored", tokenizer_config_path, s);
        const cJSON *ab = cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token");
        if (cJSON_IsBool(ab)) have_add_bos = 1, inf.add_bos = cJSON_IsTrue(ab);
    }
    if (!have_add_bos) {
        const cJSON *pp = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
        const cJSON *pptype = cJSON_GetObjectItemCaseSensitive(pp, "type");
        if (cJSON_IsString(pptype) && !strcmp(pptype->valuestring, "TemplateProcessing")) {
            const cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(pp, "single"), 0);
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(first, "SpecialToken");
            const cJSON *stid = cJSON_GetObjectItemCaseSensitive(st, "id");
            have_add_bos = 1;
            inf.add_bos = st != NULL;
            if (cJSON_IsString(stid) && inf.bos < 0) inf.bos = find_text(tokens, n_vocab, stid->valuestring);
        }
    }
    if (!have_add_bos) inf.add_bos = !strcmp(pre, "llama-bpe") && inf.bos >= 0;

    inf.n_vocab = n_vocab;
    inf.n_merges = n_merges;
    if ((rc = cm_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2")) ||
        (rc = cm_gguf_writer_set_str(w, "tokenizer.ggml.pre", pre)) ||
        (rc = cm_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tokens, lens, (uint64_t)n_vocab)) ||
        (rc = cm_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", CM_GGUF_INT32, types, (uint64_t)n_vocab)) ||
        (rc = cm_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merges, merge_lens, (uint64_t)n_merges)) ||
        (rc = cm_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", inf.add_bos)))
        goto fail;
    if (inf.bos >= 0 && (rc = cm_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)inf.bos))) goto fail;
    if (inf.eos >= 0 && (rc = cm_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)inf.eos))) goto fail;

    /* chat_template: a string, or a list of {name, template} (take "default"). */
    const cJSON *ct = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "chat_template") : NULL;
    const char *tmpl = cJSON_IsString(ct) ? ct->valuestring : NULL;
    if (cJSON_IsArray(ct)) {
        cJSON_ArrayForEach(it, ct) {
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name");
            const cJSON *tp = cJSON_GetObjectItemCaseSensitive(it, "template");
            if (cJSON_IsString(tp) && (!tmpl || (cJSON_IsString(nm) && !strcmp(nm->valuestring, "default"))))
                tmpl = tp->valuestring;
        }
    }
    if (tmpl) {
        if ((rc = cm_gguf_writer_set_str(w, "tokenizer.chat_template", tmpl))) goto fail;
        inf.has_chat_template = true;
    }
    if (info) *info = inf;
    rc = CM_OK;
    goto out;
nomem:
    rc = cm_errorf(CM_ENOMEM, "%s: out of memory importing it", path);
fail:
out:
    for (int i = 0; i < n_owned; i++) free(owned[i]);
    for (int i = 0; i < n_merges; i++) free(merges[i]);
    free(owned);
    free(merges);
    free(merge_lens);
    free(tokens);
    free(lens);
    free(types);
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    return rc;
}
