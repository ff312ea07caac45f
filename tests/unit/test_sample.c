/* test_sample.c - the sampler: greedy, seeds, top-k/top-p/min-p tails,
 * temperature, and the penalties touching exactly the right logits.
 * Statistical checks use fixed seeds and tolerances several standard
 * deviations wide, so they are deterministic and not flaky. */
#include "base/rng.h"
#include "base/status.h"
#include "model/sample.h"
#include "test.h"

static cm_sampler *make(cm_sampler_params p, int n_vocab) {
    cm_sampler *s = NULL;
    int rc = cm_sampler_create(&p, n_vocab, &s);
    if (rc) fprintf(stderr, "cm_sampler_create: %s\n", cm_last_error(rc));
    return s;
}

static cm_sampler_params plain(float temp, uint64_t seed) {
    cm_sampler_params p = cm_sampler_defaults();
    p.temperature = temp;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = seed;
    return p;
}

/* logits whose softmax at temperature 1 is exactly probs */
static void logits_of(const double *probs, int n, float *out) {
    for (int i = 0; i < n; i++) out[i] = (float)log(probs[i]);
}

/* draws `n_draws` tokens from the same logits, counting each id */
static void histogram(cm_sampler *s, const float *logits, int n_vocab, int n_draws, int *count) {
    float *tmp = malloc((size_t)n_vocab * sizeof *tmp);
    memset(count, 0, (size_t)n_vocab * sizeof *count);
    for (int d = 0; d < n_draws; d++) {
        memcpy(tmp, logits, (size_t)n_vocab * sizeof *tmp);
        int32_t t = cm_sampler_sample(s, tmp, NULL);
        if (t >= 0 && t < n_vocab) count[t]++;
    }
    free(tmp);
}

TEST(defaults) {
    cm_sampler_params p = cm_sampler_defaults();
    CHECK_NEAR(p.temperature, 0.8, 1e-6);
    CHECK(p.top_k == 40);
    CHECK_NEAR(p.top_p, 0.95, 1e-6);
    CHECK_NEAR(p.min_p, 0.05, 1e-6);
    CHECK(p.repeat_penalty == 1.0f && p.repeat_last_n == 64);
    CHECK(p.presence_penalty == 0 && p.frequency_penalty == 0);
}

TEST(greedy_is_argmax) {
    enum { N = 1000 };
    float logits[N];
    cm_rng r;
    cm_rng_init(&r, 7);
    cm_sampler *s = make(plain(0.0f, 1), N);
    for (int trial = 0; trial < 20; trial++) {
        int best = 0;
        for (int i = 0; i < N; i++) {
            logits[i] = cm_rng_normal(&r) * 3;
            if (logits[i] > logits[best]) best = i;
        }
        /* the log-probability under softmax, for comparison */
        double sum = 0;
        for (int i = 0; i < N; i++) sum += exp((double)logits[i] - logits[best]);
        double want_lp = -log(sum);
        float lp = 0;
        CHECK(cm_sampler_sample(s, logits, &lp) == best);
        CHECK_NEAR(lp, want_lp, 1e-4);
    }
    /* ties go to the lowest id; NaN never wins */
    for (int i = 0; i < N; i++) logits[i] = 0;
    logits[17] = logits[500] = 2.0f;
    logits[3] = NAN;
    CHECK(cm_sampler_sample(s, logits, NULL) == 17);
    cm_sampler_destroy(s);
}

