/* The Jinja interpreter's private pieces: values, the token stream, the
 * syntax tree and the render state shared by engine_jinja_*.c.
 *
 * Values are Python's (None, bool, int, float, str, list/tuple, dict) plus
 * jinja2's (Undefined, namespace, macro, loop) and callables (globals and
 * bound methods). Heap values are reference counted; those built at compile
 * time (string constants) are immortal (rc < 0) so renders on several
 * threads never write to the shared tree. Lists and dicts are immutable once
 * built, as jinja2's ImmutableSandboxedEnvironment makes them: only a
 * namespace changes after creation. */
#ifndef MOE_ENGINE_JINJA_INT_H
#define MOE_ENGINE_JINJA_INT_H

#include "common/common.h"
#include "engine/engine_jinja.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define JPRINTF(a, b) __attribute__((format(printf, a, b)))

/* nesting the parser and the evaluator allow: bounds the C stack */
#define J_MAX_NEST 100    /* blocks inside blocks, brackets inside brackets */
#define J_MAX_RECURSE 1000 /* evaluator frames in flight: about 300 KiB of stack */
#define J_MAX_JSON_DEPTH 200
#define J_MAX_RANGE 100000 /* jinja2's sandbox MAX_RANGE */

/* ---- values ------------------------------------------------------------------------- */

enum jv_type {
    JV_UNDEF,
    JV_NONE,
    JV_BOOL,
    JV_INT,
    JV_FLOAT,
    JV_STR,
    JV_LIST, /* list or tuple */
    JV_DICT,
    JV_NS,
    JV_MACRO,
    JV_FUNC, /* a global function or a bound method */
    JV_LOOP,
};

/* what an Undefined stands for, for the message when it is used */
enum ju_hint {
    JU_PLAIN,  /* no detail */
    JU_NAME,   /* 'name' is undefined */
    JU_ATTR,   /* 'X object' has no attribute 'name' */
    JU_UNSAFE, /* access to attribute 'name' of 'X' object is unsafe */
    JU_EMPTY,  /* No first/last item, sequence was empty. */
};

struct jstr;
struct jlist;
struct jdict;
struct jns;
struct jmacro;
struct jfunc;
struct jloop;

struct jv {
    uint8_t t;     /* enum jv_type */
    uint8_t hint;  /* JV_UNDEF: enum ju_hint */
    uint8_t owner; /* JV_UNDEF, JU_ATTR/JU_UNSAFE: the type that lacked it */
    union {
        bool b;
        int64_t i;
        double f;
        struct jstr *s;
        struct jlist *l;
        struct jdict *d;
        struct jns *ns;
        struct jmacro *m;
        struct jfunc *fn;
        struct jloop *lp;
        const char *name; /* JV_UNDEF: a name that lives as long as the template */
    } u;
};

struct jstr {
    int32_t rc;
    uint8_t ascii;  /* every byte < 0x80: byte offsets are code point offsets */
    uint8_t markup; /* jinja2's Markup (from |safe): + escapes the other side */
    size_t len;
    char s[]; /* NUL-terminated */
};

/* what a list stands for besides list and tuple: the lazy results jinja2
 * and Python hand out (map, select, items, d.items() ...), which iterate like
 * a list but have no len(), no index, no JSON and print differently */
enum jl_view {
    JL_PLAIN,
    JL_GENERATOR,
    JL_ITEMS, /* dict_items */
    JL_KEYS,
    JL_VALUES,
    JL_REVERSED, /* list_reverseiterator */
};

struct jlist {
    int32_t rc;
    uint8_t tuple;
    uint8_t view; /* enum jl_view */
    uint16_t depth; /* nesting below: bounded, so freeing and printing recurse safely */
    size_t n, cap;
    struct jv *v;
};

/* insertion-ordered; a hash index once it grows past a few keys */
struct jdict {
    int32_t rc;
    uint16_t depth;
    size_t n, cap;
    struct jv *k, *v;
    uint32_t *idx; /* slots hold entry + 1, 0 empty */
    size_t idx_cap;
};

struct jns {
    int32_t rc;
    struct jdict *attrs;
};

struct jscope;
struct jn;

struct jmacro {
    int32_t rc;
    const struct jn *def;   /* JN_MACRO, or the JN_CALLBLOCK whose body is caller() */
    struct jscope *closure; /* where it was defined: names resolve there at call time */
};

enum jfunc_id {
    JF_METHOD, /* a bound method: self + name */
    JF_RANGE,
    JF_DICT,
    JF_NAMESPACE,
    JF_RAISE,
    JF_STRFTIME,
    JF_LOOP_CYCLE,
    JF_LOOP_CHANGED,
    JF_UNSUPPORTED,
};

