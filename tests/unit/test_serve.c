/* test_serve.c - the serve layer without HTTP: the scheduler against a fake
 * engine whose next token is always (token + 1) mod n_vocab, so every
 * request's output is known in advance; the OpenAI request parser and
 * response shapes; UTF-8 clean-up; the Prometheus exposition.
 *
 * The fake engine also checks what a real one relies on: every entry's
 * position continues its sequence, batches stay within n_batch_max, and a
 * sequence is emptied (seq_rm) before its slot is reused. */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "base/status.h"
#include "base/time.h"
#include "serve/api.h"
#include "serve/metrics.h"
#include "serve/sched.h"
#include "serve/util.h"
#include "test.h"

#define V 64
#define CTX 64
#define SLOTS 3
#define CHUNK 8
#define EOG_TOK 63

typedef struct fake {
    int len[SLOTS];          /* positions each sequence holds */
    float logits[CTX * 4][V];
    int n_calls, max_seqs, max_tokens, max_prefill, mixed, bad_pos, too_big, n_seq_rm;
    int sleep_us;
} fake;

static int fake_decode(void *impl, const cm_batch *b) {
    fake *f = impl;
    f->n_calls++;
    if (b->n_tokens > SLOTS + CHUNK) f->too_big++;
    if (b->n_tokens > f->max_tokens) f->max_tokens = b->n_tokens;
    int seen[SLOTS] = {0}, n_seqs = 0, n_want = 0, n_prefill = 0;
    for (int i = 0; i < b->n_tokens; i++) {
        int s = b->seq_id[i];
        if (s < 0 || s >= SLOTS || b->pos[i] != f->len[s] || b->pos[i] >= CTX) {
            f->bad_pos++;
            continue;
        }
        f->len[s]++;
        if (!seen[s]++) n_seqs++;
        if (!b->want_logits[i]) n_prefill++;
        if (b->want_logits[i]) {
            for (int k = 0; k < V; k++) f->logits[i][k] = 0;
            f->logits[i][(b->token[i] + 1) % V] = 10;
            n_want++;
        }
    }
    if (n_seqs > f->max_seqs) f->max_seqs = n_seqs;
    if (n_prefill > f->max_prefill) f->max_prefill = n_prefill;
    /* A step that carries prompt tokens and a decode token of another sequence. */
    if (n_prefill > 0 && n_want > 1) f->mixed++;
    if (f->sleep_us) usleep((useconds_t)f->sleep_us);
    return CM_OK;
}

static float *fake_logits(void *impl, int i) { return ((fake *)impl)->logits[i]; }

static void fake_seq_rm(void *impl, int seq, int p0, int p1) {
    fake *f = impl;
    if (p0 == 0 && p1 < 0) f->len[seq] = 0;
    f->n_seq_rm++;
}

/* Token t reads as the letter 'A' + t % 26; EOG_TOK has no text. */
static cm_pieces g_pieces;
static char g_bytes[V];
static uint32_t g_off[V + 1];
static uint8_t g_eog[V];

static void pieces_init(void) {
    for (int t = 0; t < V; t++) {
        g_off[t] = (uint32_t)t;
        g_bytes[t] = (char)('A' + t % 26);
    }
    g_off[V] = V;
    g_eog[EOG_TOK] = 1;
    g_pieces = (cm_pieces){.n_vocab = V, .bytes = g_bytes, .off = g_off, .eog = g_eog};
}

typedef struct rig {
    fake f;
    cm_engine e;
    cm_sched *s;
    cm_metrics *m;
} rig;

static void rig_start(rig *r, int max_queue, int sleep_us) {
    memset(r, 0, sizeof *r);
    r->f.sleep_us = sleep_us;
    r->e = (cm_engine){.impl = &r->f, .n_vocab = V, .n_ctx = CTX, .n_seq_max = SLOTS, .n_batch_max = SLOTS + CHUNK,
                       .decode = fake_decode, .logits = fake_logits, .seq_rm = fake_seq_rm};
    CHECK_OK(cm_metrics_create(&r->m));
    cm_sched_params p = {.engine = &r->e, .pieces = &g_pieces, .max_queue = max_queue, .prefill_chunk = CHUNK,
                         .metrics = r->m};
    CHECK_OK(cm_sched_create(&p, &r->s));
}

