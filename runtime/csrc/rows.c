/* The small row operations of a decode step on CPU: one call where torch runs several aten ops, each
   costing more to dispatch than to compute on a few rows. fp32; called through ctypes by
   runtime/ops/native_rows.py, which hands over only contiguous rows (the strides below say which
   dimensions may be strided). Built with quant.c into one library by runtime/native.py. */
#include <math.h>
#include <stdint.h>

/* out[r] = s[r] * (1 / sqrt(mean(s[r]^2) + eps)) * w with s = x (+ h): torch's rms_norm, the sum of
   squares in another order. With h, the sum s is written to `sum` too (a residual add before it). */
void gs_rms_norm(const float *x, const float *h, int64_t rows, int64_t dim, const float *w, float eps, float *sum,
                 float *out) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float *sr = h ? sum + r * dim : (float *)xr;
        if (h) {
            const float *hr = h + r * dim;
            for (int64_t i = 0; i < dim; i++) sr[i] = xr[i] + hr[i];
        }
        float ss = 0.0f;
        #pragma omp simd reduction(+:ss)
        for (int64_t i = 0; i < dim; i++) ss += sr[i] * sr[i];
        const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
        float *or = out + r * dim;
        for (int64_t i = 0; i < dim; i++) or[i] = (sr[i] * inv) * w[i];
    }
}

/* Rotary embedding, half layout, as runtime/ops/rotary.py computes it: for i < R/2
       out[i] = x[i] * cos[i] + x[i + R/2] * -sin[i],   out[i + R/2] = x[i + R/2] * cos[i + R/2] + x[i] * sin[i + R/2]
   and out[i] = x[i] for i >= R (partial rotary). x [B, H, S, D] at element strides (sb, sh, ss), unit
   along D; cos, sin [B, S, R] contiguous, batch stride csb (0: one table for every row); out [B, H, S, D]
   contiguous. Products and sums rounded one at a time (no fused multiply-add), so the result is torch's
   to the bit. */
__attribute__((optimize("fp-contract=off")))
void gs_rope(const float *x, int64_t B, int64_t H, int64_t S, int64_t D, int64_t sb, int64_t sh, int64_t ss,
             const float *cos, const float *sin, int64_t R, int64_t csb, float *out) {
    const int64_t half = R / 2;
    for (int64_t b = 0; b < B; b++)
        for (int64_t hh = 0; hh < H; hh++)
            for (int64_t s = 0; s < S; s++) {
                const float *xr = x + b * sb + hh * sh + s * ss;
                const float *c = cos + b * csb + s * R, *sn = sin + b * csb + s * R;
                float *o = out + ((b * H + hh) * S + s) * D;
                for (int64_t i = 0; i < half; i++) {
                    const float a = xr[i] * c[i], m = xr[i + half] * -sn[i];
                    o[i] = a + m;
                }
                for (int64_t i = half; i < R; i++) {
                    const float a = xr[i] * c[i], m = xr[i - half] * sn[i];
                    o[i] = a + m;
                }
                for (int64_t i = R; i < D; i++) o[i] = xr[i];
            }
}