struct jfunc {
    int32_t rc;
    uint8_t id;        /* enum jfunc_id */
    uint8_t unsafe;    /* a method the sandbox blocks: calling it fails */
    const char *name;  /* method or function name (static or template-owned) */
    struct jv self;    /* JF_METHOD / JF_LOOP_*: the bound object */
};

struct jloop {
    int32_t rc;
    struct jlist *items;
    size_t i;
    int depth0;
    struct jv last_changed; /* loop.changed() */
    bool have_changed;
    const struct jn *node;  /* the recursive for, for loop(...) */
    struct jscope *scope;   /* where that for runs */
};

/* ---- growable text ------------------------------------------------------------------ */

struct jbuf {
    char *p;
    size_t n, cap;
};

/* ---- the token stream --------------------------------------------------------------- */

enum jtok_type {
    T_EOF,
    T_DATA,
    T_VAR_BEGIN,
    T_VAR_END,
    T_BLOCK_BEGIN,
    T_BLOCK_END,
    T_NAME,
    T_STRING,
    T_INT,
    T_FLOAT,
    T_OP,
};

enum jop {
    OP_ADD,
    OP_SUB,
    OP_DIV,
    OP_FLOORDIV,
    OP_MUL,
    OP_MOD,
    OP_POW,
    OP_TILDE,
    OP_LBRACKET,
    OP_RBRACKET,
    OP_LPAREN,
    OP_RPAREN,
    OP_LBRACE,
    OP_RBRACE,
    OP_EQ,
    OP_NE,
    OP_GT,
    OP_GTEQ,
    OP_LT,
    OP_LTEQ,
    OP_ASSIGN,
    OP_DOT,
    OP_COLON,
    OP_PIPE,
    OP_COMMA,
    OP_SEMICOLON,
    /* not tokens: operators of the tree */
    OP_IN,
    OP_NOTIN,
    OP_NOT,
    OP_NEG,
    OP_POS,
};

struct jtoken {
    uint8_t type; /* enum jtok_type */
    uint8_t op;   /* T_OP: enum jop */
    int line, col;
    const char *p; /* T_DATA / T_NAME / T_STRING: text (arena), NUL-terminated */
    size_t n;
    int64_t i;
    double f;
};

/* ---- the syntax tree ---------------------------------------------------------------- */

enum jn_kind {
    /* expressions */
    JN_CONST,   /* k */
    JN_NAME,    /* name */
    JN_GETATTR, /* a.name */
    JN_GETITEM, /* a[b] */
    JN_SLICE,   /* a[b:c:d], any of b c d may be NULL */
    JN_CALL,    /* a(args) */
    JN_FILTER,  /* a|name(args); a NULL in a filter block */
    JN_TEST,    /* a is [not] name(args) */
    JN_UNARY,   /* op a */
    JN_BINARY,  /* a op b */
    JN_COMPARE, /* a (ops[i] v[i])... */
    JN_AND,
    JN_OR,
    JN_CONCAT, /* v[] joined with ~ */
    JN_COND,   /* a if b else c */
    JN_LIST,
    JN_TUPLE,
    JN_DICT, /* v[] = key, value, key, value... */
    JN_ERROR_EXPR,
    /* statements */
    JN_BODY,   /* v[] */
    JN_DATA,   /* k: the text */
    JN_OUTPUT, /* {{ a }} */
    JN_IF,     /* a: test, b: body, c: else (a JN_IF for elif, or a body) */
    JN_FOR,    /* a: target, b: iter, c: body, d: else, e: filter; flags: recursive */
    JN_SET,    /* a: target (name, tuple, or getattr of a namespace), b: value */
    JN_SETBLOCK, /* a: target, b: body, c: filter (JN_FILTER chain on NULL) */
    JN_MACRO,  /* name, params: v[] names (JN_NAME) + defaults in kv[], b: body */
    JN_CALLBLOCK, /* a: the call, params as JN_MACRO, b: body */
    JN_FILTERBLOCK, /* a: filter chain on NULL, b: body */
    JN_WITH,   /* v[]: targets, kv[]: values, b: body */
    JN_BREAK,
    JN_CONTINUE,
    JN_ERROR_STMT, /* name: what jinja2 would fail with when this runs */
};

/* flags */
#define JNF_NEGATE 1    /* JN_TEST: is not */
#define JNF_RECURSIVE 2 /* JN_FOR */
#define JNF_VARARGS 4   /* JN_MACRO: body reads varargs */
#define JNF_KWARGS 8    /* JN_MACRO: body reads kwargs */
#define JNF_CALLER 16   /* JN_MACRO: body reads caller */

