/* The gated delta rule (model_gdn.h): the plain C reference build of
 * model_gdn_impl.h, and the choice of the build this CPU runs best. */
#include "common/common.h"
#include "model/model_gdn.h"
#include "quant/quant.h"

#define GDN_NAME(x) x##_ref
#include "model/model_gdn_impl.h"

void moe_gdn_recurrent_avx2(const struct moe_gdn_head *h);
void moe_gdn_chunked_avx2(const struct moe_gdn_head *h, float *work);
void moe_gdn_recurrent_avx512(const struct moe_gdn_head *h);
void moe_gdn_chunked_avx512(const struct moe_gdn_head *h, float *work);

static const struct {
    void (*recurrent)(const struct moe_gdn_head *h);
    void (*chunked)(const struct moe_gdn_head *h, float *work);
} builds[MOE_ISA_COUNT] = {
    [MOE_ISA_REF] = {moe_gdn_recurrent_ref, moe_gdn_chunked_ref},
#ifndef MOE_NO_SIMD
    [MOE_ISA_AVX2] = {moe_gdn_recurrent_avx2, moe_gdn_chunked_avx2},
    [MOE_ISA_AVX512] = {moe_gdn_recurrent_avx512, moe_gdn_chunked_avx512},
#endif
};

static int isa = -1;

int moe_gdn_set_isa(int want)
{
    int best = (int)moe_isa_best();
#ifdef MOE_NO_SIMD
    best = MOE_ISA_REF;
#endif
    isa = want < 0 || want > best ? best : want;
    return isa;
}

void moe_gdn_recurrent(const struct moe_gdn_head *h)
{
    if (isa < 0)
        moe_gdn_set_isa(-1);
    builds[isa].recurrent(h);
}

void moe_gdn_chunked(const struct moe_gdn_head *h, float *work)
{
    if (isa < 0)
        moe_gdn_set_isa(-1);
    builds[isa].chunked(h, work);
}

size_t moe_gdn_chunked_work(int32_t dk, int32_t dv)
{
    size_t C = MOE_GDN_CHUNK;
    return 2 * C + C * (size_t)dv + C * (size_t)dk;
}