TEST(seeded_reproducible) {
    enum { N = 300, DRAWS = 200 };
    float logits[N], tmp[N];
    cm_rng r;
    cm_rng_init(&r, 11);
    for (int i = 0; i < N; i++) logits[i] = cm_rng_normal(&r);
    cm_sampler_params p = cm_sampler_defaults(); /* top-k, top-p, min-p all on */
    p.seed = 42;
    cm_sampler *a = make(p, N), *b = make(p, N);
    p.seed = 43;
    cm_sampler *c = make(p, N);
    int32_t seq[DRAWS];
    int same_ab = 1, same_ac = 1;
    for (int d = 0; d < DRAWS; d++) {
        memcpy(tmp, logits, sizeof tmp);
        int32_t ta = cm_sampler_sample(a, tmp, NULL);
        memcpy(tmp, logits, sizeof tmp);
        int32_t tb = cm_sampler_sample(b, tmp, NULL);
        memcpy(tmp, logits, sizeof tmp);
        int32_t tc = cm_sampler_sample(c, tmp, NULL);
        seq[d] = ta;
        same_ab &= ta == tb;
        same_ac &= ta == tc;
    }
    CHECK(same_ab);
    CHECK(!same_ac); /* another seed gives another stream */
    /* reset with the same seed replays the stream */
    cm_sampler_reset(a, 42);
    int replay = 1;
    for (int d = 0; d < DRAWS; d++) {
        memcpy(tmp, logits, sizeof tmp);
        replay &= cm_sampler_sample(a, tmp, NULL) == seq[d];
    }
    CHECK(replay);
    cm_sampler_destroy(a);
    cm_sampler_destroy(b);
    cm_sampler_destroy(c);
}

TEST(top_k_1_is_greedy) {
    enum { N = 500 };
    float logits[N];
    cm_rng r;
    cm_rng_init(&r, 3);
    cm_sampler_params p = plain(1.5f, 9);
    p.top_k = 1;
    cm_sampler *s = make(p, N);
    for (int trial = 0; trial < 50; trial++) {
        int best = 0;
        for (int i = 0; i < N; i++) {
            logits[i] = cm_rng_normal(&r);
            if (logits[i] > logits[best]) best = i;
        }
        float lp = -1;
        CHECK(cm_sampler_sample(s, logits, &lp) == best);
        CHECK_NEAR(lp, 0.0, 1e-6); /* the only candidate left has probability 1 */
    }
    cm_sampler_destroy(s);
}

static const double probs4[] = {0.5, 0.3, 0.15, 0.05};

TEST(top_k) {
    float logits[4];
    logits_of(probs4, 4, logits);
    cm_sampler_params p = plain(1.0f, 5);
    p.top_k = 2;
    cm_sampler *s = make(p, 4);
    int count[4];
    histogram(s, logits, 4, 20000, count);
    CHECK(count[2] == 0 && count[3] == 0);
    CHECK_NEAR(count[0] / 20000.0, 0.5 / 0.8, 0.015); /* renormalised over the two kept */
    float lp;
    float tmp[4];
    for (int i = 0; i < 50; i++) {
        memcpy(tmp, logits, sizeof tmp);
        int32_t t = cm_sampler_sample(s, tmp, &lp);
        CHECK_NEAR(lp, log((t == 0 ? 0.5 : 0.3) / 0.8), 1e-5);
    }
    cm_sampler_destroy(s);
}

TEST(top_p) {
    float logits[4];
    logits_of(probs4, 4, logits);
    cm_sampler_params p = plain(1.0f, 6);
    p.top_p = 0.75f; /* 0.5 < 0.75 <= 0.5 + 0.3: the nucleus is {0, 1} */
    cm_sampler *s = make(p, 4);
    int count[4];
    histogram(s, logits, 4, 20000, count);
    CHECK(count[2] == 0 && count[3] == 0);
    CHECK_NEAR(count[0] / 20000.0, 0.625, 0.015);
    cm_sampler_destroy(s);

    p.top_p = 0.9f; /* now 0.15 is needed too, 0.05 still excluded */
    s = make(p, 4);
    histogram(s, logits, 4, 20000, count);
    CHECK(count[2] > 0 && count[3] == 0);
    CHECK_NEAR(count[2] / 20000.0, 0.15 / 0.95, 0.015);
    cm_sampler_destroy(s);
}

/* top-p on a large vocabulary (where the tail threshold does its work)
 * against a direct computation of the nucleus */