struct jn {
    uint8_t kind;
    uint8_t op; /* JN_UNARY / JN_BINARY: enum jop */
    uint8_t flags;
    int16_t fid; /* JN_FILTER / JN_TEST: implementation, -1 none */
    int line, col;
    struct jn *a, *b, *c, *d, *e;
    struct jn **v; /* children: items, positional args, body statements */
    int nv;
    const char **kn; /* keyword argument names (interned) */
    struct jn **kv;  /* their values; JN_MACRO: defaults (NULL: none) */
    int nk;
    uint8_t *ops; /* JN_COMPARE */
    struct jn *dyn_args, *dyn_kwargs;
    const char *name; /* interned */
    struct jv k;      /* JN_CONST / JN_DATA, immortal */
};

/* ---- the compiled template ---------------------------------------------------------- */

struct jchunk;

struct jarena {
    struct jchunk *head;
    size_t used, size;
};

struct moe_jinja {
    struct jarena arena;
    struct jn *root;
    /* interned identifiers: the same text is the same pointer */
    const char **names;
    size_t n_names, cap_names;
    const char *n_loop, *n_varargs, *n_kwargs, *n_caller;
};

void *jarena_alloc(struct jarena *a, size_t n);
void jarena_free(struct jarena *a);
const char *jintern(struct moe_jinja *t, const char *p, size_t n);

/* lexer: tokens of src (allocated in t's arena) */
int jlex(struct moe_jinja *t, const char *src, struct jtoken **toks, size_t *n, char *err,
         size_t errlen);
int jparse(struct moe_jinja *t, const struct jtoken *toks, size_t n, char *err, size_t errlen);

/* the parser's state and helpers, shared by engine_jinja_parse.c (expressions)
 * and engine_jinja_stmt.c (statements) */
struct parser {
    struct moe_jinja *t;
    const struct jtoken *tk;
    size_t n, i;
    char *err;
    size_t errlen;
    bool failed;
    int depth;
    int loops; /* for bodies open (break/continue are legal) */
};

typedef struct parser P;

/* growable child arrays, copied into the arena when done */
struct vec {
    struct jn **v;
    const char **names;
    int n, cap;
};

const struct jtoken *jp_cur(P *p);
const struct jtoken *jp_look(P *p);
const struct jtoken *jp_advance(P *p);
void *jp_fail_at(P *p, const struct jtoken *k, const char *fmt, ...) JPRINTF(3, 4);
void *jp_fail(P *p, const char *fmt, ...) JPRINTF(2, 3);
const char *jp_describe(const struct jtoken *k);
bool jp_is_op(P *p, uint8_t op);
bool jp_is_name(const struct jtoken *k, const char *name);
bool jp_skip_op(P *p, uint8_t op);
bool jp_skip_name(P *p, const char *name);
bool jp_expect_op(P *p, uint8_t op, const char *what);
bool jp_expect_type(P *p, uint8_t type, const char *what);
const struct jtoken *jp_expect_name(P *p);
struct jn *jp_node(P *p, uint8_t kind, const struct jtoken *at);
bool jp_const_str(P *p, struct jn *n, const char *s, size_t len);
bool jp_vec_push(P *p, struct vec *v, struct jn *x, const char *name);
struct jn **jp_vec_done(P *p, struct vec *v, int *n, const char ***names);
struct jn *jp_expression(P *p, bool with_condexpr);
struct jn *jp_tuple(P *p, bool simplified, bool with_condexpr, const char *const *extra_end,
                    bool explicit_parens);
struct jn *jp_filter(P *p, struct jn *n, bool start_inline);


/* ---- render state ------------------------------------------------------------------- */

struct jscope {
    int32_t rc;
    struct jscope *parent;
    size_t n, cap;
    const char **names; /* interned */
    struct jv *vals;
};

struct jstate {
    const struct moe_jinja *t;
    struct jdict *globals; /* the template's variables */
    struct jbuf *out;      /* where output goes now */
    char *err;
    size_t errlen;
    bool failed;
    bool raised; /* err holds raise_exception()'s text */
    uint64_t work, max_work;
    size_t max_output;
    int depth;   /* macro calls in flight */
    int recurse; /* evaluator frames in flight */
    struct tm now;
    struct jns **nss; /* every namespace made, to break cycles at the end */
    size_t n_ns, cap_ns;
};

/* every failure goes through these: the first message wins */
int jfail(struct jstate *st, const struct jn *at, const char *fmt, ...) JPRINTF(3, 4);
int jnomem(struct jstate *st);
int jwork(struct jstate *st, const struct jn *at, uint64_t units);

