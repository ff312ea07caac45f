/* test_stop.c - the streaming stop-string matcher: stop strings split across
 * feeds, overlapping prefixes, never emitting part of a stop string, and
 * never cutting a UTF-8 character between two emits. */
#include "base/status.h"
#include "test.h"
#include "text/stop.h"

/* collects everything emitted */
typedef struct sink {
    char buf[4096];
    size_t n;
    int n_emits_split_utf8; /* emits that ended inside a multi-byte character */
} sink;

static int ends_mid_utf8(const char *p, size_t n) {
    /* the last lead byte's sequence must be complete */
    for (size_t k = 1; k <= 4 && k <= n; k++) {
        unsigned char c = (unsigned char)p[n - k];
        if ((c & 0xC0) == 0x80) continue;
        size_t need = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 4;
        return k < need;
    }
    return 0;
}

static void put(sink *k, const char *p, size_t n) {
    if (n && ends_mid_utf8(p, n)) k->n_emits_split_utf8++;
    if (k->n + n < sizeof k->buf) {
        memcpy(k->buf + k->n, p, n);
        k->n += n;
        k->buf[k->n] = 0;
    }
}

/* feeds `text` in pieces of the given sizes (cycling), returns whether it stopped */
static bool feed_pieces(cm_stop *s, const char *text, const int *sizes, int n_sizes, sink *k) {
    size_t len = strlen(text), i = 0;
    int j = 0;
    const char *e;
    size_t ne;
    memset(k, 0, sizeof *k);
    while (i < len) {
        size_t step = (size_t)sizes[j++ % n_sizes];
        if (step > len - i) step = len - i;
        bool stopped = cm_stop_feed(s, text + i, step, &e, &ne);
        put(k, e, ne);
        i += step;
        if (stopped) return true;
    }
    cm_stop_flush(s, &e, &ne);
    put(k, e, ne);
    return false;
}

static cm_stop *make(const char *const *strs, int n) {
    cm_stop *s = NULL;
    int rc = cm_stop_create(strs, n, &s);
    if (rc) fprintf(stderr, "cm_stop_create: %s\n", cm_last_error(rc));
    return s;
}

TEST(no_stop_strings_passes_through) {
    cm_stop *s = make(NULL, 0);
    sink k;
    const int one[] = {1};
    CHECK(!feed_pieces(s, "hello world", one, 1, &k));
    CHECK(!strcmp(k.buf, "hello world"));
    cm_stop_destroy(s);
}

TEST(split_across_feeds) {
    const char *stops[] = {"</answer>"};
    cm_stop *s = make(stops, 1);
    /* every way of cutting the text into pieces of 1..5 bytes */
    for (int a = 1; a <= 5; a++)
        for (int b = 1; b <= 5; b++) {
            const int sizes[] = {a, b};
            sink k;
            cm_stop_reset(s);
            CHECK(feed_pieces(s, "The answer is 4.</answer> and more", sizes, 2, &k));
            CHECK_MSG(!strcmp(k.buf, "The answer is 4."), "pieces %d,%d gave [%s]", a, b, k.buf);
        }
    cm_stop_destroy(s);
}

TEST(holds_back_only_possible_prefixes) {
    const char *stops[] = {"STOP"};
    cm_stop *s = make(stops, 1);
    const char *e;
    size_t n;
    CHECK(!cm_stop_feed(s, "abcST", 5, &e, &n));
    CHECK(n == 3 && !memcmp(e, "abc", 3)); /* "ST" may begin STOP */
    CHECK(!cm_stop_feed(s, "x", 1, &e, &n));
    CHECK(n == 3 && !memcmp(e, "STx", 3)); /* it did not */
    CHECK(!cm_stop_feed(s, "STO", 3, &e, &n));
    CHECK(n == 0);
    CHECK(cm_stop_feed(s, "P!", 2, &e, &n)); /* completed */
    CHECK(n == 0);
    /* after a stop nothing more comes out */
    CHECK(cm_stop_feed(s, "more", 4, &e, &n));
    CHECK(n == 0);
    cm_stop_flush(s, &e, &n);
    CHECK(n == 0);
    /* at the end, a held prefix that never completed is text */
    cm_stop_reset(s);
    CHECK(!cm_stop_feed(s, "endS", 4, &e, &n));
    CHECK(n == 3);
    cm_stop_flush(s, &e, &n);
    CHECK(n == 1 && e[0] == 'S');
    cm_stop_destroy(s);
}

