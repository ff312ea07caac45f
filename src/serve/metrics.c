/* metrics.c - counters, histograms and recent-sample percentiles for
 * /metrics and /v1/stats (see metrics.h).
 *
 * Histograms are cumulative in the Prometheus sense only when rendered: each
 * bucket counts the observations that fell in (bound[i-1], bound[i]]. Recent
 * samples live in fixed rings so that percentiles reflect current load, not
 * the whole uptime. */
#include "serve/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "serve/util.h"

#define N_BUCKETS_MAX 16
#define RING 2048

typedef struct histo {
    const char *name, *help;
    int n_bounds;
    const double *bounds;
    uint64_t counts[N_BUCKETS_MAX + 1]; /* last: above every bound */
    uint64_t count;
    double sum;
    float ring[RING]; /* recent observations */
    uint64_t n_ring;
} histo;

static const double g_ttft_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double g_itl_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
static const double g_req_bounds[] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};

/* Status codes counted by name; anything else is counted as "other". */
static const int g_codes[] = {200, 400, 401, 404, 405, 413, 429, 500, 503, 504};
#define N_CODES (int)(sizeof g_codes / sizeof g_codes[0])

struct cm_metrics {
    pthread_mutex_t mu;
    uint64_t requests[N_CODES + 1];
    uint64_t prompt_tokens, generated_tokens;
    histo ttft, itl, req;
};

static void histo_init(histo *h, const char *name, const char *help, const double *b, int n) {
    h->name = name;
    h->help = help;
    h->bounds = b;
    h->n_bounds = n;
}

int cm_metrics_create(cm_metrics **out) {
    cm_metrics *m = calloc(1, sizeof *m);
    if (!m) return CM_ENOMEM;
    pthread_mutex_init(&m->mu, NULL);
    histo_init(&m->ttft, "cellm_time_to_first_token_seconds",
               "Time from accepting a generation request to its first token.", g_ttft_bounds,
               (int)(sizeof g_ttft_bounds / sizeof g_ttft_bounds[0]));
    histo_init(&m->itl, "cellm_inter_token_latency_seconds", "Time between consecutive tokens of one request.",
               g_itl_bounds, (int)(sizeof g_itl_bounds / sizeof g_itl_bounds[0]));
    histo_init(&m->req, "cellm_request_duration_seconds", "Time from accepting a generation request to its last token.",
               g_req_bounds, (int)(sizeof g_req_bounds / sizeof g_req_bounds[0]));
    *out = m;
    return CM_OK;
}

void cm_metrics_destroy(cm_metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static void observe(cm_metrics *m, histo *h, double v) {
    pthread_mutex_lock(&m->mu);
    int i = 0;
    while (i < h->n_bounds && v > h->bounds[i]) i++;
    h->counts[i]++;
    h->count++;
    h->sum += v;
    h->ring[h->n_ring++ % RING] = (float)v;
    pthread_mutex_unlock(&m->mu);
}

void cm_metrics_ttft(cm_metrics *m, double s) { observe(m, &m->ttft, s); }
void cm_metrics_itl(cm_metrics *m, double s) { observe(m, &m->itl, s); }
void cm_metrics_request_time(cm_metrics *m, double s) { observe(m, &m->req, s); }

void cm_metrics_request(cm_metrics *m, int code) {
    int i = 0;
    while (i < N_CODES && g_codes[i] != code) i++;
    pthread_mutex_lock(&m->mu);
    m->requests[i]++;
    pthread_mutex_unlock(&m->mu);
}

void cm_metrics_prompt_tokens(cm_metrics *m, uint64_t n) {
    pthread_mutex_lock(&m->mu);
    m->prompt_tokens += n;
    pthread_mutex_unlock(&m->mu);
}

void cm_metrics_generated_tokens(cm_metrics *m, uint64_t n) {
    pthread_mutex_lock(&m->mu);
    m->generated_tokens += n;
    pthread_mutex_unlock(&m->mu);
}

/* Prometheus label values escape backslash, quote and newline. */
static void put_label(cm_sbuf *b, const char *v) {
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            cm_sbuf_printf(b, "\\%c", *v);
        else if (*v == '\n')
            cm_sbuf_puts(b, "\\n");
        else
            cm_sbuf_put(b, v, 1);
    }
}

