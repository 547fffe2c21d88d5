/* Matrix products for a few activation rows on CPU, y[m, n] = sum_k x[m, k] * w[n, k], streaming the
weights once per 4 rows: float weights (fp32, bf16: gs_f32_mm, gs_bf16_mm) and weight-only quantized
ones, where w = dequant(q).

Built at first use by runtime/native.py (cc -O3 -march=native -fopenmp) and called through
ctypes. Written with GCC vector extensions, so one source becomes AVX-512 code here and AVX2/NEON
code elsewhere. Activations and accumulation are fp32; the caller converts bf16/fp16 activations.
Threads: OpenMP, as many as the caller passes (torch.get_num_threads()). Built with gcc, the library
needs libgomp.so.1, which resolves to the copy torch has already loaded: one thread pool for both.

With int8 activations (schemes `w8a8`, `w4a8`; gs_*a8_mm below) each activation row is first quantized
in blocks of 32 columns, as llama.cpp's q8_0 does, and the products are integer dot products (AVX-512
VNNI, AVX-VNNI or AVX2's maddubs): one byte per weight read and no conversion of weights to float.

Formats (runtime/quant/schemes.py defines them):
  int8: q int8 [N, K], scale fp32 [N]:            w = q * scale[n]
  int4: q uint8 [N, K/2] (byte j: k = 2j in the low nibble, k = 2j + 1 in the high one),
        scale fp16 [N, K/group], zero uint8 [N, K/group] (NULL: symmetric, zero 8):
        w = (q - zero[n, k / group]) * scale[n, k / group]
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "kernels.h"
/* A vector of 16 fp32 lanes: one zmm (AVX-512), two ymm (AVX2), or plain lanes the compiler may
   vectorise. The kernels below only use these operations. */
#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
typedef __m512 V;
static inline V v_zero(void) { return _mm512_setzero_ps(); }
static inline V v_load(const float *p) { return _mm512_loadu_ps(p); }
static inline V v_fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
static inline float v_sum(V a) { return _mm512_reduce_add_ps(a); }
static inline V v_q8(const int8_t *p) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p))); }
/* bf16 is the upper half of an fp32: widen and shift */
static inline V v_bf16(const uint16_t *p) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16)); }
/* int4: the group's 16 dequantised values (q - zero) * scale as a table; a nibble is an index. */
typedef __m512 Q4;
static inline Q4 q4_group(float s, float z) {
    return _mm512_mul_ps(_mm512_sub_ps(_mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                       _mm512_set1_ps(z)), _mm512_set1_ps(s));
}
static inline void v_q4(Q4 t, const uint8_t *p, V *lo, V *hi) {
    __m128i b = _mm_loadu_si128((const __m128i *)p), mask = _mm_set1_epi8(15);
    *lo = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_and_si128(b, mask)), t);
    *hi = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), mask)), t);
}
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
typedef struct { __m256 a, b; } V;
static inline V v_zero(void) { return (V){_mm256_setzero_ps(), _mm256_setzero_ps()}; }
static inline V v_load(const float *p) { return (V){_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
static inline V v_fma(V x, V y, V c) { return (V){_mm256_fmadd_ps(x.a, y.a, c.a), _mm256_fmadd_ps(x.b, y.b, c.b)}; }
static inline float v_sum(V x) {
    __m256 s = _mm256_add_ps(x.a, x.b);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}
static inline V v_q8(const int8_t *p) {
    __m128i b = _mm_loadu_si128((const __m128i *)p);
    return (V){_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)))};
}
static inline __m256 bf16x8(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
static inline V v_bf16(const uint16_t *p) {
    return (V){bf16x8(_mm_loadu_si128((const __m128i *)p)), bf16x8(_mm_loadu_si128((const __m128i *)(p + 8)))};
}
typedef struct { __m256 s, z; } Q4;
static inline Q4 q4_group(float s, float z) { return (Q4){_mm256_set1_ps(s), _mm256_set1_ps(z)}; }
static inline __m256 q4_deq(Q4 t, __m128i q) { return _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q)), t.z), t.s); }
static inline void v_q4(Q4 t, const uint8_t *p, V *lo, V *hi) {
    __m128i b = _mm_loadu_si128((const __m128i *)p), mask = _mm_set1_epi8(15);
    __m128i l = _mm_and_si128(b, mask), h = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
    *lo = (V){q4_deq(t, l), q4_deq(t, _mm_srli_si128(l, 8))};
    *hi = (V){q4_deq(t, h), q4_deq(t, _mm_srli_si128(h, 8))};
}
#else
typedef struct { float v[16]; } V;
static inline V v_zero(void) { V r; for (int i = 0; i < 16; i++) r.v[i] = 0.0f; return r; }
static inline V v_load(const float *p) { V r; memcpy(r.v, p, sizeof r.v); return r; }
static inline V v_fma(V x, V y, V c) { for (int i = 0; i < 16; i++) c.v[i] += x.v[i] * y.v[i]; return c; }
static inline float v_sum(V x) { float s = 0.0f; for (int i = 0; i < 16; i++) s += x.v[i]; return s; }
static inline V v_q8(const int8_t *p) { V r; for (int i = 0; i < 16; i++) r.v[i] = (float)p[i]; return r; }
static inline V v_bf16(const uint16_t *p) {
    V r;
    for (int i = 0; i < 16; i++) r.v[i] = bf16_to_float(p[i]);
    return r;
}
typedef struct { float s, z; } Q4;
static inline Q4 q4_group(float s, float z) { return (Q4){s, z}; }
static inline void v_q4(Q4 t, const uint8_t *p, V *lo, V *hi) {
    for (int i = 0; i < 16; i++) {
        lo->v[i] = ((float)(p[i] & 15) - t.z) * t.s;
        hi->v[i] = ((float)(p[i] >> 4) - t.z) * t.s;
    }
}
#endif

#define INLINE static inline __attribute__((always_inline))
/* Weight reads are prefetched this far ahead: with the conversions' work per byte the hardware alone
   keeps too few reads in flight to stream at the memory's speed (bf16: 12 -> 17 GB/s from memory).
   4 KiB measured best in a whole decode step (tools.bench's model, bf16 linears 12.7 -> 10.3 ms a step,
   w4a8 step 4.6-5.8 -> 4.1-4.4 ms; 1 and 2 KiB slower, 8 KiB the same). */
