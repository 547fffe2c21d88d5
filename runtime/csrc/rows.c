/* The small row operations of a decode step on CPU: one call where torch runs several aten ops, each
   costing more to dispatch than to compute on a few rows. fp32 and bf16 (each function twice, _f32
   and _bf16: loads widen to fp32, arithmetic is fp32, and where torch rounds an intermediate result
   to bf16 so do these, round to nearest even); called through ctypes by
   runtime/ops/native_rows.py, which hands over only contiguous rows (the strides below say which
   dimensions may be strided). Built with matmul.c into one library by runtime/native.py. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"
#include "kernels.h"

typedef uint16_t bf16;
static inline float ld_f32(const float *p, int64_t i) { return p[i]; }
static inline float ld_bf16(const bf16 *p, int64_t i) { return bf16_to_float(p[i]); }
static inline void st_f32(float *p, int64_t i, float v) { p[i] = v; }
static inline void st_bf16(bf16 *p, int64_t i, float v) { p[i] = float_to_bf16(v); }
static inline float rnd_f32(float v) { return v; }
static inline float rnd_bf16(float v) { return bf16_to_float(float_to_bf16(v)); }

/* out[r] = rnd(x[r] * (1 / sqrt(mean(x[r]^2) + eps))) * w: torch's rms_norm (fp32: F.rms_norm; bf16:
   runtime/ops/norms.py, statistics in fp32, the normalised row rounded, then times the weight), the
   sum of squares in another order. */
#define RMS_NORM(NAME, T, LD, ST, RND) \
void NAME(const T *x, int64_t rows, int64_t dim, const T *w, float eps, T *out) { \
    for (int64_t r = 0; r < rows; r++) { \
        const T *xr = x + r * dim; \
        float ss = 0.0f; \
        _Pragma("omp simd reduction(+:ss)") \
        for (int64_t i = 0; i < dim; i++) ss += LD(xr, i) * LD(xr, i); \
        const float inv = 1.0f / sqrtf(ss / (float)dim + eps); \
        T *o = out + r * dim; \
        for (int64_t i = 0; i < dim; i++) ST(o, i, LD(w, i) * RND(LD(xr, i) * inv)); \
    } \
}
RMS_NORM(gs_rms_norm_f32, float, ld_f32, st_f32, rnd_f32)
RMS_NORM(gs_rms_norm_bf16, bf16, ld_bf16, st_bf16, rnd_bf16)

/* Rotary embedding, half layout, as runtime/ops/rotary.py computes it: for i < R/2
       out[i] = x[i] * cos[i] + x[i + R/2] * -sin[i],   out[i + R/2] = x[i + R/2] * cos[i + R/2] + x[i] * sin[i + R/2]
   and out[i] = x[i] for i >= R (partial rotary). x [B, H, S, D] at element strides (sb, sh, ss), unit
   along D; cos, sin [B, S, R] contiguous, batch stride csb (0: one table for every row); out [B, H, S, D]
   contiguous. Each product and the sum rounded as torch rounds them (no fused multiply-add), so the
   result is torch's to the bit. */
#define ROPE(NAME, T, LD, ST, RND) \
__attribute__((optimize("fp-contract=off"))) \
void NAME(const T *x, int64_t B, int64_t H, int64_t S, int64_t D, int64_t sb, int64_t sh, int64_t ss, \
          const T *cos, const T *sin, int64_t R, int64_t csb, T *out) { \
    const int64_t half = R / 2; \
    for (int64_t b = 0; b < B; b++) \
        for (int64_t hh = 0; hh < H; hh++) \
            for (int64_t s = 0; s < S; s++) { \
                const T *xr = x + b * sb + hh * sh + s * ss; \
                const T *c = cos + b * csb + s * R, *sn = sin + b * csb + s * R; \
                T *o = out + ((b * H + hh) * S + s) * D; \
                for (int64_t i = 0; i < half; i++) \
                    ST(o, i, RND(LD(xr, i) * LD(c, i)) + RND(LD(xr, i + half) * -LD(sn, i))); \
                for (int64_t i = half; i < R; i++) \
                    ST(o, i, RND(LD(xr, i) * LD(c, i)) + RND(LD(xr, i - half) * LD(sn, i))); \
                for (int64_t i = R; i < D; i++) o[i] = xr[i]; \
            } \
}
ROPE(gs_rope_f32, float, ld_f32, st_f32, rnd_f32)
ROPE(gs_rope_bf16, bf16, ld_bf16, st_bf16, rnd_bf16)

