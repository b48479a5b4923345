/* The daemon's config table and INI reader: defaults, every key, bad values
 * named file:line, the inih pitfalls (long, indented, inline comments),
 * reload semantics, dump round trip, etc/moed.ini in step with the table,
 * and the systemd helpers (socket activation, notify). */
#include "tests/unit/test.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdbool.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "common/common.h"
#include "daemon/daemon.h"
#include "engine/engine_server.h"
#include "ipc/ipc.h"
#include "model/model.h"
#include "router/router.h"
#include "tests/unit/test_model_to_pack.h"

/* ---- helpers ---------------------------------------------------------------- */

static int parse(const char *text, struct moe_daemon_config *c)
{
    return moe_daemon_config_parse("t.ini", text, strlen(text), c);
}

static void parse_ok(const char *text, struct moe_daemon_config *c)
{
    if (parse(text, c))
        fail_msg("parse failed: %s\n--- input:\n%s", moe_err_msg(), text);
}

/* parse must fail with -EINVAL and exactly this message */
static void parse_err(const char *text, const char *want)
{
    struct moe_daemon_config c;
    int rc = parse(text, &c);
    if (rc != -EINVAL)
        fail_msg("expected -EINVAL, got %d (%s)\n--- input:\n%s", rc, moe_err_msg(), text);
    if (strcmp(moe_err_msg(), want))
        fail_msg("message\n  got:  %s\n  want: %s", moe_err_msg(), want);
}

/* parse must fail with a message that starts with prefix */
static void parse_err_prefix(const char *text, const char *prefix)
{
    struct moe_daemon_config c;
    int rc = parse(text, &c);
    if (rc != -EINVAL)
        fail_msg("expected -EINVAL, got %d (%s)\n--- input:\n%s", rc, moe_err_msg(), text);
    if (strncmp(moe_err_msg(), prefix, strlen(prefix)))
        fail_msg("message\n  got:  %s\n  want: %s...", moe_err_msg(), prefix);
}

static char *dump_to_string(const struct moe_daemon_config *c, const char *source)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    assert_non_null(f);
    assert_int_equal(moe_daemon_config_dump(c, source, f), 0);
    fclose(f);
    return buf;
}

static const char *write_tmp(const char *name, const char *text)
{
    static char path[4][512];
    static int i;
    i = (i + 1) % 4;
    snprintf(path[i], sizeof(path[i]), "%s/%s", moe_test_tmpdir(), name);
    moe_test_write_file(path[i], text, strlen(text));
    return path[i];
}

/* ---- defaults ------------------------------------------------------------------ */

static void test_defaults(void **state)
{
    (void)state;
    struct moe_daemon_config c, e;
    assert_int_equal(moe_daemon_config_defaults(&c), 0);
    assert_string_equal(c.socket, "/run/moed/moed.sock");
    assert_int_equal(c.socket_mode, 0660);
    /* socket_group = auto: group moed where it exists and we are in it (or
     * root), else our own group */
    assert_string_equal(c.socket_group.text, "auto");
    {
        struct group *g = getgrnam("moed");
        if (!g)
            assert_int_equal(c.socket_group.gid, (gid_t)-1);
        else if (geteuid() == 0)
            assert_int_equal(c.socket_group.gid, g->gr_gid);
    }
    assert_int_equal(c.allow_uids.n, 0);
    assert_int_equal(c.allow_gids.n, 0);
    assert_int_equal(c.threads, 0);
    assert_int_equal(c.log_level, MOE_LOG_INFO);
    assert_true(c.drain_timeout == 30.0);
    assert_true(c.watchdog);
    assert_string_equal(c.model_path, "/var/lib/moed/models/default");
    assert_string_equal(c.model_name, "");
    assert_int_equal(c.chat_template, MOE_DAEMON_CHAT_AUTO);
    assert_int_equal(c.max_seqs, 16);
    assert_int_equal(c.max_batch_tokens, 512);
    assert_int_equal(c.max_ctx, 4096);
    assert_int_equal(c.max_queue, 64);
    assert_int_equal(c.max_body_bytes, 1 << 20);
    assert_int_equal(c.max_prompt_bytes, 256 << 10);
    assert_int_equal(c.max_tokens_limit, 4096);
    assert_true(c.request_timeout == 600.0);
    assert_true(c.temperature == 1.0 && c.top_p == 1.0 && c.min_p == 0.0);
    assert_true(c.repetition_penalty == 1.0);
    assert_int_equal(c.top_k, 0);
    assert_int_equal(c.max_tokens_default, 256);
    assert_int_equal(c.seed, -1);

    /* an empty file, or one with only comments and headers, is the defaults */
    parse_ok("", &e);
    assert_true(moe_daemon_config_equal(&c, &e));
    moe_daemon_config_free(&e);
    parse_ok("# nothing\n\n[daemon]\n; still nothing\n   # indented comment\n[model]\n", &e);
    assert_true(moe_daemon_config_equal(&c, &e));
    moe_daemon_config_free(&e);
    moe_daemon_config_free(&c);
}

/* the table: every key documented, unique, with a default that parses and
 * that the dump prints back unchanged */
static void test_table(void **state)
{
    (void)state;
    size_t n;
    const struct moe_daemon_key *t = moe_daemon_config_table(&n);
    struct moe_daemon_config c;
    assert_true(n >= 30);
    assert_int_equal(moe_daemon_config_defaults(&c), 0);
    for (size_t i = 0; i < n; i++) {
        char val[512];
        assert_non_null(t[i].doc);
        assert_true(strlen(t[i].doc) > 10);
        assert_null(strchr(t[i].doc, '\n'));
        for (size_t j = 0; j < i; j++)
            assert_false(!strcmp(t[i].section, t[j].section) && !strcmp(t[i].name, t[j].name));
        assert_ptr_equal(moe_daemon_config_find(t[i].section, t[i].name), &t[i]);
        moe_daemon_key_format(&t[i], &c, val, sizeof(val));
        assert_string_equal(val, t[i].def);
    }
    assert_null(moe_daemon_config_find("daemon", "nope"));
    /* the reloadable split the daemon relies on */
    static const struct { const char *s, *k; bool reload; } want[] = {
        {"daemon", "socket", false},        {"model", "path", false},
        {"batching", "max_ctx", false},     {"batching", "max_seqs", false},
        {"daemon", "threads", false},       {"daemon", "log_level", true},
        {"daemon", "drain_timeout", true},  {"batching", "max_queue", true},
        {"daemon", "allow_uids", true},     {"daemon", "allow_gids", true},
        {"limits", "max_body_bytes", true}, {"limits", "max_tokens", true},
        {"sampling", "temperature", true},  {"sampling", "seed", true},
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(want); i++) {
        const struct moe_daemon_key *k = moe_daemon_config_find(want[i].s, want[i].k);
        assert_non_null(k);
        assert_int_equal(!!(k->flags & MOE_CFG_RELOAD), want[i].reload);
    }
    moe_daemon_config_free(&c);
}

/* ---- every key ------------------------------------------------------------------ */

struct key_case {
    const char *section, *name, *value; /* a valid non-default value */
    const char *formatted;              /* how the dump prints it back */
};

static const struct key_case key_cases[] = {
    {"daemon", "socket", "/tmp/a b.sock", "/tmp/a b.sock"},
    {"daemon", "socket_mode", "600", "0600"},
    {"daemon", "socket_group", "0", "0"},
    {"daemon", "allow_uids", "0, 1000,1001 4242", "0, 1000,1001 4242"},
    {"daemon", "allow_gids", "root 5", "root 5"},
    {"daemon", "listen", "unix:/tmp/x.sock, tcp:127.0.0.1:8080", "unix:/tmp/x.sock, tcp:127.0.0.1:8080"},
    {"daemon", "api_key", "sk-local-123", "sk-local-123"},
    {"daemon", "max_connections_per_peer", "8", "8"},
    {"daemon", "header_timeout", "2.5", "2.5"},
    {"daemon", "body_timeout", "5", "5"},
    {"daemon", "write_timeout", "7", "7"},
    {"daemon", "threads", "12", "12"},
    {"daemon", "http_threads", "8", "8"},
    {"daemon", "log_level", "debug", "debug"},
    {"daemon", "drain_timeout", "2.5", "2.5"},
    {"daemon", "watchdog", "Off", "no"},
    {"model", "path", "/models/My Model", "/models/My Model"},
    {"model", "name", "tiny", "tiny"},
    {"model", "chat_template", "mistral", "mistral"},
    {"model", "chat_template_file", "/etc/moed/chat.jinja", "/etc/moed/chat.jinja"},
    {"model", "prefault", "no", "no"},
    {"batching", "max_seqs", "4", "4"},
    {"batching", "max_batch_tokens", "2048", "2048"},
    {"batching", "max_ctx", "0", "0"},
    {"batching", "max_queue", "0", "0"},
    {"kv", "bytes", "65536K", "64M"},
    {"kv", "tokens", "100000", "100000"},
    {"kv", "key_bits", "4", "4"},
    {"kv", "value_bits", "2", "2"},
    {"kv", "group", "32", "32"},
    {"kv", "residual", "128", "128"},
    {"kv", "state_bits", "16", "16"},
    {"kv", "prefix_cache", "yes", "yes"},
    {"router", "odp", "on", "on"},
    {"router", "beta", "0.45", "0.45"},
    {"router", "layers", "2-5, 7", "2-5, 7"},
    {"router", "beta_layers", "2:0.4,3-4:0.5", "2:0.4,3-4:0.5"},
    {"router", "protect_fraction", "0.05", "0.05"},
    {"offload", "mode", "tiered", "tiered"},
    {"offload", "host_bytes", "2G", "2G"},
    {"offload", "policy", "static", "static"},
    {"offload", "queue_depth", "64", "64"},
    {"offload", "numa", "interleave", "interleave"},
    {"offload", "hugepages", "no", "no"},
    {"offload", "prefetch", "no", "no"},
    {"offload", "pread", "yes", "yes"},
    {"offload", "trace", "/var/lib/moed/trace.txt", "/var/lib/moed/trace.txt"},
    {"limits", "max_body_bytes", "2048k", "2M"},
    {"limits", "max_prompt_bytes", "1000", "1000"},
    {"limits", "max_tokens", "8192", "8192"},
    {"limits", "request_timeout", "0", "0"},
    {"sampling", "temperature", "0.7", "0.7"},
    {"sampling", "top_k", "40", "40"},
    {"sampling", "top_p", "0.95", "0.95"},
    {"sampling", "min_p", "0.05", "0.05"},
    {"sampling", "repetition_penalty", "1.1", "1.1"},
    {"sampling", "presence_penalty", "-0.5", "-0.5"},
    {"sampling", "frequency_penalty", "1.5e0", "1.5"},
    {"sampling", "penalty_last_n", "0", "0"},
    {"sampling", "max_tokens", "100", "100"},
    {"sampling", "seed", "9223372036854775807", "9223372036854775807"},
};