#define PREFETCH_BYTES 4096
#define ROWS 4   /* activation rows per pass over a weight row (the weight row stays in L1) */
/* rows of the bf16 product's wide tiles: AVX-512's 32 registers hold their 16 accumulators */
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define WIDE_ROWS 8
#else
#define WIDE_ROWS ROWS
#endif

#if defined(__F16C__)
static inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }
#else
static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) { bits = sign; }
        else {  /* subnormal: renormalise */
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f; memcpy(&f, &bits, sizeof f); return f;
}
#endif

int gs_abi_version(void) { return 18; }   /* runtime/native.py ABI_VERSION */

/* ---------------------------------------------------------------- int8, per output channel */
/* A tile: R activation rows against NB weight rows. One FMA chain is latency-bound (4 cycles), so
   R * NB independent accumulators are kept in flight; x rows are re-read from L1 for each weight row. */
#define NB_FOR(R) ((R) == 1 ? 4 : (R) == 2 ? 2 : 1)

INLINE void q8_tile(const int R, const int NB, const float *x, int64_t K, int64_t ldx, const int8_t *q,
                    const float *scale, float *y, int64_t ldy) {
    V acc[ROWS][4];
    for (int m = 0; m < R; m++)
        for (int j = 0; j < NB; j++) acc[m][j] = v_zero();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        for (int j = 0; j < NB; j++) {
            __builtin_prefetch(q + j * K + k + PREFETCH_BYTES);
            V w = v_q8(q + j * K + k);
            for (int m = 0; m < R; m++) acc[m][j] = v_fma(w, v_load(x + m * ldx + k), acc[m][j]);
        }
    }
    for (int m = 0; m < R; m++) {
        for (int j = 0; j < NB; j++) {
            float s = v_sum(acc[m][j]);
            for (int64_t t = k; t < K; t++) s += (float)q[j * K + t] * x[m * ldx + t];
            y[m * ldy + j] = s * scale[j];
        }
    }
}

/* The loop both products share: blocks of ROWS activation rows against tiles of NB weight rows,
   each dispatched to a tile of constant sizes (the accumulators stay in registers).
   TILE(R, B, n) computes activation rows m0..m0+R against weight rows n..n+B. */
#define FOR_TILES(TILE) \
    const int64_t rows0 = M < ROWS ? M : ROWS, NB = NB_FOR(rows0); \
    _Pragma("omp parallel for schedule(static) num_threads(nt)") \
    for (int64_t n0 = 0; n0 < N; n0 += NB) { \
        const int64_t nb = N - n0 < NB ? N - n0 : NB; \
        for (int64_t m0 = 0; m0 < M; m0 += ROWS) { \
            const int64_t rows = M - m0 < ROWS ? M - m0 : ROWS; \
            if (rows < rows0) {  /* the last, shorter block of rows: one weight row at a time */ \
                for (int64_t j = 0; j < nb; j++) { \
                    switch (rows) { case 3: TILE(3, 1, n0 + j); break; case 2: TILE(2, 1, n0 + j); break; \
                                    default: TILE(1, 1, n0 + j); break; } \
                } \
            } else { \
                switch (rows * 8 + nb) { \
                case 1 * 8 + 4: TILE(1, 4, n0); break; case 1 * 8 + 3: TILE(1, 3, n0); break; \
                case 1 * 8 + 2: TILE(1, 2, n0); break; case 2 * 8 + 2: TILE(2, 2, n0); break; \
                case 2 * 8 + 1: TILE(2, 1, n0); break; case 3 * 8 + 1: TILE(3, 1, n0); break; \
                case 4 * 8 + 1: TILE(4, 1, n0); break; default: TILE(1, 1, n0); break; } \
            } \
        } \
    }

int gs_q8_mm(const float *x, int64_t M, int64_t K, int64_t ldx, const int8_t *q, const float *scale,
             int64_t N, float *y, int64_t ldy, int nt) {
#define Q8(R, B, n) q8_tile(R, B, x + m0 * ldx, K, ldx, q + (n) * K, scale + (n), y + m0 * ldy + (n), ldy)
    FOR_TILES(Q8)
#undef Q8
    return 0;
}

void gs_q8_dequant(const int8_t *q, const float *scale, int64_t N, int64_t K, float *out, int nt) {
    #pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t n = 0; n < N; n++) {
        const float s = scale[n];
        for (int64_t k = 0; k < K; k++) out[n * K + k] = (float)q[n * K + k] * s;
    }
}

/* ---------------------------------------------------------------- float weights: fp32, bf16 */

#define FLOAT_TILE(NAME, T, LOAD, SCALAR) \
INLINE void NAME(const int R, const int NB, const float *x, int64_t K, int64_t ldx, const T *w, float *y, int64_t ldy) { \
    V acc[WIDE_ROWS][4]; \
    for (int m = 0; m < R; m++) \
        for (int j = 0; j < NB; j++) acc[m][j] = v_zero(); \
    int64_t k = 0; \
    for (; k + 16 <= K; k += 16) { \
        _Pragma("GCC unroll 4") \
        for (int j = 0; j < NB; j++) { \
            __builtin_prefetch((const char *)(w + j * K + k) + PREFETCH_BYTES); \
            V wv = LOAD(w + j * K + k); \
            _Pragma("GCC unroll 8") \
            for (int m = 0; m < R; m++) acc[m][j] = v_fma(wv, v_load(x + m * ldx + k), acc[m][j]); \
        } \
    } \
    for (int m = 0; m < R; m++) { \
        for (int j = 0; j < NB; j++) { \
            float s = v_sum(acc[m][j]); \
            for (int64_t t = k; t < K; t++) s += SCALAR(w[j * K + t]) * x[m * ldx + t]; \
            y[m * ldy + j] = s; \
        } \
    } \
}
#define F32_SCALAR(v) (v)
FLOAT_TILE(f32_tile, float, v_load, F32_SCALAR)
FLOAT_TILE(bf16_tile, uint16_t, v_bf16, bf16_to_float)

