/* A run of a recorded decode step's kernel calls, replayed by one call from Python
   (runtime/step_capture.py): the ~150 calls of a step then cost no Python and no ctypes conversion
   each, only the kernels' own work.

   A program is int64 words, per call: the kernel's index in KERNELS (gs_program_kernel), its number
   of arguments, a bit mask of the arguments that are positions of the sequence (advanced by `delta`
   at each run, runtime.native.Position), then the arguments: pointers and integers as they are, a
   float as the bits of its fp32 value. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

typedef int (*packed)(const int64_t *a);

static inline float f32_bits(int64_t v) {
    const uint32_t u = (uint32_t)v;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
#define P(i) ((void *)(intptr_t)a[i])
#define I(i) (a[i])
#define F(i) f32_bits(a[i])
#define N(i) ((int)a[i])

/* the matrix products: 12 arguments with a group size (int4), 10 or 9 without */
#define MM12(NAME) static int p_##NAME(const int64_t *a) { \
    return NAME(P(0), I(1), I(2), I(3), P(4), P(5), P(6), I(7), I(8), P(9), I(10), N(11)); }
#define MM10(NAME) static int p_##NAME(const int64_t *a) { \
    return NAME(P(0), I(1), I(2), I(3), P(4), P(5), I(6), P(7), I(8), N(9)); }
MM12(gs_q4_mm) MM12(gs_q4a8_mm) MM12(gs_q4_mm16) MM12(gs_q4a8_mm16)
MM10(gs_q8_mm) MM10(gs_q8a8_mm) MM10(gs_q8_mm16) MM10(gs_q8a8_mm16)
static int p_gs_f32_mm(const int64_t *a) { return gs_f32_mm(P(0), I(1), I(2), I(3), P(4), I(5), P(6), I(7), N(8)); }
static int p_gs_bf16_linear(const int64_t *a) {
    return gs_bf16_linear(P(0), I(1), I(2), I(3), P(4), P(5), I(6), P(7), N(8));
}

#define ROWS(S) \
static int p_gs_rms_norm_##S(const int64_t *a) { gs_rms_norm_##S(P(0), I(1), I(2), P(3), F(4), P(5)); return 0; } \
static int p_gs_rope_##S(const int64_t *a) { \
    gs_rope_##S(P(0), I(1), I(2), I(3), I(4), I(5), I(6), I(7), P(8), P(9), I(10), I(11), P(12)); return 0; } \
static int p_gs_silu_##S(const int64_t *a) { gs_silu_##S(P(0), P(1), I(2)); return 0; } \
static int p_gs_attend_step_##S(const int64_t *a) { \
    gs_attend_step_##S(P(0), I(1), I(2), P(3), I(4), I(5), P(6), I(7), I(8), P(9), P(10), I(11), I(12), I(13), \
                       I(14), I(15), I(16), P(17), I(18), F(19), I(20), F(21), P(22), I(23), I(24), I(25), \
                       P(26), P(27), N(28)); return 0; } \
static int p_gs_binary_##S(const int64_t *a) { gs_binary_##S(P(0), P(1), P(2), I(3), N(4)); return 0; } \
static int p_gs_binary_broadcast_##S(const int64_t *a) { \
    gs_binary_broadcast_##S(P(0), P(1), P(2), N(3), I(4), I(5), I(6), I(7), I(8), I(9), I(10), I(11), I(12), \
                            I(13), I(14), I(15)); return 0; }
