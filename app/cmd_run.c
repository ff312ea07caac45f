/* cmd_run.c - `cellm run` (generate text, or chat) and `cellm logits`
 * (prompt tokens, top logits and greedy tokens as JSON lines).
 *
 * Both load one stage holding the whole model, process the prompt in
 * batches of at most n_batch tokens, then decode one token at a time through
 * the KV cache of sequence 0.
 *
 * Interactive chat keeps `hist`, the exact token ids in the KV cache. Each
 * turn renders the whole conversation again, tokenizes it, keeps the cache
 * for the longest common prefix with `hist` and processes only the rest, so
 * a template that rewrites history (or a stop string cut out of an answer)
 * costs a partial recompute, never a wrong cache.
 *
 * Exit codes: 0 done, 1 a runtime failure (model, memory), 2 bad usage. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/status.h"
#include "base/time.h"
#include "cmd.h"
#include "model/model.h"
#include "model/sample.h"
#include "text/chat.h"
#include "text/stop.h"
#include "text/tokenizer.h"

#define DEFAULT_CTX 4096
#define DEFAULT_BATCH 512
#define MAX_STOPS 16

/* ---------------------------------------------------------------- options */

typedef struct opts {
    const char *cmd; /* "run" or "logits", for messages */
    const char *model;
    const char *prompt;
    int n_predict; /* run: -1 = until end of generation or a full context */
    int top_n;     /* logits: -k */
    int n_ctx;     /* 0: from the model */
    int n_batch;
    int n_threads;
    int kv_type; /* cm_kv_type */
    cm_sampler_params sp;
    bool seed_given;
    const char *stops[MAX_STOPS];
    int n_stops;
    bool chat;
    const char *system;
    const char *chat_template;
    bool no_bos;
    bool verbose;
} opts;

static void usage_run(FILE *f) {
    fprintf(f,
            "usage: cellm run -m MODEL.gguf [-p PROMPT] [options]\n"
            "\n"
            "Generates a completion of PROMPT and streams it to stdout as it is produced.\n"
            "Without -p: reads the prompt from stdin when stdin is not a terminal; on a\n"
            "terminal, starts an interactive chat (implies --chat; /exit or Ctrl-D to leave,\n"
            "/clear to forget the conversation, Ctrl-C to cut an answer short).\n"
            "\n"
            "  -m, --model FILE          GGUF model (required)\n"
            "  -p, --prompt TEXT         prompt\n"
            "  -n, --n-predict N         tokens to generate at most (default -1: until the model\n"
            "                            ends its answer or the context is full)\n"
            "  -c, --ctx N               context length in tokens (default: the model's training\n"
            "                            context, at most %d)\n"
            "  -b, --batch N             prompt tokens per forward pass (default %d)\n"
            "  -t, --threads N           threads (default: all cores)\n"
            "      --kv-type T           KV cache element type: f16 (default) or q8_0 (about half\n"
            "                            the memory, values rounded to 8 bits)\n"
            "      --temp F              temperature; 0 = greedy (default 0.8)\n"
            "      --top-k N             keep the N most likely tokens; 0 = off (default 40)\n"
            "      --top-p F             keep the smallest set holding probability F, in (0, 1];\n"
            "                            1 = off (default 0.95)\n"
            "      --min-p F             drop tokens less likely than F times the most likely,\n"
            "                            in [0, 1]; 0 = off (default 0.05)\n"
            "      --repeat-penalty F    divide positive / multiply negative logits of recent\n"
            "                            tokens by F; 1 = off (default 1)\n"
            "      --repeat-last-n N     how many recent tokens the penalties see; -1 = all,\n"
            "                            0 = penalties off (default 64)\n"
            "      --presence-penalty F  subtract F from every recent token's logit, in [-2, 2]\n"
            "      --frequency-penalty F subtract F per occurrence, in [-2, 2]\n"
            "      --seed N              random seed; the same seed, prompt and flags give the same\n"
            "                            text (default: a new seed each run, shown with -v)\n"
            "      --stop STR            stop when STR is generated (not printed); repeatable\n"
            "      --chat                format PROMPT with the model's chat template\n"
            "      --system TEXT         system message (implies --chat)\n"
            "      --chat-template NAME  use this template instead of the model's (implies --chat):\n"
            "                            llama3 chatml mistral llama2 gemma phi3 deepseek deepseek2\n"
            "                            deepseek-coder. A model whose template is not recognised\n"
            "                            gets chatml, with a warning.\n"
            "      --no-bos              do not add the BOS token the model asks for\n"
            "  -v, --verbose             print the settings, seed and generated token ids on stderr\n"
            "  -h, --help                this help\n"
            "\n"
            "Generation stops at the model's end-of-generation token, after -n tokens, at a stop\n"
            "string, or when the context is full (said on stderr). A timing line with prompt and\n"
            "generation speed goes to stderr at the end.\n",
            DEFAULT_CTX, DEFAULT_BATCH);
}

