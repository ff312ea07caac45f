/* server.c - the HTTP side of `cellm serve` (see server.h).
 *
 * libmicrohttpd runs one thread per connection, so a handler may block: a
 * non-streaming generation waits in the access handler until its request is
 * done; a streaming one returns a callback response whose reader blocks
 * until the next tokens arrive and writes them as server-sent events.
 * While waiting, both look at the socket every 200 ms; a client that has
 * gone away cancels its request, which frees its sequence slot at the next
 * batch step (a streaming client is also noticed at the next write).
 *
 * Request bodies are buffered up to --max-body bytes; a larger body is read
 * and discarded (so the client sees the 413 instead of a reset) unless it
 * announces more than 64 MiB extra or waits for "100 Continue", which get
 * the 413 at once.
 *
 * Status codes: 400 bad JSON / wrong types / context overflow, 401 missing
 * or wrong API key, 404 unknown path or model, 405 wrong method, 413 body
 * too large, 429 queue full (Retry-After), 500 engine failure, 503 shutting
 * down, 504 request timeout. */
#include "serve/server.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"
#include "base/rng.h"
#include "base/status.h"
#include "base/time.h"
#include "model/model.h"
#include "serve/api.h"
#include "serve/engine.h"
#include "serve/metrics.h"
#include "serve/pieces.h"
#include "serve/sched.h"
#include "serve/util.h"
#include "text/chat.h"
#include "text/tokenizer.h"

extern const char cm_dashboard_html[]; /* dashboard.c */

#define DISCARD_MAX ((size_t)64 << 20)

struct cm_server {
    cm_server_params p;
    char model_name[256];
    char *api_key;
    cm_model *model;
    cm_ctx *ctx;
    cm_tokenizer *tok;
    pthread_mutex_t tok_mu; /* the tokenizer is not documented as thread-safe */
    cm_chat_format chat;
    cm_pieces pieces;
    cm_engine engine;
    cm_sched *sched;
    cm_metrics *metrics;
    struct MHD_Daemon *d;
    int port;
    double t_start;
    long long created;
    atomic_bool draining;
    atomic_int n_responding; /* requests whose response is not fully sent yet */
    pthread_mutex_t rng_mu;
    cm_rng rng;
};

/* Per connection-request state (MHD's con_cls). */
struct conn {
    cm_sbuf body;
    size_t n_discarded;
    bool too_big;
};

void cm_server_params_default(cm_server_params *p) {
    memset(p, 0, sizeof *p);
    p->host = "127.0.0.1";
    p->port = 8080;
    p->n_parallel = 4;
    p->max_queue = 64;
    p->timeout_s = 600;
    p->max_body = 1 << 20;
    p->grace_s = 10;
    p->prefill_chunk = 256;
}

int cm_server_port(const cm_server *s) { return s->port; }
const char *cm_server_model_name(const cm_server *s) { return s->model_name; }

/* ---- responses ---- */

static enum MHD_Result respond(cm_server *s, struct MHD_Connection *c, unsigned status, struct MHD_Response *r) {
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Access-Control-Allow-Origin", "*");
    enum MHD_Result ok = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    cm_metrics_request(s->metrics, (int)status);
    return ok;
}

/* Takes ownership of body (malloc'd). */
static enum MHD_Result respond_body(cm_server *s, struct MHD_Connection *c, unsigned status, char *body,
                                    const char *ctype) {
    if (!body) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,"
                                  "\"code\":null}}";
        struct MHD_Response *r =
            MHD_create_response_from_buffer(sizeof oom - 1, (void *)oom, MHD_RESPMEM_PERSISTENT);
        if (r) MHD_add_response_header(r, "Content-Type", "application/json");
        return respond(s, c, 500, r);
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", ctype);
    return respond(s, c, status, r);
}

static enum MHD_Result respond_error(cm_server *s, struct MHD_Connection *c, const cm_api_error *e) {
    char *json = cm_api_error_json(e);
    if (!json) return respond_body(s, c, 500, NULL, NULL);
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(json), json, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(json);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "application/json");
    if (e->http == 429) MHD_add_response_header(r, "Retry-After", "1");
    if (e->http == 401) MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    if (e->http == 503) MHD_add_response_header(r, "Retry-After", "5");
    return respond(s, c, (unsigned)e->http, r);
}