static void test_every_key(void **state)
{
    (void)state;
    size_t n;
    const struct moe_daemon_key *t = moe_daemon_config_table(&n);
    struct moe_daemon_config def;
    assert_int_equal(moe_daemon_config_defaults(&def), 0);

    /* the cases cover the table */
    assert_int_equal(MOE_ARRAY_SIZE(key_cases), n);
    for (size_t i = 0; i < n; i++) {
        bool found = false;
        for (size_t j = 0; j < MOE_ARRAY_SIZE(key_cases); j++)
            found |= !strcmp(key_cases[j].section, t[i].section) &&
                     !strcmp(key_cases[j].name, t[i].name);
        if (!found)
            fail_msg("no test case for [%s] %s", t[i].section, t[i].name);
    }

    /* each alone: that key changes, nothing else does */
    for (size_t j = 0; j < MOE_ARRAY_SIZE(key_cases); j++) {
        const struct key_case *kc = &key_cases[j];
        const struct moe_daemon_key *k = moe_daemon_config_find(kc->section, kc->name);
        char text[512], val[512];
        struct moe_daemon_config c;
        snprintf(text, sizeof(text), "[%s]\n%s = %s\n", kc->section, kc->name, kc->value);
        parse_ok(text, &c);
        moe_daemon_key_format(k, &c, val, sizeof(val));
        assert_string_equal(val, kc->formatted);
        for (size_t i = 0; i < n; i++) {
            bool same = moe_daemon_key_equal(&t[i], &c, &def);
            if (same != (&t[i] != k))
                fail_msg("[%s] %s = %s: [%s] %s %s", kc->section, kc->name, kc->value,
                         t[i].section, t[i].name, same ? "did not change" : "changed too");
        }
        moe_daemon_config_free(&c);
    }

    /* all at once, then the values land in the right fields */
    char all[8192];
    size_t len = 0;
    const char *sec = "";
    for (size_t j = 0; j < MOE_ARRAY_SIZE(key_cases); j++) {
        if (strcmp(sec, key_cases[j].section))
            len += (size_t)snprintf(all + len, sizeof(all) - len, "[%s]\n",
                                    sec = key_cases[j].section);
        len += (size_t)snprintf(all + len, sizeof(all) - len, "%s=%s\n", key_cases[j].name,
                                key_cases[j].value);
    }
    struct moe_daemon_config c;
    parse_ok(all, &c);
    assert_string_equal(c.socket, "/tmp/a b.sock");
    assert_int_equal(c.socket_mode, 0600);
    assert_int_equal(c.socket_group.gid, 0);
    assert_int_equal(c.allow_uids.n, 4);
    assert_int_equal(c.allow_uids.ids[0], 0);
    assert_int_equal(c.allow_uids.ids[1], 1000);
    assert_int_equal(c.allow_uids.ids[2], 1001);
    assert_int_equal(c.allow_uids.ids[3], 4242);
    assert_int_equal(c.allow_gids.n, 2);
    assert_int_equal(c.allow_gids.ids[0], 0);
    assert_int_equal(c.allow_gids.ids[1], 5);
    assert_int_equal(c.threads, 12);
    assert_int_equal(c.http_threads, 8);
    assert_int_equal(c.log_level, MOE_LOG_DEBUG);
    assert_true(c.drain_timeout == 2.5);
    assert_false(c.watchdog);
    assert_string_equal(c.model_path, "/models/My Model");
    assert_string_equal(c.model_name, "tiny");
    assert_int_equal(c.chat_template, MOE_CHAT_MISTRAL);
    assert_int_equal(c.max_seqs, 4);
    assert_int_equal(c.max_batch_tokens, 2048);
    assert_int_equal(c.max_ctx, 0);
    assert_int_equal(c.max_queue, 0);
    assert_int_equal(c.max_body_bytes, 2 << 20);
    assert_int_equal(c.max_prompt_bytes, 1000);
    assert_int_equal(c.max_tokens_limit, 8192);
    assert_true(c.request_timeout == 0.0);
    assert_true(c.temperature == 0.7);
    assert_int_equal(c.top_k, 40);
    assert_true(c.top_p == 0.95 && c.min_p == 0.05);
    assert_true(c.repetition_penalty == 1.1);
    assert_true(c.presence_penalty == -0.5 && c.frequency_penalty == 1.5);
    assert_int_equal(c.penalty_last_n, 0);
    assert_int_equal(c.max_tokens_default, 100);
    assert_true(c.seed == INT64_MAX);
    moe_daemon_config_free(&c);
    moe_daemon_config_free(&def);
}

static void test_value_forms(void **state)
{
    (void)state;
    struct moe_daemon_config c;
    static const char *const yes[] = {"yes", "YES", "true", "True", "on", "1"};
    static const char *const no[] = {"no", "false", "OFF", "0"};
    char text[128];
    for (size_t i = 0; i < MOE_ARRAY_SIZE(yes); i++) {
        snprintf(text, sizeof(text), "[daemon]\nwatchdog = %s\n", yes[i]);
        parse_ok(text, &c);
        assert_true(c.watchdog);
        moe_daemon_config_free(&c);
    }
    for (size_t i = 0; i < MOE_ARRAY_SIZE(no); i++) {
        snprintf(text, sizeof(text), "[daemon]\nwatchdog = %s\n", no[i]);
        parse_ok(text, &c);
        assert_false(c.watchdog);
        moe_daemon_config_free(&c);
    }
    /* sizes: suffixes, both cases, bounds inclusive */
    static const struct { const char *v; size_t want; } sizes[] = {
        {"1024", 1024}, {"1K", 1024}, {"1k", 1024}, {"3M", 3u << 20}, {"1G", 1u << 30},
        {"1025", 1025},
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(sizes); i++) {
        snprintf(text, sizeof(text), "[limits]\nmax_body_bytes = %s\n", sizes[i].v);
        parse_ok(text, &c);
        assert_int_equal(c.max_body_bytes, sizes[i].want);
        moe_daemon_config_free(&c);
    }
    /* blanks around '=' and at the end, CRLF line ends, a BOM, no final newline */
    parse_ok("\xEF\xBB\xBF[batching]\r\nmax_seqs=3   \r\n[model]\r\nname   =   a b  ", &c);
    assert_int_equal(c.max_seqs, 3);
    assert_string_equal(c.model_name, "a b");
    moe_daemon_config_free(&c);
    /* '#' and ';' inside a value (not after a blank) are part of it */
    parse_ok("[model]\nname = c#d;e\n", &c);
    assert_string_equal(c.model_name, "c#d;e");
    moe_daemon_config_free(&c);
    /* empty strings where allowed; a section may be opened twice */
    parse_ok("[model]\nname =\n[daemon]\nthreads = 2\n[model]\nchat_template = chatml\n", &c);
    assert_string_equal(c.model_name, "");
    assert_int_equal(c.threads, 2);
    assert_int_equal(c.chat_template, MOE_CHAT_CHATML);
    moe_daemon_config_free(&c);
    /* every chat format the engine has, by the engine's own name (the INI's
     * table is written out by hand) */
    for (int k = 0; k < MOE_CHAT_COUNT; k++) {
        char text[128];
        snprintf(text, sizeof(text), "[model]\nchat_template = %s\n",
                 moe_chat_template_name((enum moe_chat_template)k));
        parse_ok(text, &c);
        assert_int_equal(c.chat_template, k);
        moe_daemon_config_free(&c);
    }
    /* boundaries are inclusive unless said otherwise */
    parse_ok("[sampling]\ntop_p = 1\nmin_p = 1\ntemperature = 0\npresence_penalty = -2\n", &c);
    moe_daemon_config_free(&c);
    parse_ok("[daemon]\nsocket_mode = 0777\nallow_uids = ,, 7 ,\n", &c);
    assert_int_equal(c.socket_mode, 0777);
    assert_int_equal(c.allow_uids.n, 1);
    assert_int_equal(c.allow_uids.ids[0], 7);
    moe_daemon_config_free(&c);
}

/* ---- errors ---------------------------------------------------------------------- */