static void usage_logits(FILE *f) {
    fprintf(f,
            "usage: cellm logits -m MODEL.gguf -p TEXT [-k N] [-n N] [options]\n"
            "\n"
            "Prints JSON lines for checking numerics against other implementations:\n"
            "  {\"tokens\":[...]}                   the prompt's token ids (with BOS when the model adds it)\n"
            "  {\"pos\":i,\"top\":[[id,logit],...]}   for each prompt position, the N highest logits, highest first\n"
            "  {\"greedy\":[...]}                   N ids generated greedily through the KV cache\n"
            "\n"
            "  -m, --model FILE     GGUF model (required)\n"
            "  -p, --prompt TEXT    text (or piped on stdin)\n"
            "  -k, --top N          logits per position (default 8)\n"
            "  -n, --n-predict N    greedy tokens (default 16; end-of-generation tokens do not stop them)\n"
            "  -c, --ctx N          context length (default: the model's, at most %d)\n"
            "  -b, --batch N        prompt tokens per forward pass (default %d)\n"
            "  -t, --threads N      threads (default: all cores)\n"
            "      --kv-type T      KV cache element type: f16 (default) or q8_0\n"
            "      --no-bos         do not add BOS\n"
            "  -v, --verbose        print settings on stderr\n"
            "  -h, --help           this help\n"
            "\n"
            "Logits are printed with 9 significant digits (exact for f32); non-finite ones as null.\n",
            DEFAULT_CTX, DEFAULT_BATCH);
}

static int bad(const opts *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(const opts *o, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cellm %s: ", o->cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see cellm %s --help)\n", o->cmd);
    va_end(ap);
    return -1;
}

static int parse_long(const opts *o, const char *flag, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno) return bad(o, "%s needs an integer, got '%s'", flag, s);
    if (v < lo || v > hi) return bad(o, "%s must be in [%ld, %ld], got %s", flag, lo, hi, s);
    *out = v;
    return 0;
}

static int parse_int(const opts *o, const char *flag, const char *s, int lo, int hi, int *out) {
    long v = 0;
    if (parse_long(o, flag, s, lo, hi, &v)) return -1;
    *out = (int)v;
    return 0;
}

static int parse_f(const opts *o, const char *flag, const char *s, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v)) return bad(o, "%s needs a number, got '%s'", flag, s);
    *out = (float)v;
    return 0;
}

/* Parses argv for both commands (logits accepts a subset). Returns 0, 1 for
 * --help (already printed), or -1 after printing the error. */
static int parse_opts(int argc, char **argv, bool is_run, opts *o) {
    memset(o, 0, sizeof *o);
    o->cmd = is_run ? "run" : "logits";
    o->n_predict = is_run ? -1 : 16;
    o->top_n = 8;
    o->n_batch = DEFAULT_BATCH;
    o->sp = cm_sampler_defaults();
    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        const char *val = NULL;
        /* --flag=value is the same as --flag value */
        char flag[64];
        const char *eq = a[0] == '-' && a[1] == '-' ? strchr(a, '=') : NULL;
        if (eq && (size_t)(eq - a) < sizeof flag) {
            memcpy(flag, a, (size_t)(eq - a));
            flag[eq - a] = 0;
            val = eq + 1;
        } else {
            snprintf(flag, sizeof flag, "%s", a);
        }
#define IS(s) (!strcmp(flag, s))
#define NEEDVAL()                                                                  \
    do {                                                                           \
        if (!val) {                                                                \
            if (i + 1 >= argc) return bad(o, "%s needs a value", flag);            \
            val = argv[++i];                                                       \
        }                                                                          \
    } while (0)
        if (IS("-h") || IS("--help")) {
            if (is_run) usage_run(stdout);
            else usage_logits(stdout);
            return 1;
        } else if (IS("-m") || IS("--model")) {
            NEEDVAL();
            o->model = val;
        } else if (IS("-p") || IS("--prompt")) {
            NEEDVAL();
            o->prompt = val;
        } else if (IS("-n") || IS("--n-predict")) {
            NEEDVAL();
            if (parse_int(o, flag, val, is_run ? -1 : 0, 1 << 30, &o->n_predict)) return -1;
        } else if (IS("-c") || IS("--ctx")) {
            NEEDVAL();
            if (parse_int(o, flag, val, 1, 1 << 24, &o->n_ctx)) return -1;
        } else if (IS("-b") || IS("--batch")) {
            NEEDVAL();
            if (parse_int(o, flag, val, 1, 1 << 16, &o->n_batch)) return -1;
        } else if (IS("-t") || IS("--threads")) {
            NEEDVAL();
            if (parse_int(o, flag, val, 1, 1024, &o->n_threads)) return -1;
        } else if (IS("--kv-type")) {
            NEEDVAL();
            if ((o->kv_type = cm_kv_type_from_name(val)) < 0)
                return bad(o, "%s must be f16 or q8_0, got '%s'", flag, val);
        } else if (IS("--no-bos")) {
            o->no_bos = true;
        } else if (IS("-v") || IS("--verbose")) {
            o->verbose = true;
        } else if (!is_run && (IS("-k") || IS("--top"))) {
            NEEDVAL();
            if (parse_int(o, flag, val, 1, 1 << 24, &o->top_n)) return -1;
        } else if (is_run && IS("--temp")) {
            NEEDVAL();
            if (parse_f(o, flag, val, &o->sp.temperature)) return -1;
            if (o->sp.temperature < 0) return bad(o, "--temp must be >= 0 (0 = greedy), got %s", val);
        } else if (is_run && IS("--top-k")) {
            NEEDVAL();
            if (parse_int(o, flag, val, 0, 1 << 24, &o->sp.top_k)) return -1;
        } else if (is_run && IS("--top-p")) {
            NEEDVAL();
            if (parse_f(o, flag, val, &o->sp.top_p)) return -1;
            if (!(o->sp.top_p > 0 && o->sp.top_p <= 1)) return bad(o, "--top-p must be in (0, 1], got %s", val);
        } else if (is_run && IS("--min-p")) {
            NEEDVAL();
            if (parse_f(o, flag, val, &o->sp.min_p)) return -1;
            if (!(o->sp.min_p >= 0 && o->sp.min_p <= 1)) return bad(o, "--min-p must be in [0, 1], got %s", val);
        } else if (is_run && IS("--repeat-penalty")) {
            NEEDVAL();
            if (parse_f(o, flag, val, &o->sp.repeat_penalty)) return -1;
            if (!(o->sp.repeat_penalty > 0))
                return bad(o, "--repeat-penalty must be > 0 (1 = off), got %s", val);
        } else if (is_run && IS("--repeat-last-n")) {
            NEEDVAL();
            if (parse_int(o, flag, val, -1, 1 << 24, &o->sp.repeat_last_n)) return -1;
        } else if (is_run && (IS("--presence-penalty") || IS("--frequency-penalty"))) {
            NEEDVAL();
            float *dst = IS("--presence-penalty") ? &o->sp.presence_penalty : &o->sp.frequency_penalty;
            if (parse_f(o, flag, val, dst)) return -1;
            if (!(*dst >= -2 && *dst <= 2)) return bad(o, "%s must be in [-2, 2], got %s", flag, val);
        } else if (is_run && IS("--seed")) {
            NEEDVAL();
            char *end;
            errno = 0;
            unsigned long long v = strtoull(val, &end, 10);
            if (!*val || *end || errno || val[0] == '-')
                return bad(o, "--seed needs a non-negative integer, got '%s'", val);
            o->sp.seed = (uint64_t)v;
            o->seed_given = true;
        } else if (is_run && IS("--stop")) {
            NEEDVAL();
            if (!*val) return bad(o, "--stop needs a non-empty string");
            if (o->n_stops == MAX_STOPS) return bad(o, "at most %d --stop strings", MAX_STOPS);
            o->stops[o->n_stops++] = val;
        } else if (is_run && IS("--chat")) {
            o->chat = true;
        } else if (is_run && IS("--system")) {
            NEEDVAL();
            o->system = val;
            o->chat = true;
        } else if (is_run && IS("--chat-template")) {
            NEEDVAL();
            if (cm_chat_format_from_name(val) == CM_CHAT_UNKNOWN)
                return bad(o,
                           "--chat-template: unknown template '%s'; choose one of llama3 chatml mistral llama2 "
                           "gemma phi3 deepseek deepseek2 deepseek-coder",
                           val);
            o->chat_template = val;
            o->chat = true;
        } else if (a[0] == '-' && a[1]) {
            return bad(o, "unknown option '%s'", a);
        } else {
            return bad(o, "unexpected argument '%s' (the prompt goes after -p)", a);
        }
#undef IS
#undef NEEDVAL
    }
    if (!o->model) return bad(o, "no model: give -m MODEL.gguf");
    return 0;
}

