/* libFuzzer target: arbitrary bytes as a connection's first bytes, checked
 * the way the gate checks them (ipc/ipc_head.c). The answer must be one of
 * "more", "sound" (with a head length inside the input that ends in an empty
 * line) or an error status the gate knows, with a message; and a sound head
 * stays sound, with the same length, when more bytes (a body) follow it. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ipc/ipc_int.h"

#define MAX_HEAD 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct moe_ipc_error e = {0};
    size_t head = 0;
    int rc = moe_ipc_head_check((const char *)data, size, MAX_HEAD, &head, &e);
    if (rc == -EAGAIN)
        return 0;
    if (rc > 0) {
        if ((rc != 400 && rc != 431 && rc != 501 && rc != 505) || e.status != rc ||
            !e.message[0] || !e.code)
            abort();
        return 0;
    }
    if (rc != 0 || head == 0 || head > size || head > MAX_HEAD || data[head - 1] != '\n')
        abort();
    /* with a body behind it, the same head */
    char *more = malloc(size + 7);
    if (!more)
        return 0;
    memcpy(more, data, size);
    memcpy(more + size, "{\"a\":1}", 7);
    size_t head2 = 0;
    if (moe_ipc_head_check(more, size + 7, MAX_HEAD + 7, &head2, &e) != 0 || head2 != head)
        abort();
    free(more);
    return 0;
}