static void test_bad_values(void **state)
{
    (void)state;
    static const struct { const char *text, *msg; } cases[] = {
        {"[batching]\nmax_seqs = 0\n", "t.ini:2: [batching] max_seqs: 0 is out of range 1..4096"},
        {"[batching]\nmax_seqs = 4097\n",
         "t.ini:2: [batching] max_seqs: 4097 is out of range 1..4096"},
        {"\n[batching]\nmax_seqs = 12x\n", "t.ini:3: [batching] max_seqs: '12x' is not an integer"},
        {"[batching]\nmax_seqs = 1.5\n", "t.ini:2: [batching] max_seqs: '1.5' is not an integer"},
        {"[batching]\nmax_seqs =\n", "t.ini:2: [batching] max_seqs: '' is not an integer"},
        {"[batching]\nmax_seqs = 99999999999999999999\n",
         "t.ini:2: [batching] max_seqs: 99999999999999999999 is out of range 1..4096"},
        {"[sampling]\nseed = -2\n",
         "t.ini:2: [sampling] seed: -2 is out of range -1..9223372036854775807"},
        {"[daemon]\nwatchdog = maybe\n",
         "t.ini:2: [daemon] watchdog: 'maybe' is not a boolean (yes/no, true/false, on/off, 1/0)"},
        {"[limits]\nmax_body_bytes = 12Q\n",
         "t.ini:2: [limits] max_body_bytes: '12Q' is not a size (a number with an optional K, M, "
         "G or T)"},
        {"[limits]\nmax_body_bytes = 1KB\n",
         "t.ini:2: [limits] max_body_bytes: '1KB' is not a size (a number with an optional K, M, "
         "G or T)"},
        {"[limits]\nmax_body_bytes = -1\n",
         "t.ini:2: [limits] max_body_bytes: '-1' is not a size (a number with an optional K, M, "
         "G or T)"},
        {"[limits]\nmax_body_bytes = 2G\n",
         "t.ini:2: [limits] max_body_bytes: 2G is out of range 1K..1G"},
        {"[limits]\nmax_body_bytes = 1023\n",
         "t.ini:2: [limits] max_body_bytes: 1023 is out of range 1K..1G"},
        {"[sampling]\ntop_p = 0\n", "t.ini:2: [sampling] top_p: 0 is out of range (0, 1]"},
        {"[sampling]\ntop_p = 1.01\n", "t.ini:2: [sampling] top_p: 1.01 is out of range (0, 1]"},
        {"[sampling]\ntemperature = hot\n",
         "t.ini:2: [sampling] temperature: 'hot' is not a finite number"},
        {"[sampling]\ntemperature = nan\n",
         "t.ini:2: [sampling] temperature: 'nan' is not a finite number"},
        {"[sampling]\ntemperature = inf\n",
         "t.ini:2: [sampling] temperature: 'inf' is not a finite number"},
        {"[sampling]\ntemperature = -0.1\n",
         "t.ini:2: [sampling] temperature: -0.1 is out of range [0, 100]"},
        {"[daemon]\nsocket_mode = 0668\n",
         "t.ini:2: [daemon] socket_mode: '0668' is not an octal mode (digits 0-7)"},
        {"[daemon]\nsocket_mode = 01777\n",
         "t.ini:2: [daemon] socket_mode: 01777 is out of range 0..0777"},
        {"[daemon]\nsocket_mode = rw\n", "t.ini:2: [daemon] socket_mode: 'rw' is not an octal mode"},
        {"[daemon]\nlog_level = loud\n",
         "t.ini:2: [daemon] log_level: 'loud' is not one of err, warning, info, debug"},
        {"[model]\nchat_template = llama3\n",
         "t.ini:2: [model] chat_template: 'llama3' is not one of auto, jinja, chatml, mistral, qwen3, "
         "deepseek-v2, deepseek-v3, deepseek-r1, deepseek-r1-distill, deepseek-r1-distill-qwen, "
         "deepseek-r1-llamacpp, deepseek-v3.1, kimi-k2, glm-4.5, gpt-oss, minimax-m2, ernie-4.5, "
         "qwen3.5"},
        {"[model]\npath =\n", "t.ini:2: [model] path: must not be empty"},
        {"[daemon]\nsocket = \n", "t.ini:2: [daemon] socket: must not be empty"},
        {"[daemon]\nallow_uids = 0, no-such-user-moed\n",
         "t.ini:2: [daemon] allow_uids: unknown user 'no-such-user-moed'"},
        {"[daemon]\nallow_gids = no-such-group-moed\n",
         "t.ini:2: [daemon] allow_gids: unknown group 'no-such-group-moed'"},
        {"[daemon]\nsocket_group = no-such-group-moed\n",
         "t.ini:2: [daemon] socket_group: unknown group 'no-such-group-moed'"},
        {"[daemon]\nallow_uids = 4294967295\n",
         "t.ini:2: [daemon] allow_uids: '4294967295' is not a valid uid"},
        {"[daemon]\nallow_uids = 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 "
         "25 26 27 28 29 30 31 32 33\n",
         "t.ini:2: [daemon] allow_uids: more than 32 entries"},
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(cases); i++)
        parse_err(cases[i].text, cases[i].msg);
}

static void test_unknown(void **state)
{
    (void)state;
    parse_err("[daemon]\nsockets = /x\n", "t.ini:2: [daemon] sockets: unknown key");
    parse_err("[daemon]\nthreads = 1\n[model]\nthreads = 1\n", "t.ini:4: [model] threads: unknown key");
    parse_err("[daemon]\n[server]\n", "t.ini:2: unknown section [server]");
    parse_err("# c\n[ Daemon ]\nthreads = 1\n", "t.ini:2: unknown section [Daemon]");
    parse_err("threads = 1\n", "t.ini:1: key 'threads' before any [section]");
    parse_err("[daemon]\nthreads = 1\nthreads = 2\n",
              "t.ini:3: [daemon] threads: set twice (first on line 2)");
    parse_err("[daemon]\nthreads\n",
              "t.ini:2: expected 'key = value', a [section] or a comment");
    parse_err("[daemon]\nthreads: 4\n",
              "t.ini:2: expected 'key = value', a [section] or a comment");
    parse_err("[daemon]\nthreads: 4 = 5\n",
              "t.ini:2: 'threads: 4' is not a key name (lower-case letters, digits, _)");
    parse_err("[daemon]\nThreads = 4\n",
              "t.ini:2: 'Threads' is not a key name (lower-case letters, digits, _)");
    parse_err("[daemon\n", "t.ini:1: section header without ']'");
    parse_err("[daemon] x\n", "t.ini:1: text after the section header");
    parse_err("[daemon] ; comment\n", "t.ini:1: text after the section header");
    /* after a BOM (found by fuzzing: the scan ran 3 bytes past the line) */
    parse_err("\xEF\xBB\xBF[daemon", "t.ini:1: section header without ']'");
    parse_err("\xEF\xBB\xBFthreads", "t.ini:1: expected 'key = value', a [section] or a comment");
}

static void test_nul_byte(void **state)
{
    (void)state;
    struct moe_daemon_config c;
    static const char text[] = "[daemon]\nthreads = 1\0\n";
    assert_int_equal(moe_daemon_config_parse("t.ini", text, sizeof(text) - 1, &c), -EINVAL);
    assert_string_equal(moe_err_msg(), "t.ini:2: NUL byte in the line");
}

static void test_inih_pitfalls(void **state)
{
    (void)state;
    /* an indented key would continue the previous value in inih */
    parse_err("[model]\nname = a\n  path = /x\n",
              "t.ini:3: line starts with blanks; inih would append it to the previous value: "
              "start keys and sections at column 1");
    parse_err("[model]\nname = a\n\tb\n",
              "t.ini:3: line starts with blanks; inih would append it to the previous value: "
              "start keys and sections at column 1");
    parse_err("[model]\n [daemon]\n",
              "t.ini:2: line starts with blanks; inih would append it to the previous value: "
              "start keys and sections at column 1");
    /* '#' after a value would stay in it; ' ;' would silently end it */
    parse_err("[daemon]\nsocket_mode = 0600 # owner only\n",
              "t.ini:2: [daemon] socket_mode: '#' after the value; comments must be on their own "
              "line");
    parse_err("[model]\nname = tiny ; the small one\n",
              "t.ini:2: [model] name: ';' after the value; comments must be on their own line");
    parse_err("[model]\nname = #tiny\n",
              "t.ini:2: [model] name: '#' after the value; comments must be on their own line");
    parse_err("[model]\nname =;\n",
              "t.ini:2: [model] name: ';' after the value; comments must be on their own line");
    parse_err("[model]\nname = a\t#b\n",
              "t.ini:2: [model] name: '#' after the value; comments must be on their own line");

    /* long lines: exactly the limit passes, one more byte is an error with the length */
    char text[1024], want[256];
    struct moe_daemon_config c;
    const char *head = "[model]\npath = /";
    size_t fixed = strlen("path = /");
    for (int extra = 0; extra <= 1; extra++) {
        size_t pad = MOE_DAEMON_INI_MAX_LINE - fixed + (size_t)extra;
        size_t n = (size_t)snprintf(text, sizeof(text), "%s", head);
        memset(text + n, 'a', pad);
        n += pad;
        snprintf(text + n, sizeof(text) - n, "\r\n[daemon]\nthreads = 1\n");
        if (!extra) {
            parse_ok(text, &c);
            assert_int_equal(strlen(c.model_path), pad + 1);
            assert_int_equal(c.threads, 1);
            moe_daemon_config_free(&c);
        } else {
            snprintf(want, sizeof(want),
                     "t.ini:2: line is %d bytes long, more than %d (inih would split it); "
                     "shorten the value or the comment",
                     MOE_DAEMON_INI_MAX_LINE + 1, MOE_DAEMON_INI_MAX_LINE);
            parse_err(text, want);
        }
    }
    /* a long comment is just as bad: inih would read its tail as a line */
    memset(text, '#', 400);
    text[400] = '\0';
    parse_err_prefix(text, "t.ini:1: line is 400 bytes long");
    /* the first error in the file wins */
    parse_err("[daemon]\nthreads = x\nbogus = 1\n",
              "t.ini:2: [daemon] threads: 'x' is not an integer");
}

