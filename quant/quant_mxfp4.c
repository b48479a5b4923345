/* MXFP4 (OCP microscaling FP4, ggml's GGML_TYPE_MXFP4): the traits
 * conversions, the converter from the Hugging Face layout of gpt-oss and the
 * plain C reference kernel. Layout and value rules: quant.h.
 *
 * Weights are formed as ggml forms them: the E2M1 value doubled (an integer,
 * moe_mxfp4_kv2) times half the block scale, 2^(e - 128) (ggml's
 * e8m0_to_fp32_half; e = 0 and 1 are fp32 subnormals). Both factors are exact
 * and so is their product (a small integer times a power of two) unless it
 * overflows (e >= 253), so every kernel that multiplies the same two fp32
 * numbers gets the same weight. */
#include <errno.h>
#include <float.h>
#include <math.h>

#include "common/common.h"
#include "quant/quant_int.h"

_Static_assert(sizeof(struct moe_block_mxfp4) == 17, "mxfp4 block is 17 bytes, as ggml's");
_Static_assert(MOE_MXFP4_BLOCK == 32, "mxfp4 blocks hold 32 values");

const float moe_mxfp4_kv2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

/* 2^(e - 128) as fp32 bits: 0x00200000 << e for the subnormals e = 0, 1, the
 * exponent field e - 1 for the rest (e = 255 gives 2^127, not NaN, as ggml) */
#define HS(e) ((e) < 2 ? UINT32_C(0x00200000) << ((e) & 1) : (uint32_t)((e) - 1) << 23)
#define HS4(e) HS(e), HS((e) + 1), HS((e) + 2), HS((e) + 3)
#define HS16(e) HS4(e), HS4((e) + 4), HS4((e) + 8), HS4((e) + 12)
#define HS64(e) HS16(e), HS16((e) + 16), HS16((e) + 32), HS16((e) + 48)
const uint32_t moe_mxfp4_half_scale_bits[256] = {HS64(0), HS64(64), HS64(128), HS64(192)};
#undef HS
#undef HS4
#undef HS16
#undef HS64

/* one block's 32 weights as fp32, in order */
static inline void block_to_f32(const struct moe_block_mxfp4 *b, float *dst)
{
    float d = moe_mxfp4_half_scale(b->e);
    for (int j = 0; j < 16; j++) {
        dst[j] = moe_mxfp4_kv2[b->qs[j] & 15] * d;
        dst[j + 16] = moe_mxfp4_kv2[b->qs[j] >> 4] * d;
    }
}

void moe_mxfp4_to_f32(const void *src, float *dst, int64_t n)
{
    const struct moe_block_mxfp4 *b = src;
    for (int64_t i = 0; i < n / MOE_MXFP4_BLOCK; i++)
        block_to_f32(&b[i], dst + i * MOE_MXFP4_BLOCK);
}

/* The E2M1 code nearest x on a block of scale 1 / inv_scale, as ggml's
 * search over all 16 codes picks it (the first code of least |value - x|):
 * t = |x| / scale is exact (a power of two), so is every difference ggml
 * compares between neighbouring codes (each within a factor of 2 of x,
 * Sterbenz), and a tie goes to the code of smaller magnitude, which comes
 * first in ggml's table. So counting the midpoints 0.25 .. 5 below t gives
 * the same magnitude, and the sign applies to nonzero magnitudes only (-0.0
 * and a negative value that rounds to zero get code 0, as in ggml). NaN and
 * inf get code 0: ggml's search finds no error below the first code's. */
static inline uint8_t e2m1_code(float x, float inv_scale)
{
    float t = fabsf(x) * inv_scale;
    if (!(t <= FLT_MAX))
        return 0;
    int m = (t > 0.25f) + (t > 0.75f) + (t > 1.25f) + (t > 1.75f) + (t > 2.5f) + (t > 3.5f) +
            (t > 5.0f);
    return (uint8_t)(m && x < 0.0f ? m | 8 : m);
}