/* Blocks of WIDE_ROWS rows against pairs of weight rows (AVX-512): 16 accumulators, enough FMAs in
   flight for both of AVX-512's FMA ports (a 4 x 1 tile keeps one busy); each weight pair, widened
   once per block, stays in L1 across the blocks, so the weights are read once. Leaves x, y and M at
   the rows after the blocks (fewer than WIDE_ROWS), which FOR_TILES computes. A row's sums are
   accumulated in the same order in every tile, so the blocking changes no bit. */
#if WIDE_ROWS > ROWS
#define WIDE_BLOCKS(TILE, w) do { \
    const int64_t wide = M / WIDE_ROWS * WIDE_ROWS; \
    if (wide) { \
        _Pragma("omp parallel for schedule(static) num_threads(nt)") \
        for (int64_t n0 = 0; n0 < N; n0 += 2) \
            for (int64_t m0 = 0; m0 < wide; m0 += WIDE_ROWS) { \
                if (N - n0 >= 2) TILE(WIDE_ROWS, 2, x + m0 * ldx, K, ldx, w + n0 * K, y + m0 * ldy + n0, ldy); \
                else TILE(WIDE_ROWS, 1, x + m0 * ldx, K, ldx, w + n0 * K, y + m0 * ldy + n0, ldy); \
            } \
        x += wide * ldx; \
        y += wide * ldy; \
        M -= wide; \
    } \
} while (0)
#else
#define WIDE_BLOCKS(TILE, w) do { } while (0)
#endif

int gs_f32_mm(const float *x, int64_t M, int64_t K, int64_t ldx, const float *w, int64_t N, float *y, int64_t ldy,
              int nt) {
    WIDE_BLOCKS(f32_tile, w);
#define F32(R, B, n) f32_tile(R, B, x + m0 * ldx, K, ldx, w + (n) * K, y + m0 * ldy + (n), ldy)
    FOR_TILES(F32)
#undef F32
    return 0;
}

static int bf16_mm(const float *x, int64_t M, int64_t K, int64_t ldx, const uint16_t *w, int64_t N, float *y,
                   int64_t ldy, int nt) {
    WIDE_BLOCKS(bf16_tile, w);
#define BF16(R, B, n) bf16_tile(R, B, x + m0 * ldx, K, ldx, w + (n) * K, y + m0 * ldy + (n), ldy)
    FOR_TILES(BF16)
#undef BF16
    return 0;
}

/* torch's bf16 linear for a few rows, bf16 in and out: x widened, products accumulated in fp32, the
   bias (NULL: none) added in fp32, one rounding. x rows ldx apart, y contiguous [M, N].
   0 on success, -1 when the work buffers could not be allocated. */
int gs_bf16_linear(const uint16_t *x, int64_t M, int64_t K, int64_t ldx, const uint16_t *w, const uint16_t *bias,
                   int64_t N, uint16_t *y, int nt) {
    float *xf = malloc(sizeof(float) * (size_t)(M * K)), *yf = malloc(sizeof(float) * (size_t)(M * N));
    if (!xf || !yf) { free(xf); free(yf); return -1; }
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < K; k++) xf[m * K + k] = bf16_to_float(x[m * ldx + k]);
    bf16_mm(xf, M, K, K, w, N, yf, N, nt);
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++)
            y[m * N + n] = float_to_bf16(yf[m * N + n] + (bias ? bf16_to_float(bias[n]) : 0.0f));
    free(xf); free(yf);
    return 0;
}

/* ---------------------------------------------------------------- int4, group-wise */
/* x reordered per 32 columns as [the 16 even ones, the 16 odd ones], the order of the nibbles. */
static void q4_prepare(const float *x, int64_t M, int64_t K, int64_t ldx, float *xr) {
    for (int64_t m = 0; m < M; m++) {
        for (int64_t c = 0; c < K; c += 32) {
            for (int j = 0; j < 16; j++) {
                xr[m * K + c + j] = x[m * ldx + c + 2 * j];
                xr[m * K + c + 16 + j] = x[m * ldx + c + 2 * j + 1];
            }
        }
    }
}

INLINE void q4_tile(const int R, const int NB, const float *xr, int64_t K, int64_t group, const uint8_t *q,
                    const uint16_t *scale, const uint8_t *zero, float *y, int64_t ldy) {
    const int64_t G = K / group;
    V acc[ROWS][4][2];   /* [row][weight row][low / high nibbles] */
    for (int m = 0; m < R; m++)
        for (int j = 0; j < NB; j++) acc[m][j][0] = acc[m][j][1] = v_zero();
    for (int64_t g = 0; g < G; g++) {
        Q4 t[4];
        for (int j = 0; j < NB; j++) t[j] = q4_group(half_to_float(scale[j * G + g]), zero ? (float)zero[j * G + g] : 8.0f);
        for (int64_t c = g * group; c < (g + 1) * group; c += 32) {
            for (int j = 0; j < NB; j++) {
                V lo, hi;
                __builtin_prefetch(q + j * (K / 2) + c / 2 + PREFETCH_BYTES);
                v_q4(t[j], q + j * (K / 2) + c / 2, &lo, &hi);
                for (int m = 0; m < R; m++) {
                    acc[m][j][0] = v_fma(lo, v_load(xr + m * K + c), acc[m][j][0]);
                    acc[m][j][1] = v_fma(hi, v_load(xr + m * K + c + 16), acc[m][j][1]);
                }
            }
        }
    }
    for (int m = 0; m < R; m++)
        for (int j = 0; j < NB; j++) y[m * ldy + j] = v_sum(acc[m][j][0]) + v_sum(acc[m][j][1]);
}

/* 0 on success, -1 when the work buffer could not be allocated. Needs K % group == 0, group % 32 == 0. */
int gs_q4_mm(const float *x, int64_t M, int64_t K, int64_t ldx, const uint8_t *q, const uint16_t *scale,
             const uint8_t *zero, int64_t group, int64_t N, float *y, int64_t ldy, int nt) {
    const int64_t G = K / group;
    float *xr = malloc(sizeof(float) * (size_t)(M * K));
    if (!xr) return -1;
    q4_prepare(x, M, K, ldx, xr);
#define Q4(R, B, n) q4_tile(R, B, xr + m0 * K, K, group, q + (n) * (K / 2), scale + (n) * G, \
                            zero ? zero + (n) * G : NULL, y + m0 * ldy + (n), ldy)
    FOR_TILES(Q4)
