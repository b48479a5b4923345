/* Jinja tests (x is defined, x is string, x is divisibleby 3 ...): jinja2's
 * built-in ones, with Python's notion of the types (a bool is a number; a
 * dict and an Undefined pass "sequence", having len() and []). */
#include "engine/engine_jinja_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int (*test_fn)(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                       bool *out);

static struct jv *test_arg(struct jstate *st, const struct jn *at, struct jargs *a)
{
    struct jv *v = jarg(a, 0, NULL);
    if (!v)
        jfail(st, at, "test needs an argument");
    return v;
}

#define TEST(name) \
    static int name(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a, \
                    bool *out)

TEST(t_boolean)
{
    *out = in.t == JV_BOOL;
    return 0;
}
TEST(t_callable)
{
    *out = in.t == JV_MACRO || in.t == JV_FUNC || in.t == JV_LOOP;
    return 0;
}
TEST(t_defined)
{
    *out = in.t != JV_UNDEF;
    return 0;
}
TEST(t_undefined)
{
    *out = in.t == JV_UNDEF;
    return 0;
}
TEST(t_divisibleby)
{
    struct jv *n = test_arg(st, at, a);
    if (!n)
        return -EINVAL;
    if ((in.t != JV_INT && in.t != JV_BOOL) || (n->t != JV_INT && n->t != JV_BOOL))
        return jfail(st, at, "divisibleby needs integers");
    int64_t x = in.t == JV_INT ? in.u.i : in.u.b, y = n->t == JV_INT ? n->u.i : n->u.b;
    if (!y)
        return jfail(st, at, "integer division or modulo by zero");
    *out = y == -1 || x % y == 0;
    return 0;
}
TEST(t_eq)
{
    struct jv *n = test_arg(st, at, a);
    if (!n)
        return -EINVAL;
    *out = jv_eq(in, *n);
    return 0;
}
TEST(t_ne)
{
    struct jv *n = test_arg(st, at, a);
    if (!n)
        return -EINVAL;
    *out = !jv_eq(in, *n);
    return 0;
}
static int order(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                 bool *out, int want)
{
    struct jv *n = test_arg(st, at, a);
    int c;
    if (!n)
        return -EINVAL;
    int rc = jv_cmp(st, at, in, *n, &c);
    if (!rc)
        *out = want == 0 ? c < 0 : want == 1 ? c <= 0 : want == 2 ? c > 0 : c >= 0;
    return rc;
}
TEST(t_lt)
{
    return order(st, at, in, a, out, 0);
}
TEST(t_le)
{
    return order(st, at, in, a, out, 1);
}
TEST(t_gt)
{
    return order(st, at, in, a, out, 2);
}
TEST(t_ge)
{
    return order(st, at, in, a, out, 3);
}
TEST(t_escaped)
{
    *out = in.t == JV_STR && in.u.s->markup;
    return 0;
}
static int parity(struct jstate *st, const struct jn *at, struct jv in, bool *out, int want)
{
    if (in.t == JV_INT || in.t == JV_BOOL) {
        int64_t x = in.t == JV_INT ? in.u.i : in.u.b;
        *out = ((x % 2 + 2) % 2) == want;
    } else if (in.t == JV_FLOAT) {
        double m = fmod(in.u.f, 2);
        if (m < 0)
            m += 2;
        *out = m == want;
    } else {
        return jfail(st, at, "unsupported operand type(s) for %%: '%s' and 'int'",
                     jv_type_name_v(in));
    }
    return 0;
}
TEST(t_even)
{
    return parity(st, at, in, out, 0);
}
TEST(t_odd)
{
    return parity(st, at, in, out, 1);
}
TEST(t_false)
{
    *out = in.t == JV_BOOL && !in.u.b;
    return 0;
}
TEST(t_true)
{
    *out = in.t == JV_BOOL && in.u.b;
    return 0;
}
/* 'upper' is filter: the name is the value tested */
TEST(t_filter)
{
    *out = in.t == JV_STR && jfilter_id(in.u.s->s) >= 0;
    return 0;
}
TEST(t_test)
{
    *out = in.t == JV_STR && jtest_id(in.u.s->s) >= 0;
    return 0;
}
TEST(t_float)
{
    *out = in.t == JV_FLOAT;
    return 0;
}
TEST(t_integer)
{
    *out = in.t == JV_INT;
    return 0;
}
TEST(t_number)
{
    *out = jv_is_num(in);
    return 0;
}
TEST(t_in)
{
    struct jv *n = test_arg(st, at, a);
    if (!n)
        return -EINVAL;
    return jv_contains(st, at, *n, in, out);
}
TEST(t_iterable)
{
    *out = in.t == JV_UNDEF || in.t == JV_STR || in.t == JV_LIST || in.t == JV_DICT;
    return 0;
}
TEST(t_sequence)
{
    /* len() and __getitem__: a dict and an Undefined pass too */
    *out = in.t == JV_UNDEF || in.t == JV_STR || (in.t == JV_LIST && !in.u.l->view) ||
           in.t == JV_DICT;
    return 0;
}
TEST(t_mapping)
{
    *out = in.t == JV_DICT;
    return 0;
}
TEST(t_none)
{
    *out = in.t == JV_NONE;
    return 0;
}
TEST(t_string)
{
    *out = in.t == JV_STR;
    return 0;
}
static int is_case(struct jstate *st, struct jv in, bool *out, const char *m)
{
    struct jv s, r;
    int rc = jv_to_str(st, in, &s);
    if (rc)
        return rc;
    struct jargs none = {0};
    rc = jmethod_call(st, NULL, s, m, &none, &r);
    jv_drop(s);
    if (!rc)
        *out = r.u.b;
    return rc;
}
TEST(t_lower)
{
    return is_case(st, in, out, "islower");
}
TEST(t_upper)
{
    return is_case(st, in, out, "isupper");
}
TEST(t_sameas)
{
    struct jv *n = test_arg(st, at, a);
    if (!n)
        return -EINVAL;
    if (in.t != n->t)
        *out = false;
    else if (in.t == JV_NONE || in.t == JV_UNDEF)
        *out = true;
    else if (in.t == JV_BOOL)
        *out = in.u.b == n->u.b;
    else if (in.t == JV_INT) /* CPython shares small ints */
        *out = in.u.i == n->u.i && in.u.i >= -5 && in.u.i <= 256;
    else if (in.t == JV_FLOAT)
        *out = false;
    else
        *out = in.u.s == n->u.s; /* the same heap object, whatever its type */
    return 0;
}