/* ------------------------------------------------------------ the engine */

typedef struct engine {
    const opts *o;
    cm_model *model;
    cm_ctx *ctx;
    cm_tokenizer *tok;
    int n_ctx, n_batch, n_vocab;
    /* batch arrays, n_batch each */
    int32_t *b_tok, *b_pos, *b_seq;
    int8_t *b_want;
    float *logits; /* n_vocab: a copy the sampler may modify */
    char *piece;   /* token text buffer */
    int cap_piece;
    /* timing */
    double t_prompt, t_gen;
    long n_prompt, n_gen;
} engine;

static void engine_fini(engine *e) {
    cm_ctx_destroy(e->ctx);
    cm_tokenizer_destroy(e->tok);
    cm_model_destroy(e->model);
    free(e->b_tok);
    free(e->b_pos);
    free(e->b_seq);
    free(e->b_want);
    free(e->logits);
    free(e->piece);
}

static int fail_rc(const opts *o, int rc) {
    fprintf(stderr, "cellm %s: %s\n", o->cmd, cm_last_error(rc));
    return rc == CM_EINVAL ? 2 : 1;
}

static int engine_init(engine *e, const opts *o) {
    memset(e, 0, sizeof *e);
    e->o = o;
    cm_model_params mp = {.layer_begin = 0, .layer_end = -1};
    int rc = cm_model_load(o->model, &mp, &e->model);
    if (rc) return rc;
    const cm_hparams *hp = cm_model_hparams(e->model);
    rc = cm_tokenizer_load(cm_model_gguf(e->model), &e->tok);
    if (rc) return rc;
    e->n_vocab = hp->n_vocab;
    if (cm_tokenizer_n_vocab(e->tok) > e->n_vocab)
        return cm_errorf(CM_EFORMAT, "%s: the tokenizer has %d tokens but the model's output has %d", o->model,
                         cm_tokenizer_n_vocab(e->tok), e->n_vocab);
    e->n_ctx = o->n_ctx;
    if (e->n_ctx <= 0) e->n_ctx = hp->n_ctx_train > 0 && hp->n_ctx_train < DEFAULT_CTX ? hp->n_ctx_train : DEFAULT_CTX;
    else if (hp->n_ctx_train > 0 && e->n_ctx > hp->n_ctx_train)
        fprintf(stderr, "cellm %s: warning: -c %d is longer than the %d tokens the model was trained on\n", o->cmd,
                e->n_ctx, hp->n_ctx_train);
    e->n_batch = o->n_batch < e->n_ctx ? o->n_batch : e->n_ctx;
    cm_ctx_params cp = {
        .n_ctx = e->n_ctx, .n_seq_max = 1, .n_batch_max = e->n_batch, .n_threads = o->n_threads, .kv_type = o->kv_type};
    rc = cm_ctx_create(e->model, &cp, &e->ctx);
    if (rc) return rc;
    size_t nb = (size_t)e->n_batch;
    e->b_tok = malloc(nb * sizeof *e->b_tok);
    e->b_pos = malloc(nb * sizeof *e->b_pos);
    e->b_seq = calloc(nb, sizeof *e->b_seq);
    e->b_want = malloc(nb * sizeof *e->b_want);
    e->logits = malloc((size_t)e->n_vocab * sizeof *e->logits);
    e->cap_piece = 256;
    e->piece = malloc((size_t)e->cap_piece);
    if (!e->b_tok || !e->b_pos || !e->b_seq || !e->b_want || !e->logits || !e->piece)
        return cm_errorf(CM_ENOMEM, "out of memory for a batch of %d tokens", e->n_batch);
    if (o->verbose)
        fprintf(stderr,
                "cellm %s: %s: %s, %d layers, n_embd %d, vocab %d; context %d, batch %d, KV cache %.1f MiB (%s)\n",
                o->cmd, o->model, hp->arch_name, hp->n_layer, hp->n_embd, e->n_vocab, e->n_ctx, e->n_batch,
                (double)cm_ctx_kv_bytes(e->ctx) / (1024.0 * 1024.0), cm_kv_type_name(o->kv_type));
    return CM_OK;
}