#undef Q4
    free(xr);
    return 0;
}

void gs_q4_dequant(const uint8_t *q, const uint16_t *scale, const uint8_t *zero, int64_t group, int64_t N,
                   int64_t K, float *out, int nt) {
    const int64_t G = K / group;
    #pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t n = 0; n < N; n++) {
        for (int64_t g = 0; g < G; g++) {
            const float s = half_to_float(scale[n * G + g]);
            const float z = zero ? (float)zero[n * G + g] : 8.0f;
            for (int64_t k = g * group; k < (g + 1) * group; k += 2) {
                const uint8_t b = q[n * (K / 2) + k / 2];
                out[n * K + k] = ((float)(b & 15) - z) * s;
                out[n * K + k + 1] = ((float)(b >> 4) - z) * s;
            }
        }
    }
}

/* ---------------------------------------------------------------- int8 activations */
/* A row x[K] (K % 32 == 0) in blocks of 32: d[b] = amax / 127, xq = round-half-even(x / d[b]), clamped
   to +-127, 0 where d[b] == 0 — bit for bit schemes.quantize_activations. For int4 weights each
   block is stored as [its 16 even columns, its 16 odd ones] (the nibble order) and cs[b] = d[b] * sum(xq)
   serves the zero point: sum (q - z) * xq = sum q * xq - z * sum xq. */
#define QB 32
static void a8_quantize(const float *x, int64_t M, int64_t K, int64_t ldx, int nibble_order, int8_t *xq,
                        float *d, float *cs) {
    const int64_t B = K / QB;
    for (int64_t m = 0; m < M; m++) {
        for (int64_t b = 0; b < B; b++) {
            const float *src = x + m * ldx + b * QB;
            float amax = 0.0f;
            for (int i = 0; i < QB; i++) { float a = src[i] < 0 ? -src[i] : src[i]; amax = a > amax ? a : amax; }
            const float db = amax / 127.0f;
            int8_t *dst = xq + m * K + b * QB;
            int sum = 0;
            for (int i = 0; i < QB; i++) {
                float r = db == 0.0f ? 0.0f : __builtin_rintf(src[i] / db);
                r = r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r;
                const int at = nibble_order ? (i % 2) * 16 + i / 2 : i;
                dst[at] = (int8_t)r;
                sum += (int)r;
            }
            d[m * B + b] = db;
            if (cs) cs[m * B + b] = db * (float)sum;
        }
    }
}

#if defined(__AVX2__) && defined(__FMA__)
/* 8 int32 lanes, each the sum of 4 products of unsigned bytes u and signed bytes s. */
static inline __m256i dot_u8s8(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#else
    /* pairs fit int16: |u| <= 127 (int8 path: |xq|) or <= 15 (int4 path), |s| <= 127 */
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}
static inline float hsum8(__m256 s) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

INLINE void q8a8_tile(const int R, const int NB, const int8_t *xq, const float *dx, int64_t K, const int8_t *q,
                      const float *scale, float *y, int64_t ldy) {
    const int64_t B = K / QB;
    __m256 acc[ROWS][4];
    for (int m = 0; m < R; m++)
        for (int j = 0; j < NB; j++) acc[m][j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < B; b++) {
        __m256i xs[ROWS], xa[ROWS];
        __m256 dv[ROWS];
        for (int m = 0; m < R; m++) {
            xs[m] = _mm256_loadu_si256((const __m256i *)(xq + m * K + b * QB));
            xa[m] = _mm256_abs_epi8(xs[m]);
            dv[m] = _mm256_set1_ps(dx[m * B + b]);
        }
        for (int j = 0; j < NB; j++) {
            const __m256i w = _mm256_loadu_si256((const __m256i *)(q + j * K + b * QB));
            for (int m = 0; m < R; m++) {
                /* |x| * (w with x's sign): unsigned times signed, as the instructions want */
                const __m256i p = dot_u8s8(xa[m], _mm256_sign_epi8(w, xs[m]));
                acc[m][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), dv[m], acc[m][j]);
            }
        }
    }
    for (int m = 0; m < R; m++)
        for (int j = 0; j < NB; j++) y[m * ldy + j] = hsum8(acc[m][j]) * scale[j];
}

INLINE void q4a8_tile(const int R, const int NB, const int8_t *xq, const float *dx, const float *cs, int64_t K,
                      int64_t group, const uint8_t *q, const uint16_t *scale, const uint8_t *zero, float *y,
                      int64_t ldy) {
    const int64_t B = K / QB, G = K / group, per = group / QB;
    __m256 acc[ROWS][4];
    float corr[ROWS][4];
    for (int m = 0; m < R; m++)
        for (int j = 0; j < NB; j++) { acc[m][j] = _mm256_setzero_ps(); corr[m][j] = 0.0f; }
    const __m128i mask = _mm_set1_epi8(15);
    for (int64_t b = 0; b < B; b++) {
        const int64_t g = b / per;
        __m256i xs[ROWS];
        for (int m = 0; m < R; m++) xs[m] = _mm256_loadu_si256((const __m256i *)(xq + m * K + b * QB));
        for (int j = 0; j < NB; j++) {
            const __m128i packed = _mm_loadu_si128((const __m128i *)(q + j * (K / 2) + b * (QB / 2)));
            const __m256i w = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), mask), _mm_and_si128(packed, mask));
            const float s = half_to_float(scale[j * G + g]);
            const float z = zero ? (float)zero[j * G + g] : 8.0f;
            for (int m = 0; m < R; m++) {
                const __m256i p = dot_u8s8(w, xs[m]);
                acc[m][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(s * dx[m * B + b]), acc[m][j]);
                corr[m][j] += s * z * cs[m * B + b];
            }
        }
    }
    for (int m = 0; m < R; m++)
        for (int j = 0; j < NB; j++) y[m * ldy + j] = hsum8(acc[m][j]) - corr[m][j];
}
#else
/* Without AVX2: the same sums, one product at a time. */
INLINE void q8a8_tile(const int R, const int NB, const int8_t *xq, const float *dx, int64_t K, const int8_t *q,
                      const float *scale, float *y, int64_t ldy) {
    const int64_t B = K / QB;
    for (int m = 0; m < R; m++)
        for (int j = 0; j < NB; j++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < B; b++) {
                int32_t p = 0;
                for (int i = 0; i < QB; i++) p += (int32_t)xq[m * K + b * QB + i] * q[j * K + b * QB + i];
                acc += (float)p * dx[m * B + b];
            }
            y[m * ldy + j] = acc * scale[j];
        }
}

