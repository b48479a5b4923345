#include "common/common.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

static _Atomic int max_level = MOE_LOG_INFO; /* a reload may change it under other threads */
static int under_systemd = -1;

void moe_log_set_level(enum moe_log_level lvl)
{
    atomic_store(&max_level, (int)lvl);
}

void moe_log(enum moe_log_level lvl, const char *fmt, ...)
{
    if ((int)lvl > atomic_load(&max_level))
        return;
    /* journald reads "<N>" prefixes as priorities; only emit them there. */
    if (under_systemd < 0)
        under_systemd = getenv("JOURNAL_STREAM") != NULL;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (under_systemd)
        fprintf(stderr, "<%d>%s\n", (int)lvl, line);
    else
        fprintf(stderr, "%s\n", line);
}