/* Tokenizes into a malloc'd array (*out, caller frees). */
static int tokenize(engine *e, const char *text, bool add_bos, int32_t **out, int *n_out) {
    size_t len = strlen(text);
    int cap = (int)(len < (size_t)(1 << 28) ? len : (size_t)(1 << 28)) + 16, n = 0;
    int32_t *t = malloc((size_t)cap * sizeof *t);
    if (!t) return cm_errorf(CM_ENOMEM, "out of memory tokenizing %zu bytes", len);
    int rc = cm_tokenize(e->tok, text, len, add_bos, true, t, cap, &n);
    if (rc == CM_ERANGE && n > cap) {
        int32_t *t2 = realloc(t, (size_t)n * sizeof *t);
        if (!t2) {
            free(t);
            return cm_errorf(CM_ENOMEM, "out of memory for %d tokens", n);
        }
        t = t2;
        cap = n;
        rc = cm_tokenize(e->tok, text, len, add_bos, true, t, cap, &n);
    }
    if (rc) {
        free(t);
        return rc;
    }
    *out = t;
    *n_out = n;
    return CM_OK;
}

/* Runs toks[0..n) at positions pos0.. in batches. want_all: logits for every
 * entry, passed to on_logits(user, position, logits) after each batch;
 * otherwise only the last entry's logits are kept (for sampling). */
typedef void (*logits_fn)(void *user, int pos, const float *logits);

static int decode(engine *e, const int32_t *toks, int n, int pos0, bool want_all, logits_fn on_logits, void *user) {
    for (int i0 = 0; i0 < n; i0 += e->n_batch) {
        int nb = n - i0 < e->n_batch ? n - i0 : e->n_batch;
        for (int j = 0; j < nb; j++) {
            e->b_tok[j] = toks[i0 + j];
            e->b_pos[j] = pos0 + i0 + j;
            e->b_seq[j] = 0;
            e->b_want[j] = (int8_t)(want_all || i0 + j == n - 1);
        }
        cm_batch b = {.n_tokens = nb, .token = e->b_tok, .pos = e->b_pos, .seq_id = e->b_seq, .want_logits = e->b_want};
        int rc = cm_ctx_decode(e->ctx, &b);
        if (rc) return rc;
        if (want_all && on_logits)
            for (int j = 0; j < nb; j++) {
                const float *l = cm_ctx_logits(e->ctx, j);
                if (!l) return cm_errorf(CM_EINVAL, "no logits for batch entry %d", j);
                on_logits(user, pos0 + i0 + j, l);
            }
    }
    return CM_OK;
}

/* Logits of the last entry of the last forward call, copied for the sampler. */
static const float *last_logits(engine *e, int i_entry) {
    const float *l = cm_ctx_logits(e->ctx, i_entry);
    if (!l) return NULL;
    memcpy(e->logits, l, (size_t)e->n_vocab * sizeof *e->logits);
    return e->logits;
}

/* Text of one token (control tokens give none). */
static int token_text(engine *e, int32_t t, const char **p) {
    int n = cm_token_to_piece(e->tok, t, e->piece, e->cap_piece, false);
    if (n > e->cap_piece) {
        char *q = realloc(e->piece, (size_t)n);
        if (!q) return cm_errorf(CM_ENOMEM, "out of memory for a %d-byte token", n);
        e->piece = q;
        e->cap_piece = n;
        n = cm_token_to_piece(e->tok, t, e->piece, e->cap_piece, false);
    }
    *p = e->piece;
    return n;
}