static void rig_stop(rig *r) {
    cm_sched_destroy(r->s);
    cm_metrics_destroy(r->m);
}

static cm_req_params greedy(int max_tokens) {
    cm_req_params p;
    memset(&p, 0, sizeof p);
    p.max_tokens = max_tokens;
    p.sampler = cm_sampler_defaults();
    p.sampler.temperature = 0;
    return p;
}

static void wait_done(cm_sched *s, cm_req *r) {
    cm_sched_lock(s);
    double t0 = cm_now_s();
    while (r->state != CM_REQ_DONE && cm_now_s() - t0 < 10) cm_sched_wait(s, r, 50);
    cm_sched_unlock(s);
}

static bool text_is(const cm_req *r, const char *want) {
    return r->n_text == strlen(want) && !memcmp(r->text, want, r->n_text);
}

TEST(greedy_length) {
    rig g;
    rig_start(&g, 8, 0);
    int32_t prompt[] = {1, 2, 3};
    cm_req_params p = greedy(5);
    cm_req *r = cm_req_create(prompt, 3, &p);
    CHECK_OK(cm_sched_submit(g.s, r));
    wait_done(g.s, r);
    CHECK(r->state == CM_REQ_DONE);
    CHECK(r->err == CM_OK);
    CHECK(r->finish == CM_FINISH_LENGTH);
    CHECK(r->n_gen == 5);
    CHECK_MSG(text_is(r, "EFGHI"), "text %.*s", (int)r->n_text, r->text);
    CHECK(r->t_first >= r->t_submit && r->t_done >= r->t_first);
    cm_sched_release(g.s, r);
    rig_stop(&g);
    CHECK(g.f.bad_pos == 0);
    CHECK(g.f.n_seq_rm >= 1);
}

TEST(eog_and_stop_string) {
    rig g;
    rig_start(&g, 8, 0);
    int32_t p1[] = {60};
    cm_req_params p = greedy(10);
    cm_req *a = cm_req_create(p1, 1, &p);
    int32_t p2[] = {0, 1, 2}; /* continues D E F G ...: stop at "EF" leaves "D" */
    p.stop[0] = "EF";
    p.stop[1] = "ZZZ";
    p.n_stop = 2;
    cm_req *b = cm_req_create(p2, 3, &p);
    CHECK_OK(cm_sched_submit(g.s, a));
    CHECK_OK(cm_sched_submit(g.s, b));
    wait_done(g.s, a);
    wait_done(g.s, b);
    CHECK(a->finish == CM_FINISH_STOP);
    CHECK(a->n_gen == 3); /* 61, 62, then the end-of-generation token */
    CHECK_MSG(text_is(a, "JK"), "text %.*s", (int)a->n_text, a->text);
    CHECK(b->finish == CM_FINISH_STOP);
    CHECK_MSG(text_is(b, "D"), "text %.*s", (int)b->n_text, b->text);
    cm_sched_release(g.s, a);
    cm_sched_release(g.s, b);
    rig_stop(&g);
}

TEST(continuous_batching_and_chunked_prefill) {
    rig g;
    rig_start(&g, 16, 200);
    enum { N = 7, PROMPT = 20, GEN = 12 };
    cm_req *rs[N];
    for (int i = 0; i < N; i++) {
        int32_t prompt[PROMPT];
        for (int k = 0; k < PROMPT; k++) prompt[k] = (i * 5 + k) % 50;
        cm_req_params p = greedy(GEN);
        rs[i] = cm_req_create(prompt, PROMPT, &p);
        CHECK_OK(cm_sched_submit(g.s, rs[i]));
    }
    for (int i = 0; i < N; i++) wait_done(g.s, rs[i]);
    for (int i = 0; i < N; i++) {
        int last = (i * 5 + PROMPT - 1) % 50;
        char want[GEN + 1];
        for (int k = 0; k < GEN; k++) want[k] = (char)('A' + ((last + 1 + k) % V) % 26);
        want[GEN] = 0;
        CHECK(rs[i]->err == CM_OK);
        CHECK(rs[i]->n_gen == GEN);
        CHECK_MSG(text_is(rs[i], want), "request %d: %.*s, want %s", i, (int)rs[i]->n_text, rs[i]->text, want);
        cm_sched_release(g.s, rs[i]);
    }
    cm_sched_stats st;
    cm_sched_stats_get(g.s, &st);
    CHECK(st.n_active == 0 && st.n_queued == 0 && st.kv_used_tokens == 0);
    rig_stop(&g);
    CHECK(g.f.bad_pos == 0);
    CHECK(g.f.too_big == 0);
    CHECK(g.f.max_prefill <= CHUNK);   /* prompts were fed in chunks */
    CHECK(g.f.max_seqs == SLOTS);      /* several sequences shared a step */
    CHECK(g.f.mixed > 0);              /* prompt chunks rode along with decode tokens */
    CHECK(g.f.n_seq_rm >= N);          /* every finished sequence was freed */
}