INLINE void q4a8_tile(const int R, const int NB, const int8_t *xq, const float *dx, const float *cs, int64_t K,
                      int64_t group, const uint8_t *q, const uint16_t *scale, const uint8_t *zero, float *y,
                      int64_t ldy) {
    const int64_t B = K / QB, G = K / group, per = group / QB;
    for (int m = 0; m < R; m++)
        for (int j = 0; j < NB; j++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < B; b++) {
                const int64_t g = b / per;
                const float s = half_to_float(scale[j * G + g]);
                const float z = zero ? (float)zero[j * G + g] : 8.0f;
                int32_t p = 0;
                for (int i = 0; i < QB / 2; i++) {
                    const uint8_t byte = q[j * (K / 2) + b * (QB / 2) + i];
                    p += (int32_t)(byte & 15) * xq[m * K + b * QB + i] + (int32_t)(byte >> 4) * xq[m * K + b * QB + 16 + i];
                }
                acc += (float)p * s * dx[m * B + b] - s * z * cs[m * B + b];
            }
            y[m * ldy + j] = acc;
        }
}
#endif

/* AVX-512 VNNI: the int8-activation products run on the interleaved layouts below (gs_*_repack16),
   the kernels above serve the other instruction sets. */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__F16C__)
#define HAVE_A8_512 1
#endif

/* 0 on success, -1 when the work buffers could not be allocated. Needs K % 32 == 0. */
int gs_q8a8_mm(const float *x, int64_t M, int64_t K, int64_t ldx, const int8_t *q, const float *scale,
               int64_t N, float *y, int64_t ldy, int nt) {
    int8_t *xq = malloc((size_t)(M * K));
    float *dx = malloc(sizeof(float) * (size_t)(M * (K / QB)));
    if (!xq || !dx) { free(xq); free(dx); return -1; }
    a8_quantize(x, M, K, ldx, 0, xq, dx, NULL);
#define Q8A8(R, B, n) q8a8_tile(R, B, xq + m0 * K, dx + m0 * (K / QB), K, q + (n) * K, scale + (n), \
                                y + m0 * ldy + (n), ldy)
    FOR_TILES(Q8A8)
#undef Q8A8
    free(xq); free(dx);
    return 0;
}

/* 0 on success, -1 when the work buffers could not be allocated. Needs K % group == 0, group % 32 == 0. */
int gs_q4a8_mm(const float *x, int64_t M, int64_t K, int64_t ldx, const uint8_t *q, const uint16_t *scale,
               const uint8_t *zero, int64_t group, int64_t N, float *y, int64_t ldy, int nt) {
    const int64_t G = K / group, B = K / QB;
    int8_t *xq = malloc((size_t)(M * K));
    float *dx = malloc(sizeof(float) * (size_t)(M * B)), *cs = malloc(sizeof(float) * (size_t)(M * B));
    if (!xq || !dx || !cs) { free(xq); free(dx); free(cs); return -1; }
    a8_quantize(x, M, K, ldx, 1, xq, dx, cs);
#define Q4A8(R, Bn, n) q4a8_tile(R, Bn, xq + m0 * K, dx + m0 * B, cs + m0 * B, K, group, q + (n) * (K / 2), \
                                 scale + (n) * G, zero ? zero + (n) * G : NULL, y + m0 * ldy + (n), ldy)
    FOR_TILES(Q4A8)
#undef Q4A8
    free(xq); free(dx); free(cs);
    return 0;
}

/* ---------------------------------------------------------------- int4 x int8, 16 rows interleaved */
/* The loop the interleaved products share: 16-row weight tiles across the threads, ROWS activation
   rows at a time, each block dispatched to a tile of constant row count. TILE(R) reads t (the tile),
   m0 (the first row) and valid (the tile's rows below N). */
#define FOR_TILES16(TILE) \
    _Pragma("omp parallel for schedule(static) num_threads(nt)") \
    for (int64_t t = 0; t < (N + 15) / 16; t++) { \
        const int64_t valid = N - t * 16; \
        for (int64_t m0 = 0; m0 < M; m0 += ROWS) { \
            switch (M - m0 < ROWS ? M - m0 : ROWS) { \
            case 4: TILE(4); break; case 3: TILE(3); break; case 2: TILE(2); break; default: TILE(1); break; } \
        } \
    }

/* With AVX-512 VNNI a second layout of an int4 weight, built once (gs_q4_repack16), lets one
   instruction compute 4 products for each of 16 output rows: the activation's 4 bytes are broadcast,
   each 32-bit lane holds 4 weights of its row. Per 16-row tile and 32-column block, 256 bytes: four
   64-byte vectors P0..P3 whose lane r, byte c holds in its low nibble the weight of row r, column
   4p + c, and in its high nibble that of column 16 + 4p + c. Scales (and zero points) per tile and
   group: 16 values, one per row. Rows past N (the last tile) have weights and scales 0. */
/* Whether this build has the interleaved kernels (int4 here, int8 below). */
int gs_a8_interleaved(void) {
#if HAVE_A8_512
    return 1;
#else
    return 0;
#endif
}

