#include "common/common.h"

#include <stdio.h>
#include <string.h>

static _Thread_local char err_msg[1024];

int moe_err(int code, const char *fmt, ...)
{
    /* formatted aside first: callers often wrap the previous message
     * (moe_err(rc, "%s: %s", path, moe_err_msg())), which must not be read
     * while it is overwritten */
    char buf[sizeof(err_msg)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    /* one line, whatever a file put in the names and values quoted: a
     * control byte (a newline in a JSON key, a tensor name) becomes '?' */
    for (char *p = buf; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    memcpy(err_msg, buf, sizeof(err_msg));
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