TEST(cancel_frees_slot_and_queue_limits) {
    rig g;
    rig_start(&g, 1, 2000);
    int32_t prompt[] = {1};
    cm_req_params p = greedy(CTX - 1);
    cm_req *rs[SLOTS + 1];
    for (int i = 0; i <= SLOTS; i++) {
        rs[i] = cm_req_create(prompt, 1, &p);
        CHECK_OK(cm_sched_submit(g.s, rs[i]));
    }
    /* Wait until the slots are full, with the last request queued. */
    cm_sched_stats st;
    for (int k = 0; k < 200; k++) {
        cm_sched_stats_get(g.s, &st);
        if (st.n_active == SLOTS) break;
        cm_sleep_ms(5);
    }
    CHECK(st.n_active == SLOTS && st.n_queued == 1);
    cm_req *extra = cm_req_create(prompt, 1, &p);
    CHECK(cm_sched_submit(g.s, extra) == CM_EFULL);
    cm_sched_release(g.s, extra);
    /* The queued request leaves the queue at once when cancelled. */
    cm_sched_cancel(g.s, rs[SLOTS]);
    CHECK(rs[SLOTS]->state == CM_REQ_DONE && rs[SLOTS]->err == CM_ECANCELED);
    /* A running one frees its slot at the next step. */
    int rm_before = g.f.n_seq_rm;
    cm_sched_cancel(g.s, rs[0]);
    wait_done(g.s, rs[0]);
    CHECK(rs[0]->err == CM_ECANCELED);
    CHECK(rs[0]->n_gen < CTX - 1);
    /* The engine thread empties the sequence just after marking it done. */
    for (int k = 0; k < 400 && g.f.n_seq_rm == rm_before; k++) cm_sleep_ms(5);
    CHECK(g.f.n_seq_rm > rm_before);
    cm_sched_stats_get(g.s, &st);
    CHECK(st.n_active == SLOTS - 1);
    /* Prompts that do not fit are refused. */
    int32_t big[CTX];
    memset(big, 0, sizeof big);
    cm_req *huge = cm_req_create(big, CTX, &p);
    CHECK(cm_sched_submit(g.s, huge) == CM_EINVAL);
    cm_sched_release(g.s, huge);
    /* Shutdown: running requests are cancelled after the grace period. */
    cm_sched_drain(g.s, 0.05);
    for (int i = 1; i < SLOTS; i++) {
        CHECK(rs[i]->state == CM_REQ_DONE);
        CHECK(rs[i]->err == CM_ECANCELED);
    }
    cm_req *late = cm_req_create(prompt, 1, &p);
    CHECK(cm_sched_submit(g.s, late) == CM_ECLOSED);
    cm_sched_release(g.s, late);
    for (int i = 0; i <= SLOTS; i++) cm_sched_release(g.s, rs[i]);
    rig_stop(&g);
    CHECK(g.f.bad_pos == 0);
}

TEST(timeout) {
    rig g;
    rig_start(&g, 4, 5000);
    int32_t prompt[] = {1};
    cm_req_params p = greedy(CTX - 1);
    p.timeout_s = 0.05;
    cm_req *r = cm_req_create(prompt, 1, &p);
    CHECK_OK(cm_sched_submit(g.s, r));
    wait_done(g.s, r);
    CHECK(r->err == CM_ETIMEDOUT);
    CHECK(r->n_gen < CTX - 1);
    cm_sched_release(g.s, r);
    rig_stop(&g);
}

