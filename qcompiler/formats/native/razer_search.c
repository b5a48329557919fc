/* RaZeR's weight-MSE search (razer_search.py) as one loop over groups, float for float.
 *
 * Why: in torch the search is a few hundred elementwise ops over every block of groups, each
 * streaming the block through memory; here each group's 16..128 elements stay in registers for
 * all its candidates. The numbers must be the same bits as the torch path's, so this file does
 * the same IEEE float32 operations in the same order:
 *   - built with -ffp-contract=off and without -ffast-math: no fused multiply-add, no
 *     reassociation (build.py);
 *   - a group's `sum(-1)` is torch's CPU inner sum: 8-float chunks, chunk c added into
 *     accumulator c % 4, the accumulators added in order, then their 8 lanes one by one onto 0
 *     (`tsum`);
 *   - `einsum("ngi,ngi->ng")` is torch's small batched matmul: products added one by one onto 0
 *     (`seqdot`).
 * razer_check.py checks this file against torch on each machine before any format uses it.
 *
 * Layout: groups are processed LANES at a time (lanes = groups, so every reduction is a vertical
 * add and the compiler vectorizes across groups). The caller passes the weights transposed as
 * [blocks][gs][LANES]; per-group arrays are [blocks * LANES], padded with all-zero groups.
 */

#include <math.h>
#include <stdint.h>
#include <string.h>

#define LANES 16
#define MAX_GS 128
#define MAX_SPECIALS 16

typedef float lanes_t[LANES];

