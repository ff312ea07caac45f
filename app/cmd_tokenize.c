/* cmd_tokenize.c - `cellm tokenize -m MODEL.gguf TEXT [--no-bos] [--special]
 * [--pieces]`: prints the token ids of TEXT, space separated on one line,
 * or with --pieces one "id<TAB>piece" line per token (the piece as the
 * tokenizer renders it, control tokens included, non-printable bytes as
 * \xNN). Only the tokenizer.* metadata of MODEL is read, so a vocabulary-only
 * GGUF works too. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "cmd.h"
#include "gguf/gguf.h"
#include "text/tokenizer.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: cellm tokenize -m MODEL.gguf TEXT [--no-bos] [--special] [--pieces]\n"
            "\n"
            "  -m, --model FILE   GGUF model or vocabulary with tokenizer.* metadata\n"
            "  --no-bos           do not prepend BOS (by default the model's add_bos_token decides)\n"
            "  --special          recognise special tokens written in TEXT (e.g. <|im_end|>)\n"
            "  --pieces           print one 'id<TAB>piece' line per token\n"
            "  TEXT               the text; '-' reads it from standard input\n");
}

static char *read_stdin(size_t *n) {
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + len, 1, cap - len, stdin);
        len += got;
        if (got == 0) break;
        if (len == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) free(buf);
            buf = nb;
        }
    }
    *n = len;
    return buf;
}

static void print_piece(const char *s, int n) {
    for (int i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\') fputs("\\\\", stdout);
        else if (c == '\n') fputs("\\n", stdout);
        else if (c == '\t') fputs("\\t", stdout);
        else if (c < 0x20 || c == 0x7f) printf("\\x%02x", c);
        else putchar(c);
    }
}

int cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *text = NULL;
    bool no_bos = false, special = false, pieces = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (++i >= argc) {
                fprintf(stderr, "cellm tokenize: %s needs a file\n", a);
                return 2;
            }
            model = argv[i];
        } else if (!strcmp(a, "--no-bos")) {
            no_bos = true;
        } else if (!strcmp(a, "--special")) {
            special = true;
        } else if (!strcmp(a, "--pieces")) {
            pieces = true;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "cellm tokenize: unknown option '%s' (see cellm tokenize --help)\n", a);
            return 2;
        } else if (!text) {
            text = a;
        } else {
            fprintf(stderr, "cellm tokenize: one TEXT only (quote it); got '%s' too\n", a);
            return 2;
        }
    }
    if (!model || !text) {
        usage(stderr);
        return 2;
    }

    int ret = 1;
    cm_gguf *g = NULL;
    cm_tokenizer *t = NULL;
    char *owned = NULL;
    int32_t *ids = NULL;
    char *piece = NULL;
    size_t len;
    if (!strcmp(text, "-")) {
        if (!(owned = read_stdin(&len))) {
            fprintf(stderr, "cellm tokenize: out of memory reading standard input\n");
            goto out;
        }
        text = owned;
    } else {
        len = strlen(text);
    }
    int rc = cm_gguf_open(model, &g);
    if (rc) {
        fprintf(stderr, "cellm tokenize: %s\n", cm_last_error(rc));
        goto out;
    }
    if ((rc = cm_tokenizer_load(g, &t))) {
        fprintf(stderr, "cellm tokenize: %s\n", cm_last_error(rc));
        goto out;
    }
    bool bos = !no_bos && cm_tokenizer_add_bos(t);
    int n = 0;
    rc = cm_tokenize(t, text, len, bos, special, NULL, 0, &n);
    if (rc == CM_OK || rc == CM_ERANGE) {
        ids = malloc(sizeof *ids * (size_t)(n ? n : 1));
        rc = ids ? cm_tokenize(t, text, len, bos, special, ids, n, &n) : CM_ENOMEM;
    }
    if (rc) {
        fprintf(stderr, "cellm tokenize: %s\n", cm_last_error(rc));
        goto out;
    }
    int cap = 256;
    piece = malloc((size_t)cap);
    for (int i = 0; i < n; i++) {
        if (!pieces) {
            printf(i ? " %d" : "%d", ids[i]);
            continue;
        }
        int k = cm_token_to_piece(t, ids[i], piece, cap, true);
        if (k > cap) {
            char *np = realloc(piece, (size_t)k);
            if (!np) goto out;
            piece = np, cap = k;
            k = cm_token_to_piece(t, ids[i], piece, cap, true);
        }
        printf("%d\t", ids[i]);
        if (k > 0) print_piece(piece, k);
        putchar('\n');
    }
    if (!pieces) putchar('\n');
    ret = 0;
out:
    free(piece);
    free(ids);
    free(owned);
    cm_tokenizer_destroy(t);
    cm_gguf_close(g);
    return ret;
}