TEST(logprobs) {
    rig g;
    rig_start(&g, 4, 0);
    int32_t prompt[] = {5, 6};
    cm_req_params p = greedy(3);
    p.logprobs = true;
    p.n_top_logprobs = 3;
    cm_req *r = cm_req_create(prompt, 2, &p);
    CHECK_OK(cm_sched_submit(g.s, r));
    wait_done(g.s, r);
    CHECK(r->n_toks == 3);
    double want = 10 - log(exp(10.0) + (V - 1));
    for (int i = 0; i < r->n_toks && i < 3; i++) {
        CHECK(r->toks[i].token == 7 + i);
        CHECK_NEAR(r->toks[i].logprob, want, 1e-4);
        CHECK(r->toks[i].n_top == 3);
        CHECK(r->toks[i].top_id[0] == 7 + i);
        CHECK_NEAR(r->toks[i].top_lp[0], want, 1e-4);
        CHECK_NEAR(r->toks[i].top_lp[1], -log(exp(10.0) + (V - 1)), 1e-4);
        CHECK(r->toks[i].text_off == (uint32_t)i);
    }
    /* The chat and completions shapes of the same output. */
    cm_api_req q;
    cm_api_error err;
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"logprobs\":true,\"top_logprobs\":3}";
    CHECK_OK(cm_api_parse(body, strlen(body), CM_API_CHAT, &q, &err));
    cm_api_meta meta = {.id = "chatcmpl-x", .created = 1, .model = "m", .pieces = &g_pieces};
    cm_api_out o = {.text = r->text, .n_text = r->n_text, .toks = r->toks, .n_toks = r->n_toks, .finish = r->finish,
                    .n_prompt = r->n_prompt, .n_gen = r->n_gen};
    char *json = cm_api_response(&q, &meta, &o);
    cJSON *root = cJSON_Parse(json);
    CHECK(root != NULL);
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "choices"), 0);
    cJSON *content = cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "logprobs"), "content");
    CHECK(cJSON_GetArraySize(content) == 3);
    cJSON *e0 = cJSON_GetArrayItem(content, 0);
    CHECK(!strcmp(cJSON_GetObjectItem(e0, "token")->valuestring, "H"));
    CHECK_NEAR(cJSON_GetObjectItem(e0, "logprob")->valuedouble, want, 1e-4);
    CHECK(cJSON_GetArrayItem(cJSON_GetObjectItem(e0, "bytes"), 0)->valueint == 'H');
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(e0, "top_logprobs")) == 3);
    CHECK(!strcmp(cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "message"), "content")->valuestring, "HIJ"));
    CHECK(!strcmp(cJSON_GetObjectItem(c0, "finish_reason")->valuestring, "length"));
    CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(root, "usage"), "total_tokens")->valueint == 5);
    CHECK(!strcmp(cJSON_GetObjectItem(root, "object")->valuestring, "chat.completion"));
    cJSON_Delete(root);
    free(json);
    cm_api_req_free(&q);
    body = "{\"prompt\":\"x\",\"logprobs\":2}";
    CHECK_OK(cm_api_parse(body, strlen(body), CM_API_COMPLETION, &q, &err));
    json = cm_api_response(&q, &meta, &o);
    root = cJSON_Parse(json);
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "choices"), 0);
    cJSON *lp = cJSON_GetObjectItem(c0, "logprobs");
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(lp, "tokens")) == 3);
    CHECK_NEAR(cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "token_logprobs"), 2)->valuedouble, want, 1e-4);
    CHECK(cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "text_offset"), 2)->valueint == 2);
    CHECK(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "top_logprobs"), 0), "H") != NULL);
    CHECK(!strcmp(cJSON_GetObjectItem(c0, "text")->valuestring, "HIJ"));
    cJSON_Delete(root);
    free(json);
    cm_api_req_free(&q);
    cm_sched_release(g.s, r);
    rig_stop(&g);
}