/* exp(x) for the scores of a softmax less their maximum (x <= 0): Cephes' expf, within 2 ulp, written
   so the loops calling it vectorise (no libm call). Below -87 it returns exp(-87) ~ 1.6e-38, which no
   sum of probabilities near 1 can tell from 0. */
static inline float softmax_exp(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float n = __builtin_rintf(x * 1.44269504088896341f);
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } two = { .i = ((int32_t)n + 127) << 23 };
    return p * two.f;
}

/* tanh(x) as (1 - e) / (1 + e) with e = exp(-2|x|) by softmax_exp (no libm call): within ~1e-7 of
   it absolutely (near 0 the relative error grows, the absolute one does not), which is what a score
   capped by softcap * tanh(score / softcap) needs. */
static inline float capped_tanh(float x) {
    const float e = softmax_exp(-2.0f * fabsf(x)), t = (1.0f - e) / (1.0f + e);
    return x < 0.0f ? -t : t;
}

/* x / (1 + exp(-x)), the formula of torch's silu, in fp32 (bf16: widened, the result rounded once, as
   torch's bf16 silu). exp as softmax_exp (Cephes, within 2 ulp) over its whole range: below -87 it is
   below 1.6e-38, which 1 + it cannot tell from 1; from 88.3 on it is taken as infinite (x / inf: -0,
   where torch gives -0 from -88.73 on and a value below 1e-36 between). So within a few ulp of torch's
   silu, NaN and infinities included (silu(-inf) is NaN, as torch's -inf / inf); the decode step takes
   it in eager and replayed steps alike, so both compute the same bits. */
#define SILU(NAME, T, LD, ST) \
void NAME(const T *x, T *out, int64_t n) { \
    _Pragma("omp simd") \
    for (int64_t i = 0; i < n; i++) { \
        const float v = LD(x, i), e = -v >= 88.3f ? INFINITY : softmax_exp(-v); \
        ST(out, i, v / (1.0f + e)); \
    } \
}
SILU(gs_silu_f32, float, ld_f32, st_f32)
SILU(gs_silu_bf16, bf16, ld_bf16, st_bf16)

/* One decode step of attention with its KV cache: the new key and value (one position per row) are
   written at position `past` of the caches, then each query head attends to the L = past + 1 cached
   positions of its key-value head (grouped-query: H / Hkv query heads share one).
     q [B, H, 1, D] at strides (qsb, qsh), unit along D; k, v [B, Hkv, 1, D] likewise;
     kc, vc [B, Hkv, cap, D] contiguous; mask: NULL, or bytes [B, L] (1: a key the query may see) at
     batch stride msb (0: one row for all); out [B, 1, H, D] contiguous.
   window > 0: only the last `window` positions are visible (a sliding window: keys before L - window
   are never read); softcap > 0: scores become softcap * tanh(scores / softcap) before the softmax;
   bias (NULL: none): added to the scores after that, key j of head h of row b at
   bias[b * bsb + h * bsh + j * bsk] (a relative position bias laid over the cache's positions).
   Scores q.k * scale, softmax over the visible keys (all hidden: the output row is 0), then the
   probability-weighted sum of values, in fp32; bf16 tensors are widened as read, the output rounded. */