static enum MHD_Result error_simple(cm_server *s, struct MHD_Connection *c, int http, const char *type,
                                    const char *code, const char *msg) {
    cm_api_error e;
    cm_api_error_set(&e, http, type, NULL, code, "%s", msg);
    return respond_error(s, c, &e);
}

/* ---- helpers ---- */

static bool peer_gone(int fd) {
    if (fd < 0) return false;
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
    if (p.revents & POLLIN) {
        char ch;
        ssize_t k = recv(fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
        return k == 0;
    }
    return false;
}

static int conn_fd(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? (int)ci->connect_fd : -1;
}

static bool authorized(cm_server *s, struct MHD_Connection *c) {
    if (!s->api_key) return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncmp(h, "Bearer ", 7)) return false;
    h += 7;
    size_t n = strlen(h), k = strlen(s->api_key);
    unsigned char diff = (unsigned char)(n != k);
    /* Compare in time that does not depend on where the first difference is. */
    for (size_t i = 0; i < k; i++) diff |= (unsigned char)(s->api_key[i] ^ (i < n ? h[i] : 0));
    return diff == 0;
}

static void make_id(cm_server *s, const char *prefix, char *out, size_t n) {
    pthread_mutex_lock(&s->rng_mu);
    uint64_t a = cm_rng_u64(&s->rng), b = cm_rng_u64(&s->rng);
    pthread_mutex_unlock(&s->rng_mu);
    snprintf(out, n, "%s%016llx%08llx", prefix, (unsigned long long)a, (unsigned long long)(b & 0xffffffffu));
}

/* Tokenizes text into a malloc'd array. */
static int tokenize(cm_server *s, const char *text, bool add_bos, int32_t **out, int *n_out) {
    size_t len = strlen(text);
    int n_max = (int)(len < 1000000 ? len : 1000000) + 16;
    *out = NULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)n_max);
        if (!ids) return CM_ENOMEM;
        int n = 0;
        pthread_mutex_lock(&s->tok_mu);
        int rc = cm_tokenize(s->tok, text, len, add_bos && cm_tokenizer_add_bos(s->tok), true, ids, n_max, &n);
        pthread_mutex_unlock(&s->tok_mu);
        if (rc == CM_OK) {
            *out = ids;
            *n_out = n;
            return CM_OK;
        }
        free(ids);
        if (rc != CM_ERANGE) return rc;
        n_max = n;
    }
    return cm_errorf(CM_ERANGE, "tokenizer disagreed with itself about the prompt length");
}

/* ---- streaming ---- */

struct stream {
    cm_server *s;
    cm_req *r;
    cm_api_req q;
    cm_api_meta meta;
    char id[64];
    int fd;
    size_t seen_text; /* bytes of r->text taken */
    int seen_toks;
    cm_sbuf hold;     /* raw bytes not yet valid UTF-8 */
    cm_sbuf out;      /* SSE bytes for the client */
    size_t out_pos;
    bool role_sent, ended;
    cm_tok_rec *toks;
    int cap_toks;
};

static void stream_free(void *cls) {
    struct stream *st = cls;
    cm_sched_cancel(st->s->sched, st->r);
    cm_sched_release(st->s->sched, st->r);
    cm_api_req_free(&st->q);
    cm_sbuf_free(&st->hold);
    cm_sbuf_free(&st->out);
    free(st->toks);
    free(st);
}

static void error_event(cm_sbuf *out, int err, const char *msg) {
    cm_api_error e;
    if (err == CM_ETIMEDOUT)
        cm_api_error_set(&e, 504, "timeout", NULL, "timeout", "%s", msg);
    else if (err == CM_ECANCELED)
        cm_api_error_set(&e, 503, "server_error", NULL, "server_shutting_down", "%s", msg);
    else
        cm_api_error_set(&e, 500, "server_error", NULL, NULL, "%s", msg);
    char *json = cm_api_error_json(&e);
    if (!json) {
        out->oom = true;
        return;
    }
    cm_sbuf_puts(out, "data: ");
    cm_sbuf_puts(out, json);
    cm_sbuf_puts(out, "\n\n");
    free(json);
}