ROWS(f32)
ROWS(bf16)
static int p_gs_gather_rows(const int64_t *a) { return gs_gather_rows(P(0), I(1), I(2), P(3), I(4), P(5)); }
static int p_gs_i64_to_f32(const int64_t *a) { gs_i64_to_f32(P(0), P(1), I(2)); return 0; }
static int p_gs_concat2(const int64_t *a) { gs_concat2(P(0), I(1), P(2), I(3), I(4), P(5)); return 0; }
static int p_gs_softmax_f32(const int64_t *a) { gs_softmax_f32(P(0), P(1), I(2), I(3)); return 0; }
static int p_gs_topk_f32(const int64_t *a) { gs_topk_f32(P(0), I(1), I(2), I(3), P(4), P(5)); return 0; }
static int p_gs_sum_f32(const int64_t *a) { gs_sum_f32(P(0), P(1), I(2), I(3), I(4)); return 0; }
static int p_gs_positions(const int64_t *a) { gs_positions(P(0), I(1), I(2)); return 0; }
static int p_gs_zero_bytes(const int64_t *a) { gs_zero_bytes(P(0), I(1)); return 0; }

static int p_gs_grouped(const int64_t *a) { return gs_grouped(P(0), P(1), P(2), I(3), I(4), I(5), I(6), P(7), P(8), P(9)); }

/* the matrix products first: gs_grouped calls only those (PRODUCTS of them) */
#define K(NAME, ARGS) { #NAME, p_##NAME, ARGS }
#define PRODUCTS 10
static const struct { const char *name; packed run; int64_t args; } KERNELS[] = {
    K(gs_q4_mm, 12), K(gs_q4a8_mm, 12), K(gs_q4_mm16, 12), K(gs_q4a8_mm16, 12),
    K(gs_q8_mm, 10), K(gs_q8a8_mm, 10), K(gs_q8_mm16, 10), K(gs_q8a8_mm16, 10),
    K(gs_f32_mm, 9), K(gs_bf16_linear, 9),
    K(gs_grouped, 10),
    K(gs_rms_norm_f32, 6), K(gs_rope_f32, 13), K(gs_silu_f32, 3), K(gs_attend_step_f32, 29), K(gs_binary_f32, 5),
    K(gs_rms_norm_bf16, 6), K(gs_rope_bf16, 13), K(gs_silu_bf16, 3), K(gs_attend_step_bf16, 29), K(gs_binary_bf16, 5),
    K(gs_binary_broadcast_f32, 16), K(gs_binary_broadcast_bf16, 16),
    K(gs_gather_rows, 6), K(gs_i64_to_f32, 3), K(gs_zero_bytes, 2), K(gs_concat2, 6),
    K(gs_softmax_f32, 4), K(gs_topk_f32, 6), K(gs_sum_f32, 5), K(gs_positions, 3),
};
#define KERNEL_COUNT ((int64_t)(sizeof KERNELS / sizeof KERNELS[0]))
#define MAX_ARGS 29

/* The index of the kernel `name` taking `args` arguments, or -1 when a program cannot call it. */
int64_t gs_program_kernel(const char *name, int64_t args) {
    for (int64_t i = 0; i < KERNEL_COUNT; i++)
        if (!strcmp(KERNELS[i].name, name)) return KERNELS[i].args == args ? i : -1;
    return -1;
}

/* The products of a mixture of experts' picks, with the experts read from `index` when it runs (so a
   replayed step computes whatever its router picked): pick p of `picks` (k per token) takes x's row
   p / k (a token's row, shared by its k picks) or p (x_per_pick) through expert index[p] into y's row
   p. Each picked expert runs the matrix product KERNELS[words[0]] once over all its rows (gathered
   in pick order when more than one: the weights are read once per expert, not once per pick); a
   row's numbers are those of the product over that row alone (matmul.c: the same sums per row in any
   block of rows). words: the kernel, its argument count, the positions of its x, y and row-count
   arguments, the bytes of a row of x and of y, then its arguments with x and y as for one row and
   the weights as for expert 0 (the row strides of x and y: a contiguous row's); strides: per
   argument, the bytes from one expert's weights to the next (0 for the others). `computed` (NULL:
   none): counts per expert, each expert's rows added. 0 on success; -3 for an expert index outside
   [0, experts) (nothing computed); -2 for malformed words; -1 without memory; else the kernel's
   status. */
