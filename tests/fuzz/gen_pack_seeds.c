/* Writes the fuzz_pack seeds (small valid packs, under libFuzzer's 16 KiB
 * max_len) through the real writer:
 *   make && cc -I. tests/fuzz/gen_pack_seeds.c build/lib/libmoe.a \
 *       -ljansson -lxxhash -lm -o /tmp/gen && /tmp/gen tests/fuzz/corpus/fuzz_pack */
#include <stdio.h>

#include "common/common.h"
#include "format/format_pack.h"

static int seed(const char *dir, const char *name, int kind)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    struct moe_pack_writer *w;
    if (moe_pack_writer_open(path, &w) < 0)
        return -1;
    float f[6] = {1, 2, 3, 4, 5, 6};
    uint16_t h[8] = {0x3f80, 0x4000, 0, 1, 2, 3, 4, 5};
    uint8_t q[34 * 2] = {0};
    int64_t d2[2] = {2, 3}, d1[1] = {8}, dq[2] = {1, 64};
    if (kind == 0) {
        moe_pack_writer_add_tensor(w, "embed", MOE_DTYPE_F32, 2, d2, f, sizeof(f));
        moe_pack_writer_add_tensor(w, "final_norm", MOE_DTYPE_BF16, 1, d1, h, sizeof(h));
        moe_pack_writer_add_tensor(w, "layers.0.router", MOE_DTYPE_Q8_0, 2, dq, q, sizeof(q));
        moe_pack_writer_add_blob(w, "tokenizer.json", "{}", 2);
        struct moe_pack_part parts[3] = {
            {"gate", MOE_DTYPE_BF16, 2, 4, h, 16},
            {"up", MOE_DTYPE_F32, 2, 3, f, 24},
            {"down", MOE_DTYPE_BF16, 4, 2, h, 16},
        };
        moe_pack_writer_add_expert(w, 1, 3, parts, 3);
        moe_pack_writer_set_json(w, "config", json_pack("{s:i, s:s}", "hidden", 3, "arch",
                                                        "mixtral"));
        moe_pack_writer_set_json(w, "quant", json_pack("{s:s}", "experts", "bf16"));
    } else if (kind == 1) {
        struct moe_pack_part parts[4] = {
            {"down", MOE_DTYPE_F32, 1, 2, f, 8},
            {"lowp", MOE_DTYPE_Q8_0, 1, 32, q, 34},
            {"gate", MOE_DTYPE_F32, 2, 1, f, 8},
            {"up", MOE_DTYPE_F32, 2, 1, f + 2, 8},
        };
        moe_pack_writer_add_expert(w, 0, 0, parts, 4);
        moe_pack_writer_add_blob(w, "qmoe.decode_table", h, sizeof(h));
        moe_pack_writer_add_blob(w, "empty", "", 0);
    }
    return moe_pack_writer_commit(w);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : ".";
    if (seed(dir, "valid", 0) < 0 || seed(dir, "extra-part", 1) < 0 || seed(dir, "empty", 2) < 0) {
        fprintf(stderr, "gen_pack_seeds: %s\n", moe_err_msg());
        return 1;
    }
    return 0;
}
