/* libFuzzer target: arbitrary bytes as a Hugging Face config.json. The
 * parser must answer with a config or an error message, never crash. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/common.h"
#include "model/model_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    if (!path[0])
        snprintf(path, sizeof(path), "/tmp/fuzz-config-%d.json", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    struct moe_config cfg;
    if (moe_config_from_hf(path, &cfg) < 0 && moe_err_msg()[0] == '\0')
        abort(); /* every failure must say why */
    return 0;
}
