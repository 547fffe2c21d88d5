/* bf16 <-> fp32 for the C kernels (matmul.c, rows.c): a bf16 is the upper half of an fp32. */
#ifndef GS_BF16_H
#define GS_BF16_H
#include <stdint.h>
#include <string.h>

static inline float bf16_to_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, sizeof f); return f;
}

/* torch's round to nearest even; a NaN stays a quiet NaN */
static inline uint16_t float_to_bf16(float f) {
    uint32_t u; memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
#endif