#define ATTEND_STEP(NAME, T, LD, ST) \
void NAME(const T *q, int64_t qsb, int64_t qsh, const T *k, int64_t ksb, int64_t ksh, \
          const T *v, int64_t vsb, int64_t vsh, T *kc, T *vc, int64_t cap, int64_t past, \
          int64_t B, int64_t H, int64_t Hkv, int64_t D, const uint8_t *mask, int64_t msb, float scale, \
          int64_t window, float softcap, const T *bias, int64_t bsb, int64_t bsh, int64_t bsk, T *out, \
          float *scores, int nt) { \
    const int64_t L = past + 1, group = H / Hkv, first = window > 0 && L > window ? L - window : 0; \
    for (int64_t b = 0; b < B; b++) \
        for (int64_t g = 0; g < Hkv; g++) { \
            T *kd = kc + ((b * Hkv + g) * cap + past) * D, *vd = vc + ((b * Hkv + g) * cap + past) * D; \
            const T *ks = k + b * ksb + g * ksh, *vs = v + b * vsb + g * vsh; \
            for (int64_t d = 0; d < D; d++) { kd[d] = ks[d]; vd[d] = vs[d]; } \
        } \
    /* heads on every thread from a few thousand products on: a decode step finds its cache cold (the \
       weights streamed through since), and two threads wait for it together (26 -> 17 us a layer) */ \
    _Pragma("omp parallel for schedule(static) num_threads(nt) if (B * H * L * D > (1 << 13))") \
    for (int64_t bh = 0; bh < B * H; bh++) { \
        const int64_t b = bh / H, h = bh % H, g = h / group; \
        const T *qv = q + b * qsb + h * qsh; \
        const T *kb = kc + (b * Hkv + g) * cap * D, *vb = vc + (b * Hkv + g) * cap * D; \
        const uint8_t *mrow = mask ? mask + b * msb : NULL; \
        const T *brow = bias ? bias + b * bsb + h * bsh : NULL; \
        float *s = scores + bh * (L + D), top = -INFINITY; \
        for (int64_t j = first; j < L; j++) { \
            float dot = 0.0f; \
            _Pragma("omp simd reduction(+:dot)") \
            for (int64_t d = 0; d < D; d++) dot += LD(qv, d) * LD(kb, j * D + d); \
            s[j] = softcap > 0.0f ? softcap * capped_tanh(dot * scale / softcap) : dot * scale; \
            if (brow) s[j] += LD(brow, j * bsk); \
            if ((!mrow || mrow[j]) && s[j] > top) top = s[j]; \
        } \
        T *o = out + (b * H + h) * D; \
        float *acc = s + L;     /* D floats after this head's scores */ \
        for (int64_t d = 0; d < D; d++) acc[d] = 0.0f; \
        if (top == -INFINITY) { for (int64_t d = 0; d < D; d++) ST(o, d, 0.0f); continue; } \
        float sum = 0.0f; \
        _Pragma("omp simd reduction(+:sum)") \
        for (int64_t j = first; j < L; j++) { \
            const float p = (!mrow || mrow[j]) ? softmax_exp(s[j] - top) : 0.0f; \
            s[j] = p; \
            sum += p; \
        } \
        for (int64_t j = first; j < L; j++) { \
            const float p = s[j]; \
            if (p == 0.0f) continue; \
            _Pragma("omp simd") \
            for (int64_t d = 0; d < D; d++) acc[d] += p * LD(vb, j * D + d); \
        } \
        const float inv = 1.0f / sum; \
        for (int64_t d = 0; d < D; d++) ST(o, d, acc[d] * inv); \
    } \
}
ATTEND_STEP(gs_attend_step_f32, float, ld_f32, st_f32)
ATTEND_STEP(gs_attend_step_bf16, bf16, ld_bf16, st_bf16)

/* out = a OP b, OP + - * for op 0 1 2: aten's add (alpha 1), sub and mul of two tensors, out
   [n0, n1, n2, n3] contiguous, a and b read at element strides (as0..as3), (bs0..bs3), 0 along a
   broadcast dimension (fewer dimensions: leading sizes 1). Each result is one correctly rounded fp32
   operation (bf16: both widened, the operation in fp32, rounded to nearest even, as aten computes
   it), so these are aten's bits. A recorded decode step replays such ops through here
   (runtime/step_capture.py): aten's own call costs ~10 us on a row of a few thousand values, this
   loop well under one. gs_binary_*: the common case, two contiguous tensors of n elements. op 3: a / b. */