/* Expects a 400 naming `param` (NULL: no param). */
static void expect_bad(cm_api_kind kind, const char *body, const char *param) {
    cm_api_req q;
    cm_api_error err;
    memset(&err, 0, sizeof err);
    int rc = cm_api_parse(body, strlen(body), kind, &q, &err);
    CHECK_MSG(rc == CM_EINVAL, "accepted: %s", body);
    CHECK(err.http == 400);
    CHECK_MSG(!strcmp(err.param, param ? param : ""), "%s: param '%s', want '%s'", body, err.param,
              param ? param : "");
    cm_api_req_free(&q);
}

TEST(api_parse) {
    cm_api_req q;
    cm_api_error err;
    const char *ok = "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
                     "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]}],"
                     "\"max_completion_tokens\":7,\"temperature\":0.5,\"top_p\":0.9,\"seed\":42,\"stop\":[\"x\",\"y\"],"
                     "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"presence_penalty\":1,"
                     "\"frequency_penalty\":-1,\"unknown_field\":{}}";
    CHECK_OK(cm_api_parse(ok, strlen(ok), CM_API_CHAT, &q, &err));
    CHECK(q.n_msgs == 2 && !strcmp(q.msgs[1].content, "ab") && !strcmp(q.msgs[0].role, "system"));
    CHECK(q.max_tokens == 7 && q.has_seed && q.seed == 42 && q.n_stop == 2 && q.stream && q.include_usage);
    CHECK_NEAR(q.temperature, 0.5, 1e-9);
    CHECK(!strcmp(q.model, "m"));
    cm_api_req_free(&q);
    const char *ids = "{\"prompt\":[1,2,3],\"max_tokens\":null,\"stop\":\"\\n\"}";
    CHECK_OK(cm_api_parse(ids, strlen(ids), CM_API_COMPLETION, &q, &err));
    CHECK(q.n_prompt_ids == 3 && q.prompt_ids[2] == 3 && q.max_tokens == -1 && q.n_stop == 1);
    cm_api_req_free(&q);

    expect_bad(CM_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}", NULL); /* truncated JSON */
    expect_bad(CM_API_CHAT, "[1,2]", NULL);
    expect_bad(CM_API_CHAT, "{}", "messages");
    expect_bad(CM_API_CHAT, "{\"messages\":[]}", "messages");
    expect_bad(CM_API_CHAT, "{\"messages\":\"hi\"}", "messages");
    expect_bad(CM_API_CHAT, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"hi\"}]}", "messages[0].role");
    expect_bad(CM_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages[0].content");
    const char *m = "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]";
    /* one bad field beside valid messages: the error names that field */
    static const struct {
        const char *field, *param;
    } bad_fields[] = {
        {"\"temperature\":\"hot\"", "temperature"},
        {"\"temperature\":3", "temperature"},
        {"\"max_tokens\":1.5", "max_tokens"},
        {"\"max_tokens\":0", "max_tokens"},
        {"\"stream\":\"yes\"", "stream"},
        {"\"stop\":[1]", "stop"},
        {"\"n\":2", "n"},
        {"\"top_logprobs\":2", "top_logprobs"},
        {"\"model\":7", "model"},
        {"\"tools\":[{\"type\":\"function\"}]", "tools"},
        {"\"response_format\":{\"type\":\"json_object\"}", "response_format"},
    };
    char b[256];
    for (size_t i = 0; i < sizeof bad_fields / sizeof bad_fields[0]; i++) {
        snprintf(b, sizeof b, "{%s,%s}", m, bad_fields[i].field);
        expect_bad(CM_API_CHAT, b, bad_fields[i].param);
    }
    expect_bad(CM_API_COMPLETION, "{\"prompt\":{}}", "prompt");
    expect_bad(CM_API_COMPLETION, "{\"prompt\":[-1]}", "prompt");
    expect_bad(CM_API_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":true}", "logprobs");
    expect_bad(CM_API_COMPLETION, "{\"max_tokens\":3}", "prompt");

    cm_api_error e;
    cm_api_error_set(&e, 429, "rate_limit_exceeded", NULL, "rate_limit_exceeded", "busy \"%s\"", "now");
    char *json = cm_api_error_json(&e);
    cJSON *root = cJSON_Parse(json);
    cJSON *eo = cJSON_GetObjectItem(root, "error");
    CHECK(!strcmp(cJSON_GetObjectItem(eo, "message")->valuestring, "busy \"now\""));
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(eo, "param")));
    CHECK(!strcmp(cJSON_GetObjectItem(eo, "code")->valuestring, "rate_limit_exceeded"));
    cJSON_Delete(root);
    free(json);
}