/* Waits for news from the request and turns it into SSE bytes in st->out.
 * Returns false when the client is gone. */
static bool stream_fill(struct stream *st) {
    cm_sched *sc = st->s->sched;
    cm_req *r = st->r;
    cm_sched_lock(sc);
    while (st->role_sent && r->state != CM_REQ_DONE && r->n_text == st->seen_text && r->n_toks == st->seen_toks) {
        cm_sched_wait(sc, r, 200);
        if (r->state == CM_REQ_DONE || r->n_text != st->seen_text || r->n_toks != st->seen_toks) break;
        cm_sched_unlock(sc);
        bool gone = peer_gone(st->fd);
        cm_sched_lock(sc);
        if (gone) {
            cm_sched_unlock(sc);
            return false;
        }
    }
    if (r->n_text > st->seen_text) cm_sbuf_put(&st->hold, r->text + st->seen_text, r->n_text - st->seen_text);
    st->seen_text = r->n_text;
    int n_new = r->n_toks - st->seen_toks;
    if (n_new > st->cap_toks) {
        cm_tok_rec *t = realloc(st->toks, sizeof *t * (size_t)n_new);
        if (!t) {
            cm_sched_unlock(sc);
            return false;
        }
        st->toks = t;
        st->cap_toks = n_new;
    }
    if (n_new > 0) memcpy(st->toks, r->toks + st->seen_toks, sizeof *st->toks * (size_t)n_new);
    st->seen_toks = r->n_toks;
    bool done = r->state == CM_REQ_DONE;
    cm_finish finish = r->finish;
    int err = r->err, n_prompt = r->n_prompt, n_gen = r->n_gen;
    char err_msg[sizeof r->err_msg];
    memcpy(err_msg, r->err_msg, sizeof err_msg);
    cm_sched_unlock(sc);

    cm_sbuf clean = {0};
    cm_sbuf_puts(&clean, "");
    size_t used = cm_utf8_clean(&clean, st->hold.p ? st->hold.p : "", st->hold.n, done);
    if (used) {
        memmove(st->hold.p, st->hold.p + used, st->hold.n - used);
        st->hold.n -= used;
    }
    if (clean.n || n_new > 0 || !st->role_sent)
        cm_api_chunk(&st->out, &st->q, &st->meta, clean.p ? clean.p : "", clean.n, st->toks, n_new, !st->role_sent,
                     CM_FINISH_NONE);
    st->role_sent = true;
    cm_sbuf_free(&clean);
    if (done) {
        if (err) {
            error_event(&st->out, err, err_msg);
        } else {
            cm_api_chunk(&st->out, &st->q, &st->meta, "", 0, NULL, 0, false, finish);
            if (st->q.include_usage) cm_api_usage_chunk(&st->out, &st->q, &st->meta, n_prompt, n_gen);
        }
        cm_sbuf_puts(&st->out, "data: [DONE]\n\n");
        st->ended = true;
    }
    return !st->out.oom;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    struct stream *st = cls;
    while (st->out_pos >= st->out.n) {
        if (st->ended) return MHD_CONTENT_READER_END_OF_STREAM;
        st->out.n = 0;
        st->out_pos = 0;
        if (!stream_fill(st)) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t k = st->out.n - st->out_pos;
    if (k > max) k = max;
    memcpy(buf, st->out.p + st->out_pos, k);
    st->out_pos += k;
    return (ssize_t)k;
}

/* ---- generation ---- */

static enum MHD_Result handle_generate(cm_server *s, struct MHD_Connection *c, struct conn *cn, cm_api_kind kind) {
    cm_api_req q;
    cm_api_error err;
    int32_t *ids = NULL;
    int n_ids = 0;
    cm_req *r = NULL;
    enum MHD_Result ret;
    if (cm_api_parse(cn->body.p ? cn->body.p : "", cn->body.n, kind, &q, &err) != CM_OK) goto fail_api;
    if (q.model && strcmp(q.model, s->model_name)) {
        cm_api_error_set(&err, 404, "invalid_request_error", "model", "model_not_found",
                         "The model '%s' does not exist; this server serves '%s' (see GET /v1/models)", q.model,
                         s->model_name);
        goto fail_api;
    }
    if (atomic_load(&s->draining)) {
        cm_api_error_set(&err, 503, "server_error", NULL, "server_shutting_down", "the server is shutting down");
        goto fail_api;
    }
    int rc;
    if (kind == CM_API_CHAT) {
        char *text = NULL;
        rc = cm_chat_render(s->chat, q.msgs, q.n_msgs, true, &text);
        if (rc != CM_OK) {
            cm_api_error_set(&err, 400, "invalid_request_error", "messages", NULL, "%s", cm_last_error(rc));
            goto fail_api;
        }
        rc = tokenize(s, text, true, &ids, &n_ids);
        free(text);
    } else if (q.prompt_ids) {
        ids = q.prompt_ids;
        n_ids = q.n_prompt_ids;
        q.prompt_ids = NULL;
        rc = CM_OK;
    } else {
        rc = tokenize(s, q.prompt, true, &ids, &n_ids);
    }
    if (rc != CM_OK) {
        cm_api_error_set(&err, 400, "invalid_request_error", kind == CM_API_CHAT ? "messages" : "prompt", NULL,
                         "could not tokenize the prompt: %s", cm_last_error(rc));
        goto fail_api;
    }
    int n_ctx = s->engine.n_ctx;
    if (n_ids < 1) {
        cm_api_error_set(&err, 400, "invalid_request_error", "prompt", NULL, "the prompt is empty");
        goto fail_api;
    }
    for (int i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= s->engine.n_vocab) {
            cm_api_error_set(&err, 400, "invalid_request_error", "prompt", NULL,
                             "prompt token %d is %d, outside the vocabulary of %d", i, (int)ids[i], s->engine.n_vocab);
            goto fail_api;
        }
    }
    if (n_ids >= n_ctx || (q.max_tokens > 0 && (long long)n_ids + q.max_tokens > n_ctx)) {
        cm_api_error_set(&err, 400, "invalid_request_error", kind == CM_API_CHAT ? "messages" : "prompt",
                         "context_length_exceeded",
                         "This model's maximum context length is %d tokens. However, you requested %lld tokens (%d in "
                         "the prompt, %d for the completion). Please reduce the prompt or the completion length.",
                         n_ctx, (long long)n_ids + (q.max_tokens > 0 ? q.max_tokens : 0), n_ids,
                         q.max_tokens > 0 ? q.max_tokens : 0);
        goto fail_api;
    }
    cm_req_params rp;
    memset(&rp, 0, sizeof rp);
    rp.max_tokens = q.max_tokens > 0 ? q.max_tokens : n_ctx - n_ids;
    rp.sampler = cm_sampler_defaults();
    rp.sampler.temperature = (float)q.temperature;
    rp.sampler.top_k = 0;
    rp.sampler.top_p = (float)q.top_p;
    rp.sampler.min_p = 0;
    rp.sampler.repeat_penalty = 1;
    rp.sampler.repeat_last_n = -1;
    rp.sampler.presence_penalty = (float)q.presence_penalty;
    rp.sampler.frequency_penalty = (float)q.frequency_penalty;
    if (q.has_seed) {
        rp.sampler.seed = q.seed;
    } else {
        pthread_mutex_lock(&s->rng_mu);
        rp.sampler.seed = cm_rng_u64(&s->rng);
        pthread_mutex_unlock(&s->rng_mu);
    }
    for (int i = 0; i < q.n_stop; i++) rp.stop[i] = q.stop[i];
    rp.n_stop = q.n_stop;
    rp.logprobs = q.logprobs;
    rp.n_top_logprobs = q.top_logprobs;
    rp.timeout_s = s->p.timeout_s;
    rp.ignore_eos = q.ignore_eos;
    r = cm_req_create(ids, n_ids, &rp);
    free(ids);
    ids = NULL;
    if (!r) {
        cm_api_error_set(&err, 500, "server_error", NULL, NULL, "out of memory");
        goto fail_api;
    }
    rc = cm_sched_submit(s->sched, r);
    if (rc == CM_EFULL) {
        cm_api_error_set(&err, 429, "rate_limit_exceeded", NULL, "rate_limit_exceeded",
                         "The server is busy (%s). Retry after a second.", cm_last_error(rc));
        goto fail_api;
    } else if (rc == CM_ECLOSED) {
        cm_api_error_set(&err, 503, "server_error", NULL, "server_shutting_down", "the server is shutting down");
        goto fail_api;
    } else if (rc != CM_OK) {
        cm_api_error_set(&err, 400, "invalid_request_error", NULL, NULL, "%s", cm_last_error(rc));
        goto fail_api;
    }

    if (q.stream) {
        struct stream *st = calloc(1, sizeof *st);
        if (!st) {
            cm_sched_cancel(s->sched, r);
            cm_api_error_set(&err, 500, "server_error", NULL, NULL, "out of memory");
            goto fail_api;
        }
        st->s = s;
        st->r = r;
        st->q = q; /* the stream owns the parsed request from here */
        make_id(s, kind == CM_API_CHAT ? "chatcmpl-" : "cmpl-", st->id, sizeof st->id);
        st->meta = (cm_api_meta){.id = st->id, .created = (long long)time(NULL), .model = s->model_name,
                                 .pieces = &s->pieces};
        st->fd = conn_fd(c);
        st->role_sent = kind != CM_API_CHAT;
        struct MHD_Response *resp =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_read, st, stream_free);
        if (!resp) {
            stream_free(st);
            return MHD_NO;
        }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");
        return respond(s, c, 200, resp);
    }

    /* Non-streaming: wait here (this connection's own thread). */
    int fd = conn_fd(c);
    cm_sched *sc = s->sched;
    cm_sched_lock(sc);
    while (r->state != CM_REQ_DONE) {
        cm_sched_wait(sc, r, 200);
        if (r->state == CM_REQ_DONE) break;
        cm_sched_unlock(sc);
        bool gone = peer_gone(fd);
        cm_sched_lock(sc);
        if (gone) {
            cm_sched_unlock(sc);
            cm_sched_cancel(sc, r);
            cm_sched_release(sc, r);
            cm_api_req_free(&q);
            cm_metrics_request(s->metrics, 0); /* counted as "other": the client left */
            return MHD_NO;
        }
    }
    /* DONE: the engine thread no longer writes the request. */
    cm_sched_unlock(sc);
    if (r->err) {
        if (r->err == CM_ETIMEDOUT)
            cm_api_error_set(&err, 504, "timeout", NULL, "timeout", "%s", r->err_msg);
        else if (r->err == CM_ECANCELED)
            cm_api_error_set(&err, 503, "server_error", NULL, "server_shutting_down", "%s", r->err_msg);
        else
            cm_api_error_set(&err, 500, "server_error", NULL, NULL, "%s", r->err_msg);
        goto fail_api;
    }
    char id[64];
    make_id(s, kind == CM_API_CHAT ? "chatcmpl-" : "cmpl-", id, sizeof id);
    cm_api_meta meta = {.id = id, .created = (long long)time(NULL), .model = s->model_name, .pieces = &s->pieces};
    cm_api_out o = {.text = r->text ? r->text : "", .n_text = r->n_text, .toks = r->toks, .n_toks = r->n_toks,
                    .finish = r->finish, .n_prompt = r->n_prompt, .n_gen = r->n_gen};
    char *body = cm_api_response(&q, &meta, &o);
    cm_sched_release(sc, r);
    cm_api_req_free(&q);
    return respond_body(s, c, 200, body, "application/json");