void gs_q4_repack16(const uint8_t *q, const uint16_t *scale, const uint8_t *zero, int64_t N, int64_t K,
                    int64_t group, uint8_t *pq, uint16_t *pscale, uint8_t *pzero) {
    const int64_t T = (N + 15) / 16, B = K / QB, G = K / group;
    for (int64_t t = 0; t < T; t++)
        for (int64_t r = 0; r < 16; r++) {
            const int64_t row = t * 16 + r;
            for (int64_t g = 0; g < G; g++) {
                pscale[(t * G + g) * 16 + r] = row < N ? scale[row * G + g] : 0;
                if (zero) pzero[(t * G + g) * 16 + r] = row < N ? zero[row * G + g] : 8;
            }
            for (int64_t b = 0; b < B; b++)
                for (int p = 0; p < 4; p++)
                    for (int c = 0; c < 4; c++) {
                        uint8_t byte = 0;
                        if (row < N) {
                            const int64_t lo = b * QB + 4 * p + c, hi = lo + 16;
                            const uint8_t *qr = q + row * (K / 2);
                            byte = (uint8_t)(((qr[lo / 2] >> ((lo & 1) * 4)) & 15) | (((qr[hi / 2] >> ((hi & 1) * 4)) & 15) << 4));
                        }
                        pq[((t * B + b) * 4 + p) * 64 + r * 4 + c] = byte;
                    }
        }
}

#if HAVE_A8_512
/* The next 64-byte vector of an interleaved weight, the read PREFETCH_BYTES ahead issued with it. */
static inline __m512i load64(const uint8_t *p) {
    __builtin_prefetch(p + PREFETCH_BYTES);
    return _mm512_loadu_si512((const void *)p);
}
/* The lanes of a 16-row tile that hold rows below N (`valid` of them, all where 16 or more). */
static inline __mmask16 tile_rows(int64_t valid) {
    return valid >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << valid) - 1);
}
/* Four independent FMA chains (the FMAs' latency), zeroed and summed. */
static inline void zero4(__m512 chains[4]) { chains[0] = chains[1] = chains[2] = chains[3] = _mm512_setzero_ps(); }
static inline __m512 sum4(const __m512 chains[4]) {
    return _mm512_add_ps(_mm512_add_ps(chains[0], chains[1]), _mm512_add_ps(chains[2], chains[3]));
}
/* A group's 16 scales (fp16) and zero points (8 where the scheme is symmetric) of an interleaved tile. */
static inline __m512 scales16(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
static inline __m512 zeros16(const uint8_t *p) {
    return p ? _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p))) : _mm512_set1_ps(8.0f);
}

/* The 32-column block's sums for 16 interleaved rows: w[c] holds 4 unsigned weights of each row for
   columns 4c .. 4c + 3, which meet the same 4 activation bytes, broadcast. */
static inline __m512i block_dot16(const __m512i w[8], const int8_t *xb) {
    __m512i dot = _mm512_setzero_si512();
    for (int c = 0; c < 8; c++) {
        int32_t four;
        memcpy(&four, xb + 4 * c, sizeof four);
        dot = _mm512_dpbusd_epi32(dot, w[c], _mm512_set1_epi32(four));
    }
    return dot;
}

INLINE void q4a8_i16_tile(const int R, const int8_t *xq, const float *dx, const float *cs, int64_t K, int64_t group,
                          const uint8_t *pq, const uint16_t *pscale, const uint8_t *pzero, float *y, int64_t ldy,
                          int64_t valid) {
    const int64_t B = K / QB, per = group / QB;
    __m512 acc[ROWS], corr[ROWS];
    for (int m = 0; m < R; m++) acc[m] = corr[m] = _mm512_setzero_ps();
    const __m512i mask = _mm512_set1_epi8(15);
    for (int64_t b = 0; b < B; b++) {
        const int64_t g = b / per;
        const __m512 sv = scales16(pscale + g * 16);
        const __m512 zv = zeros16(pzero ? pzero + g * 16 : NULL);
        const __m512 sz = _mm512_mul_ps(sv, zv);
        __m512i w[8];
        for (int p = 0; p < 4; p++) {
            const __m512i packed = load64(pq + (b * 4 + p) * 64);
            w[p] = _mm512_and_si512(packed, mask);
            w[p + 4] = _mm512_and_si512(_mm512_srli_epi16(packed, 4), mask);
        }
        for (int m = 0; m < R; m++) {
            const __m512i dot = block_dot16(w, xq + m * K + b * QB);
            acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(sv, _mm512_set1_ps(dx[m * B + b])), acc[m]);
            corr[m] = _mm512_fmadd_ps(sz, _mm512_set1_ps(cs[m * B + b]), corr[m]);
        }
    }
    const __mmask16 keep = tile_rows(valid);
    for (int m = 0; m < R; m++) _mm512_mask_storeu_ps(y + m * ldy, keep, _mm512_sub_ps(acc[m], corr[m]));
}
#endif

/* The product on the layout of gs_q4_repack16: the same numbers as gs_q4a8_mm, the sums in another
   order. 0 on success, -1 without memory for the work buffers, -2 where this build lacks the kernel. */
int gs_q4a8_mm16(const float *x, int64_t M, int64_t K, int64_t ldx, const uint8_t *pq, const uint16_t *pscale,
                 const uint8_t *pzero, int64_t group, int64_t N, float *y, int64_t ldy, int nt) {
#if HAVE_A8_512
    const int64_t B = K / QB, G = K / group;
    int8_t *xq = malloc((size_t)(M * K));
    float *dx = malloc(sizeof(float) * (size_t)(M * B)), *cs = malloc(sizeof(float) * (size_t)(M * B));
    if (!xq || !dx || !cs) { free(xq); free(dx); free(cs); return -1; }
    a8_quantize(x, M, K, ldx, 0, xq, dx, cs);
#define Q4A8_16(R) q4a8_i16_tile(R, xq + m0 * K, dx + m0 * B, cs + m0 * B, K, group, pq + t * B * 256, \
                                 pscale + t * G * 16, pzero ? pzero + t * G * 16 : NULL, y + m0 * ldy + t * 16, \
                                 ldy, valid)
    FOR_TILES16(Q4A8_16)
#undef Q4A8_16
    free(xq); free(dx); free(cs);
    return 0;
#else
    return -2;     /* this build lacks the kernel (parameters unused) */
#endif
}