static volatile sig_atomic_t g_interrupted;

static void on_sigint(int sig) {
    (void)sig;
    g_interrupted = 1;
}

/* A growing byte string for the assistant's answer in chat. */
typedef struct text {
    char *p;
    size_t n, cap;
} text;

static void text_put(text *t, const char *s, size_t n) {
    if (!t || !n) return;
    if (t->n + n + 1 > t->cap) {
        size_t c = t->cap ? t->cap * 2 : 256;
        while (c < t->n + n + 1) c *= 2;
        char *q = realloc(t->p, c);
        if (!q) return; /* the answer is still printed; only the history loses it */
        t->p = q;
        t->cap = c;
    }
    memcpy(t->p + t->n, s, n);
    t->n += n;
    t->p[t->n] = 0;
}

static void emit(const char *p, size_t n, text *answer) {
    if (!n) return;
    fwrite(p, 1, n, stdout);
    fflush(stdout);
    text_put(answer, p, n);
}

/* Generates after the prompt whose last logits are ready (entry i_entry of
 * the last forward call), with *n_past tokens in the cache. Appends the
 * generated ids to hist (when not NULL, capacity n_ctx) and the visible text
 * to answer. *why receives the reason it stopped. */
static int generate(engine *e, cm_sampler *smp, cm_stop *stop, int i_entry, int *n_past, int32_t *hist,
                    int *n_hist, text *answer, int32_t *gen_ids, int *n_gen_ids, const char **why) {
    const opts *o = e->o;
    int rc = CM_OK;
    int n_done = 0;
    double t0 = cm_now_s();
    const char *em;
    size_t n_em;
    *why = "end of generation";
    for (;;) {
        if (o->n_predict >= 0 && n_done >= o->n_predict) {
            *why = "reached -n";
            break;
        }
        if (g_interrupted) {
            *why = "interrupted";
            break;
        }
        const float *l = last_logits(e, i_entry);
        if (!l) {
            rc = cm_errorf(CM_EINVAL, "the model produced no logits");
            break;
        }
        int32_t t = cm_sampler_sample(smp, e->logits, NULL);
        cm_sampler_accept(smp, t);
        if (cm_tokenizer_is_eog(e->tok, t)) break;
        n_done++;
        if (gen_ids) gen_ids[(*n_gen_ids)++] = t;
        const char *p = "";
        int np = token_text(e, t, &p);
        if (np < 0) { /* an id past the tokenizer's vocabulary (a padded output layer): no text */
            p = "";
            np = 0;
        }
        bool stopped = cm_stop_feed(stop, p, (size_t)np, &em, &n_em);
        emit(em, n_em, answer);
        if (stopped) {
            *why = "stop string";
            /* the token is not decoded: nothing after it will be generated */
            break;
        }
        if (*n_past >= e->n_ctx) {
            *why = "context full";
            break;
        }
        rc = decode(e, &t, 1, *n_past, false, NULL, NULL);
        if (rc) break;
        if (hist) hist[(*n_hist)++] = t;
        (*n_past)++;
        i_entry = 0;
    }
    cm_stop_flush(stop, &em, &n_em);
    emit(em, n_em, answer);
    e->t_gen += cm_now_s() - t0;
    e->n_gen += n_done;
    return rc;
}

static void print_timing(const engine *e, const char *why) {
    fprintf(stderr,
            "\ncellm %s: prompt %ld tokens in %.3f s (%.1f tok/s), generated %ld tokens in %.3f s (%.1f tok/s)%s%s\n",
            e->o->cmd, e->n_prompt, e->t_prompt, e->t_prompt > 0 ? (double)e->n_prompt / e->t_prompt : 0.0,
            e->n_gen, e->t_gen, e->t_gen > 0 ? (double)e->n_gen / e->t_gen : 0.0, why ? "; stopped: " : "",
            why ? why : "");
}

/* Reads all of stdin into a malloc'd string. */
static char *read_stdin(void) {
    size_t cap = 4096, n = 0;
    char *b = malloc(cap);
    if (!b) return NULL;
    for (;;) {
        if (n + 1 >= cap) {
            char *q = realloc(b, cap * 2);
            if (!q) {
                free(b);
                return NULL;
            }
            b = q;
            cap *= 2;
        }
        size_t r = fread(b + n, 1, cap - n - 1, stdin);
        n += r;
        if (r == 0) break;
    }
    b[n] = 0;
    return b;
}

static cm_chat_format pick_template(const engine *e) {
    const opts *o = e->o;
    if (o->chat_template) return cm_chat_format_from_name(o->chat_template);
    const char *src = NULL;
    cm_gguf_get_str(cm_model_gguf(e->model), "tokenizer.chat_template", &src, NULL);
    cm_chat_format f = cm_chat_detect(src);
    if (f == CM_CHAT_UNKNOWN) {
        fprintf(stderr,
                "cellm run: warning: %s; using chatml. Choose the right one with --chat-template NAME "
                "(llama3 chatml mistral llama2 gemma phi3 deepseek deepseek2 deepseek-coder)\n",
                src && *src ? "the model's chat template is not one cellm recognises"
                            : "the model has no chat template (tokenizer.chat_template)");
        f = CM_CHAT_CHATML;
    }
    if (o->verbose) fprintf(stderr, "cellm run: chat template %s\n", cm_chat_format_name(f));
    return f;
}

