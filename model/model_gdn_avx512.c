/* The gated delta rule built for AVX512 (model_gdn_impl.h). */
#define GDN_NAME(x) x##_avx512
#include "model/model_gdn_impl.h"