/* ---- values (engine_jinja_value.c) -------------------------------------------------- */

static inline struct jv jv_undef(void)
{
    return (struct jv){.t = JV_UNDEF};
}
static inline struct jv jv_undef_hint(uint8_t hint, uint8_t owner, const char *name)
{
    return (struct jv){.t = JV_UNDEF, .hint = hint, .owner = owner, .u.name = name};
}
static inline struct jv jv_none(void)
{
    return (struct jv){.t = JV_NONE};
}
static inline struct jv jv_bool(bool b)
{
    return (struct jv){.t = JV_BOOL, .u.b = b};
}
static inline struct jv jv_int(int64_t i)
{
    return (struct jv){.t = JV_INT, .u.i = i};
}
static inline struct jv jv_float(double f)
{
    return (struct jv){.t = JV_FLOAT, .u.f = f};
}
static inline bool jv_is_str(struct jv v)
{
    return v.t == JV_STR;
}
static inline bool jv_is_num(struct jv v)
{
    return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL;
}

struct jv jv_ref(struct jv v); /* one more reference, returns v */
void jv_drop(struct jv v);     /* one reference less */

struct jstr *jstr_alloc(struct jstate *st, size_t len); /* uninitialised text, len + NUL */
void jstr_seal(struct jstr *s);                         /* computes ascii once text is in */
int jv_str(struct jstate *st, const char *p, size_t n, struct jv *out);
int jv_str_buf(struct jstate *st, struct jbuf *b, struct jv *out); /* takes b's text */
struct jv jv_str_static(struct jstr *s); /* wraps without a new reference */

struct jlist *jlist_new(struct jstate *st, size_t cap);
int jlist_push(struct jstate *st, struct jlist *l, struct jv v); /* takes v */
struct jv jv_list(struct jlist *l);                             /* takes l */

struct jdict *jdict_new(struct jstate *st);
int jdict_set(struct jstate *st, struct jdict *d, struct jv k, struct jv v); /* takes both */
struct jv *jdict_get(const struct jdict *d, struct jv k);
struct jv *jdict_get_str(const struct jdict *d, const char *p, size_t n);
struct jv jv_dict(struct jdict *d); /* takes d */

int jv_from_json(struct jstate *st, const json_t *j, struct jv *out, int depth);

bool jv_truthy(struct jv v);
bool jv_eq(struct jv a, struct jv b);
int jv_cmp(struct jstate *st, const struct jn *at, struct jv a, struct jv b, int *res);
int jv_contains(struct jstate *st, const struct jn *at, struct jv hay, struct jv needle,
                bool *res);
const char *jv_type_name(uint8_t t);
const char *jv_type_name_v(struct jv v); /* tuple vs list */
int jv_length(struct jstate *st, const struct jn *at, struct jv v, int64_t *n);
int jundef_fail(struct jstate *st, const struct jn *at, struct jv u);

/* Python str() and repr() */
int jv_to_buf(struct jstate *st, struct jv v, struct jbuf *b);
int jv_repr_buf(struct jstate *st, struct jv v, struct jbuf *b);
int jv_to_str(struct jstate *st, struct jv v, struct jv *out); /* str(v) as a string value */
void jfmt_float(double f, char out[40]);                        /* Python repr(float) */

/* as a list: list/tuple items, dict keys, string characters; Undefined is
 * empty; anything else fails (not iterable) */
int jv_iterate(struct jstate *st, const struct jn *at, struct jv v, struct jlist **out);

/* ---- text (engine_jinja_value.c) ---------------------------------------------------- */

int jbuf_put(struct jstate *st, struct jbuf *b, const char *p, size_t n);
int jbuf_putc(struct jstate *st, struct jbuf *b, char c);
int jbuf_puts(struct jstate *st, struct jbuf *b, const char *s);
int jbuf_printf(struct jstate *st, struct jbuf *b, const char *fmt, ...) JPRINTF(3, 4);
int jbuf_put_cp(struct jstate *st, struct jbuf *b, uint32_t cp);
void jbuf_free(struct jbuf *b);

size_t jutf8_count(const char *p, size_t n);
size_t jutf8_offset(const char *p, size_t n, size_t cps); /* byte offset of code point */
size_t jutf8_put(uint32_t cp, char out[4]);
bool jpy_linebreak(uint32_t c);
uint32_t jcp_upper(uint32_t c);
uint32_t jcp_lower(uint32_t c);
bool jcp_cased(uint32_t c);
bool jcp_alpha(uint32_t c);
bool jcp_digit(uint32_t c);