/* ggml's quantize_row_mxfp4_ref, bit for bit: e = floor(log2(amax)) - 2 +
 * 127 (the largest value lands in [4, 8) times the scale, and values from 6
 * up saturate), each value to its nearest code. Where ggml's float-to-uint8
 * conversion is undefined (amax < 2^-125, where the sum goes negative; x86
 * gives e = 255 and up, which ggml's own validator then refuses; amax = inf)
 * e is clamped to 0 .. 254. */
void moe_mxfp4_from_f32(const float *src, void *dst, int64_t n)
{
    struct moe_block_mxfp4 *b = dst;
    for (int64_t i = 0; i < n / MOE_MXFP4_BLOCK; i++) {
        const float *x = src + i * MOE_MXFP4_BLOCK;
        float amax = 0.0f;
        for (int j = 0; j < MOE_MXFP4_BLOCK; j++)
            if (amax < fabsf(x[j]))
                amax = fabsf(x[j]); /* NaN never compares greater: skipped, as in ggml */
        uint8_t e = 0;
        if (amax > 0.0f) {
            float fe = floorf(log2f(amax)) - 2 + 127;
            e = fe < 0.0f ? 0 : (fe > 254.0f ? 254 : (uint8_t)fe);
        }
        /* 1 / 2^(e - 127) = 2^(127 - e): exponent field 254 - e, 2^-127 a
         * subnormal for e = 254 */
        uint32_t ib = e < 254 ? (uint32_t)(254 - e) << 23 : UINT32_C(0x00400000);
        float inv_scale;
        memcpy(&inv_scale, &ib, 4);
        b[i].e = e;
        for (int j = 0; j < 16; j++)
            b[i].qs[j] =
                (uint8_t)(e2m1_code(x[j], inv_scale) | e2m1_code(x[j + 16], inv_scale) << 4);
    }
}

/* ---- the Hugging Face layout ---------------------------------------------- */

/* the 8 nibbles of v (bits 0..31) to the low halves of 8 bytes */
static inline uint64_t nibbles_to_bytes(uint64_t v)
{
    v &= 0xffffffffu;
    v = (v | v << 16) & UINT64_C(0x0000ffff0000ffff);
    v = (v | v << 8) & UINT64_C(0x00ff00ff00ff00ff);
    v = (v | v << 4) & UINT64_C(0x0f0f0f0f0f0f0f0f);
    return v;
}

static inline uint64_t load_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static inline void store_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* In a HF block, bytes 0..7 read as a little-endian word hold values 0..15 at
 * nibbles 0..15 (value 2j low in byte j, 2j + 1 high), bytes 8..15 values
 * 16..31; moed's byte j is nibble j of the first word | nibble j of the
 * second << 4. */
int moe_mxfp4_from_hf(const uint8_t *blocks, const uint8_t *scales, int64_t rows, int64_t cols,
                      void *dst)
{
    if (rows < 0 || cols < 0 || cols % MOE_MXFP4_BLOCK)
        return moe_err(-EINVAL, "mxfp4: %lld x %lld is not rows of whole blocks of %d",
                       (long long)rows, (long long)cols, MOE_MXFP4_BLOCK);
    int64_t nb = cols / MOE_MXFP4_BLOCK;
    struct moe_block_mxfp4 *d = dst;
    for (int64_t i = 0; i < rows * nb; i++) {
        if (scales[i] == 0xff)
            return moe_err(-EINVAL, "mxfp4: row %lld block %lld: scale 255 (NaN in E8M0)",
                           (long long)(i / nb), (long long)(i % nb));
        const uint8_t *s = blocks + 16 * i;
        uint64_t lo = load_le64(s), hi = load_le64(s + 8);
        d[i].e = scales[i];
        store_le64(d[i].qs, nibbles_to_bytes(lo) | nibbles_to_bytes(hi) << 4);
        store_le64(d[i].qs + 8, nibbles_to_bytes(lo >> 32) | nibbles_to_bytes(hi >> 32) << 4);
    }
    return 0;
}