static const struct {
    const char *name;
    test_fn fn;
} tests[] = {
    {"boolean", t_boolean},     {"callable", t_callable}, {"defined", t_defined},
    {"undefined", t_undefined}, {"divisibleby", t_divisibleby}, {"eq", t_eq},
    {"equalto", t_eq},          {"==", t_eq},             {"ne", t_ne},
    {"!=", t_ne},               {"lt", t_lt},             {"lessthan", t_lt},
    {"<", t_lt},                {"le", t_le},             {"<=", t_le},
    {"gt", t_gt},               {"greaterthan", t_gt},    {">", t_gt},
    {"ge", t_ge},               {">=", t_ge},             {"escaped", t_escaped},
    {"even", t_even},           {"odd", t_odd},           {"false", t_false},
    {"true", t_true},           {"filter", t_filter},     {"test", t_test},
    {"float", t_float},         {"integer", t_integer},   {"number", t_number},
    {"in", t_in},               {"iterable", t_iterable}, {"sequence", t_sequence},
    {"mapping", t_mapping},     {"none", t_none},         {"string", t_string},
    {"lower", t_lower},         {"upper", t_upper},       {"sameas", t_sameas},
};

int jtest_id(const char *name)
{
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++)
        if (!strcmp(tests[i].name, name))
            return (int)i;
    return -1;
}

bool jtest_known(const char *name)
{
    return jtest_id(name) >= 0;
}

int jtest_apply(struct jstate *st, const struct jn *at, int id, struct jv in, struct jargs *a,
                bool *out)
{
    if (id < 0 || (size_t)id >= sizeof(tests) / sizeof(tests[0]))
        return jfail(st, at, "unknown test");
    *out = false;
    return tests[id].fn(st, at, in, a, out);
}