static void test_cross_checks(void **state)
{
    (void)state;
    struct moe_daemon_config c;
    parse_err("[sampling]\nmax_tokens = 5000\n",
              "t.ini:2: [sampling] max_tokens: 5000 is above [limits] max_tokens (4096)");
    parse_err("[sampling]\nmax_tokens = 300\n\n[limits]\nmax_tokens = 200\n",
              "t.ini:5: [sampling] max_tokens: 300 is above [limits] max_tokens (200)");
    parse_err("[batching]\nmax_batch_tokens = 8\n",
              "t.ini:2: [batching] max_batch_tokens: 8 is below [batching] max_seqs (16); every "
              "running sequence needs a token in each step");
    parse_ok("[sampling]\nmax_tokens = 300\n[limits]\nmax_tokens = 300\n", &c);
    moe_daemon_config_free(&c);
    parse_err("[router]\nlayers = 2-x\n",
              "t.ini:2: [router] layers: 'x' does not end a layer range");
    parse_err("[router]\n\nbeta_layers = 3:1.2\n",
              "t.ini:3: [router] beta_layers: layers 3-3: beta '1.2' is not a number in [0, 1]");
    parse_err("[router]\nodp = maybe\n",
              "t.ini:2: [router] odp: 'maybe' is not one of auto, on, off");
    parse_err("[daemon]\nlisten = unix:/run/x.sock, tcp:localhost\n",
              "t.ini:2: [daemon] listen: 'tcp:localhost': want tcp:HOST:PORT (port 1..65535)");
    parse_err("[daemon]\nlisten = http://0.0.0.0:80\n",
              "t.ini:2: [daemon] listen: 'http://0.0.0.0:80': want unix:PATH or tcp:HOST:PORT");
    parse_ok("[daemon]\nlisten = unix:/run/x.sock, tcp:[::1]:8080 tcp:0.0.0.0:8000\n", &c);
    moe_daemon_config_free(&c);
}

/* [router] against tiny-moe (4 layers, no calibrated betas) */
static void test_router_prune(void **state)
{
    (void)state;
    struct moe_model *m;
    struct moe_daemon_config c;
    struct moe_prune p;
    bool on = true;
    char why[256];
    assert_int_equal(moe_model_open(moe_test_path("models/tiny-moe"), &m), 0);
    parse_ok("", &c); /* auto without a pack: off; default beta on the middle layer */
    assert_int_equal(moe_daemon_prune(&c, m, &p, &on, why, sizeof(why)), 0);
    assert_false(on);
    assert_true(p.beta[2] == (float)MOE_DAEMON_ODP_BETA_DEFAULT);
    assert_true(p.beta[0] == 0 && p.beta[1] == 0 && p.beta[3] == 0);
    assert_true(p.protect_fraction == 0.02f);
    moe_daemon_config_free(&c);
    parse_ok("[router]\nodp = on\nbeta = 0.3\nlayers = 1-3\nprotect_fraction = 0\n", &c);
    assert_int_equal(moe_daemon_prune(&c, m, &p, &on, why, sizeof(why)), 0);
    assert_true(on);
    assert_true(p.beta[0] == 0 && p.beta[1] == 0.3f && p.beta[3] == 0.3f);
    assert_true(p.protect_fraction == 0);
    moe_daemon_config_free(&c);
    parse_ok("[router]\nodp = on\nbeta = 0.3\nbeta_layers = 0:0.6,3:0.2\n", &c);
    assert_int_equal(moe_daemon_prune(&c, m, &p, &on, why, sizeof(why)), 0);
    assert_true(p.beta[0] == 0.6f && p.beta[2] == 0 && p.beta[3] == 0.2f);
    moe_daemon_config_free(&c);
    parse_ok("[router]\nlayers = 2-4\n", &c); /* fine for the syntax, not for this model */
    assert_int_equal(moe_daemon_prune(&c, m, &p, &on, why, sizeof(why)), -EINVAL);
    assert_string_equal(why, "[router] layers: layer 4 is past the model's last layer (3)");
    moe_daemon_config_free(&c);
    moe_model_free(m);
}

static void test_load_file(void **state)
{
    (void)state;
    struct moe_daemon_config c;
    const char *p = write_tmp("ok.ini", "[batching]\nmax_queue = 7\n");
    assert_int_equal(moe_daemon_config_load(p, &c), 0);
    assert_int_equal(c.max_queue, 7);
    moe_daemon_config_free(&c);

    p = write_tmp("bad.ini", "[batching]\nmax_queue = -7\n");
    assert_int_equal(moe_daemon_config_load(p, &c), -EINVAL);
    char want[600];
    snprintf(want, sizeof(want), "%s:2: [batching] max_queue: -7 is out of range 0..1048576", p);
    assert_string_equal(moe_err_msg(), want);

    int rc = moe_daemon_config_load("/nonexistent/moed.ini", &c);
    assert_int_equal(rc, -ENOENT);
    assert_non_null(strstr(moe_err_msg(), "/nonexistent/moed.ini"));
    moe_daemon_config_free(&c); /* zeroed on error: nothing to free, still safe */
}

/* ---- copy, dump ------------------------------------------------------------------ */

static void test_copy_equal(void **state)
{
    (void)state;
    struct moe_daemon_config a, b;
    parse_ok("[daemon]\nallow_uids = root\nsocket_group = 0\n[model]\nname = x\n", &a);
    assert_int_equal(moe_daemon_config_copy(&b, &a), 0);
    assert_true(moe_daemon_config_equal(&a, &b));
    assert_ptr_not_equal(a.model_name, b.model_name);
    assert_ptr_not_equal(a.allow_uids.text, b.allow_uids.text);
    moe_daemon_config_free(&a);
    assert_string_equal(b.model_name, "x");
    /* "root" and "0" are the same list */
    parse_ok("[daemon]\nallow_uids = 0\nsocket_group = root\n[model]\nname = x\n", &a);
    assert_true(moe_daemon_config_equal(&a, &b));
    assert_int_equal(moe_daemon_config_set(&a, "model", "name", "y"), 0);
    assert_false(moe_daemon_config_equal(&a, &b));
    assert_int_equal(moe_daemon_config_set(&a, "model", "name", "#"), 0);
    assert_int_equal(moe_daemon_config_set(&a, "batching", "max_seqs", "0"), -EINVAL);
    assert_string_equal(moe_err_msg(), "[batching] max_seqs: 0 is out of range 1..4096");
    assert_int_equal(moe_daemon_config_set(&a, "batching", "nope", "0"), -EINVAL);
    moe_daemon_config_free(&a);
    moe_daemon_config_free(&b);
}

static void test_dump_round_trip(void **state)
{
    (void)state;
    struct moe_daemon_config def, back, c;
    assert_int_equal(moe_daemon_config_defaults(&def), 0);
    char *text = dump_to_string(&def, NULL);
    parse_ok(text, &back);
    assert_true(moe_daemon_config_equal(&def, &back));
    moe_daemon_config_free(&back);

    /* every line is within the limit and no value has an inline comment */
    for (char *line = text; *line;) {
        char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line) : strlen(line);
        assert_true(n <= MOE_DAEMON_INI_MAX_LINE);
        line += n + (nl ? 1 : 0);
    }
    free(text);

    /* a config with every key changed reads back the same */
    char all[8192];
    size_t len = 0;
    const char *sec = "";
    for (size_t j = 0; j < MOE_ARRAY_SIZE(key_cases); j++) {
        if (strcmp(sec, key_cases[j].section))
            len += (size_t)snprintf(all + len, sizeof(all) - len, "[%s]\n",
                                    sec = key_cases[j].section);
        len += (size_t)snprintf(all + len, sizeof(all) - len, "%s = %s\n", key_cases[j].name,
                                key_cases[j].value);
    }
    parse_ok(all, &c);
    text = dump_to_string(&c, "/etc/moed/moed.ini");
    assert_non_null(strstr(text, "from /etc/moed/moed.ini"));
    parse_ok(text, &back);
    assert_true(moe_daemon_config_equal(&c, &back));
    assert_false(moe_daemon_config_equal(&c, &def));
    moe_daemon_config_free(&back);
    moe_daemon_config_free(&c);
    free(text);

    /* a value that fills its line: the dump drops the blanks around '='
     * rather than write a line the reader would refuse (found by fuzzing) */
    char line[256];
    int n = snprintf(line, sizeof(line), "[model]\nname=");
    memset(line + n, 'v', MOE_DAEMON_INI_MAX_LINE - 5);
    line[n + MOE_DAEMON_INI_MAX_LINE - 5] = '\0';
    parse_ok(line, &c);
    assert_int_equal(strlen(c.model_name), MOE_DAEMON_INI_MAX_LINE - 5);
    text = dump_to_string(&c, NULL);
    parse_ok(text, &back);
    assert_true(moe_daemon_config_equal(&c, &back));
    moe_daemon_config_free(&back);
    moe_daemon_config_free(&c);
    moe_daemon_config_free(&def);
    free(text);
}