static bool add_bos(const engine *e) { return !e->o->no_bos && cm_tokenizer_add_bos(e->tok); }

/* One prompt, one completion. */
static int run_once(engine *e, cm_sampler *smp, cm_stop *stop, const char *prompt) {
    const opts *o = e->o;
    char *rendered = NULL;
    int32_t *toks = NULL, *gen_ids = NULL;
    int n_toks = 0, n_gen_ids = 0, rc;
    if (o->chat) {
        cm_chat_msg m[2];
        int n = 0;
        if (o->system) m[n++] = (cm_chat_msg){"system", o->system};
        m[n++] = (cm_chat_msg){"user", prompt};
        rc = cm_chat_render(pick_template(e), m, n, true, &rendered);
        if (rc) goto done;
        prompt = rendered;
    }
    rc = tokenize(e, prompt, add_bos(e), &toks, &n_toks);
    if (rc) goto done;
    if (n_toks == 0) {
        rc = cm_errorf(CM_EINVAL, "the prompt is empty (no tokens; the model adds no BOS)");
        goto done;
    }
    if (n_toks >= e->n_ctx) {
        rc = cm_errorf(CM_EINVAL, "the prompt has %d tokens but the context holds %d; raise -c", n_toks, e->n_ctx);
        goto done;
    }
    if (o->verbose) {
        fprintf(stderr, "cellm run: prompt %d tokens:", n_toks);
        for (int i = 0; i < n_toks; i++) fprintf(stderr, " %d", toks[i]);
        fprintf(stderr, "\n");
    }
    for (int i = 0; i < n_toks; i++) cm_sampler_accept(smp, toks[i]);
    double t0 = cm_now_s();
    rc = decode(e, toks, n_toks, 0, false, NULL, NULL);
    e->t_prompt += cm_now_s() - t0;
    e->n_prompt += n_toks;
    if (rc) goto done;
    int n_past = n_toks;
    int n_max = e->n_ctx - n_toks + 1;
    gen_ids = malloc((size_t)n_max * sizeof *gen_ids);
    if (!gen_ids) {
        rc = cm_errorf(CM_ENOMEM, "out of memory");
        goto done;
    }
    /* the last prompt entry's logits: entry index within the last batch */
    int i_last = (n_toks - 1) % e->n_batch;
    const char *why = NULL;
    rc = generate(e, smp, stop, i_last, &n_past, NULL, NULL, NULL, gen_ids, &n_gen_ids, &why);
    if (rc) goto done;
    if (!strcmp(why, "context full"))
        fprintf(stderr, "\ncellm run: the context is full (%d tokens); raise -c for longer output\n", e->n_ctx);
    if (o->verbose) {
        fprintf(stderr, "\ncellm run: generated ids:");
        for (int i = 0; i < n_gen_ids; i++) fprintf(stderr, " %d", gen_ids[i]);
        fprintf(stderr, "\n");
    }
    print_timing(e, why);
done:
    free(rendered);
    free(toks);
    free(gen_ids);
    return rc;
}

/* ------------------------------------------------------ interactive chat */

typedef struct convo {
    cm_chat_msg *m;
    int n, cap;
} convo;

static int convo_add(convo *c, const char *role, const char *content, size_t len) {
    if (c->n == c->cap) {
        int cap = c->cap ? c->cap * 2 : 16;
        cm_chat_msg *q = realloc(c->m, (size_t)cap * sizeof *q);
        if (!q) return cm_errorf(CM_ENOMEM, "out of memory");
        c->m = q;
        c->cap = cap;
    }
    char *s = malloc(len + 1);
    if (!s) return cm_errorf(CM_ENOMEM, "out of memory");
    memcpy(s, content, len);
    s[len] = 0;
    c->m[c->n++] = (cm_chat_msg){role, s};
    return CM_OK;
}

static void convo_pop(convo *c) {
    if (c->n > 0) free((char *)c->m[--c->n].content);
}

static void convo_free(convo *c) {
    while (c->n > 0) convo_pop(c);
    free(c->m);
}

