/* moe-bench's pieces beyond tools/moe_bench.c: the tiered-memory subcommands
 * (bench_tier.c), and the helpers they share with the main file. */
#ifndef MOE_TOOLS_BENCH_H
#define MOE_TOOLS_BENCH_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* prints obj as one compact line on stdout and releases it */
void bench_print_json(json_t *obj);
/* byte offset of character c (UTF-8) in s[0..len) */
size_t bench_utf8_offset(const char *s, size_t len, int64_t c);
/* moe-bench tier | trace | cache; argv[0] is the command */
int bench_tier_main(const char *cmd, int argc, char **argv);

#endif
