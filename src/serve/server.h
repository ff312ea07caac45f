/* server.h - `cellm serve`: the HTTP server (libmicrohttpd, one thread per
 * connection) in front of the scheduler, with the OpenAI API, /health,
 * /metrics, /stats and the dashboard page.
 *
 * Start-up loads the model, a ctx with one sequence slot per --parallel, the
 * tokenizer and chat template, then starts the engine thread and the HTTP
 * daemon. cm_server_stop is the graceful path: stop accepting, let running
 * requests finish within the grace period, cancel the rest, free
 * everything. */
#ifndef CM_SERVE_SERVER_H
#define CM_SERVE_SERVER_H

#include <stddef.h>

typedef struct cm_server_params {
    const char *model_path;
    const char *model_name;  /* served id; NULL = file name without .gguf */
    const char *host;        /* default 127.0.0.1 */
    int port;                /* 0 = any free port (see cm_server_port) */
    int n_ctx;               /* per sequence; <= 0: min(4096, training context) */
    int n_parallel;          /* sequence slots */
    int n_threads;           /* <= 0: all cores */
    int kv_type;             /* cm_kv_type of model.h (0: f16) */
    int max_queue;           /* waiting requests before 429 */
    double timeout_s;        /* per request, from acceptance to the last token */
    size_t max_body;         /* bytes of a request body before 413 */
    const char *api_key;     /* NULL: no authentication */
    double grace_s;          /* shutdown: how long running requests may finish */
    int prefill_chunk;       /* prompt tokens per batch step */
    const char *chat_template; /* NULL: from the model; else a family name */
} cm_server_params;

void cm_server_params_default(cm_server_params *p);

typedef struct cm_server cm_server;

int cm_server_start(const cm_server_params *p, cm_server **out);
int cm_server_port(const cm_server *s);
const char *cm_server_model_name(const cm_server *s);
/* Graceful shutdown and free; s is gone afterwards. */
void cm_server_stop(cm_server *s);

#endif
