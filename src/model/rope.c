/* rope.c - rotary position embedding.
 *
 * Pair i (0 <= i < rope_dim/2) turns by angle pos * freq[i], where
 * freq[i] = base^(-2i/rope_dim) / factor[i]; factor is 1 without scaling,
 * the rope_freqs.weight tensor when the file has one, or the Llama 3.1
 * formula from metadata. Layouts (as llama.cpp assigns them per arch):
 *   normal: pairs are (x[2i], x[2i+1])
 *   NeoX:   pairs are (x[i], x[i + rope_dim/2])
 * Dimensions past rope_dim pass through unchanged. Angles are computed in
 * double so that long positions keep their precision. */
#include <math.h>

#include "model/model_internal.h"

float cm_rope_llama3_factor(const cm_hparams *hp, int i) {
    /* Wavelengths longer than the original context are slowed by `factor`,
     * shorter than orig/high_freq_factor kept, and the band between them
     * blended smoothly (Llama 3.1's published formula). */
    double freq = pow((double)hp->rope_freq_base, -2.0 * i / hp->rope_dim);
    double wavelen = 2.0 * M_PI / freq;
    double orig = hp->rope_orig_ctx;
    double low_wl = orig / hp->rope_low_freq_factor;
    double high_wl = orig / hp->rope_high_freq_factor;
    if (wavelen < high_wl) return 1.0f;
    if (wavelen > low_wl) return hp->rope_scale_factor;
    double smooth = (orig / wavelen - hp->rope_low_freq_factor) / (hp->rope_high_freq_factor - hp->rope_low_freq_factor);
    return (float)(1.0 / ((1.0 - smooth) / hp->rope_scale_factor + smooth));
}

void cm_rope_freqs_default(const cm_hparams *hp, float *freq) {
    for (int i = 0; i < hp->rope_dim / 2; i++) {
        double f = pow((double)hp->rope_freq_base, -2.0 * i / hp->rope_dim);
        if (hp->rope_scale_factor > 0) f /= cm_rope_llama3_factor(hp, i);
        freq[i] = (float)f;
    }
}

void cm_rope_angles(const cm_hparams *hp, const float *freq, int pos, float *cs) {
    for (int i = 0; i < hp->rope_dim / 2; i++) {
        double theta = (double)pos * freq[i];
        cs[2 * i] = (float)cos(theta);
        cs[2 * i + 1] = (float)sin(theta);
    }
}

void cm_rope_apply(const cm_hparams *hp, const float *cs, float *x) {
    int half = hp->rope_dim / 2;
    for (int i = 0; i < half; i++) {
        float c = cs[2 * i], s = cs[2 * i + 1];
        int i0 = hp->rope_neox ? i : 2 * i;
        int i1 = hp->rope_neox ? i + half : 2 * i + 1;
        float a = x[i0], b = x[i1];
        x[i0] = a * c - b * s;
        x[i1] = a * s + b * c;
    }
}