#define BINARY(NAME, BROADCAST, T, LD, ST) \
void BROADCAST(const T *a, const T *b, T *out, int op, int64_t n0, int64_t n1, int64_t n2, int64_t n3, \
               int64_t as0, int64_t as1, int64_t as2, int64_t as3, int64_t bs0, int64_t bs1, int64_t bs2, \
               int64_t bs3) { \
    int64_t o = 0; \
    for (int64_t i0 = 0; i0 < n0; i0++) \
        for (int64_t i1 = 0; i1 < n1; i1++) \
            for (int64_t i2 = 0; i2 < n2; i2++) { \
                const T *ar = a + i0 * as0 + i1 * as1 + i2 * as2, *br = b + i0 * bs0 + i1 * bs1 + i2 * bs2; \
                for (int64_t i3 = 0; i3 < n3; i3++, o++) { \
                    const float x = LD(ar, i3 * as3), y = LD(br, i3 * bs3); \
                    ST(out, o, op == 0 ? x + y : op == 1 ? x - y : op == 2 ? x * y : x / y); \
                } \
            } \
} \
void NAME(const T *a, const T *b, T *out, int64_t n, int op) { \
    BROADCAST(a, b, out, op, 1, 1, 1, n, 0, 0, 0, 1, 0, 0, 0, 1); \
}
BINARY(gs_binary_f32, gs_binary_broadcast_f32, float, ld_f32, st_f32)
BINARY(gs_binary_bf16, gs_binary_broadcast_bf16, bf16, ld_bf16, st_bf16)

/* out[i] = start + i for i < n: the positions of a step's tokens, from the KV cache's filled length
   (a recorded step's kernel argument that moves with the sequence: runtime.native.Position). */
void gs_positions(int64_t *out, int64_t start, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = start + i;
}

/* Copies a replayed decode step makes in C where aten's call costs ~10-90 us (runtime/step_capture.py):
   each gives aten's bits. out[i] = table[idx[i]] (aten's embedding: rows of `row_bytes` bytes); 1 when
   an index is outside [0, rows) (nothing written for it or after it), else 0. */
int gs_gather_rows(const uint8_t *table, int64_t rows, int64_t row_bytes, const int64_t *idx, int64_t n,
                   uint8_t *out) {
    for (int64_t i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= rows) return 1;
        memcpy(out + i * row_bytes, table + idx[i] * row_bytes, (size_t)row_bytes);
    }
    return 0;
}

/* torch.cat of two contiguous tensors: `rows` times a's next `a_bytes`, then b's next `b_bytes` */
void gs_concat2(const uint8_t *a, int64_t a_bytes, const uint8_t *b, int64_t b_bytes, int64_t rows, uint8_t *out) {
    for (int64_t r = 0; r < rows; r++) {
        memcpy(out, a + r * a_bytes, (size_t)a_bytes);
        memcpy(out + a_bytes, b + r * b_bytes, (size_t)b_bytes);
        out += a_bytes + b_bytes;
    }
}

/* int64 -> fp32, rounded to nearest even (C's conversion, as aten's) */
void gs_i64_to_f32(const int64_t *x, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = (float)x[i];
}

/* n bytes of zeros (aten's zeros_like of a float or integer tensor) */
void gs_zero_bytes(uint8_t *out, int64_t n) {
    memset(out, 0, (size_t)n);
}

/* out[r] = the index of the first largest value of row r of x [rows, n] (n > 0), a NaN counting as
   larger than any number (the first NaN): torch.argmax's answer, ties included. The greedy pick of a
   decode step over a vocabulary, where aten's reduction takes ~50 us a row of 32,000. */
