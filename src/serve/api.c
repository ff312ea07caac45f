/* api.c - OpenAI request parsing and response rendering (see api.h).
 *
 * Validation follows OpenAI's behaviour where it matters to clients: a wrong
 * type or out-of-range value is a 400 invalid_request_error that names the
 * parameter; unknown fields are ignored (SDKs send extras). Generated text
 * may be any byte sequence, so every string put into JSON goes through
 * cm_utf8_clean first. */
#include "serve/api.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "serve/util.h"

void cm_api_error_set(cm_api_error *e, int http, const char *type, const char *param, const char *code,
                      const char *fmt, ...) {
    e->http = http;
    snprintf(e->type, sizeof e->type, "%s", type);
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    snprintf(e->code, sizeof e->code, "%s", code ? code : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

static cJSON *str_or_null(const char *s) { return s && *s ? cJSON_CreateString(s) : cJSON_CreateNull(); }

char *cm_api_error_json(const cm_api_error *e) {
    cJSON *root = cJSON_CreateObject(), *err = cJSON_CreateObject();
    cm_sbuf msg = {0};
    cm_utf8_clean(&msg, e->message, strlen(e->message), true);
    cJSON_AddItemToObject(err, "message", cJSON_CreateString(msg.p ? msg.p : ""));
    cJSON_AddItemToObject(err, "type", cJSON_CreateString(e->type));
    cJSON_AddItemToObject(err, "param", str_or_null(e->param));
    cJSON_AddItemToObject(err, "code", str_or_null(e->code));
    cJSON_AddItemToObject(root, "error", err);
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    cm_sbuf_free(&msg);
    return out;
}

/* ---- parsing ---- */

#define BAD(param, ...) \
    (cm_api_error_set(err, 400, "invalid_request_error", param, NULL, __VA_ARGS__), CM_EINVAL)

static const char *type_name(const cJSON *v) {
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "an unknown type";
}

/* A field that is absent or null is "not given". */
static cJSON *field(const cJSON *obj, const char *name) {
    cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static int get_bool(const cJSON *obj, const char *name, bool *out, cm_api_error *err) {
    cJSON *v = field(obj, name);
    if (!v) return CM_OK;
    if (!cJSON_IsBool(v)) return BAD(name, "'%s' must be a boolean, not %s", name, type_name(v));
    *out = cJSON_IsTrue(v);
    return CM_OK;
}

static int get_num(const cJSON *obj, const char *name, double lo, double hi, double *out, cm_api_error *err) {
    cJSON *v = field(obj, name);
    if (!v) return CM_OK;
    if (!cJSON_IsNumber(v)) return BAD(name, "'%s' must be a number, not %s", name, type_name(v));
    double d = v->valuedouble;
    if (!(d >= lo && d <= hi)) return BAD(name, "'%s' is %g; it must be between %g and %g", name, d, lo, hi);
    *out = d;
    return CM_OK;
}

static int get_int(const cJSON *obj, const char *name, double lo, double hi, bool *given, double *out,
                   cm_api_error *err) {
    cJSON *v = field(obj, name);
    if (!v) return CM_OK;
    if (!cJSON_IsNumber(v) || floor(v->valuedouble) != v->valuedouble)
        return BAD(name, "'%s' must be an integer, not %s", name, cJSON_IsNumber(v) ? "a fraction" : type_name(v));
    double d = v->valuedouble;
    if (!(d >= lo && d <= hi)) return BAD(name, "'%s' is %.0f; it must be between %.0f and %.0f", name, d, lo, hi);
    *out = d;
    if (given) *given = true;
    return CM_OK;
}

static int parse_stop(const cJSON *root, cm_api_req *q, cm_api_error *err) {
    cJSON *v = field(root, "stop");
    if (!v) return CM_OK;
    if (cJSON_IsString(v)) {
        if (*v->valuestring) q->stop[q->n_stop++] = v->valuestring;
        return CM_OK;
    }
    if (!cJSON_IsArray(v)) return BAD("stop", "'stop' must be a string or an array of strings, not %s", type_name(v));
    int n = cJSON_GetArraySize(v);
    if (n > CM_MAX_STOP) return BAD("stop", "'stop' has %d strings; at most %d are supported", n, CM_MAX_STOP);
    cJSON *it;
    cJSON_ArrayForEach(it, v) {
        if (!cJSON_IsString(it)) return BAD("stop", "every element of 'stop' must be a string, not %s", type_name(it));
        if (*it->valuestring) q->stop[q->n_stop++] = it->valuestring;
    }
    return CM_OK;
}

static int parse_messages(const cJSON *root, cm_api_req *q, cm_api_error *err) {
    cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (!msgs) return BAD("messages", "'messages' is required");
    if (!cJSON_IsArray(msgs)) return BAD("messages", "'messages' must be an array, not %s", type_name(msgs));
    int n = cJSON_GetArraySize(msgs);
    if (n < 1) return BAD("messages", "'messages' must contain at least one message");
    q->msgs = calloc((size_t)n, sizeof *q->msgs);
    q->msg_text = calloc((size_t)n, sizeof *q->msg_text);
    if (!q->msgs || !q->msg_text) {
        cm_api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        return CM_ENOMEM;
    }
    q->n_msg_text = n;
    int i = 0;
    cJSON *m;
    cJSON_ArrayForEach(m, msgs) {
        char pname[64];
        snprintf(pname, sizeof pname, "messages[%d]", i);
        if (!cJSON_IsObject(m)) return BAD(pname, "'%s' must be an object, not %s", pname, type_name(m));
        cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        snprintf(pname, sizeof pname, "messages[%d].role", i);
        if (!cJSON_IsString(role)) return BAD(pname, "'%s' must be a string", pname);
        const char *r = role->valuestring;
        if (!strcmp(r, "developer")) r = "system";
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant"))
            return BAD(pname, "'%s' is '%s'; supported roles are system, developer, user and assistant", pname,
                       role->valuestring);
        cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        snprintf(pname, sizeof pname, "messages[%d].content", i);
        const char *text = "";
        if (cJSON_IsString(content)) {
            text = content->valuestring;
        } else if (cJSON_IsArray(content)) {
            cm_sbuf b = {0};
            cm_sbuf_puts(&b, "");
            cJSON *part;
            cJSON_ArrayForEach(part, content) {
                cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
                cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
                if (!cJSON_IsObject(part) || !cJSON_IsString(type) || strcmp(type->valuestring, "text") ||
                    !cJSON_IsString(t)) {
                    cm_sbuf_free(&b);
                    return BAD(pname, "'%s' parts must be {\"type\":\"text\",\"text\":...}; other part types are "
                               "not supported", pname);
                }
                cm_sbuf_puts(&b, t->valuestring);
            }
            if (b.oom) {
                cm_sbuf_free(&b);
                cm_api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
                return CM_ENOMEM;
            }
            q->msg_text[i] = b.p;
            text = b.p;
        } else if (!(cJSON_IsNull(content) && !strcmp(r, "assistant"))) {
            return BAD(pname, "'%s' must be a string or an array of text parts, not %s", pname,
                       content ? type_name(content) : "missing");
        }
        q->msgs[i].role = r;
        q->msgs[i].content = text;
        i++;
    }
    q->n_msgs = n;
    return CM_OK;
}

static int parse_prompt(const cJSON *root, cm_api_req *q, cm_api_error *err) {
    cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (!p) return BAD("prompt", "'prompt' is required");
    if (cJSON_IsString(p)) {
        q->prompt = p->valuestring;
        return CM_OK;
    }
    if (!cJSON_IsArray(p)) return BAD("prompt", "'prompt' must be a string, an array of strings or an array of "
                                      "token ids, not %s", type_name(p));
    int n = cJSON_GetArraySize(p);
    if (n < 1) return BAD("prompt", "'prompt' is an empty array");
    cJSON *first = cJSON_GetArrayItem(p, 0);
    if (cJSON_IsString(first)) {
        if (n > 1) return BAD("prompt", "'prompt' holds %d strings; one prompt per request is supported", n);
        q->prompt = first->valuestring;
        return CM_OK;
    }
    if (cJSON_IsArray(first)) return BAD("prompt", "batches of token-id prompts are not supported; send one per request");
    q->prompt_ids = malloc(sizeof(int32_t) * (size_t)n);
    if (!q->prompt_ids) {
        cm_api_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        return CM_ENOMEM;
    }
    cJSON *it;
    cJSON_ArrayForEach(it, p) {
        if (!cJSON_IsNumber(it) || floor(it->valuedouble) != it->valuedouble || it->valuedouble < 0 ||
            it->valuedouble > 2147483647.0)
            return BAD("prompt", "'prompt' token ids must be non-negative integers");
        q->prompt_ids[q->n_prompt_ids++] = (int32_t)it->valuedouble;
    }
    return CM_OK;
}

int cm_api_parse(const char *body, size_t n, cm_api_kind kind, cm_api_req *q, cm_api_error *err) {
    memset(q, 0, sizeof *q);
    q->kind = kind;
    q->max_tokens = -1;
    q->temperature = 1;
    q->top_p = 1;
    cJSON *root = cJSON_ParseWithLength(body, n);
    q->root = root;
    if (!root)
        return BAD(NULL, "the request body is not valid JSON (at byte %ld of %zu)",
                   cJSON_GetErrorPtr() ? (long)(cJSON_GetErrorPtr() - body) : -1L, n);
    if (!cJSON_IsObject(root)) return BAD(NULL, "the request body must be a JSON object, not %s", type_name(root));
    int rc;
    cJSON *model = field(root, "model");
    if (model) {
        if (!cJSON_IsString(model)) return BAD("model", "'model' must be a string, not %s", type_name(model));
        q->model = model->valuestring;
    }
    if ((rc = get_bool(root, "stream", &q->stream, err))) return rc;
    if ((rc = get_bool(root, "ignore_eos", &q->ignore_eos, err))) return rc;
    cJSON *so = field(root, "stream_options");
    if (so) {
        if (!cJSON_IsObject(so)) return BAD("stream_options", "'stream_options' must be an object, not %s", type_name(so));
        if ((rc = get_bool(so, "include_usage", &q->include_usage, err))) return rc;
    }
    double d = -1;
    bool given = false;
    if ((rc = get_int(root, "max_tokens", 1, 2147483647.0, &given, &d, err))) return rc;
    if (kind == CM_API_CHAT && (rc = get_int(root, "max_completion_tokens", 1, 2147483647.0, &given, &d, err)))
        return rc;
    if (given) q->max_tokens = (int)d;
    if ((rc = get_num(root, "temperature", 0, 2, &q->temperature, err))) return rc;
    if ((rc = get_num(root, "top_p", 0, 1, &q->top_p, err))) return rc;
    if ((rc = get_num(root, "presence_penalty", -2, 2, &q->presence_penalty, err))) return rc;
    if ((rc = get_num(root, "frequency_penalty", -2, 2, &q->frequency_penalty, err))) return rc;
    d = 0;
    if ((rc = get_int(root, "seed", -9.2e18, 1.8e19, &q->has_seed, &d, err))) return rc;
    q->seed = d < 0 ? (uint64_t)(int64_t)d : (uint64_t)d;
    d = 1;
    if ((rc = get_int(root, "n", 1, 128, NULL, &d, err))) return rc;
    if (d != 1) return BAD("n", "'n' is %.0f; this server returns one choice per request (n = 1)", d);
    if ((rc = parse_stop(root, q, err))) return rc;
    /* Fields that would change what the answer is: refuse rather than ignore. */
    cJSON *tools = field(root, "tools");
    if (tools && !(cJSON_IsArray(tools) && cJSON_GetArraySize(tools) == 0))
        return BAD("tools", "'tools' (function calling) is not supported by this server");
    if (field(root, "functions")) return BAD("functions", "'functions' (function calling) is not supported by this server");
    cJSON *rf = field(root, "response_format");
    if (rf) {
        cJSON *type = cJSON_GetObjectItemCaseSensitive(rf, "type");
        if (!cJSON_IsObject(rf) || !cJSON_IsString(type) || strcmp(type->valuestring, "text"))
            return BAD("response_format", "'response_format' other than {\"type\":\"text\"} is not supported");
    }
    if (kind == CM_API_CHAT) {
        if ((rc = get_bool(root, "logprobs", &q->logprobs, err))) return rc;
        bool has_top = false;
        d = 0;
        if ((rc = get_int(root, "top_logprobs", 0, CM_MAX_TOP_LOGPROBS, &has_top, &d, err))) return rc;
        if (has_top && !q->logprobs) return BAD("top_logprobs", "'top_logprobs' needs 'logprobs' set to true");
        q->top_logprobs = (int)d;
        if ((rc = parse_messages(root, q, err))) return rc;
    } else {
        bool has_lp = false;
        d = 0;
        if ((rc = get_int(root, "logprobs", 0, CM_MAX_TOP_LOGPROBS, &has_lp, &d, err))) return rc;
        q->logprobs = has_lp;
        q->top_logprobs = (int)d;
        bool echo = false;
        if ((rc = get_bool(root, "echo", &echo, err))) return rc;
        if (echo) return BAD("echo", "'echo' is not supported");
        if ((rc = parse_prompt(root, q, err))) return rc;
    }
    return CM_OK;
}

void cm_api_req_free(cm_api_req *q) {
    if (q->msg_text)
        for (int i = 0; i < q->n_msg_text; i++) free(q->msg_text[i]);
    free(q->msg_text);
    free(q->msgs);
    free(q->prompt_ids);
    cJSON_Delete(q->root);
    memset(q, 0, sizeof *q);
}

/* ---- rendering ---- */

static const char *finish_name(cm_finish f) { return f == CM_FINISH_STOP ? "stop" : "length"; }

/* A token's text as clean UTF-8 into *b (reset first). */
static const char *piece_text(const cm_pieces *pc, int32_t tok, cm_sbuf *b, const char **raw, size_t *n_raw) {
    b->n = 0;
    if (b->p) b->p[0] = 0;
    *raw = "";
    *n_raw = 0;
    if (tok >= 0 && tok < pc->n_vocab) {
        *raw = pc->bytes + pc->off[tok];
        *n_raw = pc->off[tok + 1] - pc->off[tok];
    }
    cm_sbuf_puts(b, "");
    cm_utf8_clean(b, *raw, *n_raw, true);
    return b->p ? b->p : "";
}

static cJSON *bytes_array(const char *raw, size_t n) {
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber((unsigned char)raw[i]));
    return a;
}

/* Chat: {"content":[{token, logprob, bytes, top_logprobs:[...]}], "refusal":null} */
static cJSON *chat_logprobs(const cm_pieces *pc, const cm_tok_rec *toks, int n) {
    cJSON *lp = cJSON_CreateObject(), *content = cJSON_CreateArray();
    cm_sbuf b = {0};
    for (int i = 0; i < n; i++) {
        const char *raw;
        size_t n_raw;
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "token", piece_text(pc, toks[i].token, &b, &raw, &n_raw));
        cJSON_AddNumberToObject(e, "logprob", toks[i].logprob);
        cJSON_AddItemToObject(e, "bytes", bytes_array(raw, n_raw));
        cJSON *top = cJSON_CreateArray();
        for (int k = 0; k < toks[i].n_top; k++) {
            cJSON *t = cJSON_CreateObject();
            cJSON_AddStringToObject(t, "token", piece_text(pc, toks[i].top_id[k], &b, &raw, &n_raw));
            cJSON_AddNumberToObject(t, "logprob", toks[i].top_lp[k]);
            cJSON_AddItemToObject(t, "bytes", bytes_array(raw, n_raw));
            cJSON_AddItemToArray(top, t);
        }
        cJSON_AddItemToObject(e, "top_logprobs", top);
        cJSON_AddItemToArray(content, e);
    }
    cm_sbuf_free(&b);
    cJSON_AddItemToObject(lp, "content", content);
    cJSON_AddNullToObject(lp, "refusal");
    return lp;
}

/* Completions: {"tokens":[], "token_logprobs":[], "top_logprobs":[{tok:lp}], "text_offset":[]} */
static cJSON *completion_logprobs(const cm_pieces *pc, const cm_tok_rec *toks, int n) {
    cJSON *lp = cJSON_CreateObject(), *tk = cJSON_CreateArray(), *tl = cJSON_CreateArray(),
          *top = cJSON_CreateArray(), *off = cJSON_CreateArray();
    cm_sbuf b = {0};
    for (int i = 0; i < n; i++) {
        const char *raw;
        size_t n_raw;
        cJSON_AddItemToArray(tk, cJSON_CreateString(piece_text(pc, toks[i].token, &b, &raw, &n_raw)));
        cJSON_AddItemToArray(tl, cJSON_CreateNumber(toks[i].logprob));
        cJSON *t = cJSON_CreateObject();
        for (int k = 0; k < toks[i].n_top; k++) {
            const char *s = piece_text(pc, toks[i].top_id[k], &b, &raw, &n_raw);
            if (!cJSON_GetObjectItemCaseSensitive(t, s)) cJSON_AddNumberToObject(t, s, toks[i].top_lp[k]);
        }
        cJSON_AddItemToArray(top, t);
        cJSON_AddItemToArray(off, cJSON_CreateNumber(toks[i].text_off));
    }
    cm_sbuf_free(&b);
    cJSON_AddItemToObject(lp, "tokens", tk);
    cJSON_AddItemToObject(lp, "token_logprobs", tl);
    cJSON_AddItemToObject(lp, "top_logprobs", top);
    cJSON_AddItemToObject(lp, "text_offset", off);
    return lp;
}

static cJSON *usage_obj(int n_prompt, int n_gen) {
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", n_gen);
    cJSON_AddNumberToObject(u, "total_tokens", n_prompt + n_gen);
    return u;
}

static cJSON *head(const cm_api_req *q, const cm_api_meta *m, bool chunk) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", m->id);
    cJSON_AddStringToObject(root, "object",
                            q->kind == CM_API_CHAT ? (chunk ? "chat.completion.chunk" : "chat.completion")
                                                   : "text_completion");
    cJSON_AddNumberToObject(root, "created", (double)m->created);
    cJSON_AddStringToObject(root, "model", m->model);
    cJSON_AddStringToObject(root, "system_fingerprint", "cellm");
    return root;
}