/* etc/moed.ini is the dump of the defaults: every table key once, with its
 * doc right above, its default as the value, and nothing else. */
static void test_example_ini(void **state)
{
    (void)state;
    const char *path = moe_test_path("etc/moed.ini");
    char *file = NULL;
    size_t flen = 0;
    if (moe_read_text_file(path, &file, &flen))
        fail_msg("%s", moe_err_msg());

    struct moe_daemon_config def, c;
    assert_int_equal(moe_daemon_config_defaults(&def), 0);
    if (moe_daemon_config_load(path, &c))
        fail_msg("etc/moed.ini does not parse: %s", moe_err_msg());
    assert_true(moe_daemon_config_equal(&def, &c));
    moe_daemon_config_free(&c);

    size_t n;
    const struct moe_daemon_key *t = moe_daemon_config_table(&n);
    int *seen = calloc(n, sizeof(int));
    char section[64] = "";
    /* the comment lines since the last blank one: the doc, then the type
     * line (continued on more lines when it is long, as a long list of names) */
    char doc_line[512] = "", type_line[1024] = "";
    int n_comments = 0;
    for (char *line = file; *line;) {
        char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        char buf[512];
        snprintf(buf, sizeof(buf), "%.*s", (int)len, line);
        if (buf[0] == '[') {
            snprintf(section, sizeof(section), "%.*s", (int)(strlen(buf) - 2), buf + 1);
        } else if (buf[0] && buf[0] != '#' && buf[0] != ';') {
            char *eq = strstr(buf, " = ");
            if (!eq)
                eq = strstr(buf, " =");
            assert_non_null(eq);
            *eq = '\0';
            const char *value = eq[2] == ' ' ? eq + 3 : eq + 2;
            const struct moe_daemon_key *k = moe_daemon_config_find(section, buf);
            if (!k)
                fail_msg("etc/moed.ini: [%s] %s is not in the table", section, buf);
            size_t i = (size_t)(k - t);
            seen[i]++;
            if (strcmp(value, k->def))
                fail_msg("etc/moed.ini: [%s] %s = %s, the table's default is %s", section, buf,
                         value, k->def);
            char doc[512];
            snprintf(doc, sizeof(doc), "# %s", k->doc);
            if (strcmp(doc_line, doc))
                fail_msg("etc/moed.ini: [%s] %s: the doc line above it is\n  %s\nnot\n  %s",
                         section, buf, doc_line, doc);
            if (n_comments < 2 || !strstr(type_line, "; default ") ||
                !strstr(type_line, (k->flags & MOE_CFG_RELOAD) ? "reloadable" : "needs restart"))
                fail_msg("etc/moed.ini: [%s] %s: no type/default/reload line: %s", section, buf,
                         type_line);
        }
        if (buf[0] == '#' && n_comments++ == 0) {
            snprintf(doc_line, sizeof(doc_line), "%s", buf);
            type_line[0] = '\0';
        } else if (buf[0] == '#') {
            snprintf(type_line + strlen(type_line), sizeof(type_line) - strlen(type_line), "%s",
                     buf + (buf[1] == ' ' ? 2 : 1));
        } else {
            n_comments = 0;
        }
        line += len + (nl ? 1 : 0);
    }
    for (size_t i = 0; i < n; i++)
        if (seen[i] != 1)
            fail_msg("etc/moed.ini: [%s] %s appears %d times", t[i].section, t[i].name, seen[i]);
    free(seen);

    /* and it is byte for byte what the generator writes */
    char *dump = dump_to_string(&def, NULL);
    if (strcmp(dump, file))
        fail_msg("etc/moed.ini is not the dump of the defaults: regenerate it with\n"
                 "  build/bin/moed --dump-config > etc/moed.ini");
    free(dump);
    free(file);
    moe_daemon_config_free(&def);
}

/* ---- reload ------------------------------------------------------------------------ */

struct apply_log {
    int calls;
    int fail;
    struct moe_daemon_config seen;
};

static int apply_cb(void *arg, const struct moe_daemon_config *next, char *msg, size_t cap)
{
    struct apply_log *a = arg;
    a->calls++;
    if (a->fail) {
        snprintf(msg, cap, "engine says no");
        return -EINVAL;
    }
    moe_daemon_config_free(&a->seen);
    assert_int_equal(moe_daemon_config_copy(&a->seen, next), 0);
    return 0;
}

static void test_reload(void **state)
{
    (void)state;
    struct moe_daemon_config cur, before;
    struct apply_log a = {0};
    struct moe_daemon_reload_result r;
    char msg[1024];
    const char *p = write_tmp("r.ini", "[model]\npath = /m/a\n[limits]\nmax_tokens = 1000\n");
    assert_int_equal(moe_daemon_config_load(p, &cur), 0);
    assert_int_equal(moe_daemon_config_copy(&before, &cur), 0);

    /* a bad file: the running config stays, msg says where */
    p = write_tmp("r.ini", "[model]\npath = /m/b\n[limits]\nmax_tokens = lots\n");
    assert_int_equal(moe_daemon_config_reload(&cur, p, apply_cb, &a, &r, msg, sizeof(msg)),
                     -EINVAL);
    assert_int_equal(a.calls, 0);
    assert_true(moe_daemon_config_equal(&cur, &before));
    assert_non_null(strstr(msg, "r.ini:4: [limits] max_tokens: 'lots' is not an integer"));
    assert_non_null(strstr(msg, "the running configuration is unchanged"));

    /* no changes */
    p = write_tmp("r.ini", "[model]\npath = /m/a\n[limits]\nmax_tokens = 1000\n");
    assert_int_equal(moe_daemon_config_reload(&cur, p, apply_cb, &a, &r, msg, sizeof(msg)), 0);
    assert_int_equal(a.calls, 0);
    assert_int_equal(r.n_applied, 0);
    assert_int_equal(r.n_restart, 0);
    assert_non_null(strstr(msg, "no changes"));

    /* reloadable keys applied, the others reported and kept */
    p = write_tmp("r.ini", "[model]\npath = /m/b\n[batching]\nmax_seqs = 8\n[limits]\n"
                           "max_tokens = 2000\n[sampling]\ntemperature = 0.5\n[daemon]\n"
                           "log_level = debug\n");
    assert_int_equal(moe_daemon_config_reload(&cur, p, apply_cb, &a, &r, msg, sizeof(msg)), 0);
    assert_int_equal(a.calls, 1);
    assert_int_equal(r.n_applied, 3);
    assert_int_equal(r.n_restart, 2);
    assert_int_equal(cur.max_tokens_limit, 2000);
    assert_true(cur.temperature == 0.5);
    assert_int_equal(cur.log_level, MOE_LOG_DEBUG);
    assert_string_equal(cur.model_path, "/m/a");
    assert_int_equal(cur.max_seqs, 16);
    assert_true(moe_daemon_config_equal(&cur, &a.seen));
    assert_non_null(strstr(msg, "needs restart: [model] path"));
    assert_non_null(strstr(msg, "needs restart: [batching] max_seqs"));
    assert_non_null(strstr(msg, "[limits] max_tokens"));
    assert_non_null(strstr(msg, "[sampling] temperature"));
    assert_non_null(strstr(msg, "[daemon] log_level"));
    assert_null(strstr(msg, "needs restart: [limits]"));

    /* the same file again: nothing to apply, the restart keys still differ */
    assert_int_equal(moe_daemon_config_reload(&cur, p, apply_cb, &a, &r, msg, sizeof(msg)), 0);
    assert_int_equal(a.calls, 1);
    assert_int_equal(r.n_applied, 0);
    assert_int_equal(r.n_restart, 2);

    /* apply refuses: nothing changes */
    struct moe_daemon_config snap;
    assert_int_equal(moe_daemon_config_copy(&snap, &cur), 0);
    a.fail = 1;
    p = write_tmp("r.ini", "[limits]\nmax_tokens = 3000\n");
    assert_int_equal(moe_daemon_config_reload(&cur, p, apply_cb, &a, &r, msg, sizeof(msg)),
                     -EINVAL);
    assert_int_equal(a.calls, 2);
    assert_true(moe_daemon_config_equal(&cur, &snap));
    assert_non_null(strstr(msg, "engine says no"));

    /* a missing file */
    assert_int_equal(moe_daemon_config_reload(&cur, "/nonexistent.ini", NULL, NULL, NULL, NULL, 0),
                     -ENOENT);
    assert_true(moe_daemon_config_equal(&cur, &snap));

    moe_daemon_config_free(&snap);
    moe_daemon_config_free(&a.seen);
    moe_daemon_config_free(&cur);
    moe_daemon_config_free(&before);
    moe_log_set_level(MOE_LOG_INFO);
}

/* ---- conversions ------------------------------------------------------------------- */