void gs_argmax_f32(const float *x, int64_t rows, int64_t n, int64_t *out) {
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * n;
        float top = -INFINITY;
        int nan = 0;
        _Pragma("omp simd reduction(max:top) reduction(|:nan)")
        for (int64_t i = 0; i < n; i++) {
            top = row[i] > top ? row[i] : top;
            nan |= row[i] != row[i];
        }
        int64_t at = 0;
        if (nan) {
            while (row[at] == row[at]) at++;
        } else {
            /* the first block of 64 holding top (a vector compare each), then its first hit */
            for (; at + 64 <= n; at += 64) {
                int hit = 0;
                _Pragma("omp simd reduction(|:hit)")
                for (int64_t i = at; i < at + 64; i++) hit |= row[i] == top;
                if (hit) break;
            }
            while (row[at] != top) at++;      /* top is a value of the row (-inf when all are) */
        }
        out[r] = at;
    }
}

/* The few-value reductions of a mixture of experts' router, which a decode step runs once a layer on
   a row of a few dozen values, where aten's call costs ~25 us. fp32, contiguous. The model's ops call
   them in eager and replayed steps alike, so both compute the same bits. */

/* out = softmax of each row of x [rows, n]: exp(x - max) (softmax_exp, within 2 ulp) over their sum,
   each divided (one rounding). A row holding NaN, or +inf, or only -inf, gives NaN as torch's. */
void gs_softmax_f32(const float *x, float *out, int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * n;
        float *o = out + r * n;
        float top = -INFINITY, sum = 0.0f;
        int nan = 0;
        _Pragma("omp simd reduction(max:top) reduction(|:nan)")
        for (int64_t i = 0; i < n; i++) {
            top = row[i] > top ? row[i] : top;
            nan |= row[i] != row[i];
        }
        if (nan || top == INFINITY || top == -INFINITY) {
            for (int64_t i = 0; i < n; i++) o[i] = NAN;
            continue;
        }
        _Pragma("omp simd reduction(+:sum)")
        for (int64_t i = 0; i < n; i++) {
            const float d = row[i] - top;
            o[i] = d < -87.0f ? 0.0f : softmax_exp(d);
            sum += o[i];
        }
        _Pragma("omp simd")
        for (int64_t i = 0; i < n; i++) o[i] = o[i] / sum;
    }
}

/* The k largest values of each row of x [rows, n] (k <= n), largest first, a NaN counting as larger
   than any number; among equal values the lower index first. values [rows, k], indices [rows, k]. */
void gs_topk_f32(const float *x, int64_t rows, int64_t n, int64_t k, float *values, int64_t *indices) {
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * n;
        float *v = values + r * k;
        int64_t *ix = indices + r * k, have = 0;
        for (int64_t i = 0; i < n; i++) {
            const float c = row[i];
            /* insertion into the sorted first `have`: c goes after every kept value not below it */
            int64_t at = have;
            while (at > 0) {
                const float p = v[at - 1];
                const int before = c != c ? p != p : (p != p || p >= c);   /* p stays ahead of c */
                if (before) break;
                at--;
            }
            if (at >= k) continue;
            for (int64_t j = (have < k ? have : k - 1); j > at; j--) { v[j] = v[j - 1]; ix[j] = ix[j - 1]; }
            v[at] = c;
            ix[at] = i;
            if (have < k) have++;
        }
    }
}

/* out[o, i] = the sum over j of x[o, j, i], x [outer, n, inner] contiguous: in j's order, or along the
   last dim (inner 1) in vector lanes. */
void gs_sum_f32(const float *x, float *out, int64_t outer, int64_t n, int64_t inner) {
    if (inner == 1) {       /* along the last dim: each row's sum in vector lanes */
        for (int64_t o = 0; o < outer; o++) {
            const float *row = x + o * n;
            float s = 0.0f;
            _Pragma("omp simd reduction(+:s)")
            for (int64_t j = 0; j < n; j++) s += row[j];
            out[o] = s;
        }
        return;
    }
    for (int64_t o = 0; o < outer; o++) {
        float *y = out + o * inner;
        const float *base = x + o * n * inner;
        for (int64_t i = 0; i < inner; i++) y[i] = 0.0f;
        for (int64_t j = 0; j < n; j++) {
            const float *xr = base + j * inner;
            _Pragma("omp simd")
            for (int64_t i = 0; i < inner; i++) y[i] += xr[i];
        }
    }
}
