/* The request head check the gate runs before libmicrohttpd sees a byte
 * (ipc/ipc_head.c): every head in the table gets the answer RFC 9112 asks
 * for, heads still arriving are "more", and every prefix of a sound head is
 * "more" (never an error), so a slow client is never refused for being slow. */
#include "tests/unit/test.h"

#include "ipc/ipc_int.h"

#include <errno.h>
#include <string.h>

#define MAX_HEAD 4096

static const struct head_case {
    const char *head;
    int want; /* 0 sound, -EAGAIN more, else the status */
    const char *msg; /* part of the message, for errors */
    size_t len;      /* 0: strlen(head) */
} cases[] = {
    {"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", 0, NULL},
    {"GET /health HTTP/1.0\r\n\r\n", 0, NULL},
    {"\r\nGET /health HTTP/1.1\r\n\r\n", 0, NULL}, /* a leading empty line is skipped */
    {"GET /health HTTP/1.1\n\n", 0, NULL},          /* bare LF */
    {"POST /v1/completions HTTP/1.1\r\nContent-Length: 12\r\n\r\n", 0, NULL},
    {"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n", 0, NULL},
    {"POST /v1/completions HTTP/1.1\r\nContent-Length:  12 \r\nX-Empty:\r\n\r\n", 0, NULL},
    {"GET /health HTTP/1.1\r\nHost: x\r\n", -EAGAIN, NULL},
    {"GET /hea", -EAGAIN, NULL},
    {"", -EAGAIN, NULL},
    {"GARBAGE\r\n\r\n", 400, "malformed request line"},
    {"GET /health\r\n\r\n", 400, "malformed request line"},
    {"hello world\r\n\r\n", 400, "malformed request line"},
    {"GET /health HTTP/1.x\r\n\r\n", 400, "malformed HTTP version"},
    {"GET  /health HTTP/1.1\r\n\r\n", 400, "malformed request line"},
    {"GET /health HTTP/1.1 x\r\n\r\n", 400, "malformed request line"},
    {"G(T /health HTTP/1.1\r\n\r\n", 400, "malformed method"},
    {"GET /he\x01lth HTTP/1.1\r\n\r\n", 400, "malformed request target"},
    {"\x16\x03\x01\x02\x00\x01", 400, "not an HTTP request"}, /* a TLS hello */
    {"\x00\x01\x02", 400, "not an HTTP request", 3},
    {"GET /health HTTP/2.0\r\n\r\n", 505, "HTTP/1.0 and 1.1"},
    {"GET /health HTTP/1.1\r\nHost x\r\n\r\n", 400, "malformed header field"},
    {"GET /health HTTP/1.1\r\nHost : x\r\n\r\n", 400, "malformed header field name"},
    {"GET /health HTTP/1.1\r\n: x\r\n\r\n", 400, "malformed header field"},
    {"GET /health HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400, "obsolete line folding"},
    {"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\n", 400,
     "more than once"},
    {"POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n", 400, "more than once"},
    {"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", 400, "not a number"},
    {"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "not a number"},
    {"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", 400, "not a number"},
    {"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 400, "not a number"},
    {"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "other than 'chunked'"},
    {"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501, "other than"},
    {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
     501, "other than"},
    {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400,
     "both Content-Length and Transfer-Encoding"},
};

static void test_cases(void **state)
{
    (void)state;
    for (size_t i = 0; i < MOE_ARRAY_SIZE(cases); i++) {
        const struct head_case *c = &cases[i];
        struct moe_ipc_error e = {0};
        size_t head = 99;
        size_t len = c->len ? c->len : strlen(c->head);
        int rc = moe_ipc_head_check(c->head, len, MAX_HEAD, &head, &e);
        if (rc != c->want)
            fail_msg("case %zu (%.40s): got %d, want %d (%s)", i, c->head, rc, c->want,
                     e.message);
        if (c->want == 0)
            assert_int_equal(head, len);
        if (c->want > 0) {
            assert_int_equal(e.status, c->want);
            if (!strstr(e.message, c->msg))
                fail_msg("case %zu: message '%s' lacks '%s'", i, e.message, c->msg);
        }
    }
}

/* Every prefix of a sound head (a client sending one byte at a time) is
 * "more", and the body after the head is not part of it. */
static void test_prefixes(void **state)
{
    (void)state;
    const char *h = "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                    "application/json\r\nContent-Length: 2\r\n\r\n{}";
    size_t head_len = strlen(h) - 2, got = 0;
    struct moe_ipc_error e;
    for (size_t n = 0; n < head_len; n++)
        assert_int_equal(moe_ipc_head_check(h, n, MAX_HEAD, &got, &e), -EAGAIN);
    assert_int_equal(moe_ipc_head_check(h, strlen(h), MAX_HEAD, &got, &e), 0);
    assert_int_equal(got, head_len);
}

/* A head that never ends is refused once it passes the limit. */
static void test_too_large(void **state)
{
    (void)state;
    static char big[MAX_HEAD + 64];
    struct moe_ipc_error e;
    size_t got;
    memset(big, 'a', sizeof(big));
    memcpy(big, "GET / HTTP/1.1\r\nX-Long: ", 24);
    assert_int_equal(moe_ipc_head_check(big, sizeof(big), MAX_HEAD, &got, &e), 431);
    memcpy(big, "GET /", 5); /* a request line that never ends */
    assert_int_equal(moe_ipc_head_check(big, sizeof(big), MAX_HEAD, &got, &e), 431);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),
        cmocka_unit_test(test_prefixes),
        cmocka_unit_test(test_too_large),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
