/* The kernels a decode step calls (matmul.c, rows.c), declared once: their definitions and the
   program runner (program.c) are checked against these prototypes. */
#ifndef GS_KERNELS_H
#define GS_KERNELS_H
#include <stdint.h>

int gs_f32_mm(const float *x, int64_t M, int64_t K, int64_t ldx, const float *w, int64_t N, float *y, int64_t ldy,
              int nt);
int gs_bf16_linear(const uint16_t *x, int64_t M, int64_t K, int64_t ldx, const uint16_t *w, const uint16_t *bias,
                   int64_t N, uint16_t *y, int nt);
int gs_q8_mm(const float *x, int64_t M, int64_t K, int64_t ldx, const int8_t *q, const float *scale,
             int64_t N, float *y, int64_t ldy, int nt);
int gs_q4_mm(const float *x, int64_t M, int64_t K, int64_t ldx, const uint8_t *q, const uint16_t *scale,
             const uint8_t *zero, int64_t group, int64_t N, float *y, int64_t ldy, int nt);
int gs_q8a8_mm(const float *x, int64_t M, int64_t K, int64_t ldx, const int8_t *q, const float *scale,
               int64_t N, float *y, int64_t ldy, int nt);
int gs_q4a8_mm(const float *x, int64_t M, int64_t K, int64_t ldx, const uint8_t *q, const uint16_t *scale,
               const uint8_t *zero, int64_t group, int64_t N, float *y, int64_t ldy, int nt);
int gs_q4_mm16(const float *x, int64_t M, int64_t K, int64_t ldx, const uint8_t *pq, const uint16_t *pscale,
               const uint8_t *pzero, int64_t group, int64_t N, float *y, int64_t ldy, int nt);
int gs_q4a8_mm16(const float *x, int64_t M, int64_t K, int64_t ldx, const uint8_t *pq, const uint16_t *pscale,
                 const uint8_t *pzero, int64_t group, int64_t N, float *y, int64_t ldy, int nt);
int gs_q8_mm16(const float *x, int64_t M, int64_t K, int64_t ldx, const uint8_t *pq, const float *scale, int64_t N,
               float *y, int64_t ldy, int nt);
int gs_q8a8_mm16(const float *x, int64_t M, int64_t K, int64_t ldx, const uint8_t *pq, const float *scale,
                 int64_t N, float *y, int64_t ldy, int nt);

int gs_grouped(const uint8_t *x, uint8_t *y, const int64_t *index, int64_t picks, int64_t k, int64_t x_per_pick,
               int64_t experts, const int64_t *words, const int64_t *strides, int64_t *computed);

#define GS_ROW_KERNELS(T, S) \
void gs_rms_norm_##S(const T *x, int64_t rows, int64_t dim, const T *w, float eps, T *out); \
void gs_rope_##S(const T *x, int64_t B, int64_t H, int64_t S_, int64_t D, int64_t sb, int64_t sh, int64_t ss, \
                 const T *cos, const T *sin, int64_t R, int64_t csb, T *out); \
void gs_silu_##S(const T *x, T *out, int64_t n); \
void gs_attend_step_##S(const T *q, int64_t qsb, int64_t qsh, const T *k, int64_t ksb, int64_t ksh, \
                        const T *v, int64_t vsb, int64_t vsh, T *kc, T *vc, int64_t cap, int64_t past, \
                        int64_t B, int64_t H, int64_t Hkv, int64_t D, const uint8_t *mask, int64_t msb, \
                        float scale, int64_t window, float softcap, const T *bias, int64_t bsb, \
                        int64_t bsh, int64_t bsk, T *out, float *scores, int nt); \
void gs_binary_##S(const T *a, const T *b, T *out, int64_t n, int op); \
void gs_binary_broadcast_##S(const T *a, const T *b, T *out, int op, int64_t n0, int64_t n1, int64_t n2, \
                             int64_t n3, int64_t as0, int64_t as1, int64_t as2, int64_t as3, int64_t bs0, \
                             int64_t bs1, int64_t bs2, int64_t bs3);
void gs_softmax_f32(const float *x, float *out, int64_t rows, int64_t n);
void gs_topk_f32(const float *x, int64_t rows, int64_t n, int64_t k, float *values, int64_t *indices);
void gs_sum_f32(const float *x, float *out, int64_t outer, int64_t n, int64_t inner);
void gs_positions(int64_t *out, int64_t start, int64_t n);
int gs_gather_rows(const uint8_t *table, int64_t rows, int64_t row_bytes, const int64_t *idx, int64_t n,
                   uint8_t *out);
void gs_i64_to_f32(const int64_t *x, float *out, int64_t n);
void gs_concat2(const uint8_t *a, int64_t a_bytes, const uint8_t *b, int64_t b_bytes, int64_t rows, uint8_t *out);
void gs_zero_bytes(uint8_t *out, int64_t n);
GS_ROW_KERNELS(float, f32)
GS_ROW_KERNELS(uint16_t, bf16)
#undef GS_ROW_KERNELS
#endif