int gs_grouped(const uint8_t *x, uint8_t *y, const int64_t *index, int64_t picks, int64_t k, int64_t x_per_pick,
               int64_t experts, const int64_t *words, const int64_t *strides, int64_t *computed) {
    const int64_t kernel = words[0], args = words[1], xa = words[2], ya = words[3], ma = words[4],
                  xrow = words[5], yrow = words[6];
    const int64_t *given = words + 7;
    if (kernel < 0 || kernel >= PRODUCTS || args != KERNELS[kernel].args || xa < 0 || xa >= args || ya < 0 ||
        ya >= args || ma < 0 || ma >= args || k <= 0 || experts <= 0 || picks < 0)
        return -2;
    for (int64_t p = 0; p < picks; p++)
        if (index[p] < 0 || index[p] >= experts) return -3;
    /* the picks in expert order (stable): first[e] .. first[e + 1] of `order` */
    int64_t *first = calloc((size_t)experts + 1, sizeof(int64_t)), *order = malloc(sizeof(int64_t) * (size_t)(picks + 1));
    uint8_t *xs = NULL, *ys = NULL;
    int st = 0;
    if (!first || !order) { st = -1; goto done; }
    for (int64_t p = 0; p < picks; p++) first[index[p] + 1]++;
    int64_t most = 0;
    for (int64_t e = 0; e < experts; e++) {
        most = first[e + 1] > most ? first[e + 1] : most;
        first[e + 1] += first[e];
    }
    for (int64_t p = 0, *next = first; p < picks; p++) order[next[index[p]]++] = p;
    for (int64_t e = experts; e > 0; e--) first[e] = first[e - 1];    /* next[] advanced first[] by one expert */
    first[0] = 0;
    if (most > 1) {
        xs = malloc((size_t)(most * xrow));
        ys = malloc((size_t)(most * yrow));
        if (!xs || !ys) { st = -1; goto done; }
    }
    int64_t a[MAX_ARGS];
    for (int64_t e = 0; e < experts && !st; e++) {
        const int64_t n = first[e + 1] - first[e];
        if (!n) continue;
        const int64_t *mine = order + first[e];
        for (int64_t i = 0; i < args; i++) a[i] = given[i] + e * strides[i];
        a[ma] = n;
        if (n == 1) {
            a[xa] = (int64_t)(intptr_t)(x + (x_per_pick ? mine[0] : mine[0] / k) * xrow);
            a[ya] = (int64_t)(intptr_t)(y + mine[0] * yrow);
            st = KERNELS[kernel].run(a);
        } else {
            for (int64_t i = 0; i < n; i++)
                memcpy(xs + i * xrow, x + (x_per_pick ? mine[i] : mine[i] / k) * xrow, (size_t)xrow);
            a[xa] = (int64_t)(intptr_t)xs;
            a[ya] = (int64_t)(intptr_t)ys;
            st = KERNELS[kernel].run(a);
            for (int64_t i = 0; i < n && !st; i++) memcpy(y + mine[i] * yrow, ys + i * yrow, (size_t)yrow);
        }
        if (!st && computed) computed[e] += n;
    }
done:
    free(first); free(order); free(xs); free(ys);
    return st;
}

/* Runs the `calls` calls of `program` in order. -1 when all succeeded; else the index of the call
   that returned a nonzero status (in *status), the calls after it not run; -2 (call index in
   *status) for a malformed word. */
int64_t gs_program_run(const int64_t *program, int64_t calls, int64_t delta, int64_t *status) {
    int64_t moved[MAX_ARGS];
    for (int64_t c = 0; c < calls; c++) {
        const int64_t kernel = program[0], args = program[1], mask = program[2];
        if (kernel < 0 || kernel >= KERNEL_COUNT || args != KERNELS[kernel].args) {
            *status = c;
            return -2;
        }
        const int64_t *a = program + 3;
        if (mask) {
            for (int64_t i = 0; i < args; i++) moved[i] = (mask >> i) & 1 ? a[i] + delta : a[i];
            a = moved;
        }
        const int st = KERNELS[kernel].run(a);
        if (st) {
            *status = st;
            return c;
        }
        program += 3 + args;
    }
    return -1;
}
