/* Shared by the format fuzz targets (not a target itself: make fuzz builds
 * tests/fuzz/fuzz_*.c only). */
#ifndef MOE_FUZZ_CONVERT_H
#define MOE_FUZZ_CONVERT_H

#include <stdint.h>

#include "format/format.h"
#include "quant/quant.h"

/* Converts the first blocks of t to fp32 through its dtype's to_f32, as the
 * loaders do (vectors at load, matrices in the kernels): an element the
 * reader handed out misaligned is a UBSan report there, and a plain-typed
 * one (f32, f16, bf16) off its size traps here first. */
static inline void fuzz_convert(const struct moe_tensor_info *t, volatile uint8_t *sink)
{
    const struct moe_dtype_traits *tr = t->dtype >= 0 ? moe_dtype_traits(t->dtype) : NULL;
    if (!tr || !tr->to_f32 || tr->view || !tr->block_bytes || tr->block_size <= 0 ||
        tr->block_size > 256)
        return;
    if (tr->block_size == 1 && (uintptr_t)t->data % tr->block_bytes)
        __builtin_trap();
    float out[256];
    size_t blocks = t->nbytes / tr->block_bytes, cap = 256 / (size_t)tr->block_size;
    if (blocks > cap)
        blocks = cap;
    if (!blocks)
        return;
    tr->to_f32(t->data, out, (int64_t)blocks * tr->block_size);
    for (size_t i = 0; i < blocks * (size_t)tr->block_size; i++)
        *sink ^= (uint8_t)(out[i] != out[i]);
}

#endif