char *cm_api_response(const cm_api_req *q, const cm_api_meta *m, const cm_api_out *o) {
    cJSON *root = head(q, m, false);
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    cm_sbuf text = {0};
    cm_sbuf_puts(&text, "");
    cm_utf8_clean(&text, o->text, o->n_text, true);
    if (q->kind == CM_API_CHAT) {
        cJSON *msg = cJSON_CreateObject();
        cJSON_AddStringToObject(msg, "role", "assistant");
        cJSON_AddStringToObject(msg, "content", text.p ? text.p : "");
        cJSON_AddNullToObject(msg, "refusal");
        cJSON_AddItemToObject(c, "message", msg);
        if (q->logprobs)
            cJSON_AddItemToObject(c, "logprobs", chat_logprobs(m->pieces, o->toks, o->n_toks));
        else
            cJSON_AddNullToObject(c, "logprobs");
    } else {
        cJSON_AddStringToObject(c, "text", text.p ? text.p : "");
        if (q->logprobs)
            cJSON_AddItemToObject(c, "logprobs", completion_logprobs(m->pieces, o->toks, o->n_toks));
        else
            cJSON_AddNullToObject(c, "logprobs");
    }
    cJSON_AddStringToObject(c, "finish_reason", finish_name(o->finish));
    cJSON_AddItemToArray(choices, c);
    cJSON_AddItemToObject(root, "usage", usage_obj(o->n_prompt, o->n_gen));
    char *out = text.oom ? NULL : cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    cm_sbuf_free(&text);
    return out;
}