static void put_histo(cm_sbuf *b, const histo *h) {
    cm_sbuf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", h->name, h->help, h->name);
    uint64_t cum = 0;
    for (int i = 0; i < h->n_bounds; i++) {
        cum += h->counts[i];
        cm_sbuf_printf(b, "%s_bucket{le=\"%g\"} %llu\n", h->name, h->bounds[i], (unsigned long long)cum);
    }
    cm_sbuf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", h->name, (unsigned long long)h->count);
    cm_sbuf_printf(b, "%s_sum %.9g\n%s_count %llu\n", h->name, h->sum, h->name, (unsigned long long)h->count);
}

char *cm_metrics_prometheus(cm_metrics *m, const cm_sched_stats *st, const char *model) {
    cm_sbuf b = {0};
    pthread_mutex_lock(&m->mu);
    cm_sbuf_puts(&b, "# HELP cellm_model_info The model this server runs.\n# TYPE cellm_model_info gauge\n");
    cm_sbuf_puts(&b, "cellm_model_info{model=\"");
    put_label(&b, model);
    cm_sbuf_puts(&b, "\"} 1\n");
    cm_sbuf_puts(&b, "# HELP cellm_requests_total HTTP requests answered, by status code.\n"
                     "# TYPE cellm_requests_total counter\n");
    for (int i = 0; i <= N_CODES; i++) {
        if (i == N_CODES)
            cm_sbuf_printf(&b, "cellm_requests_total{code=\"other\"} %llu\n", (unsigned long long)m->requests[i]);
        else
            cm_sbuf_printf(&b, "cellm_requests_total{code=\"%d\"} %llu\n", g_codes[i],
                           (unsigned long long)m->requests[i]);
    }
    cm_sbuf_printf(&b,
                   "# HELP cellm_prompt_tokens_total Prompt tokens processed.\n"
                   "# TYPE cellm_prompt_tokens_total counter\ncellm_prompt_tokens_total %llu\n"
                   "# HELP cellm_generated_tokens_total Tokens generated.\n"
                   "# TYPE cellm_generated_tokens_total counter\ncellm_generated_tokens_total %llu\n",
                   (unsigned long long)m->prompt_tokens, (unsigned long long)m->generated_tokens);
    put_histo(&b, &m->ttft);
    put_histo(&b, &m->itl);
    put_histo(&b, &m->req);
    pthread_mutex_unlock(&m->mu);
    cm_sbuf_printf(&b,
                   "# HELP cellm_queue_depth Requests waiting for a sequence slot.\n"
                   "# TYPE cellm_queue_depth gauge\ncellm_queue_depth %d\n"
                   "# HELP cellm_active_sequences Requests holding a sequence slot.\n"
                   "# TYPE cellm_active_sequences gauge\ncellm_active_sequences %d\n"
                   "# HELP cellm_sequence_slots Sequence slots (--parallel).\n"
                   "# TYPE cellm_sequence_slots gauge\ncellm_sequence_slots %d\n"
                   "# HELP cellm_kv_cache_used_tokens Positions held in the KV cache by live sequences.\n"
                   "# TYPE cellm_kv_cache_used_tokens gauge\ncellm_kv_cache_used_tokens %lld\n"
                   "# HELP cellm_kv_cache_capacity_tokens Positions the KV cache can hold (slots x context).\n"
                   "# TYPE cellm_kv_cache_capacity_tokens gauge\ncellm_kv_cache_capacity_tokens %lld\n"
                   "# HELP cellm_kv_cache_usage_ratio Fraction of the KV cache in use.\n"
                   "# TYPE cellm_kv_cache_usage_ratio gauge\ncellm_kv_cache_usage_ratio %.6f\n"
                   "# HELP cellm_decode_steps_total Forward calls of the batch loop.\n"
                   "# TYPE cellm_decode_steps_total counter\ncellm_decode_steps_total %llu\n"
                   "# HELP cellm_batch_tokens_total Tokens over all forward calls (prompt and decode).\n"
                   "# TYPE cellm_batch_tokens_total counter\ncellm_batch_tokens_total %llu\n",
                   st->n_queued, st->n_active, st->n_slots, (long long)st->kv_used_tokens,
                   (long long)st->kv_cap_tokens,
                   st->kv_cap_tokens ? (double)st->kv_used_tokens / (double)st->kv_cap_tokens : 0.0,
                   (unsigned long long)st->n_steps, (unsigned long long)st->n_batch_tokens);
    if (st->kv_bytes)
        cm_sbuf_printf(&b,
                       "# HELP cellm_kv_cache_allocated_bytes Memory allocated for the KV cache of all slots.\n"
                       "# TYPE cellm_kv_cache_allocated_bytes gauge\ncellm_kv_cache_allocated_bytes %llu\n",
                       (unsigned long long)st->kv_bytes);
    if (b.oom) {
        cm_sbuf_free(&b);
        return NULL;
    }
    return b.p;
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Lock held. p50/p90/p99 of the ring into out[3]; -1 when empty. */
static void percentiles(const histo *h, float *tmp, double out[3]) {
    size_t n = h->n_ring < RING ? (size_t)h->n_ring : RING;
    if (!n) {
        out[0] = out[1] = out[2] = -1;
        return;
    }
    memcpy(tmp, h->ring, n * sizeof(float));
    qsort(tmp, n, sizeof(float), cmp_float);
    static const double q[3] = {0.5, 0.9, 0.99};
    for (int i = 0; i < 3; i++) {
        size_t k = (size_t)ceil(q[i] * (double)n);
        out[i] = tmp[k ? k - 1 : 0];
    }
}

static void put_json_str(cm_sbuf *b, const char *s) {
    cm_sbuf_puts(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            cm_sbuf_printf(b, "\\%c", c);
        else if (c < 0x20)
            cm_sbuf_printf(b, "\\u%04x", c);
        else
            cm_sbuf_put(b, s, 1);
    }
    cm_sbuf_puts(b, "\"");
}

char *cm_metrics_json(cm_metrics *m, const cm_sched_stats *st, const char *model, double uptime_s) {
    static float tmp[RING];
    static pthread_mutex_t tmp_mu = PTHREAD_MUTEX_INITIALIZER;
    cm_sbuf b = {0};
    double pt[3], pi[3], pr[3];
    uint64_t req_total = 0, req_ok = 0;
    pthread_mutex_lock(&tmp_mu);
    pthread_mutex_lock(&m->mu);
    percentiles(&m->ttft, tmp, pt);
    percentiles(&m->itl, tmp, pi);
    percentiles(&m->req, tmp, pr);
    for (int i = 0; i <= N_CODES; i++) req_total += m->requests[i];
    req_ok = m->requests[0];
    uint64_t gen = m->generated_tokens, prompt = m->prompt_tokens;
    pthread_mutex_unlock(&m->mu);
    pthread_mutex_unlock(&tmp_mu);
    cm_sbuf_puts(&b, "{\"model\":");
    put_json_str(&b, model);
    cm_sbuf_printf(&b,
                   ",\"uptime_s\":%.3f,\"requests_total\":%llu,\"requests_ok\":%llu,"
                   "\"generated_tokens_total\":%llu,\"prompt_tokens_total\":%llu,"
                   "\"queue_depth\":%d,\"active_sequences\":%d,\"slots\":%d,"
                   "\"kv_used_tokens\":%lld,\"kv_capacity_tokens\":%lld,",
                   uptime_s, (unsigned long long)req_total, (unsigned long long)req_ok, (unsigned long long)gen,
                   (unsigned long long)prompt, st->n_queued, st->n_active, st->n_slots, (long long)st->kv_used_tokens,
                   (long long)st->kv_cap_tokens);
    const char *names[3] = {"ttft_s", "itl_s", "request_s"};
    double *vals[3] = {pt, pi, pr};
    for (int i = 0; i < 3; i++) {
        cm_sbuf_printf(&b, "\"%s\":{", names[i]);
        static const char *qn[3] = {"p50", "p90", "p99"};
        for (int j = 0; j < 3; j++) {
            if (vals[i][j] < 0)
                cm_sbuf_printf(&b, "\"%s\":null%s", qn[j], j < 2 ? "," : "");
            else
                cm_sbuf_printf(&b, "\"%s\":%.6f%s", qn[j], vals[i][j], j < 2 ? "," : "");
        }
        cm_sbuf_puts(&b, i < 2 ? "}," : "}");
    }
    cm_sbuf_puts(&b, "}");
    if (b.oom) {
        cm_sbuf_free(&b);
        return NULL;
    }
    return b.p;
}