fail_api:
    free(ids);
    if (r) cm_sched_release(s->sched, r);
    ret = respond_error(s, c, &err);
    cm_api_req_free(&q);
    return ret;
}

/* ---- GET endpoints ---- */

static char *models_json(cm_server *s, bool one) {
    cm_sbuf b = {0};
    if (!one) cm_sbuf_puts(&b, "{\"object\":\"list\",\"data\":[");
    cm_sbuf_puts(&b, "{\"id\":\"");
    for (const char *p = s->model_name; *p; p++) {
        if (*p == '"' || *p == '\\')
            cm_sbuf_printf(&b, "\\%c", *p);
        else if ((unsigned char)*p >= 0x20)
            cm_sbuf_put(&b, p, 1);
    }
    cm_sbuf_printf(&b, "\",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"cellm\"}", s->created);
    if (!one) cm_sbuf_puts(&b, "]}");
    if (b.oom) {
        cm_sbuf_free(&b);
        return NULL;
    }
    return b.p;
}

static enum MHD_Result handle_get(cm_server *s, struct MHD_Connection *c, const char *url) {
    if (!strcmp(url, "/") || !strcmp(url, "/index.html")) {
        struct MHD_Response *r = MHD_create_response_from_buffer(strlen(cm_dashboard_html), (void *)cm_dashboard_html,
                                                                 MHD_RESPMEM_PERSISTENT);
        if (r) MHD_add_response_header(r, "Content-Type", "text/html; charset=utf-8");
        return respond(s, c, 200, r);
    }
    if (!strcmp(url, "/health")) {
        bool draining = atomic_load(&s->draining);
        char *body = malloc(64);
        if (body) snprintf(body, 64, "{\"status\":\"%s\"}", draining ? "shutting_down" : "ok");
        return respond_body(s, c, draining ? 503 : 200, body, "application/json");
    }
    cm_sched_stats st;
    if (!strcmp(url, "/metrics")) {
        cm_sched_stats_get(s->sched, &st);
        st.kv_bytes = cm_ctx_kv_bytes(s->ctx);
        return respond_body(s, c, 200, cm_metrics_prometheus(s->metrics, &st, s->model_name),
                            "text/plain; version=0.0.4; charset=utf-8");
    }
    if (!strcmp(url, "/stats") || !strcmp(url, "/v1/stats")) {
        cm_sched_stats_get(s->sched, &st);
        return respond_body(s, c, 200, cm_metrics_json(s->metrics, &st, s->model_name, cm_now_s() - s->t_start),
                            "application/json");
    }
    if (!strncmp(url, "/v1/models", 10)) {
        if (!authorized(s, c))
            return error_simple(s, c, 401, "invalid_request_error", "invalid_api_key",
                                "Missing or incorrect API key: send 'Authorization: Bearer KEY'.");
        if (!strcmp(url, "/v1/models")) return respond_body(s, c, 200, models_json(s, false), "application/json");
        if (url[10] == '/' && !strcmp(url + 11, s->model_name))
            return respond_body(s, c, 200, models_json(s, true), "application/json");
        if (url[10] == '/') {
            cm_api_error e;
            cm_api_error_set(&e, 404, "invalid_request_error", "model", "model_not_found",
                             "The model '%s' does not exist; this server serves '%s'", url + 11, s->model_name);
            return respond_error(s, c, &e);
        }
    }
    return error_simple(s, c, 404, "invalid_request_error", "not_found", "No such endpoint.");
}

