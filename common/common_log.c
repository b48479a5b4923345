#include "common/common.h"

#include <stdio.h>
#include <stdlib.h>

static enum moe_log_level max_level = MOE_LOG_INFO;
static int under_systemd = -1;

void moe_log_set_level(enum moe_log_level lvl)
{
    max_level = lvl;
}

void moe_log(enum moe_log_level lvl, const char *fmt, ...)
{
    if (lvl > max_level)
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