/* Random damage to valid bodies: every result is a clean accept or a 400,
 * never a crash (ASan/UBSan builds check the memory side). */
TEST(api_parse_mutations) {
    static const char *bodies[] = {
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}],"
        "\"stop\":[\"a\",\"b\"],\"logprobs\":true,\"top_logprobs\":2,\"seed\":-5,\"stream_options\":{\"include_usage\":true}}",
        "{\"prompt\":[1,2,3],\"max_tokens\":4,\"logprobs\":3,\"temperature\":0.2,\"top_p\":0.5,\"n\":1}",
    };
    uint64_t x = 88172645463325252ull;
    int n_ok = 0, n_bad = 0;
    for (int b = 0; b < 2; b++) {
        size_t n = strlen(bodies[b]);
        char buf[512];
        for (int it = 0; it < 3000; it++) {
            memcpy(buf, bodies[b], n);
            size_t len = n;
            int n_mut = 1 + it % 4;
            for (int k = 0; k < n_mut; k++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                size_t at = (size_t)(x % len);
                switch ((x >> 32) % 4) {
                case 0: buf[at] = (char)(x >> 40); break;              /* any byte */
                case 1: buf[at] = "{}[]\",:0-.e"[(x >> 40) % 12]; break; /* JSON syntax */
                case 2: len = at + 1; break;                            /* truncate */
                default: buf[at] = ' '; break;
                }
            }
            cm_api_req q;
            cm_api_error err;
            memset(&err, 0, sizeof err);
            int rc = cm_api_parse(buf, len, b ? CM_API_COMPLETION : CM_API_CHAT, &q, &err);
            if (rc == CM_OK) {
                n_ok++;
            } else {
                n_bad++;
                CHECK(rc == CM_EINVAL && err.http == 400 && err.message[0]);
            }
            cm_api_req_free(&q);
        }
    }
    CHECK(n_ok > 0 && n_bad > 0);
}

TEST(stream_chunks) {
    cm_api_req q;
    cm_api_error err;
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true,"
                       "\"stream_options\":{\"include_usage\":true}}";
    CHECK_OK(cm_api_parse(body, strlen(body), CM_API_CHAT, &q, &err));
    cm_api_meta meta = {.id = "chatcmpl-1", .created = 1, .model = "m", .pieces = &g_pieces};
    cm_sbuf sse = {0};
    cm_api_chunk(&sse, &q, &meta, "he\"llo", 6, NULL, 0, true, CM_FINISH_NONE);
    cm_api_chunk(&sse, &q, &meta, "", 0, NULL, 0, false, CM_FINISH_STOP);
    cm_api_usage_chunk(&sse, &q, &meta, 4, 2);
    CHECK(sse.p && !strncmp(sse.p, "data: {", 7));
    /* Three events, each one JSON object. */
    int n = 0;
    for (char *p = sse.p; (p = strstr(p, "data: ")); p += 6) {
        char *end = strstr(p, "\n\n");
        CHECK(end != NULL);
        if (!end) break;
        cJSON *ev = cJSON_ParseWithLength(p + 6, (size_t)(end - p - 6));
        CHECK(ev != NULL);
        CHECK(!strcmp(cJSON_GetObjectItem(ev, "object")->valuestring, "chat.completion.chunk"));
        if (n == 0) {
            cJSON *d = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(ev, "choices"), 0), "delta");
            CHECK(!strcmp(cJSON_GetObjectItem(d, "role")->valuestring, "assistant"));
            CHECK(!strcmp(cJSON_GetObjectItem(d, "content")->valuestring, "he\"llo"));
        }
        if (n == 2) CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(ev, "usage"), "total_tokens")->valueint == 6);
        cJSON_Delete(ev);
        n++;
    }
    CHECK(n == 3);
    cm_sbuf_free(&sse);
    cm_api_req_free(&q);
}