static int post_route(const char *url) {
    if (!strcmp(url, "/v1/chat/completions") || !strcmp(url, "/chat/completions")) return 1;
    if (!strcmp(url, "/v1/completions") || !strcmp(url, "/completions")) return 2;
    return 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *n_upload, void **con_cls) {
    cm_server *s = cls;
    struct conn *cn = *con_cls;
    bool is_post = !strcmp(method, "POST");
    if (!cn) {
        cn = calloc(1, sizeof *cn);
        if (!cn) return MHD_NO;
        *con_cls = cn;
        atomic_fetch_add(&s->n_responding, 1);
        if (!is_post) {
            if (!strcmp(method, "GET") || !strcmp(method, "HEAD")) return handle_get(s, c, url);
            if (!strcmp(method, "OPTIONS")) {
                struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
                if (r) {
                    MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
                    MHD_add_response_header(r, "Access-Control-Allow-Headers", "Authorization, Content-Type");
                }
                return respond(s, c, 204, r);
            }
            return error_simple(s, c, 405, "invalid_request_error", "method_not_allowed", "Method not allowed.");
        }
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            unsigned long long v = strtoull(cl, NULL, 10);
            if (v > s->p.max_body) {
                cn->too_big = true;
                const char *ex = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
                if (ex || v > s->p.max_body + DISCARD_MAX)
                    return error_simple(s, c, 413, "invalid_request_error", "request_too_large",
                                        "The request body is larger than this server accepts (--max-body).");
            }
        }
        return MHD_YES;
    }
    if (*n_upload) {
        if (!cn->too_big && cn->body.n + *n_upload <= s->p.max_body) {
            cm_sbuf_put(&cn->body, upload, *n_upload);
            if (cn->body.oom) cn->too_big = true;
        } else {
            cn->too_big = true;
            cn->n_discarded += *n_upload;
        }
        *n_upload = 0;
        if (cn->n_discarded > DISCARD_MAX)
            return error_simple(s, c, 413, "invalid_request_error", "request_too_large",
                                "The request body is larger than this server accepts (--max-body).");
        return MHD_YES;
    }
    if (!is_post) return MHD_YES; /* already answered on the first call */
    if (cn->too_big)
        return error_simple(s, c, 413, "invalid_request_error", "request_too_large",
                            "The request body is larger than this server accepts (--max-body).");
    int route = post_route(url);
    if (!route) return error_simple(s, c, 404, "invalid_request_error", "not_found", "No such endpoint.");
    if (!authorized(s, c))
        return error_simple(s, c, 401, "invalid_request_error", "invalid_api_key",
                            "Missing or incorrect API key: send 'Authorization: Bearer KEY'.");
    return handle_generate(s, c, cn, route == 1 ? CM_API_CHAT : CM_API_COMPLETION);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    struct conn *cn = *con_cls;
    if (!cn) return;
    atomic_fetch_sub(&((cm_server *)cls)->n_responding, 1);
    cm_sbuf_free(&cn->body);
    free(cn);
    *con_cls = NULL;
}

