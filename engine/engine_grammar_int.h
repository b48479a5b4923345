/* The compiled form of a grammar, shared by its compiler (engine_grammar.c)
 * and its matcher (engine_grammar_match.c).
 *
 * Every rule is a list of alternatives; an alternative is a run of elements
 * in elems[] ending with GE_END. An element matches one code point against a
 * set (GE_SET), stands for a rule (GE_REF), or for lo..hi repetitions of a
 * rule (GE_REP, hi < 0: no bound), counted in the parse stack rather than
 * written out, so that "char{0,10000}" is one element. A parse stack is a
 * chain of (position, count) frames: the top is the next set to match, each
 * frame below is where to go on when the rule above it ends (a GE_REP frame
 * with the repetitions done so far). */
#ifndef MOE_ENGINE_GRAMMAR_INT_H
#define MOE_ENGINE_GRAMMAR_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

enum { GE_END, GE_SET, GE_REF, GE_REP };

struct gelem {
    uint8_t type;
    int32_t arg;    /* GE_SET: set index; GE_REF, GE_REP: rule index */
    int32_t lo, hi; /* GE_REP: bounds */
};

struct gset {
    uint64_t ascii[2]; /* the answer for code points below 128, precomputed */
    int32_t first, n;  /* ranges[first .. first + n), sorted and merged */
    bool neg;
};

struct moe_grammar {
    atomic_int refs;
    struct gelem *elems;
    int32_t n_elems;
    int32_t *alt_pos; /* the first element of each alternative */
    int32_t *rule_alt0, *rule_nalt, n_rules;
    struct gset *sets;
    int32_t n_sets;
    uint32_t (*ranges)[2]; /* inclusive code point ranges */
    int32_t root;
};

static inline bool gset_has(const struct moe_grammar *g, const struct gset *s, uint32_t c)
{
    if (c < 128)
        return (s->ascii[c >> 6] >> (c & 63)) & 1;
    bool in = false;
    for (int32_t i = s->first; i < s->first + s->n && !in; i++)
        in = c >= g->ranges[i][0] && c <= g->ranges[i][1];
    return in != s->neg;
}

#endif
