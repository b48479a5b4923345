/* The gated delta rule built for AVX2 (model_gdn_impl.h). */
#define GDN_NAME(x) x##_avx2
#include "model/model_gdn_impl.h"