static int chat_loop(engine *e, cm_sampler *smp, cm_stop *stop) {
    const opts *o = e->o;
    cm_chat_format fmt = pick_template(e);
    convo cv = {0};
    int32_t *hist = malloc((size_t)e->n_ctx * sizeof *hist);
    int32_t *gen_ids = malloc(((size_t)e->n_ctx + 1) * sizeof *gen_ids); /* one answer's ids, for -v */
    int n_hist = 0, rc = CM_OK;
    char *line = NULL;
    size_t line_cap = 0;
    const char *why = NULL;
    if (!hist || !gen_ids) {
        free(hist);
        free(gen_ids);
        return cm_errorf(CM_ENOMEM, "out of memory");
    }
    if (o->system && (rc = convo_add(&cv, "system", o->system, strlen(o->system)))) goto done;

    /* Ctrl-C cuts an answer short; at the prompt it ends the chat (no
     * SA_RESTART, so the read returns). */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);

    fprintf(stderr, "cellm chat: %s, context %d tokens. /exit or Ctrl-D to leave, /clear to start over.\n",
            cm_chat_format_name(fmt), e->n_ctx);
    for (;;) {
        fprintf(stderr, "\n> ");
        g_interrupted = 0;
        ssize_t n = getline(&line, &line_cap, stdin);
        if (n < 0) {
            fprintf(stderr, "\n");
            break;
        }
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (n == 0) continue;
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) break;
        if (!strcmp(line, "/clear")) {
            while (cv.n > (o->system ? 1 : 0)) convo_pop(&cv);
            cm_ctx_seq_rm(e->ctx, 0, 0, -1);
            n_hist = 0;
            fprintf(stderr, "(conversation cleared)\n");
            continue;
        }
        if ((rc = convo_add(&cv, "user", line, (size_t)n))) goto done;

        char *rendered = NULL;
        int32_t *toks = NULL;
        int n_toks = 0;
        rc = cm_chat_render(fmt, cv.m, cv.n, true, &rendered);
        if (!rc) rc = tokenize(e, rendered, add_bos(e), &toks, &n_toks);
        free(rendered);
        if (rc) goto done;
        if (n_toks >= e->n_ctx) {
            fprintf(stderr, "cellm chat: the conversation needs %d tokens but the context holds %d; /clear to start "
                            "over, or raise -c\n", n_toks, e->n_ctx);
            free(toks);
            convo_pop(&cv);
            continue;
        }
        /* keep the cache for the common prefix; at least one token must be
         * processed so that there are logits to sample from */
        int keep = 0;
        while (keep < n_hist && keep < n_toks && hist[keep] == toks[keep]) keep++;
        if (keep == n_toks && keep > 0) keep--;
        if (keep < n_hist) cm_ctx_seq_rm(e->ctx, 0, keep, -1);
        for (int i = keep; i < n_toks; i++) cm_sampler_accept(smp, toks[i]);
        if (o->verbose)
            fprintf(stderr, "(kept %d cached tokens, processing %d new)\n", keep, n_toks - keep);
        double t0 = cm_now_s();
        rc = decode(e, toks + keep, n_toks - keep, keep, false, NULL, NULL);
        e->t_prompt += cm_now_s() - t0;
        e->n_prompt += n_toks - keep;
        if (rc) {
            free(toks);
            goto done;
        }
        memcpy(hist, toks, (size_t)n_toks * sizeof *hist);
        n_hist = n_toks;
        free(toks);

        int n_past = n_hist;
        text answer = {0};
        int n_gen_ids = 0;
        cm_stop_reset(stop);
        rc = generate(e, smp, stop, (n_hist - keep - 1) % e->n_batch, &n_past, hist, &n_hist, &answer, gen_ids,
                      &n_gen_ids, &why);
        fputc('\n', stdout);
        fflush(stdout);
        if (o->verbose) {
            fprintf(stderr, "(generated ids:");
            for (int i = 0; i < n_gen_ids; i++) fprintf(stderr, " %d", gen_ids[i]);
            fprintf(stderr, ")\n");
        }
        int rc2 = convo_add(&cv, "assistant", answer.p ? answer.p : "", answer.n);
        free(answer.p);
        if (rc || (rc = rc2)) goto done;
        if (!strcmp(why, "context full"))
            fprintf(stderr, "cellm chat: the context is full (%d tokens); /clear to start over\n", e->n_ctx);
        else if (o->verbose || !strcmp(why, "interrupted"))
            fprintf(stderr, "(%s)\n", why);
    }
    print_timing(e, NULL);
done:
    signal(SIGINT, SIG_DFL);
    free(line);
    free(hist);
    free(gen_ids);
    convo_free(&cv);
    return rc;
}

int cmd_run(int argc, char **argv) {
    opts o;
    int prc = parse_opts(argc, argv, true, &o);
    if (prc) return prc > 0 ? 0 : 2;
    bool interactive = false;
    char *stdin_text = NULL;
    if (!o.prompt) {
        if (isatty(STDIN_FILENO)) {
            interactive = true;
            o.chat = true;
        } else {
            stdin_text = read_stdin();
            if (!stdin_text) {
                fprintf(stderr, "cellm run: could not read the prompt from stdin\n");
                return 1;
            }
            o.prompt = stdin_text;
        }
    }
    if (!o.seed_given) o.sp.seed = cm_now_ns() ^ ((uint64_t)getpid() << 32);
    if (o.verbose)
        fprintf(stderr,
                "cellm run: seed %" PRIu64 ", temp %g, top-k %d, top-p %g, min-p %g, repeat-penalty %g, "
                "repeat-last-n %d, presence %g, frequency %g\n",
                o.sp.seed, (double)o.sp.temperature, o.sp.top_k, (double)o.sp.top_p, (double)o.sp.min_p,
                (double)o.sp.repeat_penalty, o.sp.repeat_last_n, (double)o.sp.presence_penalty,
                (double)o.sp.frequency_penalty);

    engine e;
    cm_sampler *smp = NULL;
    cm_stop *stop = NULL;
    int rc = engine_init(&e, &o);
    if (!rc) rc = cm_sampler_create(&o.sp, e.n_vocab, &smp);
    if (!rc) rc = cm_stop_create(o.stops, o.n_stops, &stop);
    if (!rc) rc = interactive ? chat_loop(&e, smp, stop) : run_once(&e, smp, stop, o.prompt);
    int code = rc ? fail_rc(&o, rc) : 0;
    cm_stop_destroy(stop);
    cm_sampler_destroy(smp);
    engine_fini(&e);
    free(stdin_text);
    return code;
}