/* ---- lifecycle ---- */

static void server_free(cm_server *s) {
    if (s->sched) cm_sched_destroy(s->sched);
    cm_pieces_free(&s->pieces);
    cm_metrics_destroy(s->metrics);
    cm_tokenizer_destroy(s->tok);
    cm_ctx_destroy(s->ctx);
    cm_model_destroy(s->model);
    free(s->api_key);
    pthread_mutex_destroy(&s->tok_mu);
    pthread_mutex_destroy(&s->rng_mu);
    free(s);
}

int cm_server_start(const cm_server_params *p, cm_server **out) {
    *out = NULL;
    if (p->n_parallel < 1 || p->n_parallel > 1024)
        return cm_errorf(CM_EINVAL, "--parallel %d: need 1 to 1024 sequence slots", p->n_parallel);
    if (p->max_queue < 0) return cm_errorf(CM_EINVAL, "--max-queue %d must not be negative", p->max_queue);
    if (p->max_body < 64) return cm_errorf(CM_EINVAL, "--max-body %zu is too small (at least 64 bytes)", p->max_body);
    if (p->port < 0 || p->port > 65535) return cm_errorf(CM_EINVAL, "--port %d is not a TCP port", p->port);
    cm_server *s = calloc(1, sizeof *s);
    if (!s) return CM_ENOMEM;
    s->p = *p;
    pthread_mutex_init(&s->tok_mu, NULL);
    pthread_mutex_init(&s->rng_mu, NULL);
    s->t_start = cm_now_s();
    s->created = (long long)time(NULL);
    cm_rng_init(&s->rng, (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ cm_now_ns());
    int rc;
    if (p->api_key && !(s->api_key = strdup(p->api_key))) {
        rc = CM_ENOMEM;
        goto fail;
    }
    if (p->model_name) {
        snprintf(s->model_name, sizeof s->model_name, "%s", p->model_name);
    } else {
        const char *base = strrchr(p->model_path, '/');
        base = base ? base + 1 : p->model_path;
        snprintf(s->model_name, sizeof s->model_name, "%s", base);
        size_t n = strlen(s->model_name);
        if (n > 5 && !strcmp(s->model_name + n - 5, ".gguf")) s->model_name[n - 5] = 0;
    }

    cm_model_params mp = {.layer_begin = 0, .layer_end = -1};
    if ((rc = cm_model_load(p->model_path, &mp, &s->model))) goto fail;
    const cm_hparams *hp = cm_model_hparams(s->model);
    int n_ctx = p->n_ctx;
    if (n_ctx <= 0) n_ctx = hp->n_ctx_train > 0 && hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
    if (n_ctx < 8) {
        rc = cm_errorf(CM_EINVAL, "-c %d is too small a context", n_ctx);
        goto fail;
    }
    int chunk = p->prefill_chunk > 0 ? p->prefill_chunk : 256;
    cm_ctx_params cp = {.n_ctx = n_ctx, .n_seq_max = p->n_parallel, .n_batch_max = chunk + p->n_parallel,
                        .n_threads = p->n_threads, .kv_type = p->kv_type};
    if ((rc = cm_ctx_create(s->model, &cp, &s->ctx))) goto fail;
    if ((rc = cm_tokenizer_load(cm_model_gguf(s->model), &s->tok))) goto fail;
    const char *tmpl = NULL;
    cm_gguf_get_str(cm_model_gguf(s->model), "tokenizer.chat_template", &tmpl, NULL);
    if (p->chat_template) {
        s->chat = cm_chat_format_from_name(p->chat_template);
        if (s->chat == CM_CHAT_UNKNOWN) {
            rc = cm_errorf(CM_EINVAL, "--chat-template %s: unknown (try llama3, chatml, mistral, gemma, phi3, deepseek)",
                           p->chat_template);
            goto fail;
        }
    } else {
        s->chat = cm_chat_detect(tmpl);
        if (s->chat == CM_CHAT_UNKNOWN) {
            CM_LOGW("serve: %s: %s chat template; using ChatML (choose one with --chat-template)", p->model_path,
                    tmpl && *tmpl ? "unrecognised" : "no");
            s->chat = CM_CHAT_CHATML;
        }
    }
    if ((rc = cm_pieces_build(s->tok, &s->pieces))) goto fail;
    if ((rc = cm_metrics_create(&s->metrics))) goto fail;
    cm_engine_local_init(&s->engine, s->ctx, n_ctx, p->n_parallel, chunk + p->n_parallel);
    cm_sched_params sp = {.engine = &s->engine, .pieces = &s->pieces, .max_queue = p->max_queue,
                          .prefill_chunk = chunk, .metrics = s->metrics};
    if ((rc = cm_sched_create(&sp, &s->sched))) goto fail;

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", p->port);
    int gai = getaddrinfo(p->host ? p->host : "127.0.0.1", port, &hints, &ai);
    if (gai != 0 || !ai) {
        rc = cm_errorf(CM_EINVAL, "--host %s: %s", p->host, gai_strerror(gai));
        goto fail;
    }
    /* poll() rather than select(): descriptors past FD_SETSIZE must work. */
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ITC;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    unsigned conn_timeout = (unsigned)(p->timeout_s > 0 ? p->timeout_s + 30 : 3600);
    s->d = MHD_start_daemon(flags, (uint16_t)p->port, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)1000, MHD_OPTION_CONNECTION_TIMEOUT, conn_timeout,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(256 * 1024), MHD_OPTION_NOTIFY_COMPLETED,
                            on_completed, s, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->d) {
        rc = cm_errorf(CM_EIO, "could not listen on %s:%d (port in use? try another --port)", p->host, p->port);
        goto fail;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : p->port;
    *out = s;
    return CM_OK;
fail:
    server_free(s);
    return rc;
}

void cm_server_stop(cm_server *s) {
    if (!s) return;
    atomic_store(&s->draining, true);
    /* Stop accepting: the listening socket leaves MHD and is closed here;
     * open keep-alive connections are still served (with 503 for new work). */
    MHD_socket ls = MHD_quiesce_daemon(s->d);
    if (ls != MHD_INVALID_SOCKET) close(ls);
    const double t0 = cm_now_s();
    cm_sched_drain(s->sched, s->p.grace_s);
    /* Every request is now done in the scheduler, but a response's last
     * bytes (a stream's finish chunk and [DONE]) may still be on their way
     * to the client: wait for MHD to report each one complete, within what
     * is left of the grace period, before connections are closed. */
    while (atomic_load(&s->n_responding) > 0 && cm_now_s() - t0 < s->p.grace_s) {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    MHD_stop_daemon(s->d);
    server_free(s);
}