TEST(overlapping_prefixes) {
    /* "aab" inside "aaab": a naive matcher that drops its partial match on
     * the third 'a' would miss it */
    const char *stops[] = {"aab"};
    cm_stop *s = make(stops, 1);
    const int one[] = {1};
    sink k;
    CHECK(feed_pieces(s, "xaaab", one, 1, &k));
    CHECK(!strcmp(k.buf, "xa"));
    cm_stop_destroy(s);

    /* several stop strings, one a prefix of another: the earliest wins */
    const char *stops2[] = {"\n\nUser:", "\n\n", "###"};
    s = make(stops2, 3);
    CHECK(feed_pieces(s, "line one\n\nUser: hi", one, 1, &k));
    CHECK(!strcmp(k.buf, "line one"));
    cm_stop_reset(s);
    const int two[] = {2};
    CHECK(feed_pieces(s, "a#b##c###d", two, 1, &k));
    CHECK(!strcmp(k.buf, "a#b##c"));
    cm_stop_destroy(s);
}

TEST(whole_text_in_one_feed) {
    const char *stops[] = {"<|end|>", "END"};
    cm_stop *s = make(stops, 2);
    const char *e;
    size_t n;
    const char *t = "first END second <|end|>";
    CHECK(cm_stop_feed(s, t, strlen(t), &e, &n));
    CHECK(n == 6 && !memcmp(e, "first ", 6));
    cm_stop_destroy(s);
}

TEST(empty_strings_ignored) {
    const char *stops[] = {"", "zz"};
    cm_stop *s = make(stops, 2);
    const int one[] = {3};
    sink k;
    CHECK(!feed_pieces(s, "abc def", one, 1, &k));
    CHECK(!strcmp(k.buf, "abc def"));
    cm_stop_destroy(s);
}

TEST(utf8_held_back) {
    cm_stop *s = make(NULL, 0);
    const char *e;
    size_t n;
    /* "é" = C3 A9, "€" = E2 82 AC, "😀" = F0 9F 98 80, fed byte by byte */
    const char *t = "a\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80!";
    sink k;
    memset(&k, 0, sizeof k);
    for (size_t i = 0; t[i]; i++) {
        CHECK(!cm_stop_feed(s, t + i, 1, &e, &n));
        put(&k, e, n);
    }
    cm_stop_flush(s, &e, &n);
    put(&k, e, n);
    CHECK(!strcmp(k.buf, t));
    CHECK(k.n_emits_split_utf8 == 0);
    /* a lone lead byte is held, then released once complete */
    cm_stop_reset(s);
    CHECK(!cm_stop_feed(s, "x\xe2\x82", 3, &e, &n));
    CHECK(n == 1 && e[0] == 'x');
    CHECK(!cm_stop_feed(s, "\xac", 1, &e, &n));
    CHECK(n == 3 && !memcmp(e, "\xe2\x82\xac", 3));
    /* invalid bytes are not held forever */
    CHECK(!cm_stop_feed(s, "\x80\x80", 2, &e, &n));
    CHECK(n == 2);
    cm_stop_destroy(s);
}

TEST(utf8_and_stop_together) {
    /* a stop string of multi-byte characters, and text of multi-byte
     * characters, cut at every byte */
    const char *stops[] = {"\xe2\x80\x94\xe2\x80\x94"}; /* "——" */
    cm_stop *s = make(stops, 1);
    const char *t = "\xc3\xa9t\xc3\xa9 \xe2\x80\x94 ok \xe2\x80\x94\xe2\x80\x94 tail";
    for (int a = 1; a <= 4; a++) {
        const int sizes[] = {a, 1, a + 1};
        sink k;
        cm_stop_reset(s);
        CHECK(feed_pieces(s, t, sizes, 3, &k));
        CHECK_MSG(!strcmp(k.buf, "\xc3\xa9t\xc3\xa9 \xe2\x80\x94 ok "), "a=%d [%s]", a, k.buf);
        CHECK(k.n_emits_split_utf8 == 0);
    }
    cm_stop_destroy(s);
}

int main(void) {
    RUN(no_stop_strings_passes_through);
    RUN(split_across_feeds);
    RUN(holds_back_only_possible_prefixes);
    RUN(overlapping_prefixes);
    RUN(whole_text_in_one_feed);
    RUN(empty_strings_ignored);
    RUN(utf8_held_back);
    RUN(utf8_and_stop_together);
    return test_summary();
}
