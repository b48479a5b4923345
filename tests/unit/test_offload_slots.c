/* offload: how the host tier's arena is cut. One size is one class of as
 * many slots as the budget holds; an mcmoe-like mix of 1/2/3-bit experts gets
 * a class per width, each holding about the same share of its experts, the
 * arena within the budget and more experts than slots of the largest size
 * would give; where layers mix the widths so that each class's layer minimum
 * costs more, one class of the largest size; sizes close together share a
 * class; a budget below one layer's experts is refused naming host_bytes;
 * many sizes merge into few classes. */
#include "tests/unit/test.h"

#include <errno.h>

#include "common/common.h"
#include "offload/offload_slots.h"

enum { L = 4, E = 8 };

static size_t sizes[L * E];
static uint8_t cls[L * E];

static void test_one_size_is_one_class_as_many_slots_as_fit(void **state)
{
    (void)state;
    for (int i = 0; i < L * E; i++)
        sizes[i] = 3 * 4096;
    struct moe_slot_plan p;
    assert_int_equal(moe_slot_plan_make(sizes, L, E, 20 * 3 * 4096 + 100, cls, &p), 0);
    assert_int_equal(p.n_classes, 1);
    assert_int_equal(p.c[0].slot_bytes, 3 * 4096);
    assert_int_equal(p.c[0].n_slots, 20);
    assert_int_equal(p.c[0].min_slots, E);
    assert_int_equal(p.bytes, 20 * 3 * 4096);
    /* a budget past everything holds everything, and no more */
    assert_int_equal(moe_slot_plan_make(sizes, L, E, (size_t)1 << 30, cls, &p), 0);
    assert_int_equal(p.c[0].n_slots, L * E);
}

static void test_three_widths_get_a_class_each_with_equal_shares(void **state)
{
    (void)state;
    /* widths 1, 2, 3 bits as 1, 2, 3 pages; layer l's expert e */
    size_t all = 0;
    for (int i = 0; i < L * E; i++) {
        sizes[i] = (size_t)(1 + (i * 7 + i / E) % 3) * 4096;
        all += sizes[i];
    }
    size_t budget = all / 2;
    struct moe_slot_plan p;
    assert_int_equal(moe_slot_plan_make(sizes, L, E, budget, cls, &p), 0);
    assert_int_equal(p.n_classes, 3);
    assert_true(p.bytes <= budget);
    uint32_t slots = 0, count[3] = {0};
    for (int c = 0; c < 3; c++) {
        assert_int_equal(p.c[c].slot_bytes, (size_t)(3 - c) * 4096); /* largest first */
        slots += p.c[c].n_slots;
        double share = (double)p.c[c].n_slots / p.c[c].n_experts;
        assert_true(share > 0.35 && share < 0.65);
    }
    for (int i = 0; i < L * E; i++) {
        assert_int_equal(p.c[cls[i]].slot_bytes, sizes[i]); /* each in its own width's class */
        count[cls[i]]++;
    }
    for (int c = 0; c < 3; c++)
        assert_int_equal(count[c], p.c[c].n_experts);
    assert_true(slots > budget / (3 * 4096)); /* more than one largest-size class would hold */
    /* nothing left that a slot more would fit in */
    for (int c = 0; c < 3; c++)
        assert_true(p.c[c].n_slots == p.c[c].n_experts || budget - p.bytes < p.c[c].slot_bytes);
}

static void test_layers_of_one_width_each_fall_back_to_one_class(void **state)
{
    (void)state;
    for (int i = 0; i < L * E; i++)
        sizes[i] = (i / E % 2 ? 1 : 2) * 4096; /* layers 0, 2: 2 pages; 1, 3: 1 page */
    struct moe_slot_plan p;
    /* classes would need 8 x 2 + 8 x 1 pages before any share; one class 8 x 2 */
    assert_int_equal(moe_slot_plan_make(sizes, L, E, 20 * 4096, cls, &p), 0);
    assert_int_equal(p.n_classes, 1);
    assert_int_equal(p.c[0].n_slots, 10);
    for (int i = 0; i < L * E; i++)
        assert_int_equal(cls[i], 0);
}

static void test_sizes_within_an_eighth_share_a_class_rounded_to_pages(void **state)
{
    (void)state;
    for (int i = 0; i < L * E; i++)
        sizes[i] = 100000 + (size_t)(i % 5) * 2000; /* 100000 .. 108000 */
    struct moe_slot_plan p;
    assert_int_equal(moe_slot_plan_make(sizes, L, E, 2000000, cls, &p), 0);
    assert_int_equal(p.n_classes, 1);
    assert_int_equal(p.c[0].slot_bytes, 110592); /* 108000 up to 27 pages */
}

static void test_a_budget_below_one_layer_is_refused_naming_host_bytes(void **state)
{
    (void)state;
    for (int i = 0; i < L * E; i++)
        sizes[i] = (i % 2 ? 1 : 2) * 4096;
    struct moe_slot_plan p;
    /* one layer: 4 of 2 pages and 4 of 1 page = 12 pages */
    assert_int_equal(moe_slot_plan_make(sizes, L, E, 12 * 4096 - 1, cls, &p), -EINVAL);
    assert_non_null(strstr(moe_err_msg(), "host_bytes"));
    assert_non_null(strstr(moe_err_msg(), "49152 bytes"));
    assert_int_equal(moe_slot_plan_make(sizes, L, E, 12 * 4096, cls, &p), 0);
    assert_int_equal(p.c[0].n_slots + p.c[1].n_slots, E);
    /* no blobs at all */
    for (int i = 0; i < L * E; i++)
        sizes[i] = 0;
    assert_int_equal(moe_slot_plan_make(sizes, L, E, 1 << 20, cls, &p), -EINVAL);
}

static void test_many_sizes_merge_into_few_classes_that_hold_them(void **state)
{
    (void)state;
    for (int i = 0; i < L * E; i++)
        sizes[i] = (size_t)4096 << (i % 12); /* 12 widths, each double the last */
    struct moe_slot_plan p;
    assert_int_equal(moe_slot_plan_make(sizes, L, E, (size_t)1 << 30, cls, &p), 0);
    assert_true(p.n_classes >= 2 && p.n_classes <= MOE_SLOT_MAX_CLASSES);
    for (int i = 0; i < L * E; i++)
        assert_true(p.c[cls[i]].slot_bytes >= sizes[i]);
    for (int c = 0; c < p.n_classes; c++)
        assert_int_equal(p.c[c].n_slots, p.c[c].n_experts); /* the budget holds all */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_size_is_one_class_as_many_slots_as_fit),
        cmocka_unit_test(test_three_widths_get_a_class_each_with_equal_shares),
        cmocka_unit_test(test_layers_of_one_width_each_fall_back_to_one_class),
        cmocka_unit_test(test_sizes_within_an_eighth_share_a_class_rounded_to_pages),
        cmocka_unit_test(test_a_budget_below_one_layer_is_refused_naming_host_bytes),
        cmocka_unit_test(test_many_sizes_merge_into_few_classes_that_hold_them),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
