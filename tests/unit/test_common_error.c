/* moe_err: the per-thread one-line error message. */
#include "tests/unit/test.h"

#include <errno.h>

#include "common/common.h"

/* wrapping the previous message in a new one reads it whole */
static void test_err_wraps_previous(void **state)
{
    (void)state;
    assert_int_equal(moe_err(-EINVAL, "tensor '%s': bad", "w"), -EINVAL);
    assert_int_equal(moe_err(-EIO, "%s: %s", "model.gguf", moe_err_msg()), -EIO);
    assert_string_equal(moe_err_msg(), "model.gguf: tensor 'w': bad");
    moe_err(-EINVAL, "%s and %s", moe_err_msg(), moe_err_msg());
    assert_string_equal(moe_err_msg(), "model.gguf: tensor 'w': bad and model.gguf: tensor 'w': "
                                        "bad");
}

/* names and values from a file cannot break the message over lines */
static void test_err_one_line(void **state)
{
    (void)state;
    moe_err(-EINVAL, "%s: config key '%s' is not known", "config.json", "a\nb\rc\td\x7f" "e");
    assert_string_equal(moe_err_msg(), "config.json: config key 'a?b?c?d?e' is not known");
    moe_err(-EINVAL, "caf\xc3\xa9"); /* UTF-8 stays */
    assert_string_equal(moe_err_msg(), "caf\xc3\xa9");
    moe_err_clear();
    assert_string_equal(moe_err_msg(), "");
}

/* a message longer than the buffer is cut, still terminated */
static void test_err_truncated(void **state)
{
    (void)state;
    char big[3000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    moe_err(-EINVAL, "%s", big);
    size_t n = strlen(moe_err_msg());
    assert_true(n > 500 && n < sizeof(big) - 1);
    moe_err(-EINVAL, "%s!", moe_err_msg());
    assert_int_equal(strlen(moe_err_msg()), n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_err_wraps_previous),
        cmocka_unit_test(test_err_one_line),
        cmocka_unit_test(test_err_truncated),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
