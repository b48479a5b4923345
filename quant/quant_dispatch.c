/* Picks the kernels: the gemm kernel per dtype and ISA (a column of the
 * formats table, quant_types.c), the best ISA this CPU has (cpuid, lowered
 * by MOE_ISA=ref|avx2|avx512), and the fp32 vector helpers bound to it. MOE_NO_SIMD builds (the fuzzers) leave the
 * *_avx2.c / *_avx512.c files out, so nothing here may name their symbols. */
#include <stdlib.h>
#include <strings.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "common/common.h"
#include "quant/quant_int.h"

static const char *const isa_names[MOE_ISA_COUNT] = {"ref", "avx2", "avx512"};

const char *moe_isa_name(enum moe_isa isa)
{
    return (unsigned)isa < MOE_ISA_COUNT ? isa_names[isa] : "?";
}

moe_gemm_fn moe_gemm_kernel(enum moe_dtype dtype, enum moe_isa isa)
{
    const struct moe_dtype_traits *t = moe_dtype_traits(dtype);
    return t && (unsigned)isa < MOE_ISA_COUNT ? t->gemm[isa] : NULL;
}

static enum moe_isa isa_detect(void)
{
#if defined(MOE_NO_SIMD) || !(defined(__x86_64__) || defined(__i386__))
    return MOE_ISA_REF;
#else
    enum moe_isa best = MOE_ISA_REF;
    __builtin_cpu_init();
    /* F16C straight from cpuid: not every compiler's __builtin_cpu_supports
     * knows its name (clang 14 does not) */
    unsigned a, b, c, d;
    bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c) {
        best = MOE_ISA_AVX2;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
            best = MOE_ISA_AVX512;
    }
    const char *env = getenv("MOE_ISA");
    if (env && *env) {
        enum moe_isa want = MOE_ISA_COUNT;
        for (int i = 0; i < MOE_ISA_COUNT; i++)
            if (!strcasecmp(env, isa_names[i]))
                want = (enum moe_isa)i;
        if (want == MOE_ISA_COUNT)
            moe_log(MOE_LOG_WARN, "MOE_ISA=%s: unknown (ref, avx2 or avx512); using %s", env,
                    isa_names[best]);
        else if (want < best)
            best = want; /* only ever lowered: asking for more than cpuid has is ignored */
    }
    return best;
#endif
}

/* -1 until the first call; racing first calls compute the same answer */
static int isa_cached = -1;

enum moe_isa moe_isa_best(void)
{
    int v = __atomic_load_n(&isa_cached, __ATOMIC_ACQUIRE);
    if (v < 0) {
        v = (int)isa_detect();
        __atomic_store_n(&isa_cached, v, __ATOMIC_RELEASE);
    }
    return (enum moe_isa)v;
}

/* ---- fp32 vector helpers, bound to the best ISA on first use ------------ */

typedef float (*dot_fn)(const float *, const float *, int64_t);
typedef void (*axpy_fn)(float *, float, const float *, int64_t);

static float dot_resolve(const float *a, const float *b, int64_t n);
static void axpy_resolve(float *y, float a, const float *x, int64_t n);
static dot_fn dot_impl = dot_resolve;
static axpy_fn axpy_impl = axpy_resolve;

static void vec_bind(void)
{
    dot_fn d = moe_quant_vec_dot_f32_ref;
    axpy_fn a = moe_quant_vec_axpy_f32_ref;
#ifndef MOE_NO_SIMD
    switch (moe_isa_best()) {
    case MOE_ISA_AVX512:
        d = moe_quant_vec_dot_f32_avx512;
        a = moe_quant_vec_axpy_f32_avx512;
        break;
    case MOE_ISA_AVX2:
        d = moe_quant_vec_dot_f32_avx2;
        a = moe_quant_vec_axpy_f32_avx2;
        break;
    default:
        break;
    }
#endif
    __atomic_store_n(&dot_impl, d, __ATOMIC_RELAXED);
    __atomic_store_n(&axpy_impl, a, __ATOMIC_RELAXED);
}

static float dot_resolve(const float *a, const float *b, int64_t n)
{
    vec_bind();
    return __atomic_load_n(&dot_impl, __ATOMIC_RELAXED)(a, b, n);
}

static void axpy_resolve(float *y, float a, const float *x, int64_t n)
{
    vec_bind();
    __atomic_load_n(&axpy_impl, __ATOMIC_RELAXED)(y, a, x, n);
}

float moe_vec_dot_f32(const float *a, const float *b, int64_t n)
{
    return __atomic_load_n(&dot_impl, __ATOMIC_RELAXED)(a, b, n);
}

void moe_vec_axpy_f32(float *y, float a, const float *x, int64_t n)
{
    __atomic_load_n(&axpy_impl, __ATOMIC_RELAXED)(y, a, x, n);
}

void moe_vec_add_rows(float *y, const float *b, int32_t n, int64_t dim)
{
    if (!b)
        return;
    for (int32_t t = 0; t < n; t++)
        for (int64_t i = 0; i < dim; i++)
            y[t * dim + i] += b[i];
}