/* ---------------------------------------------------------------- int4 x fp32, 16 rows interleaved */
/* Weight-only int4 on the layout of gs_q4_repack16: each 32-bit lane's 8 nibbles are 8 columns of its
   row, so a byte shift and a permute (lane_nibble) give a column's weights for 16 rows as floats,
   which meet that column's activation, broadcast. Per group, sum q x is taken first and scaled after:
   sum (q - z) s x = s (sum q x) - s z (sum x), the activation's group sums computed once per call.
   (The kernels above dequantise through a per-row table, one permute per 16 weights: here the 16
   rows of a vector need no table, and the extraction is shared by every activation row.) */
#if HAVE_A8_512
/* The sums of each activation row's groups of `group` columns, in column order: out [M, K / group]. */
static void group_sums(const float *x, int64_t M, int64_t K, int64_t ldx, int64_t group, float *out) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t g = 0; g < K / group; g++) {
            float sum = 0.0f;
            for (int64_t k = g * group; k < (g + 1) * group; k++) sum += x[m * ldx + k];
            out[m * (K / group) + g] = sum;
        }
}

/* Byte i of each 32-bit lane, unsigned, as a float (the int8 weight-only tile's unpacking). */
INLINE __m512 lane_byte(__m512i packed, const int i) {
    const __m512i v = i ? _mm512_srli_epi32(packed, 8 * i) : packed;
    return _mm512_cvtepi32_ps(i < 3 ? _mm512_and_si512(v, _mm512_set1_epi32(255)) : v);
}

/* Nibble j (bits 4j .. 4j + 3) of each 32-bit lane as a float, `high` being the lanes shifted right by
   4: a byte shift brings nibble j to bits 0-3 and a permute of the 16 levels reads it there (vpermps
   uses an index's low 4 bits). The same floats as a shift, a mask and a conversion would give, on
   the shuffle port where those ran on the FMAs' port: 1.4x at one row, 1.2x at 32 here. */
INLINE __m512 lane_nibble(__m512i packed, __m512i high, const int j) {
    const __m512i lanes = (j & 1) ? high : packed;
    return _mm512_permutexvar_ps((j >> 1) ? _mm512_bsrli_epi128(lanes, j >> 1) : lanes,
                                 _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}

INLINE void q4f_i16_tile(const int R, const float *x, int64_t ldx, const float *xs, int64_t K, int64_t group,
                         const uint8_t *pq, const uint16_t *pscale, const uint8_t *pzero, float *y, int64_t ldy,
                         int64_t valid) {
    const int64_t G = K / group, per = group / QB;
    __m512 acc[ROWS], corr[ROWS];
    for (int m = 0; m < R; m++) acc[m] = corr[m] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        __m512 part[ROWS][4];   /* four chains per row: the FMAs' latency */
        for (int m = 0; m < R; m++) zero4(part[m]);
        for (int64_t b = g * per; b < (g + 1) * per; b++) {
            for (int p = 0; p < 4; p++) {
                const __m512i packed = load64(pq + (b * 4 + p) * 64);
                const __m512i high = _mm512_srli_epi32(packed, 4);
                _Pragma("GCC unroll 8")
                for (int j = 0; j < 8; j++) {
                    /* nibble j of a lane: byte j / 2, low (column 4p + j/2) or high (16 + 4p + j/2) */
                    const __m512 w = lane_nibble(packed, high, j);
                    const int64_t col = b * QB + ((j & 1) ? 16 : 0) + 4 * p + (j >> 1);
                    for (int m = 0; m < R; m++)
                        part[m][j & 3] = _mm512_fmadd_ps(w, _mm512_set1_ps(x[m * ldx + col]), part[m][j & 3]);
                }
            }
        }
        const __m512 sv = scales16(pscale + g * 16), sz = _mm512_mul_ps(sv, zeros16(pzero ? pzero + g * 16 : NULL));
        for (int m = 0; m < R; m++) {
            acc[m] = _mm512_fmadd_ps(sum4(part[m]), sv, acc[m]);
            corr[m] = _mm512_fmadd_ps(sz, _mm512_set1_ps(xs[m * G + g]), corr[m]);
        }
    }
    const __mmask16 keep = tile_rows(valid);
    for (int m = 0; m < R; m++) _mm512_mask_storeu_ps(y + m * ldy, keep, _mm512_sub_ps(acc[m], corr[m]));
}
#endif

/* x @ dequant(w).T on the layout of gs_q4_repack16, fp32 activations (no quantization). 0 on success,
   -1 without memory for the group sums, -2 where this build lacks the kernel. */
int gs_q4_mm16(const float *x, int64_t M, int64_t K, int64_t ldx, const uint8_t *pq, const uint16_t *pscale,
               const uint8_t *pzero, int64_t group, int64_t N, float *y, int64_t ldy, int nt) {
#if HAVE_A8_512
    const int64_t B = K / QB, G = K / group;
    float *xs = malloc(sizeof(float) * (size_t)(M * G));
    if (!xs) return -1;
    group_sums(x, M, K, ldx, group, xs);
#define Q4F_16(R) q4f_i16_tile(R, x + m0 * ldx, ldx, xs + m0 * G, K, group, pq + t * B * 256, \
                               pscale + t * G * 16, pzero ? pzero + t * G * 16 : NULL, y + m0 * ldy + t * 16, \
                               ldy, valid)
    FOR_TILES16(Q4F_16)
#undef Q4F_16
    free(xs);
    return 0;
#else
    return -2;     /* this build lacks the kernel (parameters unused) */
#endif
}

/* ---------------------------------------------------------------- int8 x int8, 16 rows interleaved */
/* The same interleaving for int8 weights (gs_q8_repack16): per 16-row tile and 32-column block,
   eight 64-byte vectors; lane r of vector c holds w[r][4c .. 4c + 3] + 128 as unsigned bytes, so
   sum (w + 128) x = sum w x + 128 sum x, and the second sum is the activation's own. */
void gs_q8_repack16(const int8_t *q, int64_t N, int64_t K, uint8_t *pq) {
    const int64_t T = (N + 15) / 16, B = K / QB;
    for (int64_t t = 0; t < T; t++)
        for (int64_t r = 0; r < 16; r++) {
            const int64_t row = t * 16 + r;
            for (int64_t b = 0; b < B; b++)
                for (int c = 0; c < 8; c++)
                    for (int i = 0; i < 4; i++)
                        pq[((t * B + b) * 8 + c) * 64 + r * 4 + i] =
                            row < N ? (uint8_t)(q[row * K + b * QB + 4 * c + i] + 128) : 128;
        }
}

