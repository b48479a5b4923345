#include "common/common.h"

#include <stdio.h>

static _Thread_local char err_msg[1024];

int moe_err(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof(err_msg), fmt, ap);
    va_end(ap);
    return code;
}

const char *moe_err_msg(void)
{
    return err_msg;
}

void moe_err_clear(void)
{
    err_msg[0] = '\0';
}