/* ----------------------------------------------------------------- logits */

typedef struct top_ctx {
    int k, n_vocab;
    int32_t *ids; /* k */
} top_ctx;

static void print_logit(float v) {
    if (isfinite(v)) printf("%.9g", (double)v);
    else printf("null");
}

/* Prints the k highest logits of one position, highest first (ties: lower id). */
static void print_top(void *user, int pos, const float *l) {
    top_ctx *t = user;
    int n = 0;
    for (int i = 0; i < t->n_vocab; i++) {
        /* insertion into a sorted list of at most k: k is small */
        float v = isnan(l[i]) ? -INFINITY : l[i];
        if (n == t->k && !(v > (isnan(l[t->ids[n - 1]]) ? -INFINITY : l[t->ids[n - 1]]))) continue;
        int j = n < t->k ? n++ : n - 1;
        while (j > 0) {
            float u = isnan(l[t->ids[j - 1]]) ? -INFINITY : l[t->ids[j - 1]];
            if (u >= v) break;
            t->ids[j] = t->ids[j - 1];
            j--;
        }
        t->ids[j] = i;
    }
    printf("{\"pos\":%d,\"top\":[", pos);
    for (int j = 0; j < n; j++) {
        printf("%s[%d,", j ? "," : "", t->ids[j]);
        print_logit(l[t->ids[j]]);
        printf("]");
    }
    printf("]}\n");
}

int cmd_logits(int argc, char **argv) {
    opts o;
    int prc = parse_opts(argc, argv, false, &o);
    if (prc) return prc > 0 ? 0 : 2;
    char *stdin_text = NULL;
    if (!o.prompt) {
        if (isatty(STDIN_FILENO)) {
            bad(&o, "no prompt: give -p TEXT or pipe it on stdin");
            return 2;
        }
        stdin_text = read_stdin();
        if (!stdin_text) {
            fprintf(stderr, "cellm logits: could not read the prompt from stdin\n");
            return 1;
        }
        o.prompt = stdin_text;
    }
    engine e;
    cm_sampler *greedy = NULL;
    int32_t *toks = NULL;
    int n_toks = 0;
    top_ctx tc = {0};
    int rc = engine_init(&e, &o);
    if (rc) goto done;
    cm_sampler_params gp = cm_sampler_defaults();
    gp.temperature = 0; /* arg-max, ties to the lowest id: the same rule as `cellm run --temp 0` */
    gp.repeat_last_n = 0;
    if ((rc = cm_sampler_create(&gp, e.n_vocab, &greedy))) goto done;
    if ((rc = tokenize(&e, o.prompt, add_bos(&e), &toks, &n_toks))) goto done;
    if (n_toks == 0) {
        rc = cm_errorf(CM_EINVAL, "the prompt is empty (no tokens; the model adds no BOS)");
        goto done;
    }
    if (n_toks > e.n_ctx) {
        rc = cm_errorf(CM_EINVAL, "the prompt has %d tokens but the context holds %d; raise -c", n_toks, e.n_ctx);
        goto done;
    }
    tc.k = o.top_n < e.n_vocab ? o.top_n : e.n_vocab;
    tc.n_vocab = e.n_vocab;
    tc.ids = malloc((size_t)tc.k * sizeof *tc.ids);
    if (!tc.ids) {
        rc = cm_errorf(CM_ENOMEM, "out of memory");
        goto done;
    }
    printf("{\"tokens\":[");
    for (int i = 0; i < n_toks; i++) printf("%s%d", i ? "," : "", toks[i]);
    printf("]}\n");
    double t0 = cm_now_s();
    rc = decode(&e, toks, n_toks, 0, true, print_top, &tc);
    e.t_prompt = cm_now_s() - t0;
    e.n_prompt = n_toks;
    if (rc) goto done;

    /* greedy continuation through the KV cache; the logits of the last
     * prompt position are those of the last entry of the last batch */
    int i_entry = (n_toks - 1) % e.n_batch, n_past = n_toks;
    printf("{\"greedy\":[");
    t0 = cm_now_s();
    for (int i = 0; i < o.n_predict; i++) {
        const float *l = last_logits(&e, i_entry);
        if (!l) {
            rc = cm_errorf(CM_EINVAL, "the model produced no logits");
            break;
        }
        int32_t t = cm_sampler_sample(greedy, e.logits, NULL);
        printf("%s%d", i ? "," : "", t);
        e.n_gen++;
        if (i + 1 == o.n_predict) break;
        if (n_past >= e.n_ctx) {
            fprintf(stderr, "cellm logits: the context is full after %d greedy tokens; raise -c\n", i + 1);
            break;
        }
        if ((rc = decode(&e, &t, 1, n_past++, false, NULL, NULL))) break;
        i_entry = 0;
    }
    printf("]}\n");
    fflush(stdout);
    e.t_gen = cm_now_s() - t0;
    if (o.verbose) print_timing(&e, NULL);
done:;
    int code = rc ? fail_rc(&o, rc) : 0;
    free(tc.ids);
    free(toks);
    cm_sampler_destroy(greedy);
    engine_fini(&e);
    free(stdin_text);
    return code;
}