TEST(top_p_large) {
    enum { N = 5000 };
    static float logits[N], tmp[N];
    static double pr[N];
    cm_rng r;
    cm_rng_init(&r, 21);
    double sum = 0;
    for (int i = 0; i < N; i++) logits[i] = cm_rng_normal(&r) * 2.5f;
    float mx = logits[0];
    for (int i = 1; i < N; i++) mx = logits[i] > mx ? logits[i] : mx;
    for (int i = 0; i < N; i++) sum += pr[i] = exp((double)logits[i] - mx);
    for (int i = 0; i < N; i++) pr[i] /= sum;
    /* nucleus by brute force: tokens ranked by probability */
    const double top_p = 0.6;
    static char in[N];
    memset(in, 0, sizeof in);
    double cum = 0;
    while (cum < top_p) {
        int b = -1;
        for (int i = 0; i < N; i++)
            if (!in[i] && (b < 0 || pr[i] > pr[b])) b = i;
        in[b] = 1;
        cum += pr[b];
    }
    cm_sampler_params p = plain(1.0f, 8);
    p.top_p = (float)top_p;
    cm_sampler *s = make(p, N);
    int outside = 0;
    for (int d = 0; d < 3000; d++) {
        memcpy(tmp, logits, sizeof tmp);
        int32_t t = cm_sampler_sample(s, tmp, NULL);
        outside += !in[t];
    }
    CHECK_MSG(outside == 0, "%d draws outside the nucleus", outside);
    cm_sampler_destroy(s);
}

TEST(min_p) {
    float logits[4];
    logits_of(probs4, 4, logits);
    cm_sampler_params p = plain(1.0f, 7);
    p.min_p = 0.2f; /* keeps p >= 0.2 * 0.5 = 0.1: tokens 0, 1, 2 */
    cm_sampler *s = make(p, 4);
    int count[4];
    histogram(s, logits, 4, 20000, count);
    CHECK(count[3] == 0);
    CHECK_NEAR(count[2] / 20000.0, 0.15 / 0.95, 0.015);
    CHECK_NEAR(count[0] / 20000.0, 0.5 / 0.95, 0.015);
    cm_sampler_destroy(s);
}

TEST(temperature) {
    float logits[4];
    logits_of(probs4, 4, logits);
    /* at temperature T the distribution is p^(1/T), renormalised */
    const float temps[] = {0.5f, 1.0f, 2.0f};
    for (int k = 0; k < 3; k++) {
        cm_sampler *s = make(plain(temps[k], 100 + k), 4);
        int count[4];
        histogram(s, logits, 4, 40000, count);
        double z = 0, q[4];
        for (int i = 0; i < 4; i++) z += q[i] = pow(probs4[i], 1.0 / temps[k]);
        for (int i = 0; i < 4; i++) CHECK_NEAR(count[i] / 40000.0, q[i] / z, 0.012);
        cm_sampler_destroy(s);
    }
}

TEST(repeat_penalty) {
    enum { N = 8 };
    const float base[N] = {0.5f, 2.0f, -1.0f, 1.0f, 0.0f, 3.0f, -2.0f, 1.5f};
    float l[N];
    cm_sampler_params p = plain(0.0f, 1);
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = 3;
    cm_sampler *s = make(p, N);
    cm_sampler_accept(s, 1);
    cm_sampler_accept(s, 2);
    cm_sampler_accept(s, 1); /* counted once for the repetition penalty */
    memcpy(l, base, sizeof l);
    cm_sampler_sample(s, l, NULL);
    CHECK_NEAR(l[1], 1.0, 1e-6);  /* positive: divided */
    CHECK_NEAR(l[2], -2.0, 1e-6); /* negative: multiplied */
    for (int i = 0; i < N; i++)
        if (i != 1 && i != 2) CHECK_NEAR(l[i], base[i], 0);
    /* the window slides: after three more tokens, 1 and 2 are out of it */
    cm_sampler_accept(s, 5);
    cm_sampler_accept(s, 6);
    cm_sampler_accept(s, 5);
    memcpy(l, base, sizeof l);
    CHECK(cm_sampler_sample(s, l, NULL) == 1); /* 5 (3.0) fell to 1.5; 1 is back to 2.0 */
    CHECK_NEAR(l[1], 2.0, 0);
    CHECK_NEAR(l[2], -1.0, 0);
    CHECK_NEAR(l[5], 1.5, 1e-6);
    CHECK_NEAR(l[6], -4.0, 1e-6);
    cm_sampler_destroy(s);
}

