/* lowbit's native CPU kernels (lowbit.quant.native): element-wise quantizers in one pass over
 * memory, each doing the same float operations, in the same order, as its tensor path.
 */
#include <math.h>
#include <stdint.h>

/* DoReFa Eq. 12 on a float32 gradient.
 *
 * The same arithmetic, operation for operation, as the eager tensor path of
 * lowbit.quant.functional.quantize_gradient_tensor, so the two give identical bits:
 *   h = hash(index)                      uniform_noise_bits: Weyl index, xorshift-multiply
 *   f = (float)(int32)h + g * scale      2^32 s + 2^32 n g / 2m      (addcmul: self + t1 * t2)
 *   q = round(clamp(f * 2^-32 + n / 2, 0, n))                         (round half to even)
 *   out = -m + q * step                  step = 2m / n                (addcmul again)
 * The tensor path makes about 13 passes over the gradient; this makes one read and one write.
 * Built with -ffp-contract=off, so the compiler fuses nothing on its own; the two multiply-adds
 * that torch.addcmul fuses are fused here explicitly (MULTIPLY_ADD).
 * Rows are samples (m, scale and step are per row); the elements are split over OpenMP threads,
 * torch's own runtime (libgomp.so.1 is already loaded by torch when this library is). The hash's
 * constants come from Python (lowbit.quant.functional), where the tensor path reads them too.
 */
#define BLOCK 16384

/* torch.addcmul rounds once (a fused multiply-add) in its vectorised loop on CPUs with FMA, and
 * twice without; -march=native defines __FMA__ exactly where the CPU has it. */
#ifdef __FMA__
#define MULTIPLY_ADD(a, b, c) fmaf((a), (b), (c))
#else
#define MULTIPLY_ADD(a, b, c) ((c) + (a) * (b))
#endif

void lowbit_eq12(const float *gradient, float *out, int64_t rows, int64_t cols,
                 const float *scale, const float *step, const float *neg_max, uint32_t golden,
                 uint32_t offset, uint32_t multiplier, uint32_t mix, float levels, int threads) {
    const int64_t total = rows * cols;
    const int64_t blocks = (total + BLOCK - 1) / BLOCK;
    const float half_levels = levels / 2.0f;
    const float two_to_minus_32 = 0x1p-32f;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t block = 0; block < blocks; ++block) {
        const int64_t end = (block + 1) * BLOCK < total ? (block + 1) * BLOCK : total;
        int64_t i = block * BLOCK;
        int64_t row = i / cols;
        while (i < end) {
            const int64_t row_end = (row + 1) * cols < end ? (row + 1) * cols : end;
            const float row_scale = scale[row], row_step = step[row], row_neg_max = neg_max[row];
            for (int64_t j = i; j < row_end; ++j) {
                uint32_t h = (uint32_t)j * golden + offset;
                h ^= h >> 16;
                h *= multiplier;
                h ^= h >> 16;
                h *= mix;
                float f = MULTIPLY_ADD(gradient[j], row_scale, (float)(int32_t)h);
                f = f * two_to_minus_32 + half_levels;
                f = f < 0.0f ? 0.0f : f; /* comparisons keep a NaN, as torch.clamp does */
                f = f > levels ? levels : f;
                out[j] = MULTIPLY_ADD(nearbyintf(f), row_step, row_neg_max);
            }
            i = row_end;
            ++row;
        }
    }
}

/* PACT Eq. 1-2, forward: y = round(clamp(x, 0, alpha) / step) * step with step = alpha / n, as
 * lowbit.quant.functional._PACT.forward computes it with torch (clamp, div_, round_, mul_): four
 * passes there, one here. Comparisons keep a NaN, as torch.clamp does. */
void lowbit_pact_forward(const float *x, float *out, int64_t total, float alpha, float step,
                         int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < total; ++i) {
        float y = x[i] < 0.0f ? 0.0f : x[i];
        y = y > alpha ? alpha : y;
        out[i] = nearbyintf(y / step) * step;
    }
}

/* DoReFa Eq. 11, forward: y = round(clamp(x, low, 1) * n) / n, as
 * lowbit.quant.functional._ClipToGrid.forward computes it with torch (clamp, mul_, round_, div_):
 * four passes there, one here. low is 0 (Eq. 11) or -1 (its signed form, n = 2^(k-1) - 1).
 * Comparisons keep a NaN, as torch.clamp does. */
void lowbit_clip_to_grid(const float *x, float *out, int64_t total, float low, float levels,
                         int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < total; ++i) {
        float y = x[i] < low ? low : x[i];
        y = y > 1.0f ? 1.0f : y;
        out[i] = nearbyintf(y * levels) / levels;
    }
}

/* LSQ (Esser et al. 2019) Eq. 1-2, forward, with one step size s for the whole tensor:
 * v = x / s (kept for the backward) and y = round(clamp(v, -Qn, Qp)) * s, as
 * lowbit.quant.functional._LSQ.forward computes them with torch (div, clamp, round_, mul_): four
 * passes there, one here. Comparisons keep a NaN, as torch.clamp does. */
void lowbit_lsq_forward(const float *x, float *v_out, float *out, int64_t total, float step,
                        float neg_qn, float qp, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < total; ++i) {
        const float v = x[i] / step;
        float y = v < neg_qn ? neg_qn : v;
        y = y > qp ? qp : y;
        v_out[i] = v;
        out[i] = nearbyintf(y) * step;
    }
}

/* LSQ's backward on v = x / s, element by element, as _LSQ.backward computes it with torch:
 * grad_x = g * [-Qn <= v <= Qp] (straight-through inside the range, Sec. 2) and the terms of
 * Eq. 3, g * (-Qn below, Qp above, round(v) - v inside), whose sum (torch's, in _LSQ.backward)
 * is the step's gradient. About ten passes there, one here. A NaN v gives grad_x = g * 0 and a
 * NaN term, as there. */
void lowbit_lsq_backward(const float *g, const float *v, float *grad_x, float *terms,
                         int64_t total, float neg_qn, float qp, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < total; ++i) {
        const float vi = v[i], gi = g[i];
        const float inside = (vi >= neg_qn && vi <= qp) ? 1.0f : 0.0f;
        const float local = vi <= neg_qn ? neg_qn : (vi >= qp ? qp : nearbyintf(vi) - vi);
        grad_x[i] = gi * inside;
        terms[i] = gi * local;
    }
}
