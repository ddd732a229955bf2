/* Decode attention straight from the paged KV cache: one query token per sequence, its keys and
 * values read where they lie in the pool's blocks. The torch path first gathers every sequence's
 * keys and values into new contiguous tensors (index_select) and then runs
 * scaled_dot_product_attention over them: the whole context is copied once per layer and step, and
 * read twice. Here each (sequence, head) pair reads its keys once for the scores and its values
 * once for the weighted sum, in fp32, with a max-subtracted softmax.
 *
 * Built and loaded by shipyard/kernels/native.py (gcc -O3 -march=native -ffast-math -fopenmp);
 * OpenMP resolves to the libgomp PyTorch already loaded, so both share one thread pool. */

#include <float.h>
#include <math.h>
#include <stdint.h>

int shipyard_abi_version(void) { return 1; }

/* q:       query of sequence b, head h at q + b * q_row + h * dim (fp32)
 * keys, values: the layer's pool, [slots, kv_heads, dim] contiguous; slot = block * block_size + offset
 * table:   [batch, table_width] block ids of each sequence, in order
 * lengths: [batch] tokens each sequence attends to (its cached ones and the new one)
 * out:     [batch, heads, dim] contiguous
 * scores:  scratch, [batch, heads, max length] */
/* Before attending, the step's new keys and values (one row per new token, `rows` of them, rows
 * `k_row` / `v_row` floats apart) are written to their cache slots, so one call per layer does what
 * two index_copy_ calls and the attention did. */
void shipyard_write_kv(const float *k, int64_t k_row, const float *v, int64_t v_row, const int64_t *slots,
                       int64_t rows, float *keys, float *values, int64_t slot_row)
{
    for (int64_t r = 0; r < rows; r++) {
        float *kd = keys + slots[r] * slot_row, *vd = values + slots[r] * slot_row;
        const float *ks = k + r * k_row, *vs = v + r * v_row;
        for (int64_t i = 0; i < slot_row; i++) {
            kd[i] = ks[i];
            vd[i] = vs[i];
        }
    }
}

void shipyard_decode_attention(const float *q, int64_t q_row, const float *keys, const float *values,
                               const int64_t *table, int64_t table_width, int64_t block_size,
                               const int64_t *lengths, float *out, float *scores, int64_t max_length,
                               int64_t batch, int64_t heads, int64_t kv_heads, int64_t dim, float scale,
                               int threads)
{
    const int64_t group = heads / kv_heads;
    const int64_t slot_row = kv_heads * dim;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t h = 0; h < heads; h++) {
            const float *qv = q + b * q_row + h * dim;
            const int64_t head_offset = (h / group) * dim;
            const int64_t *blocks = table + b * table_width;
            const int64_t n = lengths[b];
            float *s = scores + (b * heads + h) * max_length;
            float m = -FLT_MAX;
            for (int64_t t = 0; t < n; t++) {
                const int64_t slot = blocks[t / block_size] * block_size + t % block_size;
                const float *k = keys + slot * slot_row + head_offset;
                float acc = 0.f;
#pragma omp simd reduction(+ : acc)
                for (int64_t d = 0; d < dim; d++)
                    acc += qv[d] * k[d];
                acc *= scale;
                s[t] = acc;
                m = acc > m ? acc : m;
            }
            float sum = 0.f;
#pragma omp simd reduction(+ : sum)
            for (int64_t t = 0; t < n; t++) {
                const float e = expf(s[t] - m);
                s[t] = e;
                sum += e;
            }
            float *o = out + (b * heads + h) * dim;
            for (int64_t d = 0; d < dim; d++)
                o[d] = 0.f;
            for (int64_t t = 0; t < n; t++) {
                const int64_t slot = blocks[t / block_size] * block_size + t % block_size;
                const float *v = values + slot * slot_row + head_offset;
                const float w = s[t];
#pragma omp simd
                for (int64_t d = 0; d < dim; d++)
                    o[d] += w * v[d];
            }
            const float inv = 1.f / sum;
            for (int64_t d = 0; d < dim; d++)
                o[d] *= inv;
        }
    }
}

