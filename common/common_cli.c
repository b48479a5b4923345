/* Helpers the command-line tools share: option names for messages and
 * range-checked numbers. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"

const char *moe_cli_opt_name(const struct option *opts, int val)
{
    for (const struct option *o = opts; o->name; o++)
        if (o->val == val)
            return o->name;
    return "?";
}

int moe_cli_number(const char *prog, const char *opt, const char *s, double lo, double hi,
                   double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "%s: --%s: expected a number in [%g, %g], got '%s'\n", prog, opt, lo, hi,
                s);
        return -1;
    }
    *out = v;
    return 0;
}

int moe_cli_integer(const char *prog, const char *opt, const char *s, int64_t lo, int64_t hi,
                    int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "%s: --%s: expected an integer in [%lld, %lld], got '%s'\n", prog, opt,
                (long long)lo, (long long)hi, s);
        return -1;
    }
    *out = v;
    return 0;
}