static inline float bits_to_float(int32_t b) {
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static inline int32_t float_to_bits(float f) {
    int32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

/* fastround.py e2m1, then grid.py magnitude_error: nearest E2M1 magnitude of a (ties to the
 * even code) minus a. step = 2^(floor(log2 min(a, 6)) - 1), at least .5, from the exponent bits;
 * a6 / step is divided by a power of two, which a multiplication by its inverse does exactly
 * (a6 / step lies in [0, 12], no underflow). */
static inline float e2m1_error(float a) {
    float a6 = a < 6.0f ? a : 6.0f;
    int32_t sb = (float_to_bits(a6) & 0x7F800000) - (1 << 23);
    sb = sb < 0x3F000000 ? 0x3F000000 : sb;
    float step = bits_to_float(sb);
    float inv = bits_to_float((254 << 23) - sb);
    float q = nearbyintf(a6 * inv);
    return q * step - a;
}

/* torch's CPU sum over a group's contiguous elements (see the top of this file), per lane. */
static void tsum(const lanes_t *x, int gs, float *out) {
    int chunks = gs / 8;
    int accs = chunks < 4 ? chunks : 4;
    float acc[4][8][LANES];
    for (int c = 0; c < accs; c++)
        for (int j = 0; j < 8; j++)
            for (int l = 0; l < LANES; l++) acc[c][j][l] = x[c * 8 + j][l];
    for (int c = 4; c < chunks; c++)
        for (int j = 0; j < 8; j++)
            for (int l = 0; l < LANES; l++) acc[c % 4][j][l] += x[c * 8 + j][l];
    for (int c = 1; c < accs; c++)
        for (int j = 0; j < 8; j++)
            for (int l = 0; l < LANES; l++) acc[0][j][l] += acc[c][j][l];
    float total[LANES];
    for (int l = 0; l < LANES; l++) total[l] = 0.0f;
    for (int j = 0; j < 8; j++)
        for (int l = 0; l < LANES; l++) total[l] += acc[0][j][l];
    for (int l = 0; l < LANES; l++) out[l] = total[l];
}

/* torch's einsum("ngi,ngi->ng", x, m) per lane: sum of x * m, one product at a time onto 0. */
static void seqdot(const lanes_t *x, const lanes_t *m, int gs, float *out) {
    float acc[LANES];
    for (int l = 0; l < LANES; l++) acc[l] = 0.0f;
    for (int e = 0; e < gs; e++)
        for (int l = 0; l < LANES; l++) acc[l] += x[e][l] * m[e][l];
    for (int l = 0; l < LANES; l++) out[l] = acc[l];
}

/* One block of LANES groups: |w|, w > 0 and w != 0 as 0/1 floats. */
typedef struct {
    lanes_t absw[MAX_GS];
    lanes_t pos[MAX_GS];
    lanes_t nonzero[MAX_GS];
} block_t;

static void load_block(const float *w, int gs, block_t *b) {
    for (int e = 0; e < gs; e++)
        for (int l = 0; l < LANES; l++) {
            float v = w[e * LANES + l];
            b->absw[e][l] = fabsf(v);
            b->pos[e][l] = v > 0.0f ? 1.0f : 0.0f;
            b->nonzero[e][l] = v != 0.0f ? 1.0f : 0.0f;
        }
}

/* razer_search.py _Rounded: a = |w| / safe(s), dq2 = (FP4(a) - a)^2, plain = sum(dq2),
 * s2 = s^2, and the largest a of the block (to skip gain passes that are exactly 0). */
typedef struct {
    lanes_t a[MAX_GS];
    lanes_t dq2[MAX_GS];
    float plain[LANES];
    float s2[LANES];
    float amax;
} rounded_t;

static void round_block(const block_t *b, int gs, const float *s, rounded_t *r) {
    float div[LANES];
    for (int l = 0; l < LANES; l++) {
        div[l] = s[l] > 0.0f ? s[l] : 1.0f;
        r->s2[l] = s[l] * s[l];
    }
    float amax[LANES];
    for (int l = 0; l < LANES; l++) amax[l] = 0.0f;
    for (int e = 0; e < gs; e++)
        for (int l = 0; l < LANES; l++) {
            float a = b->absw[e][l] / div[l];
            float d = e2m1_error(a);
            r->a[e][l] = a;
            r->dq2[e][l] = d * d;
            amax[l] = a > amax[l] ? a : amax[l];
        }
    tsum(r->dq2, gs, r->plain);
    float m = 0.0f;
    for (int l = 0; l < LANES; l++) m = amax[l] > m ? amax[l] : m;
    r->amax = m;
}

/* razer_search.py gain: max(dq2 - (a - v)^2, 0) per element. */
static void gains(const rounded_t *r, int gs, float v, lanes_t *g) {
    for (int e = 0; e < gs; e++)
        for (int l = 0; l < LANES; l++) {
            float d = r->a[e][l] - v;
            float x = r->dq2[e][l] - d * d;
            g[e][l] = x < 0.0f ? 0.0f : x;
        }
}

/* The coarse search (razer_search.py `search`, the loop over ratios) for blocks
 * [first_block, end_block) of `blocks` (callers split the blocks between threads; every block is
 * independent of the others).
 *
 * scales [ratios][layers][groups]: the scale each layer rounds at (layer 0: the plain FP4
 * scale; razer_search.py `_layers`); serve [layers][specials][groups]: layer li (> 0) gives
 * special i its error in that group (layer 0 gives every special its error first); specials,
 * floors (gain_floor of |special|) and order (the order candidates are offered in) per
 * special; own [specials][groups] (the special's range does not use the plain scale) and
 * unclipped [groups] (may be NULL) make the bans, clips [ratios] says the ratio is < 1.
 * Out per group: the best error, its ratio index and special index, and the first ratio index
 * after which the best error is 0 (`ratios` if never).
 * Returns 0, or -1 when a size is out of range. */
int razer_coarse(const float *w, int64_t blocks, int64_t first_block, int64_t end_block,
                 int gs, int ratios, int layers,
                 const float *scales, int nspecial, const float *specials, const float *floors,
                 const int32_t *order, const uint8_t *serve, const uint8_t *own,
                 const uint8_t *unclipped, const uint8_t *clips, float *best_err,
                 int32_t *best_ratio, int32_t *best_meta, int32_t *exact_at) {
    if (gs < 8 || gs > MAX_GS || gs % 8 || nspecial < 1 || nspecial > MAX_SPECIALS
        || first_block < 0 || end_block > blocks || first_block > end_block)
        return -1;
    const int64_t groups = blocks * LANES;
    block_t blk;
    rounded_t rd;
    lanes_t g[MAX_GS];
    float errs[MAX_SPECIALS][LANES];
    for (int64_t bi = first_block; bi < end_block; bi++) {
        const int64_t base = bi * LANES;
        load_block(w + bi * gs * LANES, gs, &blk);
        float berr[LANES];
        int32_t bratio[LANES], bmeta[LANES], bexact[LANES];
        for (int l = 0; l < LANES; l++) bexact[l] = ratios;
        int first = 1;
        for (int k = 0; k < ratios; k++) {
            for (int li = 0; li < layers; li++) {
                const uint8_t *srv = serve + ((int64_t)li * nspecial) * groups + base;
                if (li > 0) {  /* a layer that serves no group of this block: skip it */
                    int any = 0;
                    for (int i = 0; i < nspecial; i++)
                        for (int l = 0; l < LANES; l++) any |= srv[i * groups + l];
                    if (!any) continue;
                }
                round_block(&blk, gs, scales + ((int64_t)k * layers + li) * groups + base, &rd);
                float done_mag[MAX_SPECIALS];
                float on_pos[MAX_SPECIALS][LANES], total[MAX_SPECIALS][LANES];
                int ndone = 0;
                for (int i = 0; i < nspecial; i++) {
                    if (li > 0) {
                        int any = 0;
                        for (int l = 0; l < LANES; l++) any |= srv[i * groups + l];
                        if (!any) continue;
                    }
                    float m = fabsf(specials[i]);
                    int slot = -1;
                    for (int j = 0; j < ndone; j++)
                        if (done_mag[j] == m) slot = j;
                    if (slot < 0) {
                        slot = ndone++;
                        done_mag[slot] = m;
                        if (rd.amax > floors[i]) {
                            gains(&rd, gs, m, g);
                            seqdot(g, blk.pos, gs, on_pos[slot]);
                            tsum(g, gs, total[slot]);
                        } else {  /* every gain is exactly 0 (gain_floor) */
                            for (int l = 0; l < LANES; l++) on_pos[slot][l] = total[slot][l] = 0.0f;
                        }
                    }
                    for (int l = 0; l < LANES; l++) {
                        float gain = specials[i] > 0.0f ? on_pos[slot][l]
                                                        : total[slot][l] - on_pos[slot][l];
                        float err = (rd.plain[l] - gain) * rd.s2[l];
                        if (li == 0 || srv[i * groups + l]) errs[i][l] = err;
                    }
                }
            }
            for (int j = 0; j < nspecial; j++) {
                int i = order[j];
                for (int l = 0; l < LANES; l++) {
                    float err = errs[i][l];
                    if (unclipped && unclipped[base + l]
                        && (own[i * groups + base + l] || clips[k]))
                        err = INFINITY;
                    if (first || err < berr[l]) {
                        berr[l] = err;
                        bratio[l] = k;
                        bmeta[l] = i;
                    }
                }
                first = 0;
            }
            for (int l = 0; l < LANES; l++)
                if (bexact[l] == ratios && berr[l] == 0.0f) bexact[l] = k;
        }
        for (int l = 0; l < LANES; l++) {
            best_err[base + l] = berr[l];
            best_ratio[base + l] = bratio[l];
            best_meta[base + l] = bmeta[l];
            exact_at[base + l] = bexact[l];
        }
    }
    return 0;
}

/* The error of one candidate per group in the local steps (razer_search.py `search`, after
 * the coarse loop): scale s and special value per group; the special's gain counts on the
 * elements of its sign. Blocks [first_block, end_block) of `blocks`. Returns 0, or -1 when a
 * size is out of range. */
int razer_refine(const float *w, int64_t blocks, int64_t first_block, int64_t end_block, int gs,
                 const float *s, const float *special, float *err) {
    if (gs < 8 || gs > MAX_GS || gs % 8 || first_block < 0 || end_block > blocks
        || first_block > end_block)
        return -1;
    block_t blk;
    rounded_t rd;
    lanes_t g[MAX_GS];
    lanes_t match[MAX_GS];
    for (int64_t bi = first_block; bi < end_block; bi++) {
        const int64_t base = bi * LANES;
        load_block(w + bi * gs * LANES, gs, &blk);
        round_block(&blk, gs, s + base, &rd);
        float mag[LANES], on[LANES];
        for (int l = 0; l < LANES; l++) mag[l] = fabsf(special[base + l]);
        for (int e = 0; e < gs; e++)
            for (int l = 0; l < LANES; l++) {
                float d = rd.a[e][l] - mag[l];
                float x = rd.dq2[e][l] - d * d;
                g[e][l] = x < 0.0f ? 0.0f : x;
                float side = special[base + l] > 0.0f ? blk.pos[e][l] : 1.0f - blk.pos[e][l];
                match[e][l] = side * blk.nonzero[e][l];
            }
        seqdot(g, match, gs, on);
        for (int l = 0; l < LANES; l++) err[base + l] = (rd.plain[l] - on[l]) * rd.s2[l];
    }
    return 0;
}