static void test_conversions(void **state)
{
    (void)state;
    struct moe_daemon_config c;
    char name[256];
    parse_ok("[daemon]\nallow_uids = 5 6\nallow_gids = 7\n[model]\npath = /models/tiny-moe/\n"
             "[limits]\nmax_body_bytes = 64K\nrequest_timeout = 30\n[sampling]\ntop_k = 40\n"
             "temperature = 0.25\nseed = 42\n[batching]\nmax_ctx = 100000\n",
             &c);
    assert_string_equal(moe_daemon_model_name(&c, name, sizeof(name)), "tiny-moe");
    struct moe_ipc_limits il;
    moe_daemon_ipc_limits(&c, &il);
    assert_int_equal(il.max_body_bytes, 64 << 10);
    assert_int_equal(il.max_prompt_bytes, 256 << 10);
    assert_int_equal(il.max_tokens_limit, 4096);
    assert_int_equal(il.default_max_tokens, 256);
    assert_true(il.request_timeout_s == 30.0);
    assert_int_equal(il.defaults.top_k, 40);
    assert_true(il.defaults.temperature == 0.25f);
    assert_true(il.defaults.seed == 42);
    assert_int_equal(il.defaults.penalty_last_n, 64);
    assert_int_equal(il.n_allow_uids, 2);
    assert_int_equal(il.allow_uids[1], 6);
    assert_int_equal(il.n_allow_gids, 1);
    assert_int_equal(il.allow_gids[0], 7);

    struct moe_engine_limits el;
    moe_daemon_engine_limits(&c, 512, MOE_CHAT_MISTRAL, &el);
    assert_int_equal(el.max_ctx, 512); /* clamped to the model's */
    assert_int_equal(el.max_seqs, 16);
    assert_int_equal(el.max_batch_tokens, 512);
    assert_int_equal(el.max_queue, 64);
    assert_int_equal(el.max_tokens_default, 256);
    assert_true(el.request_timeout_s == 30.0);
    assert_int_equal(el.chat_template, MOE_CHAT_MISTRAL);
    assert_int_equal(moe_daemon_config_set(&c, "batching", "max_ctx", "0"), 0);
    moe_daemon_engine_limits(&c, 2048, MOE_CHAT_CHATML, &el);
    assert_int_equal(el.max_ctx, 2048);
    assert_int_equal(moe_daemon_config_set(&c, "batching", "max_ctx", "100"), 0);
    moe_daemon_engine_limits(&c, 2048, MOE_CHAT_CHATML, &el);
    assert_int_equal(el.max_ctx, 100);

    assert_int_equal(moe_daemon_config_set(&c, "sampling", "seed", "-1"), 0);
    moe_daemon_ipc_limits(&c, &il);
    assert_true(il.defaults.seed == UINT64_MAX);

    assert_int_equal(moe_daemon_config_set(&c, "model", "path", "/m/x.gguf"), 0);
    assert_string_equal(moe_daemon_model_name(&c, name, sizeof(name)), "x");
    /* the id is the file's name without .gguf or the pack's .moe; other dots stay */
    static const char *const names[][2] = {
        {"/m/Qwen3-30B-A3B-Q4_K_M.GGUF", "Qwen3-30B-A3B-Q4_K_M"},
        {"tiny-qmoe.moe", "tiny-qmoe"},
        {"/m/v1.5.bin", "v1.5.bin"},
        {"/m/.gguf", ".gguf"},
        {"/m/dir.moe/", "dir"}, /* not a directory here: named as a file would be */
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(names); i++) {
        assert_int_equal(moe_daemon_config_set(&c, "model", "path", names[i][0]), 0);
        assert_string_equal(moe_daemon_model_name(&c, name, sizeof(name)), names[i][1]);
    }
    assert_int_equal(moe_daemon_config_set(&c, "model", "name", "served"), 0);
    assert_string_equal(moe_daemon_model_name(&c, name, sizeof(name)), "served");
    moe_daemon_config_free(&c);
}

static void test_chat_template(void **state)
{
    (void)state;
    struct moe_daemon_config c;
    const char *how = NULL;
    char dir[400], ini[600], *text = NULL;
    int fmt;

    /* the bundled model has no template: ChatML */
    snprintf(ini, sizeof(ini), "[model]\npath = %s\n", moe_test_path("models/tiny-moe"));
    parse_ok(ini, &c);
    assert_int_equal(moe_daemon_chat_template(&c, &fmt, &text, &how), 0);
    assert_int_equal(fmt, MOE_CHAT_CHATML);
    assert_null(text);
    assert_non_null(strstr(how, "default"));
    /* the INI decides when it names a format */
    assert_int_equal(moe_daemon_config_set(&c, "model", "chat_template", "mistral"), 0);
    assert_int_equal(moe_daemon_chat_template(&c, &fmt, &text, &how), 0);
    assert_int_equal(fmt, MOE_CHAT_MISTRAL);
    assert_non_null(strstr(how, "[model] chat_template"));
    /* jinja asks for the model's own, which it does not have */
    assert_int_equal(moe_daemon_config_set(&c, "model", "chat_template", "jinja"), 0);
    assert_int_equal(moe_daemon_chat_template(&c, &fmt, &text, &how), -ENOENT);
    assert_non_null(strstr(moe_err_msg(), "has no chat template"));
    moe_daemon_config_free(&c);

    /* a directory's tokenizer_config.json template is the model's own: Jinja;
     * a chat_template.jinja beside it wins (transformers 5 writes it) */
    snprintf(dir, sizeof(dir), "%s/mistral-model", moe_test_tmpdir());
    mkdir(dir, 0755);
    snprintf(ini, sizeof(ini), "%s/tokenizer_config.json", dir);
    static const char tc[] = "{\"chat_template\": \"{{ bos_token }}{% for m in messages %}"
                             "[INST] {{ m.content }} [/INST]{% endfor %}\"}";
    moe_test_write_file(ini, tc, strlen(tc));
    snprintf(ini, sizeof(ini), "[model]\npath = %s\n", dir);
    parse_ok(ini, &c);
    assert_int_equal(moe_daemon_chat_template(&c, &fmt, &text, &how), 0);
    assert_int_equal(fmt, MOE_DAEMON_CHAT_JINJA);
    assert_string_equal(text, "{{ bos_token }}{% for m in messages %}[INST] {{ m.content }} "
                              "[/INST]{% endfor %}");
    assert_int_equal(moe_daemon_chat_fallback(text), MOE_CHAT_MISTRAL); /* if it did not compile */
    assert_non_null(strstr(how, "tokenizer_config.json"));
    free(text);
    snprintf(ini, sizeof(ini), "%s/chat_template.jinja", dir);
    moe_test_write_file(ini, "{{ messages[0].content }}", 25);
    assert_int_equal(moe_daemon_chat_template(&c, &fmt, &text, &how), 0);
    assert_int_equal(fmt, MOE_DAEMON_CHAT_JINJA);
    assert_string_equal(text, "{{ messages[0].content }}");
    assert_non_null(strstr(how, "chat_template.jinja"));
    free(text);
    /* chat_template_file wins over all; a missing one is an error naming the key */
    assert_int_equal(moe_daemon_config_set(&c, "model", "chat_template_file", ini), 0);
    assert_int_equal(moe_daemon_chat_template(&c, &fmt, &text, &how), 0);
    assert_int_equal(fmt, MOE_DAEMON_CHAT_JINJA);
    assert_non_null(strstr(how, "chat_template_file"));
    free(text);
    assert_int_equal(moe_daemon_config_set(&c, "model", "chat_template_file", "/nonexistent/t"), 0);
    assert_true(moe_daemon_chat_template(&c, &fmt, &text, &how) < 0);
    assert_non_null(strstr(moe_err_msg(), "chat_template_file"));
    moe_daemon_config_free(&c);

    /* a missing path: the default */
    parse_ok("[model]\npath = /nonexistent/m.gguf\n", &c);
    assert_int_equal(moe_daemon_chat_template(&c, &fmt, &text, &how), 0);
    assert_int_equal(fmt, MOE_CHAT_CHATML);
    moe_daemon_config_free(&c);

    /* a GGUF: its tokenizer.chat_template is the model's own; one without gets the default */
    char *v3 = NULL;
    size_t len;
    assert_int_equal(moe_read_text_file(
                         moe_test_path("tests/data/chat/templates/deepseek-ai-DeepSeek-V3.jinja"),
                         &v3, &len), 0);
    assert_int_equal(moe_daemon_chat_fallback(v3), MOE_CHAT_DEEPSEEK_V3);
    assert_int_equal(moe_daemon_chat_fallback("{{ messages }}"), MOE_CHAT_CHATML);
    static const struct {
        const char *key, *value;
        int want;
    } ggufs[] = {
        {"tokenizer.chat_template", NULL, MOE_DAEMON_CHAT_JINJA},
        {"general.name", "no template", MOE_CHAT_CHATML},
        {"tokenizer.chat_template", "{{ messages }}", MOE_DAEMON_CHAT_JINJA},
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(ggufs); i++) {
        const char *value = ggufs[i].value ? ggufs[i].value : v3;
        uint64_t kl = strlen(ggufs[i].key), vl = strlen(value), one = 1, zero = 0;
        uint32_t version = 3, type_string = 8;
        snprintf(ini, sizeof(ini), "%s/m%zu.gguf", moe_test_tmpdir(), i);
        FILE *f = fopen(ini, "wb");
        assert_non_null(f);
        fwrite("GGUF", 1, 4, f);
        fwrite(&version, 4, 1, f);
        fwrite(&zero, 8, 1, f); /* tensors */
        fwrite(&one, 8, 1, f);  /* keys */
        fwrite(&kl, 8, 1, f);
        fwrite(ggufs[i].key, 1, kl, f);
        fwrite(&type_string, 4, 1, f);
        fwrite(&vl, 8, 1, f);
        fwrite(value, 1, vl, f);
        fclose(f);
        char gini[700];
        snprintf(gini, sizeof(gini), "[model]\npath = %s\n", ini);
        parse_ok(gini, &c);
        assert_int_equal(moe_daemon_chat_template(&c, &fmt, &text, &how), 0);
    assert_int_equal(fmt, ggufs[i].want);
        assert_non_null(strstr(how, ggufs[i].want == MOE_CHAT_CHATML ? "default" : "GGUF"));
        if (text)
            assert_string_equal(text, value);
        free(text);
        text = NULL;
        moe_daemon_config_free(&c);
    }
    free(v3);

    /* a pack keeps the chat_template.jinja of the directory it was made from */
    snprintf(dir, sizeof(dir), "%s/tiny-with-template", moe_test_tmpdir());
    mkdir(dir, 0755);
    static const char *const files[] = {"config.json", "model.safetensors", "tokenizer.json",
                                        "tokenizer_config.json", "generation_config.json"};
    char *tiny = realpath(moe_test_path("models/tiny-moe"), NULL); /* links from elsewhere */
    assert_non_null(tiny);
    for (size_t i = 0; i < MOE_ARRAY_SIZE(files); i++) {
        char from[600];
        snprintf(from, sizeof(from), "%s/%s", tiny, files[i]);
        snprintf(ini, sizeof(ini), "%s/%s", dir, files[i]);
        assert_int_equal(symlink(from, ini), 0);
    }
    free(tiny);
    snprintf(ini, sizeof(ini), "%s/chat_template.jinja", dir);
    moe_test_write_file(ini, "{{ messages[0].content }}", 25);
    struct moe_model *m;
    assert_int_equal(moe_model_open(dir, &m), 0);
    char pack[500], pini[700];
    snprintf(pack, sizeof(pack), "%s/tiny-with-template.moe", moe_test_tmpdir());
    assert_int_equal(moe_test_write_pack(m, pack), 0);
    moe_model_free(m);
    snprintf(pini, sizeof(pini), "[model]\npath = %s\n", pack);
    parse_ok(pini, &c);
    assert_int_equal(moe_daemon_chat_template(&c, &fmt, &text, &how), 0);
    assert_int_equal(fmt, MOE_DAEMON_CHAT_JINJA);
    assert_string_equal(text, "{{ messages[0].content }}");
    assert_non_null(strstr(how, "pack's chat_template.jinja"));
    free(text);
    moe_daemon_config_free(&c);
}