TEST(utf8_clean) {
    /* "é" split across two feeds comes out whole; bad bytes become U+FFFD. */
    const char *s = "a\xc3\xa9\xe2\x82\xac\xff\xc3(\xf0\x9f\x98\x80";
    size_t n = strlen(s);
    cm_sbuf whole = {0};
    cm_utf8_clean(&whole, s, n, true);
    CHECK(!strcmp(whole.p, "a\xc3\xa9\xe2\x82\xac\xef\xbf\xbd\xef\xbf\xbd(\xf0\x9f\x98\x80"));
    for (size_t cut = 0; cut <= n; cut++) {
        cm_sbuf inc = {0};
        cm_sbuf_puts(&inc, "");
        char hold[32];
        size_t used = cm_utf8_clean(&inc, s, cut, false);
        size_t n_hold = cut - used;
        memcpy(hold, s + used, n_hold);
        memcpy(hold + n_hold, s + cut, n - cut);
        cm_utf8_clean(&inc, hold, n_hold + n - cut, true);
        CHECK_MSG(!strcmp(inc.p, whole.p), "cut at %zu", cut);
        cm_sbuf_free(&inc);
    }
    cm_sbuf_free(&whole);
}

TEST(prometheus_text) {
    cm_metrics *m;
    CHECK_OK(cm_metrics_create(&m));
    cm_metrics_request(m, 200);
    cm_metrics_request(m, 200);
    cm_metrics_request(m, 429);
    cm_metrics_request(m, 299);
    cm_metrics_ttft(m, 0.02);
    cm_metrics_ttft(m, 7);
    cm_metrics_itl(m, 0.003);
    cm_metrics_generated_tokens(m, 11);
    cm_sched_stats st = {.n_queued = 2, .n_active = 3, .n_slots = 4, .kv_used_tokens = 10, .kv_cap_tokens = 40,
                         .kv_bytes = 4096};
    char *t = cm_metrics_prometheus(m, &st, "tiny\"model");
    static const char *const want[] = {
        "cellm_requests_total{code=\"200\"} 2\n",
        "cellm_requests_total{code=\"429\"} 1\n",
        "cellm_requests_total{code=\"other\"} 1\n",
        "cellm_generated_tokens_total 11\n",
        "cellm_time_to_first_token_seconds_bucket{le=\"0.025\"} 1\n",
        "cellm_time_to_first_token_seconds_bucket{le=\"5\"} 1\n",
        "cellm_time_to_first_token_seconds_bucket{le=\"10\"} 2\n",
        "cellm_time_to_first_token_seconds_count 2\n",
        "cellm_queue_depth 2\n",
        "cellm_active_sequences 3\n",
        "cellm_kv_cache_usage_ratio 0.250000\n",
        "cellm_kv_cache_allocated_bytes 4096\n",
        "model=\"tiny\\\"model\"",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECK_MSG(strstr(t, want[i]) != NULL, "the exposition lacks %s", want[i]);
    free(t);
    char *j = cm_metrics_json(m, &st, "tiny", 1.5);
    cJSON *root = cJSON_Parse(j);
    CHECK(root != NULL);
    CHECK(cJSON_GetObjectItem(root, "generated_tokens_total")->valueint == 11);
    CHECK_NEAR(cJSON_GetObjectItem(cJSON_GetObjectItem(root, "ttft_s"), "p99")->valuedouble, 7, 1e-6);
    CHECK_NEAR(cJSON_GetObjectItem(cJSON_GetObjectItem(root, "ttft_s"), "p50")->valuedouble, 0.02, 1e-6);
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(cJSON_GetObjectItem(root, "request_s"), "p50")));
    cJSON_Delete(root);
    free(j);
    cm_metrics_destroy(m);
}

int main(void) {
    pieces_init();
    RUN(greedy_length);
    RUN(eog_and_stop_string);
    RUN(continuous_batching_and_chunked_prefill);
    RUN(cancel_frees_slot_and_queue_limits);
    RUN(timeout);
    RUN(logprobs);
    RUN(api_parse);
    RUN(api_parse_mutations);
    RUN(stream_chunks);
    RUN(utf8_clean);
    RUN(prometheus_text);
    return test_summary();
}
