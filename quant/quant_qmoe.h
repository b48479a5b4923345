/* QMoE: ternary expert matrices under one bit per weight (ALGORITHMS.md s.1).
 *
 * Digits: 0 = zero, 1 = lo, 2 = hi, with lo <= 0 <= hi per row. Pairs of
 * digits (r = t[2i] + 3*t[2i+1], an odd width pads with 0) are coded by a
 * dictionary of 65536 sequences of 1..14 pairs, one 16-bit codeword each.
 *
 * The pack's decode table ("qmoe.decode_table", stored once, checksummed):
 * 65536 little-endian u64; bits 0-3 the pair count (1..14), digit d
 * (0..27, in row order) at bits 4+2d and 5+2d, unused digits 0.
 *
 * One matrix [rows][cols], as stored inside an expert blob (little-endian):
 *   u32  magic 'QMX1'
 *   u32  n_codes                 total codewords
 *   f32  scale                   per-matrix scale of the row levels
 *   u32  block_start[nb + 1]     codeword index where each block of
 *                                MOE_QMOE_ROW_BLOCK rows starts, nb = ceil(rows/16);
 *                                block_start[nb] = n_codes
 *   u8   level[rows][2]          log-coded |lo|, |hi| (moe_qmoe_level_*)
 *   (pad to 4 bytes)
 *   u16  code[n_codes]           each row's codewords, rows back to back; a row
 *                                ends when its pairs cover ceil(cols/2) pairs
 * Rows need no offsets of their own: a kernel starts at a block and decodes
 * its rows in order. This keeps the per-row overhead at 16 bits + 2 bits. */
#ifndef MOE_QUANT_QMOE_H
#define MOE_QUANT_QMOE_H

#include <stddef.h>
#include <stdint.h>

#include "quant/quant.h"

#define MOE_QMOE_DICT_SIZE 65536
#define MOE_QMOE_MAX_PAIRS 14
#define MOE_QMOE_ROW_BLOCK 16
#define MOE_QMOE_P_ZERO 0.885 /* digit model the dictionary is built for */
#define MOE_QMOE_MAGIC 0x31584d51u /* "QMX1" */

/* ---- levels: |lo| and |hi| as 8-bit codes relative to the matrix scale ----
 * code 0 = 0; code c in 1..255 = scale * 2^((c - 255) / 32). */
float moe_qmoe_level_decode(float scale, uint8_t code);
uint8_t moe_qmoe_level_encode(float scale, float magnitude); /* nearest code */
/* scale for a matrix: the largest |lo| or |hi| over its rows */
float moe_qmoe_matrix_scale(const float *w, int64_t rows, int64_t cols);
/* The row's grid from the ORIGINAL row: lo = min(min,0), hi = max(max,0),
 * each magnitude rounded to the nearest level code (a nonzero magnitude
 * never to code 0). Returns the decoded lo (<= 0) and hi (>= 0) the
 * quantiser must use. A row of zeros gets codes 0,0 (lo = hi = 0), which
 * moe_qmoe_round turns into all-zero digits. */
void moe_qmoe_row_grid(const float *row, int64_t cols, float scale, uint8_t code[2], float *lo,
                       float *hi);
/* the wide-zero-bin rounding: 2 if x > hi/2, 1 if x < lo/2, else 0 */
static inline uint8_t moe_qmoe_round(float x, float lo, float hi)
{
    return x > 0.5f * hi ? 2 : (x < 0.5f * lo ? 1 : 0);
}

/* ---- dictionary and encoder (moe-pack) ---------------------------------- */
/* Best-first (Tunstall-style) dictionary for iid digits with P(0) = p_zero,
 * P(lo) = P(hi) = (1 - p_zero)/2: prefix-closed, all 9 single pairs present,
 * deterministic (ties broken by the sequence's symbols). table: [65536]. */
void moe_qmoe_dict_build(double p_zero, uint64_t *table);
/* Checks a stored decode table (counts in 1..14, no digit 3, unused bits 0,
 * and every row encodable: all 9 single pairs). 0 or -EINVAL with a moe_err
 * message naming the first bad entry. */
int moe_qmoe_dict_check(const uint64_t *table);

struct moe_qmoe_encoder; /* a trie over a decode table */
int moe_qmoe_encoder_create(const uint64_t *table, struct moe_qmoe_encoder **out);
void moe_qmoe_encoder_free(struct moe_qmoe_encoder *e);

/* Upper bound of a stored matrix's bytes. */
size_t moe_qmoe_matrix_bound(int64_t rows, int64_t cols);
/* Encodes digits [rows][cols] (0/1/2) with the row level codes [rows][2] and
 * the matrix scale into out (cap bytes, >= bound). Returns bytes written,
 * 0 on a digit > 2, cap too small, or more than 2^32-1 codewords. */
size_t moe_qmoe_matrix_encode(const struct moe_qmoe_encoder *e, const uint8_t *digits,
                              const uint8_t *levels, float scale, int64_t rows, int64_t cols,
                              void *out, size_t cap);
/* Number of zero digits, for reports (decodes the stored matrix; w from
 * moe_qmoe_view, whose aux is the side table). */
int64_t moe_qmoe_matrix_zeros(const struct moe_weight *w);
/* Dequantises a stored matrix into out [rows][cols] (tests, tools). */
void moe_qmoe_matrix_to_f32(const struct moe_weight *w, float *out);

/* ---- kernels' view -------------------------------------------------------
 * The runtime decode table (per entry: the lo and hi digit masks and the
 * pair count, as the kernels want them) is the format's side table: traits
 * side_create() builds it from the pack's table, view() binds a matrix.
 *
 * Entry c: e[c][0] = lo mask (bit d set when digit d is 1) | count << 28,
 *          e[c][1] = hi mask (bit d set when digit d is 2).
 * One 8-byte load gives a kernel everything about a codeword; 512 KiB in
 * all, the same bytes the CUDA kernels upload (e only). */
struct moe_qmoe_side {
    uint32_t e[MOE_QMOE_DICT_SIZE][2];
    /* The same entries for the CPU kernels, which decode a row's codewords
     * into one digit byte per weight: d[c] bits 0-7 = 2 * count (digits
     * the codeword covers), digit k (0..27) at bits 8+2k, unused digits 0.
     * One 8-byte load per codeword again; 512 KiB, not uploaded to GPUs. */
    uint64_t d[MOE_QMOE_DICT_SIZE];
};
#define MOE_QMOE_SIDE_COUNT(lo) ((lo) >> 28)
#define MOE_QMOE_SIDE_MASK 0x0fffffffu

/* view() accepts a matrix only after a full decode pass: magic, sizes (nbytes
 * must be exactly what the header implies), block_start monotone and equal to
 * where each block really starts, every row's codewords covering exactly
 * ceil(cols/2) pairs (none crossing the row end), an odd width's padding
 * digit 0. Kernels then trust the matrix: they never read x past cols. */
int moe_qmoe_side_create(const void *table, size_t nbytes, void **side);
void moe_qmoe_side_free(void *side);
int moe_qmoe_view(const void *data, size_t nbytes, int64_t rows, int64_t cols, const void *side,
                  struct moe_weight *out);

#endif