/* ---- systemd helpers ---------------------------------------------------------------- */

static int unix_socket(int type, const char *path, bool listening)
{
    int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    unlink(path);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    if (listening)
        assert_int_equal(listen(fd, 4), 0);
    return fd;
}

static void activate(int fd, int n)
{
    char pid[32], nfds[16];
    assert_true(dup2(fd, 3) == 3);
    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    snprintf(nfds, sizeof(nfds), "%d", n);
    setenv("LISTEN_PID", pid, 1);
    setenv("LISTEN_FDS", nfds, 1);
}

static void test_listen_fd(void **state)
{
    (void)state;
    int fds[2] = {123, 123};
    size_t n = 7;
    if (fcntl(3, F_GETFD) >= 0 || fcntl(4, F_GETFD) >= 0)
        skip(); /* fds 3, 4 are taken in this process: activation would clobber them */
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    assert_int_equal(moe_daemon_listen_fds(fds, 2, &n), 0);
    assert_int_equal(n, 0);

    char path[300];
    snprintf(path, sizeof(path), "%s/l.sock", moe_test_tmpdir());
    int s = unix_socket(SOCK_STREAM, path, true);
    activate(s, 1);
    assert_int_equal(moe_daemon_listen_fds(fds, 2, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(fds[0], 3);
    assert_null(getenv("LISTEN_FDS")); /* not passed on to children */
    close(3);
    close(s);

    /* a Unix socket and a TCP one: both taken */
    s = unix_socket(SOCK_STREAM, path, true);
    int t = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(t, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(t, 4), 0);
    assert_true(dup2(t, 4) == 4);
    activate(s, 2);
    assert_int_equal(moe_daemon_listen_fds(fds, 2, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(fds[1], 4);
    close(3);
    close(4);
    close(t);
    close(s);

    /* not listening */
    s = unix_socket(SOCK_STREAM, path, false);
    activate(s, 1);
    assert_int_equal(moe_daemon_listen_fds(fds, 2, &n), -EINVAL);
    assert_non_null(strstr(moe_err_msg(), "not a listening stream socket"));
    assert_int_equal(n, 0);
    close(s);

    /* a datagram socket */
    s = unix_socket(SOCK_DGRAM, path, false);
    activate(s, 1);
    assert_int_equal(moe_daemon_listen_fds(fds, 2, &n), -EINVAL);
    close(s);

    /* for another process: ignored */
    s = unix_socket(SOCK_STREAM, path, true);
    activate(s, 1);
    setenv("LISTEN_PID", "1", 1);
    assert_int_equal(moe_daemon_listen_fds(fds, 2, &n), 0);
    assert_int_equal(n, 0);
    close(3);
    close(s);
    unlink(path);
}

static void test_notify(void **state)
{
    (void)state;
    char path[300], buf[512];
    unsetenv("NOTIFY_SOCKET");
    assert_int_equal(moe_daemon_notify("READY=1"), 0); /* outside systemd: nothing */

    snprintf(path, sizeof(path), "%s/notify.sock", moe_test_tmpdir());
    int s = unix_socket(SOCK_DGRAM, path, false);
    setenv("NOTIFY_SOCKET", path, 1);
    assert_true(moe_daemon_notify("STATUS=Loading %s", "tiny") > 0);
    ssize_t n = recv(s, buf, sizeof(buf) - 1, MSG_DONTWAIT);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_string_equal(buf, "STATUS=Loading tiny");

    uint64_t t0 = moe_daemon_monotonic_usec();
    assert_true(moe_daemon_notify_reloading() > 0);
    n = recv(s, buf, sizeof(buf) - 1, MSG_DONTWAIT);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_non_null(strstr(buf, "RELOADING=1\n"));
    const char *m = strstr(buf, "MONOTONIC_USEC=");
    assert_non_null(m);
    unsigned long long t = strtoull(m + strlen("MONOTONIC_USEC="), NULL, 10);
    assert_true(t >= t0 && t <= moe_daemon_monotonic_usec());

    /* the watchdog is ours only when WATCHDOG_PID is ours (or unset) */
    setenv("WATCHDOG_USEC", "4000000", 1);
    unsetenv("WATCHDOG_PID");
    assert_int_equal(moe_daemon_watchdog_usec(), 4000000);
    setenv("WATCHDOG_PID", "1", 1);
    assert_int_equal(moe_daemon_watchdog_usec(), 0);
    unsetenv("WATCHDOG_PID");
    unsetenv("WATCHDOG_USEC");
    assert_int_equal(moe_daemon_watchdog_usec(), 0);

    unsetenv("NOTIFY_SOCKET");
    close(s);
    unlink(path);
}

/* ---- flags and MOED_* variables ------------------------------------------------ */

static void test_flag_env_names(void **state)
{
    (void)state;
    size_t n;
    const struct moe_daemon_key *t = moe_daemon_config_table(&n);
    char f[MOE_DAEMON_NAME_MAX], e[MOE_DAEMON_NAME_MAX];
    static const char *const fixed[] = {"config", "check-config", "dump-config", "model",
                                        "help", "version"};
    /* every key is reachable by its long flag and variable, a unique name
     * by its short ones too, and each name finds its own key */
    for (size_t i = 0; i < n; i++) {
        for (int form = MOE_DAEMON_NAME_SHORT; form <= MOE_DAEMON_NAME_LONG; form++) {
            bool unique = true;
            for (size_t j = 0; j < n; j++)
                unique &= j == i || strcmp(t[i].name, t[j].name);
            bool has = moe_daemon_key_flag(&t[i], form, f, sizeof(f));
            assert_int_equal(moe_daemon_key_env(&t[i], form, e, sizeof(e)), has);
            assert_true(has == (form == MOE_DAEMON_NAME_LONG || unique));
            if (!has)
                continue;
            assert_ptr_equal(moe_daemon_flag_find(f), &t[i]);
            assert_null(strchr(f, '_'));
            assert_int_equal(strncmp(e, "MOED_", 5), 0);
            for (const char *p = e; *p; p++)
                assert_true(isupper((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '_');
            for (size_t k = 0; k < MOE_ARRAY_SIZE(fixed); k++)
                assert_string_not_equal(f, fixed[k]);
            /* the variable reaches the key through the environment too */
            char var[200];
            snprintf(var, sizeof(var), "%s=x", e);
            char *envp[] = {var, NULL};
            struct moe_daemon_setting s[4];
            size_t ns;
            assert_int_equal(moe_daemon_env_settings(envp, s, 4, &ns), 0);
            assert_int_equal(ns, 1);
            assert_ptr_equal(s[0].key, &t[i]);
            assert_string_equal(s[0].origin, e);
        }
    }
    moe_daemon_key_flag(moe_daemon_config_find("daemon", "threads"), MOE_DAEMON_NAME_SHORT, f,
                        sizeof(f));
    assert_string_equal(f, "threads");
    moe_daemon_key_flag(moe_daemon_config_find("daemon", "api_key"), MOE_DAEMON_NAME_SHORT, f,
                        sizeof(f));
    assert_string_equal(f, "api-key");
    moe_daemon_key_env(moe_daemon_config_find("model", "path"), MOE_DAEMON_NAME_LONG, e, sizeof(e));
    assert_string_equal(e, "MOED_MODEL_PATH");
    /* max_tokens is in [sampling] and [limits]: only the long forms */
    const struct moe_daemon_key *mt = moe_daemon_config_find("limits", "max_tokens");
    assert_false(moe_daemon_key_flag(mt, MOE_DAEMON_NAME_SHORT, f, sizeof(f)));
    assert_null(moe_daemon_flag_find("max-tokens"));
    assert_ptr_equal(moe_daemon_flag_find("limits-max-tokens"), mt);
    assert_null(moe_daemon_flag_find("threads_"));
    assert_null(moe_daemon_flag_find("max_seqs")); /* dashes, not underscores */
}

/* every key set through its flag (the key_cases values) reads as the INI would */
static void test_flag_every_key(void **state)
{
    (void)state;
    for (size_t j = 0; j < MOE_ARRAY_SIZE(key_cases); j++) {
        const struct key_case *kc = &key_cases[j];
        const struct moe_daemon_key *k = moe_daemon_config_find(kc->section, kc->name);
        char fl[MOE_DAEMON_NAME_MAX], val[512];
        moe_daemon_key_flag(k, MOE_DAEMON_NAME_LONG, fl, sizeof(fl));
        struct moe_daemon_setting s = {moe_daemon_flag_find(fl), kc->value, "--x"};
        assert_ptr_equal(s.key, k);
        struct moe_daemon_config c;
        if (moe_daemon_config_load_with(NULL, &s, 1, &c))
            fail_msg("--%s %s: %s", fl, kc->value, moe_err_msg());
        moe_daemon_key_format(k, &c, val, sizeof(val));
        assert_string_equal(val, kc->formatted);
        moe_daemon_config_free(&c);
    }
}

static void test_flag_env_layers(void **state)
{
    (void)state;
    char dir[] = "/tmp/moed-cfg-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *p = moe_path_join(dir, "a.ini");
    FILE *f = fopen(p, "w");
    fputs("[daemon]\nthreads = 3\nhttp_threads = 5\n[sampling]\ntemperature = 0.5\n", f);
    fclose(f);

    /* defaults < file < environment < flags, the last flag winning */
    char e1[] = "MOED_THREADS=4", e2[] = "MOED_SAMPLING_TEMPERATURE=0.25", e3[] = "HOME=/x",
         e4[] = "MOED_TEST_ENGINE_STALL=3", e5[] = "MOED_SEED=7";
    char *envp[] = {e1, e2, e3, e4, e5, NULL};
    struct moe_daemon_setting s[8];
    size_t n;
    assert_int_equal(moe_daemon_env_settings(envp, s, 8, &n), 0);
    assert_int_equal(n, 3); /* HOME and the test hook are not keys */
    assert_string_equal(s[0].origin, "MOED_THREADS");
    s[n++] = (struct moe_daemon_setting){moe_daemon_flag_find("seed"), "8", "--seed"};
    s[n++] = (struct moe_daemon_setting){moe_daemon_flag_find("seed"), "9", "--seed"};
    struct moe_daemon_config c;
    assert_int_equal(moe_daemon_config_load_with(p, s, n, &c), 0);
    assert_int_equal(c.threads, 4);          /* environment over file */
    assert_int_equal(c.http_threads, 5);     /* file over default */
    assert_true(c.temperature == 0.25);
    assert_int_equal(c.seed, 9);             /* the last flag */
    assert_int_equal(c.max_seqs, 16);        /* default */
    moe_daemon_config_free(&c);
    /* no file: defaults and settings only */
    assert_int_equal(moe_daemon_config_load_with(NULL, s, n, &c), 0);
    assert_int_equal(c.http_threads, 0);
    assert_int_equal(c.threads, 4);
    moe_daemon_config_free(&c);

    /* errors name the flag or the variable, and the key */
    struct moe_daemon_setting bad = {moe_daemon_flag_find("threads"), "many", "--threads"};
    assert_int_equal(moe_daemon_config_load_with(p, &bad, 1, &c), -EINVAL);
    assert_string_equal(moe_err_msg(), "--threads ([daemon] threads): 'many' is not an integer");
    char b1[] = "MOED_MAX_SEQS=0";
    char *benv[] = {b1, NULL};
    assert_int_equal(moe_daemon_env_settings(benv, s, 8, &n), 0);
    assert_int_equal(moe_daemon_config_load_with(NULL, s, n, &c), -EINVAL);
    assert_string_equal(moe_err_msg(), "MOED_MAX_SEQS ([batching] max_seqs): 0 is out of range "
                                       "1..4096");
    /* rules between keys, broken by a flag: named by it */
    struct moe_daemon_setting mt = {moe_daemon_flag_find("sampling-max-tokens"), "5000",
                                    "--sampling-max-tokens"};
    assert_int_equal(moe_daemon_config_load_with(NULL, &mt, 1, &c), -EINVAL);
    assert_string_equal(moe_err_msg(), "--sampling-max-tokens: [sampling] max_tokens: 5000 is "
                                       "above [limits] max_tokens (4096)");
    /* one key by both of its variables */
    char d1[] = "MOED_THREADS=1", d2[] = "MOED_DAEMON_THREADS=2";
    char *denv[] = {d1, d2, NULL};
    assert_int_equal(moe_daemon_env_settings(denv, s, 8, &n), -EINVAL);
    assert_non_null(strstr(moe_err_msg(), "MOED_THREADS and MOED_DAEMON_THREADS"));

    /* a reload applies the settings over the new file again */
    assert_int_equal(moe_daemon_env_settings(envp, s, 8, &n), 0);
    struct moe_daemon_config cur;
    assert_int_equal(moe_daemon_config_load_with(p, s, n, &cur), 0);
    f = fopen(p, "w");
    fputs("[daemon]\nthreads = 6\nhttp_threads = 5\n[sampling]\ntemperature = 0.75\n"
          "top_k = 3\n", f);
    fclose(f);
    char msg[512];
    struct moe_daemon_reload_result r;
    assert_int_equal(moe_daemon_config_reload_with(&cur, p, s, n, NULL, NULL, &r, msg,
                                                   sizeof(msg)), 0);
    assert_int_equal(cur.threads, 4);       /* still the environment's: no restart asked */
    assert_true(cur.temperature == 0.25);   /* still the environment's */
    assert_int_equal(cur.top_k, 3);         /* the file's new value */
    assert_int_equal(r.n_applied, 1);
    assert_int_equal(r.n_restart, 0);
    moe_daemon_config_free(&cur);
    /* no file: a reload changes nothing */
    assert_int_equal(moe_daemon_config_load_with(NULL, s, n, &cur), 0);
    assert_int_equal(moe_daemon_config_reload_with(&cur, NULL, s, n, NULL, NULL, &r, msg,
                                                   sizeof(msg)), 0);
    assert_non_null(strstr(msg, "no changes"));
    moe_daemon_config_free(&cur);

    /* --help lists every key */
    char *help = NULL;
    size_t hl = 0;
    FILE *m = open_memstream(&help, &hl);
    assert_int_equal(moe_daemon_config_help(m), 0);
    fclose(m);
    size_t nk;
    const struct moe_daemon_key *t = moe_daemon_config_table(&nk);
    for (size_t i = 0; i < nk; i++) {
        char fl[MOE_DAEMON_NAME_MAX + 2] = "--";
        moe_daemon_key_flag(&t[i], MOE_DAEMON_NAME_LONG, fl + 2, sizeof(fl) - 2);
        assert_non_null(strstr(help, fl));
    }
    free(help);
    unlink(p);
    free(p);
    rmdir(dir);
}

static void test_check_model(void **state)
{
    (void)state;
    struct moe_daemon_config c;
    char why[512], dir[] = "/tmp/moed-model-XXXXXX";
    assert_int_equal(moe_daemon_config_defaults(&c), 0);
    assert_int_equal(moe_daemon_config_set(&c, "model", "path", moe_test_path("models/tiny-moe")), 0);
    assert_int_equal(moe_daemon_check_model(&c, why, sizeof(why)), 0);
    assert_int_equal(moe_daemon_config_set(&c, "model", "path", "/nonexistent/m.gguf"), 0);
    assert_int_equal(moe_daemon_check_model(&c, why, sizeof(why)), -ENOENT);
    assert_string_equal(why, "[model] path: /nonexistent/m.gguf: No such file or directory");
    assert_non_null(mkdtemp(dir));
    assert_int_equal(moe_daemon_config_set(&c, "model", "path", dir), 0);
    assert_int_equal(moe_daemon_check_model(&c, why, sizeof(why)), -EINVAL);
    assert_non_null(strstr(why, "config.json"));
    char *txt = moe_path_join(dir, "m.txt");
    FILE *f = fopen(txt, "w");
    fputs("hello, not a model", f);
    fclose(f);
    assert_int_equal(moe_daemon_config_set(&c, "model", "path", txt), 0);
    assert_int_equal(moe_daemon_check_model(&c, why, sizeof(why)), -EINVAL);
    assert_non_null(strstr(why, "not a model"));
    unlink(txt);
    free(txt);
    rmdir(dir);
    moe_daemon_config_free(&c);
}

int main(void)
{
    moe_log_set_level(MOE_LOG_ERR); /* reload logs every change at info */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_every_key),
        cmocka_unit_test(test_value_forms),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_unknown),
        cmocka_unit_test(test_nul_byte),
        cmocka_unit_test(test_inih_pitfalls),
        cmocka_unit_test(test_cross_checks),
        cmocka_unit_test(test_router_prune),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_copy_equal),
        cmocka_unit_test(test_dump_round_trip),
        cmocka_unit_test(test_example_ini),
        cmocka_unit_test(test_reload),
        cmocka_unit_test(test_conversions),
        cmocka_unit_test(test_chat_template),
        cmocka_unit_test(test_listen_fd),
        cmocka_unit_test(test_notify),
        cmocka_unit_test(test_flag_env_names),
        cmocka_unit_test(test_flag_every_key),
        cmocka_unit_test(test_flag_env_layers),
        cmocka_unit_test(test_check_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
