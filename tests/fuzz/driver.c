/* driver.c - runs a libFuzzer-style target without libFuzzer: replays the
 * files named on the command line, then feeds random and mutated inputs
 * until -max_total_time=SECONDS (default 10) or -runs=N is reached. Used for
 * gcc builds and CI; a clang build with -DCELLM_FUZZ=ON gets real
 * coverage-guided fuzzing from the same target. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Optional: a target may provide seeds (well-formed inputs) to mutate. */
__attribute__((weak)) size_t cm_fuzz_seed(int i, uint8_t *buf, size_t cap);

static uint64_t rng_state = 0x12345678abcdefull;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "fuzz: cannot open %s\n", path);
        return;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
    size_t got = fread(buf, 1, (size_t)(n > 0 ? n : 0), f);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, got);
    free(buf);
}

int main(int argc, char **argv) {
    double max_time = 10;
    long runs = -1;
    for (int i = 1; i < argc; i++) {
        if (!strncmp(argv[i], "-max_total_time=", 16))
            max_time = atof(argv[i] + 16);
        else if (!strncmp(argv[i], "-runs=", 6))
            runs = atol(argv[i] + 6);
        else if (argv[i][0] != '-')
            run_file(argv[i]);
    }
    enum { CAP = 1 << 16 };
    static uint8_t seed[CAP], buf[CAP];
    size_t n_seeds = 0;
    while (cm_fuzz_seed && cm_fuzz_seed((int)n_seeds, seed, CAP) > 0) n_seeds++;
    clock_t start = clock();
    long done = 0;
    while ((runs < 0 || done < runs) && (double)(clock() - start) / CLOCKS_PER_SEC < max_time) {
        size_t n;
        if (n_seeds && (rnd() & 3)) {
            n = cm_fuzz_seed((int)(rnd() % n_seeds), buf, CAP);
            int muts = 1 + (int)(rnd() % 8);
            for (int m = 0; m < muts && n; m++) {
                switch (rnd() % 4) {
                case 0: buf[rnd() % n] ^= (uint8_t)(1u << (rnd() % 8)); break;
                case 1: buf[rnd() % n] = (uint8_t)rnd(); break;
                case 2: n = rnd() % n; break; /* truncate */
                default: {                   /* set a byte to an extreme value */
                    static const uint8_t ext[] = {0, 0xff, 0x7f, 0x80};
                    buf[rnd() % n] = ext[rnd() % 4];
                }
                }
            }
        } else {
            n = rnd() % 512;
            for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)rnd();
        }
        /* Hand the target an exact-size copy so ASan sees reads past the end. */
        uint8_t *exact = malloc(n ? n : 1);
        memcpy(exact, buf, n);
        LLVMFuzzerTestOneInput(exact, n);
        free(exact);
        done++;
    }
    printf("fuzz: %ld inputs, no crash\n", done);
    return 0;
}