#if HAVE_A8_512
INLINE void q8a8_i16_tile(const int R, const int8_t *xq, const float *dx, const float *shift, int64_t K,
                          const uint8_t *pq, const float *scale, float *y, int64_t ldy, int64_t valid) {
    const int64_t B = K / QB;
    __m512 acc[ROWS];
    for (int m = 0; m < R; m++) acc[m] = _mm512_setzero_ps();
    for (int64_t b = 0; b < B; b++) {
        __m512i w[8];
        for (int c = 0; c < 8; c++) {
            w[c] = load64(pq + (b * 8 + c) * 64);
        }
        for (int m = 0; m < R; m++) {
            const __m512i dot = block_dot16(w, xq + m * K + b * QB);
            acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(dx[m * B + b]), acc[m]);
        }
    }
    const __mmask16 keep = tile_rows(valid);
    const __m512 sv = _mm512_maskz_loadu_ps(keep, scale);
    for (int m = 0; m < R; m++)
        _mm512_mask_storeu_ps(y + m * ldy, keep, _mm512_mul_ps(_mm512_sub_ps(acc[m], _mm512_set1_ps(shift[m])), sv));
}
#endif

/* The product on the layout of gs_q8_repack16: the same numbers as gs_q8a8_mm, the sums in another
   order. 0 on success, -1 without memory for the work buffers, -2 where this build lacks the kernel. */
int gs_q8a8_mm16(const float *x, int64_t M, int64_t K, int64_t ldx, const uint8_t *pq, const float *scale,
                 int64_t N, float *y, int64_t ldy, int nt) {
#if HAVE_A8_512
    const int64_t B = K / QB;
    int8_t *xq = malloc((size_t)(M * K));
    float *dx = malloc(sizeof(float) * (size_t)(M * B)), *cs = malloc(sizeof(float) * (size_t)(M * B));
    float *shift = malloc(sizeof(float) * (size_t)(M > 0 ? M : 1));
    if (!xq || !dx || !cs || !shift) { free(xq); free(dx); free(cs); free(shift); return -1; }
    a8_quantize(x, M, K, ldx, 0, xq, dx, cs);
    for (int64_t m = 0; m < M; m++) {          /* 128 * sum over blocks of d[b] * sum(xq in b) */
        float s = 0.0f;
        for (int64_t b = 0; b < B; b++) s += cs[m * B + b];
        shift[m] = 128.0f * s;
    }
#define Q8A8_16(R) q8a8_i16_tile(R, xq + m0 * K, dx + m0 * B, shift + m0, K, pq + t * B * 512, scale + t * 16, \
                                 y + m0 * ldy + t * 16, ldy, valid)
    FOR_TILES16(Q8A8_16)
#undef Q8A8_16
    free(xq); free(dx); free(cs); free(shift);
    return 0;
#else
    return -2;     /* this build lacks the kernel (parameters unused) */
#endif
}

/* ---------------------------------------------------------------- int8 x fp32, 16 rows interleaved */
/* Weight-only int8 on the layout of gs_q8_repack16: byte i of a lane of vector c is column 4c + i of
   its row (+ 128), so one shift, mask and conversion give a column's weights for 16 rows as floats,
   as gs_q4_mm16 does for nibbles; y = s (sum (w + 128) x - 128 sum x), sum x taken once per row. */
#if HAVE_A8_512
INLINE void q8f_i16_tile(const int R, const float *x, int64_t ldx, const float *shift, int64_t K, const uint8_t *pq,
                         const float *scale, float *y, int64_t ldy, int64_t valid) {
    const int64_t B = K / QB;
    __m512 part[ROWS][4];       /* four chains per row: the FMAs' latency */
    for (int m = 0; m < R; m++) zero4(part[m]);
    for (int64_t b = 0; b < B; b++) {
        for (int c = 0; c < 8; c++) {
            const __m512i packed = load64(pq + (b * 8 + c) * 64);
            _Pragma("GCC unroll 4")
            for (int i = 0; i < 4; i++) {
                const __m512 w = lane_byte(packed, i);
                for (int m = 0; m < R; m++)
                    part[m][i] = _mm512_fmadd_ps(w, _mm512_set1_ps(x[m * ldx + b * QB + 4 * c + i]), part[m][i]);
            }
        }
    }
    const __mmask16 keep = tile_rows(valid);
    const __m512 sv = _mm512_maskz_loadu_ps(keep, scale);
    for (int m = 0; m < R; m++) {
        const __m512 sum = sum4(part[m]);
        _mm512_mask_storeu_ps(y + m * ldy, keep, _mm512_mul_ps(_mm512_sub_ps(sum, _mm512_set1_ps(shift[m])), sv));
    }
}
#endif

/* x @ dequant(w).T on the layout of gs_q8_repack16, fp32 activations. Needs K % 32 == 0. 0 on
   success, -1 without memory for the row sums, -2 where this build lacks the kernel. */
int gs_q8_mm16(const float *x, int64_t M, int64_t K, int64_t ldx, const uint8_t *pq, const float *scale, int64_t N,
               float *y, int64_t ldy, int nt) {
#if HAVE_A8_512
    const int64_t B = K / QB;
    float *shift = malloc(sizeof(float) * (size_t)(M > 0 ? M : 1));
    if (!shift) return -1;
    group_sums(x, M, K, ldx, K, shift);
    for (int64_t m = 0; m < M; m++) shift[m] *= 128.0f;
#define Q8F_16(R) q8f_i16_tile(R, x + m0 * ldx, ldx, shift + m0, K, pq + t * B * 512, scale + t * 16, \
                               y + m0 * ldy + t * 16, ldy, valid)
    FOR_TILES16(Q8F_16)
#undef Q8F_16
    free(shift);
    return 0;
#else
    return -2;     /* this build lacks the kernel (parameters unused) */
#endif
}