/* ---- tojson (engine_jinja_json.c) --------------------------------------------------- */

struct jjson_opts {
    bool ensure_ascii, sort_keys;
    const char *indent; /* NULL: no newlines */
    size_t indent_len;
    const char *item_sep, *key_sep;
    size_t item_sep_len, key_sep_len;
};

int jv_dump_json(struct jstate *st, const struct jn *at, struct jv v,
                 const struct jjson_opts *o, struct jbuf *b);

/* ---- calls -------------------------------------------------------------------------- */

struct jargs {
    struct jv *pos;
    size_t npos;
    const char **kname; /* interned or static */
    struct jv *kval;
    size_t nkw;
};

/* the argument at position i or named name (NULL: absent) */
struct jv *jarg(struct jargs *a, size_t i, const char *name);
int jargs_check(struct jstate *st, const struct jn *at, struct jargs *a, const char *fname,
                const char *const *names);

/* engine_jinja_filter.c */
int jfilter_id(const char *name);  /* -1: not implemented */
int jtest_id(const char *name);    /* -1: not implemented */
bool jfilter_known(const char *name); /* jinja2 has one of this name */
bool jtest_known(const char *name);
int jfilter_apply(struct jstate *st, const struct jn *at, int id, struct jv in,
                  struct jargs *a, struct jv *out);
int jtest_apply(struct jstate *st, const struct jn *at, int id, struct jv in, struct jargs *a,
                bool *out);
int jgetattr(struct jstate *st, const struct jn *at, struct jv obj, const char *name,
             size_t len, const char *static_name, struct jv *out);
int jgetitem(struct jstate *st, const struct jn *at, struct jv obj, struct jv key,
             struct jv *out);

/* engine_jinja_seq.c: the filters on sequences */
#define JFILTER(name) \
    int name(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a, struct jv *out)
JFILTER(jf_dictsort);
JFILTER(jf_first);
JFILTER(jf_last);
JFILTER(jf_items);
JFILTER(jf_join);
JFILTER(jf_list);
JFILTER(jf_map);
JFILTER(jf_select);
JFILTER(jf_reject);
JFILTER(jf_selectattr);
JFILTER(jf_rejectattr);
JFILTER(jf_max);
JFILTER(jf_min);
JFILTER(jf_reverse);
JFILTER(jf_sort);
JFILTER(jf_sum);
JFILTER(jf_unique);

static inline bool jarg_bool(struct jargs *a, size_t i, const char *name, bool def)
{
    struct jv *v = jarg(a, i, name);
    return v ? jv_truthy(*v) : def;
}

/* engine_jinja_method.c */
int jmethod_call(struct jstate *st, const struct jn *at, struct jv self, const char *name,
                 struct jargs *a, struct jv *out);
int jmethod_lookup(struct jstate *st, struct jv self, const char *name, struct jv *out);
int jfunc_call(struct jstate *st, const struct jn *at, struct jfunc *f, struct jargs *a,
               struct jv *out);
int jglobal(struct jstate *st, const char *name, struct jv *out); /* 0 found, 1 not */
int jstr_strip(struct jstate *st, struct jv s, struct jv *chars, int which, struct jv *out);
int jstr_case(struct jstate *st, struct jv s, int how, struct jv *out); /* 0 lower 1 upper */
int jstr_replace(struct jstate *st, const struct jn *at, struct jv s, struct jv old,
                 struct jv new_, int64_t count, struct jv *out);
int jstr_splitlines(struct jstate *st, struct jv s, bool keepends, struct jlist **out);
int jstr_escape(struct jstate *st, struct jv s, struct jv *out); /* HTML escape */
/* engine_jinja_str.c: s.name(args) for a string s */
int jstr_method(struct jstate *st, const struct jn *at, struct jv s, const char *name,
                struct jargs *a, struct jv *out);

/* engine_jinja_eval.c: expressions */
int jeval(struct jstate *st, const struct jn *e, struct jscope *sc, struct jv *out);
int jeval_call(struct jstate *st, const struct jn *c, struct jscope *sc, struct jv *caller,
               struct jv *out);
int jfilter_chain(struct jstate *st, const struct jn *n, struct jscope *sc, struct jv in,
                  struct jv *out); /* a chain written without input: {% filter %} */

/* engine_jinja_exec.c: statements, scopes, calling a macro or any callable */
int jlookup(struct jstate *st, struct jscope *sc, const char *name, struct jv *out);
int jcall(struct jstate *st, const struct jn *at, struct jv callee, struct jargs *a,
          struct jv *out);
int jrender_root(struct jstate *st);
void jscope_drop(struct jscope *s);

#endif