static void put_event(cm_sbuf *sse, cJSON *root) {
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!s) {
        sse->oom = true;
        return;
    }
    cm_sbuf_puts(sse, "data: ");
    cm_sbuf_puts(sse, s);
    cm_sbuf_puts(sse, "\n\n");
    free(s);
}

void cm_api_chunk(cm_sbuf *sse, const cm_api_req *q, const cm_api_meta *m, const char *text, size_t n_text,
                  const cm_tok_rec *toks, int n_toks, bool role, cm_finish finish) {
    cJSON *root = head(q, m, true);
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    char *t = malloc(n_text + 1);
    if (!t) {
        cJSON_Delete(root);
        cJSON_Delete(c);
        sse->oom = true;
        return;
    }
    memcpy(t, text, n_text);
    t[n_text] = 0;
    if (q->kind == CM_API_CHAT) {
        cJSON *delta = cJSON_CreateObject();
        if (role) cJSON_AddStringToObject(delta, "role", "assistant");
        if (n_text || role) cJSON_AddStringToObject(delta, "content", t);
        cJSON_AddItemToObject(c, "delta", delta);
        if (q->logprobs && n_toks)
            cJSON_AddItemToObject(c, "logprobs", chat_logprobs(m->pieces, toks, n_toks));
        else
            cJSON_AddNullToObject(c, "logprobs");
    } else {
        cJSON_AddStringToObject(c, "text", t);
        if (q->logprobs && n_toks)
            cJSON_AddItemToObject(c, "logprobs", completion_logprobs(m->pieces, toks, n_toks));
        else
            cJSON_AddNullToObject(c, "logprobs");
    }
    free(t);
    if (finish != CM_FINISH_NONE)
        cJSON_AddStringToObject(c, "finish_reason", finish_name(finish));
    else
        cJSON_AddNullToObject(c, "finish_reason");
    cJSON_AddItemToArray(choices, c);
    if (q->include_usage) cJSON_AddNullToObject(root, "usage");
    put_event(sse, root);
}

void cm_api_usage_chunk(cm_sbuf *sse, const cm_api_req *q, const cm_api_meta *m, int n_prompt, int n_gen) {
    cJSON *root = head(q, m, true);
    cJSON_AddArrayToObject(root, "choices");
    cJSON_AddItemToObject(root, "usage", usage_obj(n_prompt, n_gen));
    put_event(sse, root);
}
