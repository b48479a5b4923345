/* offload: host tier memory. Every NUMA mode gives aligned, writable,
 * zeroed memory whatever the machine has; huge pages fall back cleanly. */
#include "tests/unit/test.h"

#include <errno.h>

#include "common/common.h"
#include "offload/offload_host.h"

static void check_region(const struct moe_host_region *r, size_t asked)
{
    assert_non_null(r->ptr);
    assert_true(r->bytes >= asked);
    assert_int_equal((uintptr_t)r->ptr % MOE_HOST_PAGE, 0);
    assert_int_equal(r->bytes % MOE_HOST_PAGE, 0);
    if (r->huge) {
        assert_int_equal((uintptr_t)r->ptr % MOE_HOST_HUGE_PAGE, 0);
        assert_int_equal(r->bytes % MOE_HOST_HUGE_PAGE, 0);
    }
    uint8_t *b = r->ptr;
    for (size_t i = 0; i < r->bytes; i += 4096)
        assert_int_equal(b[i], 0);
    memset(b, 0xa5, r->bytes);
    assert_int_equal(b[r->bytes - 1], 0xa5);
}

static void test_numa_modes(void **state)
{
    (void)state;
    enum moe_numa_mode modes[] = {MOE_NUMA_OFF, MOE_NUMA_LOCAL, MOE_NUMA_INTERLEAVE};
    for (size_t i = 0; i < MOE_ARRAY_SIZE(modes); i++) {
        struct moe_host_region r;
        assert_int_equal(moe_host_alloc(100000, modes[i], false, &r), 0);
        check_region(&r, 100000);
        assert_false(r.huge);
        assert_int_equal(r.bytes, MOE_ALIGN_UP(100000, 4096));
        if (modes[i] == MOE_NUMA_OFF) {
            assert_false(r.numa_bound);
            assert_int_equal(r.numa_node, -1);
        }
        if (modes[i] == MOE_NUMA_LOCAL && r.numa_bound)
            assert_true(r.numa_node >= 0);
        if (modes[i] == MOE_NUMA_INTERLEAVE)
            assert_int_equal(r.numa_node, -1);
        moe_host_free(&r);
        assert_null(r.ptr);
        moe_host_free(&r); /* twice: no-op */
    }
    moe_host_free(NULL);
}

static void test_hugepages_fall_back(void **state)
{
    (void)state;
    /* whatever the machine offers (hugetlbfs pool, THP, nothing), the
     * region is usable and says what it is */
    enum moe_numa_mode modes[] = {MOE_NUMA_OFF, MOE_NUMA_LOCAL, MOE_NUMA_INTERLEAVE};
    for (size_t i = 0; i < MOE_ARRAY_SIZE(modes); i++) {
        struct moe_host_region r;
        assert_int_equal(moe_host_alloc(3u << 20, modes[i], true, &r), 0);
        check_region(&r, 3u << 20);
        if (r.hugetlb)
            assert_true(r.huge);
        /* 2 MiB alignment is kept even when neither kind of huge page came */
        assert_int_equal((uintptr_t)r.ptr % MOE_HOST_HUGE_PAGE, 0);
        moe_host_free(&r);
    }
}

static void test_refusals(void **state)
{
    (void)state;
    struct moe_host_region r;
    assert_int_equal(moe_host_alloc(0, MOE_NUMA_OFF, false, &r), -EINVAL);
    assert_null(r.ptr);
    assert_int_equal(moe_host_alloc((size_t)1 << 62, MOE_NUMA_OFF, false, &r), -ENOMEM);
    assert_non_null(strstr(moe_err_msg(), "cannot map"));
}

static void test_mode_parse(void **state)
{
    (void)state;
    enum moe_numa_mode m;
    assert_int_equal(moe_numa_mode_parse("off", &m), 0);
    assert_int_equal(m, MOE_NUMA_OFF);
    assert_int_equal(moe_numa_mode_parse("local", &m), 0);
    assert_int_equal(m, MOE_NUMA_LOCAL);
    assert_int_equal(moe_numa_mode_parse("interleave", &m), 0);
    assert_int_equal(m, MOE_NUMA_INTERLEAVE);
    assert_string_equal(moe_numa_mode_name(m), "interleave");
    assert_int_equal(moe_numa_mode_parse("Local", &m), -EINVAL);
    assert_non_null(strstr(moe_err_msg(), "'Local'"));
    assert_int_equal(moe_numa_mode_parse("", &m), -EINVAL);
    assert_int_equal(moe_numa_mode_parse(NULL, &m), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_numa_modes),
        cmocka_unit_test(test_hugepages_fall_back),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_mode_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