TEST(presence_frequency) {
    enum { N = 6 };
    const float base[N] = {1, 1, 1, 1, 1, 1};
    float l[N];
    cm_sampler_params p = plain(0.0f, 1);
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    p.repeat_last_n = -1; /* the whole history */
    cm_sampler *s = make(p, N);
    for (int i = 0; i < 100; i++) cm_sampler_accept(s, 4); /* far past any window */
    cm_sampler_accept(s, 2);
    cm_sampler_accept(s, 2);
    cm_sampler_accept(s, 2);
    cm_sampler_accept(s, 99); /* out of range: ignored */
    memcpy(l, base, sizeof l);
    cm_sampler_sample(s, l, NULL);
    CHECK_NEAR(l[2], 1 - 3 * 0.25 - 0.5, 1e-6);
    CHECK_NEAR(l[4], 1 - 100 * 0.25 - 0.5, 1e-4);
    CHECK(l[0] == 1 && l[1] == 1 && l[3] == 1 && l[5] == 1);
    /* reset forgets the history */
    cm_sampler_reset(s, 1);
    memcpy(l, base, sizeof l);
    cm_sampler_sample(s, l, NULL);
    CHECK(l[2] == 1 && l[4] == 1);
    cm_sampler_destroy(s);

    /* repeat_last_n 0 turns every penalty off */
    p.repeat_last_n = 0;
    p.repeat_penalty = 3.0f;
    s = make(p, N);
    cm_sampler_accept(s, 2);
    memcpy(l, base, sizeof l);
    cm_sampler_sample(s, l, NULL);
    CHECK(l[2] == 1);
    cm_sampler_destroy(s);
}

TEST(penalty_changes_choice) {
    /* a strong presence penalty pushes sampling off a repeated token */
    enum { N = 3 };
    const float base[N] = {3.0f, 2.5f, 0.0f};
    float l[N];
    cm_sampler_params p = plain(0.0f, 1);
    p.presence_penalty = 1.0f;
    cm_sampler *s = make(p, N);
    memcpy(l, base, sizeof l);
    CHECK(cm_sampler_sample(s, l, NULL) == 0);
    cm_sampler_accept(s, 0);
    memcpy(l, base, sizeof l);
    CHECK(cm_sampler_sample(s, l, NULL) == 1);
    cm_sampler_destroy(s);
}

TEST(bad_params) {
    cm_sampler *s = NULL;
    cm_sampler_params p = cm_sampler_defaults();
    CHECK(cm_sampler_create(&p, 0, &s) == CM_EINVAL && !s);
    p.top_p = 0;
    CHECK(cm_sampler_create(&p, 10, &s) == CM_EINVAL && !s);
    p = cm_sampler_defaults();
    p.repeat_penalty = 0;
    CHECK(cm_sampler_create(&p, 10, &s) == CM_EINVAL && !s);
    p = cm_sampler_defaults();
    p.repeat_last_n = -2;
    CHECK(cm_sampler_create(&p, 10, &s) == CM_EINVAL && !s);
    p = cm_sampler_defaults();
    p.min_p = 1.5f;
    CHECK(cm_sampler_create(&p, 10, &s) == CM_EINVAL && !s);
}

TEST(masked_logits) {
    /* -inf logits are never drawn; all but one masked leaves that one */
    enum { N = 64 };
    float l[N];
    cm_sampler *s = make(plain(1.0f, 2), N);
    for (int d = 0; d < 100; d++) {
        for (int i = 0; i < N; i++) l[i] = -INFINITY;
        l[37] = -5.0f;
        l[12] = -5.0f;
        int32_t t = cm_sampler_sample(s, l, NULL);
        CHECK(t == 37 || t == 12);
    }
    cm_sampler_destroy(s);
}

int main(void) {
    RUN(defaults);
    RUN(greedy_is_argmax);
    RUN(seeded_reproducible);
    RUN(top_k_1_is_greedy);
    RUN(top_k);
    RUN(top_p);
    RUN(top_p_large);
    RUN(min_p);
    RUN(temperature);
    RUN(repeat_penalty);
    RUN(presence_frequency);
    RUN(penalty_changes_choice);
    RUN(bad_params);
    RUN(masked_logits);
    return test_summary();
}
