/*
 * Fused spiking-neuron kernels for onnxruntime (custom-op library, C API).
 *
 * One pass over memory per neuron layer and timestep, instead of the six stock kernels of the
 * function body plus the spike count (Add, Floor, Clip, Sub, Abs, ReduceSum). Same float32
 * operations in the same order, so the results are bit-identical to the ONNX bodies in
 * pmsm_compiler/ops/neurons.py (compiled with -ffp-contract=off and without -ffast-math;
 * -fno-math-errno -fno-trapping-math only let floorf vectorize):
 *
 *   integrate   m = U + I                          (U may be one element: the initial ½)
 *   fire        AIF: k = min(max(floor(m), s_min), s_max)     IF: k = (m >= 1) ? 1 : 0
 *               AIFHalfEven: k = min(max(nearbyint(m), s_min), s_max)   (ONNX Round: ties to even)
 *   reset       U_next = m - k                     (not in the *Final variants)
 *   count       c[n] = sum over the neurons of sample n of |k|, exactly (integer arithmetic)
 *   counters    (the *Counters ops) C[n, :] = the counting rules of pmsm_compiler/ops/counters.py, in
 *               its COUNTERS order: spikes sum|k|, events sum 1[k != 0], positive, negative,
 *               at_lower_cap sum 1[k = s_min], at_upper_cap sum 1[k = s_max], at_zero sum 1[k = 0];
 *               accumulated in the same loop as sum|k|, sum k and the three indicator sums, the
 *               rest derived as pmsm::SpikeCounters' body does (positive = (sum|k| + sum k) / 2, ...)
 *
 * Ops, domain "pmsm.kernels" (runtime-internal: SNNSession rewrites its step graphs to use them
 * when this library is loaded; compiled models never contain them):
 *   AIFCount      (I, U) -> (K, U_next, count)   attrs s_min, s_max, count_float
 *   AIFCountFinal (I, U) -> (K, count)           attrs s_min, s_max, count_float
 *   AIFHalfEvenCount, AIFHalfEvenCountFinal      as AIFCount, AIFCountFinal
 *   IFCount       (I, U) -> (K, U_next, count)   attr count_float
 *   IFCountFinal  (I, U) -> (K, count)           attr count_float
 *   AIFCounters, AIFHalfEvenCounters, IFCounters (and *CountersFinal): as the *Count ops, with one
 *                 more output, counters, int64 [N, 7]
 * count is [N, 1], float32 when count_float = 1 (the caller guarantees the sum is below 2^24, so
 * exact), int64 otherwise; counters is [N, 1, 7] when counters_row = 1 (the row the model's Unsqueeze
 * makes of it, same bytes). Samples run in parallel on onnxruntime's intra-op thread pool.
 *
 * Time-batched (attribute time_batched = 1): the layer's T steps in one call, as a multi-step
 * ("layer by layer") simulator runs them. I holds T·N samples, step-major (sample b = t·N + n, the
 * layout the runtime's Tile of its static inputs makes), U and U_next one full membrane per sample
 * [N, ...] (T = the elements of I / the elements of U). For each neuron the T steps run in order,
 * the membrane of a tile of neurons held in L1 across them, so it is read and written once per call
 * instead of once per step; every step is the same float32 operations on the same operands as a
 * single-step call. count and counters are per sample and step ([T·N, ...], row b = t·N + n).
 * The optional input P (int64 [2]: T, fresh) describes the pass: T its steps; fresh = 1 starts every
 * membrane from the attribute u_init instead of reading U (a run's first pass: no buffer of initial
 * membranes to fill and read). With attribute static_current = 1, I holds one step [N, ...], the
 * same current at every step (a static input under rate coding: no T copies of it to make, reorder
 * and read), and P gives T; the spikes, counts and counters still have T·N rows. No residual then.
 *
 * The elementwise neighbours onnxruntime leaves around a neuron can run inside it (the runtime
 * moves them in from its optimized step graph, runtime/absorb_neighbours.py), each the same float32
 * operation on the same operands as the stock kernel it replaces:
 *   optional input R        I := I + R, or I + R * res_scale with attribute res_scale   (residual Add)
 *   attribute in_div|in_mul I := I / in_div, or I * in_mul, after the residual           (Div/Mul by a constant)
 *   attribute out_mul       the spikes output is k * out_mul instead of k               (Mul by a constant)
 * The counts are of k. I, R and the spikes have one shape; the runtime may pass them in onnxruntime's
 * blocked NCHWc layout (elementwise work and per-sample sums do not depend on the order of the
 * elements within a sample; runtime/blocked_layout.py).
 *
 * U_next may share its buffer with U (the runtime binds one buffer as both), and on onnxruntime >= 1.18
 * the spikes K may take the buffer of the current I (declared with GetMayInplace; onnxruntime does it
 * when nothing else reads I): every element is read before it is written, at the same index. The
 * spikes then overwrite a buffer still in cache instead of a cold one (ResNet-20, batch 64: a
 * neuron kernel alone 0.48 -> 0.35 ms, a step 1-3 % faster).
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "onnxruntime_c_api.h"

#define PMSM_EXPORT __attribute__((visibility("default")))
#define PMSM_ORT_API 17 /* KernelContext_ParallelFor and shape inference: onnxruntime >= 1.17 */
#define PMSM_ORT_API_INPLACE 18 /* OrtCustomOp.GetMayInplace: onnxruntime >= 1.18 */

static const OrtApi *ort = NULL;

enum { KIND_AIF = 0, KIND_IF = 1, KIND_AIF_HALF_EVEN = 2 };

#define N_COUNTERS 7 /* COUNTERS in pmsm_compiler/ops/counters.py */
#define ROWS_SYMBOL "pmsm_rows" /* ROWS_SYMBOL in runtime/time_batched.py */

typedef struct {
  OrtCustomOp base; /* first member: the op pointer onnxruntime passes back is this struct */
  const char *name;
  int kind;
  int final_step;
  int counters;
} NeuronOp;

enum { PRE_NONE = 0, PRE_DIV = 1, PRE_MUL = 2 };

typedef struct {
  int kind, final_step, count_float, counters, counters_row, time_batched, static_current, has_u_init;
  float lo, hi, u_init;
  int pre, res_scaled, post; /* the absorbed neighbours (see the header) */
  float pre_value, res_scale, post_value;
} NeuronKernel;

/* Block sums of the counting rules (each exact in int32, see BLOCK). */
typedef struct {
  int32_t magnitude, net, at_lo, at_hi, at_zero;
} Sums;

/* A sample's sums, exact in int64. */
typedef struct {
  int64_t magnitude, net, at_lo, at_hi, at_zero;
} Totals;

typedef struct {
  const NeuronKernel *k;
  const float *current, *membrane, *residual;
  float *spikes, *membrane_next;
  void *count;
  int64_t *counters;
  int64_t per_sample;
  int membrane_is_scalar;
  /* time-batched: T steps of `samples` samples; units of `part` neurons; per-unit partial sums */
  int64_t steps, samples, part, parts;
  Totals *partial;
  int current_static, fresh; /* I: one step for all T; the membranes start from u_init */
  float u_init;
} Job;

#define RETURN_IF_ERROR(expr)            \
  do {                                   \
    OrtStatus *status_ = (expr);         \
    if (status_ != NULL) return status_; \
  } while (0)

/* The hot loops, one block of neurons at a time. On x86-64 Linux they are compiled for several
 * instruction sets and the loader picks the best one for the CPU (GCC/clang target_clones), so one
 * build runs anywhere; the results are the same in every version (IEEE float32, no contraction). */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define PMSM_CLONES __attribute__((target_clones("avx512f", "avx2", "sse4.1", "default")))
#else
#define PMSM_CLONES
#endif

/* One loop per case (membrane tensor or the initial scalar; with or without the reset), so that
 * each is a plain vectorizable loop. ``next`` may equal ``mem`` (in-place update): every element
 * is loaded before the store to the same index, so no restrict qualifiers on those two. */
#define AIF_LOOP(U_AT, STORE_NEXT, COUNT)                \
  for (int64_t i = 0; i < n; ++i) {                      \
    const float m = (U_AT) + cur[i];                     \
    float k = FIRE_ROUND(m);                             \
    k = k < lo ? lo : k; /* Clip: min(max(x, lo), hi) */ \
    k = k > hi ? hi : k;                                 \
    spk[i] = k;                                          \
    STORE_NEXT;                                          \
    COUNT;                                               \
  }

#define IF_LOOP(U_AT, STORE_NEXT, COUNT)          \
  for (int64_t i = 0; i < n; ++i) {               \
    const float m = (U_AT) + cur[i];              \
    const float k = (m >= 1.0f) ? 1.0f : 0.0f;    \
    spk[i] = k;                                   \
    STORE_NEXT;                                   \
    COUNT;                                        \
  }

/* sum |k| only (the *Count ops) */
#define COUNT_MAGNITUDE count += (int32_t)fabsf(k)
/* every counting rule: five independent int32 reductions, so the loop stays vectorizable */
#define COUNT_ALL                               \
  do {                                          \
    const int32_t ki = (int32_t)k;              \
    magnitude += (int32_t)fabsf(k);             \
    net += ki;                                  \
    at_lo += (k == lo);                         \
    at_hi += (k == hi);                         \
    at_zero += (k == 0.0f);                     \
  } while (0)

/* The four membrane/reset cases of one loop. */
#define FOUR_CASES(LOOP, COUNT)              \
  if (scalar && next) {                      \
    LOOP(u0, next[i] = m - k, COUNT)         \
  } else if (scalar) {                       \
    LOOP(u0, (void)0, COUNT)                 \
  } else if (next) {                         \
    LOOP(mem[i], next[i] = m - k, COUNT)     \
  } else {                                   \
    LOOP(mem[i], (void)0, COUNT)             \
  }

/* NAME returns sum |k| of the block; NAME##_sums fills every counting rule's block sums. */
#define NEURON_BLOCKS(NAME, LOOP)                                                                          \
  PMSM_CLONES static int32_t NAME(const float *cur, const float *mem, int scalar, float u0, float *spk,    \
                                  float *next, int64_t n, float lo, float hi) {                            \
    int32_t count = 0;                                                                                     \
    (void)lo, (void)hi;                                                                                    \
    FOUR_CASES(LOOP, COUNT_MAGNITUDE)                                                                      \
    return count;                                                                                          \
  }                                                                                                        \
  PMSM_CLONES static void NAME##_sums(const float *cur, const float *mem, int scalar, float u0, float *spk, \
                                      float *next, int64_t n, float lo, float hi, Sums *out) {             \
    int32_t magnitude = 0, net = 0, at_lo = 0, at_hi = 0, at_zero = 0;                                     \
    FOUR_CASES(LOOP, COUNT_ALL)                                                                            \
    out->magnitude = magnitude;                                                                            \
    out->net = net;                                                                                        \
    out->at_lo = at_lo;                                                                                    \
    out->at_hi = at_hi;                                                                                    \
    out->at_zero = at_zero;                                                                                \
  }

#define FIRE_ROUND floorf
NEURON_BLOCKS(aif_block, AIF_LOOP)
#undef FIRE_ROUND
/* nearbyintf rounds in the current mode, round-to-nearest-even (onnxruntime's Round does the same) */
#define FIRE_ROUND nearbyintf
NEURON_BLOCKS(aif_half_even_block, AIF_LOOP)
#undef FIRE_ROUND
/* IF: lo = 0 and hi = 1 (its spikes' range) */
NEURON_BLOCKS(if_block, IF_LOOP)

/* Per-sample work. Integer counts in 32-bit blocks of at most 2^20 neurons (|k| <= 1024, checked
 * when the kernel is created) keep the loops vectorizable and the count exact. */
#define BLOCK ((int64_t)1 << 20)
/* With absorbed neighbours, the current is made TILE neurons at a time in a buffer that stays in L1. */
#define TILE 1024

static int32_t fire_block(const NeuronKernel *kern, const float *cur, const float *mem, int scalar, float u0,
                          float *spk, float *next, int64_t size, Sums *b) {
  if (kern->counters) {
    if (kern->kind == KIND_AIF)
      aif_block_sums(cur, mem, scalar, u0, spk, next, size, kern->lo, kern->hi, b);
    else if (kern->kind == KIND_AIF_HALF_EVEN)
      aif_half_even_block_sums(cur, mem, scalar, u0, spk, next, size, kern->lo, kern->hi, b);
    else
      if_block_sums(cur, mem, scalar, u0, spk, next, size, kern->lo, kern->hi, b);
    return b->magnitude;
  }
  if (kern->kind == KIND_AIF) return aif_block(cur, mem, scalar, u0, spk, next, size, kern->lo, kern->hi);
  if (kern->kind == KIND_AIF_HALF_EVEN)
    return aif_half_even_block(cur, mem, scalar, u0, spk, next, size, kern->lo, kern->hi);
  return if_block(cur, mem, scalar, u0, spk, next, size, kern->lo, kern->hi);
}

static void add_sums(Totals *t, const Sums *b, int32_t magnitude, int counters) {
  t->magnitude += magnitude;
  if (counters) {
    t->net += b->net;
    t->at_lo += b->at_lo;
    t->at_hi += b->at_hi;
    t->at_zero += b->at_zero;
  }
}

/* The current of a tile with the absorbed neighbours (a residual, a Div/Mul, or both), as the stock
 * kernels compute it: the residual Add (of R, or of R * res_scale), then the Div or Mul by a constant. */
PMSM_CLONES static void make_current(const NeuronKernel *kern, const float *x, const float *r, float *out, int64_t n) {
  const float *src = x;
  if (r != NULL && kern->res_scaled) {
    const float rs = kern->res_scale;
    for (int64_t i = 0; i < n; ++i) {
      const float t = r[i] * rs;
      out[i] = x[i] + t;
    }
    src = out;
  } else if (r != NULL) {
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] + r[i];
    src = out;
  }
  if (kern->pre == PRE_DIV) {
    const float d = kern->pre_value;
    for (int64_t i = 0; i < n; ++i) out[i] = src[i] / d;
  } else if (kern->pre == PRE_MUL) {
    const float m = kern->pre_value;
    for (int64_t i = 0; i < n; ++i) out[i] = src[i] * m;
  }
}

PMSM_CLONES static void scale_spikes(float *spk, float by, int64_t n) {
  for (int64_t i = 0; i < n; ++i) spk[i] = spk[i] * by;
}

/* Sample n: fire its neurons, add their counts to *t. */
static void run_neurons(const Job *job, int64_t n, Totals *t) {
  const NeuronKernel *kern = job->k;
  const int64_t off = n * job->per_sample;
  const int scalar = job->membrane_is_scalar;
  const float u0 = job->membrane[0];
  const int transform = job->residual != NULL || kern->pre != PRE_NONE;
  /* tiles when anything is absorbed, so that the current and the spikes to scale stay in L1 */
  const int64_t step = (transform || kern->post) ? TILE : BLOCK;
  float tile[TILE];
  const int64_t end = job->per_sample;
  for (int64_t at = 0; at < end; at += step) {
    const int64_t size = (end - at > step) ? step : end - at;
    const float *cur = job->current + off + at;
    const float *mem = scalar ? job->membrane : job->membrane + off + at;
    float *spk = job->spikes + off + at;
    float *next = job->membrane_next ? job->membrane_next + off + at : NULL;
    Sums b;
    if (transform) {
      make_current(kern, cur, job->residual ? job->residual + off + at : NULL, tile, size);
      cur = tile;
    }
    add_sums(t, &b, fire_block(kern, cur, mem, scalar, u0, spk, next, size, &b), kern->counters);
    if (kern->post) scale_spikes(spk, kern->post_value, size);
  }
}

static void write_counts(const Job *job, int64_t n, const Totals *t) {
  const NeuronKernel *kern = job->k;
  if (kern->count_float)
    ((float *)job->count)[n] = (float)t->magnitude;
  else
    ((int64_t *)job->count)[n] = t->magnitude;
  if (kern->counters) { /* the order of COUNTERS; derived as pmsm::SpikeCounters' body derives them */
    int64_t *c = job->counters + n * N_COUNTERS;
    c[0] = t->magnitude;
    c[1] = job->per_sample - t->at_zero;
    c[2] = (t->magnitude + t->net) / 2;
    c[3] = (t->magnitude - t->net) / 2;
    c[4] = t->at_lo;
    c[5] = t->at_hi;
    c[6] = t->at_zero;
  }
}

/* One unit of the parallel loop: one sample. (Splitting the samples of a small batch over the
 * threads was slower: waking a thread that does not spin costs more than a layer's neurons.) */
static void run_sample(void *data, size_t n) {
  const Job *job = (const Job *)data;
  Totals t = {0, 0, 0, 0, 0};
  run_neurons(job, (int64_t)n, &t);
  write_counts(job, (int64_t)n, &t);
}

/* Time-batched: the membranes of a tile of neurons stay in this L1 buffer over the T steps. */
#define TIME_TILE 2048
/* Neurons per unit of the parallel loop (a multiple of TIME_TILE): a small batch still gives the
 * threads work; a unit is TIME_PART · T neuron-steps. */
#define TIME_PART 8192

/* Unit u = (sample n, part p): its neurons over the T steps, the step sums into job->partial. */
static void run_time_unit(void *data, size_t unit) {
  const Job *job = (const Job *)data;
  const NeuronKernel *kern = job->k;
  const int64_t n = (int64_t)unit / job->parts, p = (int64_t)unit % job->parts;
  const int64_t ps = job->per_sample;
  const int64_t begin = p * job->part;
  const int64_t end = begin + job->part < ps ? begin + job->part : ps;
  const int transform = job->residual != NULL || kern->pre != PRE_NONE;
  Totals *totals = job->partial + (int64_t)unit * job->steps;
  for (int64_t s = 0; s < job->steps; ++s) totals[s] = (Totals){0, 0, 0, 0, 0};
  float u[TIME_TILE], tile[TIME_TILE];
  for (int64_t at = begin; at < end; at += TIME_TILE) {
    const int64_t size = end - at < TIME_TILE ? end - at : TIME_TILE;
    if (job->fresh)
      for (int64_t i = 0; i < size; ++i) u[i] = job->u_init;
    else
      memcpy(u, job->membrane + n * ps + at, (size_t)size * sizeof(float));
    for (int64_t s = 0; s < job->steps; ++s) {
      const int64_t off = (s * job->samples + n) * ps + at;
      const float *cur = job->current + (job->current_static ? n * ps + at : off);
      float *spk = job->spikes + off;
      Sums b;
      if (transform) {
        make_current(kern, cur, job->residual ? job->residual + off : NULL, tile, size);
        cur = tile;
      }
      add_sums(&totals[s], &b, fire_block(kern, cur, u, 0, 0.0f, spk, u, size, &b), kern->counters);
      if (kern->post) scale_spikes(spk, kern->post_value, size);
    }
    memcpy(job->membrane_next + n * ps + at, u, (size_t)size * sizeof(float));
  }
}

/* After the parallel loop: each (step, sample)'s counts from its parts' sums. */
static void write_time_counts(const Job *job) {
  for (int64_t n = 0; n < job->samples; ++n) {
    for (int64_t s = 0; s < job->steps; ++s) {
      Totals t = {0, 0, 0, 0, 0};
      for (int64_t p = 0; p < job->parts; ++p) {
        const Totals *q = job->partial + (n * job->parts + p) * job->steps + s;
        t.magnitude += q->magnitude;
        t.net += q->net;
        t.at_lo += q->at_lo;
        t.at_hi += q->at_hi;
        t.at_zero += q->at_zero;
      }
      write_counts(job, s * job->samples + n, &t);
    }
  }
}

/* The dims of tensor v into dims[16] and *rank (min_rank..16, else `message`); *elements: their product. */
static OrtStatus *tensor_dims(const OrtValue *v, int64_t *dims, size_t *rank, size_t min_rank, int64_t *elements,
                              const char *message) {
  OrtTensorTypeAndShapeInfo *info = NULL;
  RETURN_IF_ERROR(ort->GetTensorTypeAndShape(v, &info));
  OrtStatus *st = ort->GetDimensionsCount(info, rank);
  if (st == NULL && (*rank < min_rank || *rank > 16)) st = ort->CreateStatus(ORT_INVALID_ARGUMENT, message);
  if (st == NULL) st = ort->GetDimensions(info, dims, *rank);
  ort->ReleaseTensorTypeAndShapeInfo(info);
  *elements = 1;
  for (size_t d = 0; st == NULL && d < *rank; ++d) *elements *= dims[d];
  return st;
}

static OrtStatus *compute(void *op_kernel, OrtKernelContext *context) {
  const NeuronKernel *kern = (const NeuronKernel *)op_kernel;
  const OrtValue *current_v = NULL, *membrane_v = NULL;
  RETURN_IF_ERROR(ort->KernelContext_GetInput(context, 0, &current_v));
  RETURN_IF_ERROR(ort->KernelContext_GetInput(context, 1, &membrane_v));
  OrtTensorTypeAndShapeInfo *info = NULL;
  int64_t dims[16], u_dims[16], total = 1, u_count = 1;
  size_t rank = 0, u_rank = 0;
  RETURN_IF_ERROR(tensor_dims(current_v, dims, &rank, 1, &total, "pmsm neuron: input rank must be 1..16"));
  /* the membrane: one element (rank 0 or more), or the input's elements */
  RETURN_IF_ERROR(tensor_dims(membrane_v, u_dims, &u_rank, 0, &u_count, "pmsm neuron: membrane rank must be <= 16"));
  const size_t u_elems = (size_t)u_count;
  OrtStatus *st = NULL;
  size_t n_inputs = 0;
  RETURN_IF_ERROR(ort->KernelContext_GetInputCount(context, &n_inputs));
  int64_t pass[2] = {0, 0}; /* the optional pass input P: T, fresh */
  if (n_inputs > 3) {
    const OrtValue *pass_v = NULL;
    RETURN_IF_ERROR(ort->KernelContext_GetInput(context, 3, &pass_v));
    if (pass_v != NULL) {
      int64_t pdims[16], p_count = 0;
      size_t prank = 0;
      const int64_t *p = NULL;
      RETURN_IF_ERROR(tensor_dims(pass_v, pdims, &prank, 0, &p_count, "pmsm neuron: pass rank must be <= 16"));
      if (p_count != 2)
        return ort->CreateStatus(ORT_INVALID_ARGUMENT, "pmsm neuron: the pass input holds two values (steps, fresh)");
      RETURN_IF_ERROR(ort->GetTensorMutableData((OrtValue *)pass_v, (void **)&p));
      pass[0] = p[0];
      pass[1] = p[1];
      if (pass[0] < 1 || (pass[1] != 0 && pass[1] != 1))
        return ort->CreateStatus(ORT_INVALID_ARGUMENT, "pmsm neuron: the pass input needs steps >= 1 and fresh 0 or 1");
    }
  }
  const int64_t batch = dims[0]; /* the current's rows */
  const int64_t per_sample = batch > 0 ? total / batch : 0;
  int64_t steps = 1, rows = batch; /* rows: of the spikes, counts and counters */
  if (kern->time_batched) { /* I: [T·N, ...] (or [N, ...], static); U: the full membranes [N, ...] */
    if (kern->final_step) return ort->CreateStatus(ORT_INVALID_ARGUMENT, "pmsm neuron: time_batched needs the reset");
    if (kern->static_current) {
      if (pass[0] < 1)
        return ort->CreateStatus(ORT_INVALID_ARGUMENT, "pmsm neuron: a static current needs the pass input (its steps)");
      if ((int64_t)u_elems != total)
        return ort->CreateStatus(ORT_INVALID_ARGUMENT,
                                 "pmsm neuron: a static current holds one step: the membranes' elements");
      steps = pass[0];
      rows = batch * steps;
    } else {
      if (u_elems < 1 || total % (int64_t)u_elems != 0 || (int64_t)u_elems % (per_sample > 0 ? per_sample : 1) != 0)
        return ort->CreateStatus(ORT_INVALID_ARGUMENT,
                                 "pmsm neuron: time-batched membrane must hold whole samples of the input's T·N");
      steps = total / (int64_t)u_elems; /* u_elems = m · per_sample divides total = batch · per_sample: T·N rows */
      if (pass[0] != 0 && pass[0] != steps)
        return ort->CreateStatus(ORT_INVALID_ARGUMENT, "pmsm neuron: the pass input's steps do not match the current's");
    }
    if (pass[1] && !kern->has_u_init)
      return ort->CreateStatus(ORT_INVALID_ARGUMENT, "pmsm neuron: a fresh pass needs the u_init attribute");
  } else if (u_elems != 1 && (int64_t)u_elems != total) {
    return ort->CreateStatus(ORT_INVALID_ARGUMENT, "pmsm neuron: membrane must have one element or the input's shape");
  } else if (kern->static_current || pass[0] != 0) {
    return ort->CreateStatus(ORT_INVALID_ARGUMENT, "pmsm neuron: static_current and the pass input need time_batched");
  }

  Job job;
  memset(&job, 0, sizeof(job));
  job.k = kern;
  job.per_sample = per_sample;
  job.membrane_is_scalar = u_elems == 1;
  job.current_static = kern->static_current;
  job.fresh = (int)pass[1];
  job.u_init = kern->u_init;
  if (n_inputs > 2) { /* the residual: exactly the current's shape (no broadcasting here) */
    const OrtValue *residual_v = NULL;
    RETURN_IF_ERROR(ort->KernelContext_GetInput(context, 2, &residual_v));
    if (residual_v != NULL) {
      if (kern->static_current)
        return ort->CreateStatus(ORT_INVALID_ARGUMENT, "pmsm neuron: a static current takes no residual");
      int64_t rdims[16];
      size_t rrank = 0;
      RETURN_IF_ERROR(ort->GetTensorTypeAndShape(residual_v, &info));
      st = ort->GetDimensionsCount(info, &rrank);
      if (st == NULL && rrank == rank) st = ort->GetDimensions(info, rdims, rank);
      ort->ReleaseTensorTypeAndShapeInfo(info);
      if (st != NULL) return st;
      int same = rrank == rank;
      for (size_t d = 0; same && d < rank; ++d) same = rdims[d] == dims[d];
      if (!same) return ort->CreateStatus(ORT_INVALID_ARGUMENT, "pmsm neuron: the residual must have the input's shape");
      RETURN_IF_ERROR(ort->GetTensorMutableData((OrtValue *)residual_v, (void **)&job.residual));
    }
  }
  /* the C API has no const accessor: the inputs are only read */
  RETURN_IF_ERROR(ort->GetTensorMutableData((OrtValue *)current_v, (void **)&job.current));
  RETURN_IF_ERROR(ort->GetTensorMutableData((OrtValue *)membrane_v, (void **)&job.membrane));
  OrtValue *out = NULL;
  int64_t k_dims[16];
  memcpy(k_dims, dims, rank * sizeof(int64_t));
  k_dims[0] = rows;
  RETURN_IF_ERROR(ort->KernelContext_GetOutput(context, 0, k_dims, rank, &out));
  RETURN_IF_ERROR(ort->GetTensorMutableData(out, (void **)&job.spikes));
  size_t count_index = 1;
  if (!kern->final_step) {
    if (kern->time_batched)
      RETURN_IF_ERROR(ort->KernelContext_GetOutput(context, 1, u_dims, u_rank, &out));
    else
      RETURN_IF_ERROR(ort->KernelContext_GetOutput(context, 1, dims, rank, &out));
    RETURN_IF_ERROR(ort->GetTensorMutableData(out, (void **)&job.membrane_next));
    count_index = 2;
  }
  const int64_t count_dims[2] = {rows, 1};
  RETURN_IF_ERROR(ort->KernelContext_GetOutput(context, count_index, count_dims, 2, &out));
  RETURN_IF_ERROR(ort->GetTensorMutableData(out, &job.count));
  if (kern->counters) {
    const int64_t counters_dims[3] = {rows, 1, N_COUNTERS};
    const int64_t flat_dims[2] = {rows, N_COUNTERS};
    RETURN_IF_ERROR(ort->KernelContext_GetOutput(context, count_index + 1, kern->counters_row ? counters_dims : flat_dims,
                                                 kern->counters_row ? 3 : 2, &out));
    RETURN_IF_ERROR(ort->GetTensorMutableData(out, (void **)&job.counters));
  }
  if (rows <= 0) return NULL;
  if (kern->time_batched) {
    job.steps = steps;
    job.samples = rows / steps;
    job.part = per_sample < TIME_PART ? per_sample : TIME_PART;
    job.parts = job.part > 0 ? (per_sample + job.part - 1) / job.part : 0;
    const int64_t units = job.samples * job.parts;
    if (units == 0) return NULL;
    job.partial = (Totals *)malloc((size_t)(units * steps) * sizeof(Totals));
    if (job.partial == NULL) return ort->CreateStatus(ORT_FAIL, "pmsm neuron: out of memory");
    st = units == 1 ? NULL : ort->KernelContext_ParallelFor(context, run_time_unit, (size_t)units, 0, &job);
    if (units == 1) run_time_unit(&job, 0);
    if (st == NULL) write_time_counts(&job);
    free(job.partial);
    return st;
  }
  if (batch == 1) {
    run_sample(&job, 0);
    return NULL;
  }
  return ort->KernelContext_ParallelFor(context, run_sample, (size_t)batch, 0, &job);
}

static OrtStatus *ORT_API_CALL kernel_compute_v2(void *op_kernel, OrtKernelContext *context) {
  return compute(op_kernel, context);
}

static void ORT_API_CALL kernel_compute(void *op_kernel, OrtKernelContext *context) {
  OrtStatus *st = compute(op_kernel, context);
  if (st != NULL) ort->ReleaseStatus(st);
}

static int64_t int_attr(const OrtKernelInfo *info, const char *name, int64_t fallback, OrtStatus **err) {
  int64_t value = fallback;
  OrtStatus *st = ort->KernelInfoGetAttribute_int64(info, name, &value);
  if (st != NULL) {
    ort->ReleaseStatus(st);
    if (fallback == INT64_MIN) *err = ort->CreateStatus(ORT_INVALID_ARGUMENT, "pmsm neuron: missing attribute");
    return fallback;
  }
  return value;
}

/* An optional float attribute: 1 and its value if present, else 0. */
static int float_attr(const OrtKernelInfo *info, const char *name, float *value) {
  OrtStatus *st = ort->KernelInfoGetAttribute_float(info, name, value);
  if (st != NULL) {
    ort->ReleaseStatus(st);
    return 0;
  }
  return 1;
}

static OrtStatus *ORT_API_CALL create_kernel_v2(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info,
                                                void **kernel) {
  (void)api;
  const NeuronOp *nop = (const NeuronOp *)op;
  OrtStatus *err = NULL;
  NeuronKernel *k = (NeuronKernel *)calloc(1, sizeof(NeuronKernel));
  if (k == NULL) return ort->CreateStatus(ORT_FAIL, "pmsm neuron: out of memory");
  k->kind = nop->kind;
  k->final_step = nop->final_step;
  k->counters = nop->counters;
  k->count_float = (int)int_attr(info, "count_float", 0, &err);
  k->counters_row = (int)int_attr(info, "counters_row", 0, &err);
  k->time_batched = (int)int_attr(info, "time_batched", 0, &err);
  k->static_current = (int)int_attr(info, "static_current", 0, &err);
  k->has_u_init = float_attr(info, "u_init", &k->u_init);
  k->res_scaled = float_attr(info, "res_scale", &k->res_scale);
  k->post = float_attr(info, "out_mul", &k->post_value);
  if (float_attr(info, "in_div", &k->pre_value))
    k->pre = PRE_DIV;
  if (float_attr(info, "in_mul", &k->pre_value))
    k->pre = k->pre == PRE_NONE ? PRE_MUL : -1;
  if (err == NULL && k->pre < 0) err = ort->CreateStatus(ORT_INVALID_ARGUMENT, "pmsm neuron: in_div and in_mul exclude each other");
  if (nop->kind != KIND_IF) {
    k->lo = (float)int_attr(info, "s_min", INT64_MIN, &err);
    k->hi = (float)int_attr(info, "s_max", INT64_MIN, &err);
    if (err == NULL && k->lo > k->hi) err = ort->CreateStatus(ORT_INVALID_ARGUMENT, "pmsm AIF: s_min > s_max");
    /* the 32-bit block sums of |k| (2^20 neurons) stay exact for |k| <= 1024 */
    if (err == NULL && (fabsf(k->lo) > 1024.0f || fabsf(k->hi) > 1024.0f))
      err = ort->CreateStatus(ORT_INVALID_ARGUMENT, "pmsm AIF: |s_min| and |s_max| must be <= 1024");
  } else {
    k->lo = 0.0f;
    k->hi = 1.0f;
  }
  if (err != NULL) {
    free(k);
    return err;
  }
  *kernel = k;
  return NULL;
}

static void *ORT_API_CALL create_kernel(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info) {
  void *kernel = NULL;
  OrtStatus *st = create_kernel_v2(op, api, info, &kernel);
  if (st != NULL) {
    ort->ReleaseStatus(st);
    return NULL;
  }
  return kernel;
}

static void ORT_API_CALL kernel_destroy(void *op_kernel) { free(op_kernel); }

static const char *ORT_API_CALL get_name(const OrtCustomOp *op) { return ((const NeuronOp *)op)->name; }
static const char *ORT_API_CALL get_ep(const OrtCustomOp *op) {
  (void)op;
  return "CPUExecutionProvider";
}
static ONNXTensorElementDataType ORT_API_CALL input_type(const OrtCustomOp *op, size_t i) {
  (void)op;
  return i == 3 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
/* inputs: I, U, the optional residual R, and the optional pass P (time-batched) */
static size_t ORT_API_CALL input_count(const OrtCustomOp *op) {
  (void)op;
  return 4;
}
/* outputs: K, U_next (not in *Final), count, counters (only in *Counters) */
static size_t count_output(const NeuronOp *op) { return op->final_step ? 1 : 2; }
static size_t ORT_API_CALL output_count(const OrtCustomOp *op) {
  const NeuronOp *nop = (const NeuronOp *)op;
  return count_output(nop) + 1 + (nop->counters ? 1 : 0);
}
static ONNXTensorElementDataType ORT_API_CALL output_type(const OrtCustomOp *op, size_t i) {
  const NeuronOp *nop = (const NeuronOp *)op;
  /* the count's type follows the count_float attribute: declared undefined (any type) */
  if (i == count_output(nop)) return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  if (i > count_output(nop)) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
static OrtCustomOpInputOutputCharacteristic ORT_API_CALL required(const OrtCustomOp *op, size_t i) {
  (void)op, (void)i;
  return INPUT_OUTPUT_REQUIRED;
}
static OrtCustomOpInputOutputCharacteristic ORT_API_CALL input_characteristic(const OrtCustomOp *op, size_t i) {
  (void)op;
  return i >= 2 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}
static OrtMemType ORT_API_CALL input_memory(const OrtCustomOp *op, size_t i) {
  (void)op, (void)i;
  return OrtMemTypeDefault;
}
static int ORT_API_CALL min_arity(const OrtCustomOp *op) {
  (void)op;
  return 1;
}
static int ORT_API_CALL homogeneous(const OrtCustomOp *op) {
  (void)op;
  return 1;
}
static int ORT_API_CALL start_version(const OrtCustomOp *op) {
  (void)op;
  return 1;
}
static int ORT_API_CALL end_version(const OrtCustomOp *op) {
  (void)op;
  return 1;
}

/* An int attribute during shape inference, 0 when absent. */
static int64_t infer_int_attr(OrtShapeInferContext *ctx, const char *name) {
  int64_t value = 0;
  const OrtOpAttr *attr = NULL;
  OrtStatus *st = ort->ShapeInferContext_GetAttribute(ctx, name, &attr);
  if (st != NULL) {
    ort->ReleaseStatus(st);
    return 0;
  }
  if (attr != NULL) {
    size_t size = 0;
    st = ort->ReadOpAttr(attr, ORT_OP_ATTR_INT, &value, sizeof(value), &size);
    if (st != NULL) {
      ort->ReleaseStatus(st);
      return 0;
    }
  }
  return value;
}

/* Shape inference, so that onnxruntime's graph optimizations (the NCHWc rewrite of the next
 * convolution, memory planning) see the spikes' shape: K and U_next are shaped like I, the
 * count is [N, 1] of the type count_float selects, the counters int64 [N, 7] (or [N, 1, 7]). */
static OrtStatus *ORT_API_CALL infer_shape(const OrtCustomOp *op, OrtShapeInferContext *ctx) {
  const NeuronOp *nop = (const NeuronOp *)op;
  OrtTensorTypeAndShapeInfo *in = NULL, *count = NULL;
  RETURN_IF_ERROR(ort->ShapeInferContext_GetInputTypeShape(ctx, 0, &in));
  /* a static current holds one step: the spikes, counts and counters have T times its rows. The
   * spikes' first dimension is then the symbol the time-batched graph gives the T·N rows of its
   * other inputs (ROWS_SYMBOL): onnxruntime fuses what reads them as it does where every input
   * holds T·N rows, and never plans the spikes into the current's smaller buffer. */
  const int static_current = infer_int_attr(ctx, "static_current") != 0;
  OrtStatus *st = NULL;
  if (static_current) {
    OrtTensorTypeAndShapeInfo *spikes = NULL;
    size_t in_rank = 0;
    int64_t in_dims[16];
    const char *symbols[16];
    st = ort->GetDimensionsCount(in, &in_rank);
    if (st == NULL && (in_rank < 1 || in_rank > 16))
      st = ort->CreateStatus(ORT_INVALID_ARGUMENT, "pmsm neuron: input rank must be 1..16");
    if (st == NULL) st = ort->GetDimensions(in, in_dims, in_rank);
    if (st == NULL) st = ort->GetSymbolicDimensions(in, symbols, in_rank);
    if (st == NULL) st = ort->CreateTensorTypeAndShapeInfo(&spikes);
    if (st == NULL) st = ort->SetTensorElementType(spikes, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
    if (st == NULL) {
      in_dims[0] = -1;
      symbols[0] = ROWS_SYMBOL;
      st = ort->SetDimensions(spikes, in_dims, in_rank);
    }
    if (st == NULL) st = ort->SetSymbolicDimensions(spikes, symbols, in_rank);
    if (st == NULL) st = ort->ShapeInferContext_SetOutputTypeShape(ctx, 0, spikes);
    if (spikes != NULL) ort->ReleaseTensorTypeAndShapeInfo(spikes);
  } else {
    st = ort->ShapeInferContext_SetOutputTypeShape(ctx, 0, in);
  }
  if (st == NULL && !nop->final_step) {
    /* time-batched: U_next is shaped like U, one step's membranes (I holds T steps) */
    OrtTensorTypeAndShapeInfo *membrane = NULL;
    if (infer_int_attr(ctx, "time_batched")) st = ort->ShapeInferContext_GetInputTypeShape(ctx, 1, &membrane);
    if (st == NULL) st = ort->ShapeInferContext_SetOutputTypeShape(ctx, 1, membrane != NULL ? membrane : in);
  }
  size_t rank = 0;
  int64_t batch = -1;
  if (st == NULL) st = ort->GetDimensionsCount(in, &rank);
  if (st == NULL && rank >= 1 && !static_current) {
    int64_t dims[16];
    if (rank <= 16 && (st = ort->GetDimensions(in, dims, rank)) == NULL) batch = dims[0];
  }
  const int64_t count_float = st == NULL ? infer_int_attr(ctx, "count_float") : 0;
  if (st == NULL) st = ort->CreateTensorTypeAndShapeInfo(&count);
  if (st == NULL)
    st = ort->SetTensorElementType(count, count_float ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
                                                      : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64);
  const int64_t count_dims[2] = {batch, 1};
  if (st == NULL) st = ort->SetDimensions(count, count_dims, 2);
  if (st == NULL) st = ort->ShapeInferContext_SetOutputTypeShape(ctx, count_output(nop), count);
  if (count != NULL) ort->ReleaseTensorTypeAndShapeInfo(count);
  if (st == NULL && nop->counters) {
    OrtTensorTypeAndShapeInfo *counters = NULL;
    const int64_t counters_row = infer_int_attr(ctx, "counters_row");
    const int64_t counters_dims[3] = {batch, 1, N_COUNTERS};
    const int64_t flat_dims[2] = {batch, N_COUNTERS};
    st = ort->CreateTensorTypeAndShapeInfo(&counters);
    if (st == NULL) st = ort->SetTensorElementType(counters, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64);
    if (st == NULL) st = ort->SetDimensions(counters, counters_row ? counters_dims : flat_dims, counters_row ? 3 : 2);
    if (st == NULL) st = ort->ShapeInferContext_SetOutputTypeShape(ctx, count_output(nop) + 1, counters);
    if (counters != NULL) ort->ReleaseTensorTypeAndShapeInfo(counters);
  }
  /* `in` belongs to the context (onnxruntime frees it): no release here */
  return st;
}

/* Even index: with the reset; odd: *Final. The first six count sum|k|, the last six all counters. */
#define N_OPS 12
static NeuronOp ops[N_OPS];
static const char *const op_names[N_OPS] = {
    "AIFCount",    "AIFCountFinal",    "IFCount",    "IFCountFinal",    "AIFHalfEvenCount",    "AIFHalfEvenCountFinal",
    "AIFCounters", "AIFCountersFinal", "IFCounters", "IFCountersFinal", "AIFHalfEvenCounters", "AIFHalfEvenCountersFinal"};
static const int op_kinds[N_OPS] = {KIND_AIF, KIND_AIF, KIND_IF, KIND_IF, KIND_AIF_HALF_EVEN, KIND_AIF_HALF_EVEN,
                                    KIND_AIF, KIND_AIF, KIND_IF, KIND_IF, KIND_AIF_HALF_EVEN, KIND_AIF_HALF_EVEN};

/* Output 0 (the spikes) may reuse input 0 (the current). */
static size_t ORT_API_CALL may_inplace(int **input_index, int **output_index) {
  *input_index = (int *)calloc(1, sizeof(int));
  *output_index = (int *)calloc(1, sizeof(int));
  if (*input_index == NULL || *output_index == NULL) {
    free(*input_index);
    free(*output_index);
    *input_index = *output_index = NULL;
    return 0;
  }
  return 1;
}
static void ORT_API_CALL release_may_inplace(int *input_index, int *output_index) {
  free(input_index);
  free(output_index);
}

/* What every op of this library declares alike: the CPU provider, required float inputs and
 * outputs in default memory, no variadic arguments, opset 1, kernels freed with free(). */
static void init_common(OrtCustomOp *base, uint32_t version) {
  base->version = version;
  base->GetExecutionProviderType = get_ep;
  base->GetOutputCharacteristic = required;
  base->GetInputMemoryType = input_memory;
  base->GetVariadicInputMinArity = min_arity;
  base->GetVariadicInputHomogeneity = homogeneous;
  base->GetVariadicOutputMinArity = min_arity;
  base->GetVariadicOutputHomogeneity = homogeneous;
  base->GetStartVersion = start_version;
  base->GetEndVersion = end_version;
  base->KernelDestroy = kernel_destroy;
}

static void init_op(NeuronOp *op, const char *name, int kind, int final_step, int counters, int inplace) {
  memset(op, 0, sizeof(*op));
  /* the struct's version tells onnxruntime which members it may read */
  init_common(&op->base, inplace ? PMSM_ORT_API_INPLACE : PMSM_ORT_API);
  if (inplace) {
    op->base.GetMayInplace = may_inplace;
    op->base.ReleaseMayInplace = release_may_inplace;
  }
  op->base.CreateKernel = create_kernel;
  op->base.GetName = get_name;
  op->base.GetInputType = input_type;
  op->base.GetInputTypeCount = input_count;
  op->base.GetOutputType = output_type;
  op->base.GetOutputTypeCount = output_count;
  op->base.KernelCompute = kernel_compute;
  op->base.GetInputCharacteristic = input_characteristic;
  op->base.CreateKernelV2 = create_kernel_v2;
  op->base.KernelComputeV2 = kernel_compute_v2;
  op->base.InferOutputShapeFn = infer_shape;
  op->name = name;
  op->kind = kind;
  op->final_step = final_step;
  op->counters = counters;
}

/* ---------------------------------------------------------------------------------------------
 * Temporal wrappers over the T steps of a time-batched pass (domain "pmsm.kernels.time";
 * runtime/time_batched.py), the bookkeeping of pmsm_compiler/passes/wrap_nonlinear.py step by step:
 *   TimeSum  (X [T·N, ...], S [N, ...]) -> (Y [T·N, ...], S_next [N, ...])
 *            Y_t = Y_{t-1} + X_t with Y_{-1} = S (the wrapper's Add of its input sum), S_next = Y_{T-1}
 *   TimeDiff (C [T·N, ...], P [N, ...]) -> (Y [T·N, ...], P_next [N, ...])
 *            Y_t = C_t - C_{t-1} with C_{-1} = P (the wrapper's Sub of its previous output), P_next = C_{T-1}
 * the same float32 Add and Sub, in the order of the steps. S_next may share S's buffer (every element
 * of a tile is read before any is written).
 * --------------------------------------------------------------------------------------------- */

typedef struct {
  OrtCustomOp base;
  const char *name;
  int diff;
} TimeOp;

typedef struct {
  int diff;
  const float *x, *state;
  float *y, *state_next;
  int64_t steps, samples, per_sample, part, parts;
} TimeJob;

PMSM_CLONES static void time_sum_tile(const float *x, float *acc, float *y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    acc[i] = acc[i] + x[i];
    y[i] = acc[i];
  }
}

PMSM_CLONES static void time_diff_tile(const float *c, float *prev, float *y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = c[i];
    y[i] = v - prev[i];
    prev[i] = v;
  }
}

static void run_time_op_unit(void *data, size_t unit) {
  const TimeJob *job = (const TimeJob *)data;
  const int64_t n = (int64_t)unit / job->parts, p = (int64_t)unit % job->parts;
  const int64_t ps = job->per_sample;
  const int64_t begin = p * job->part;
  const int64_t end = begin + job->part < ps ? begin + job->part : ps;
  float carry[TIME_TILE];
  for (int64_t at = begin; at < end; at += TIME_TILE) {
    const int64_t size = end - at < TIME_TILE ? end - at : TIME_TILE;
    memcpy(carry, job->state + n * ps + at, (size_t)size * sizeof(float));
    for (int64_t s = 0; s < job->steps; ++s) {
      const int64_t off = (s * job->samples + n) * ps + at;
      if (job->diff)
        time_diff_tile(job->x + off, carry, job->y + off, size);
      else
        time_sum_tile(job->x + off, carry, job->y + off, size);
    }
    memcpy(job->state_next + n * ps + at, carry, (size_t)size * sizeof(float));
  }
}

static OrtStatus *time_op_compute(void *op_kernel, OrtKernelContext *context) {
  const int diff = *(const int *)op_kernel;
  const OrtValue *x_v = NULL, *s_v = NULL;
  RETURN_IF_ERROR(ort->KernelContext_GetInput(context, 0, &x_v));
  RETURN_IF_ERROR(ort->KernelContext_GetInput(context, 1, &s_v));
  int64_t dims[16], s_dims[16], total = 1, s_total = 1;
  size_t rank = 0, s_rank = 0;
  RETURN_IF_ERROR(tensor_dims(x_v, dims, &rank, 1, &total, "pmsm time op: input rank must be 1..16"));
  RETURN_IF_ERROR(tensor_dims(s_v, s_dims, &s_rank, 1, &s_total, "pmsm time op: state rank must be 1..16"));
  const int64_t samples = s_dims[0];
  if (s_total < 1 || samples < 1 || total % s_total != 0 || dims[0] % samples != 0 || (total / dims[0]) * samples != s_total)
    return ort->CreateStatus(ORT_INVALID_ARGUMENT, "pmsm time op: the state must be one step's rows of the input (T·N rows)");
  TimeJob job;
  memset(&job, 0, sizeof(job));
  job.diff = diff;
  job.steps = total / s_total;
  job.samples = samples;
  job.per_sample = s_total / samples;
  RETURN_IF_ERROR(ort->GetTensorMutableData((OrtValue *)x_v, (void **)&job.x));
  RETURN_IF_ERROR(ort->GetTensorMutableData((OrtValue *)s_v, (void **)&job.state));
  OrtValue *out = NULL;
  RETURN_IF_ERROR(ort->KernelContext_GetOutput(context, 0, dims, rank, &out));
  RETURN_IF_ERROR(ort->GetTensorMutableData(out, (void **)&job.y));
  RETURN_IF_ERROR(ort->KernelContext_GetOutput(context, 1, s_dims, s_rank, &out));
  RETURN_IF_ERROR(ort->GetTensorMutableData(out, (void **)&job.state_next));
  job.part = job.per_sample < TIME_PART ? job.per_sample : TIME_PART;
  job.parts = job.part > 0 ? (job.per_sample + job.part - 1) / job.part : 0;
  const int64_t units = job.samples * job.parts;
  if (units == 0) return NULL;
  if (units == 1) {
    run_time_op_unit(&job, 0);
    return NULL;
  }
  return ort->KernelContext_ParallelFor(context, run_time_op_unit, (size_t)units, 0, &job);
}

static OrtStatus *ORT_API_CALL time_op_compute_v2(void *op_kernel, OrtKernelContext *context) {
  return time_op_compute(op_kernel, context);
}

static void ORT_API_CALL time_op_compute_v1(void *op_kernel, OrtKernelContext *context) {
  OrtStatus *st = time_op_compute(op_kernel, context);
  if (st != NULL) ort->ReleaseStatus(st);
}

static OrtStatus *ORT_API_CALL time_op_create_v2(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info,
                                                 void **kernel) {
  (void)api, (void)info;
  int *k = (int *)malloc(sizeof(int));
  if (k == NULL) return ort->CreateStatus(ORT_FAIL, "pmsm time op: out of memory");
  *k = ((const TimeOp *)op)->diff;
  *kernel = k;
  return NULL;
}

static void *ORT_API_CALL time_op_create(const OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info) {
  void *kernel = NULL;
  OrtStatus *st = time_op_create_v2(op, api, info, &kernel);
  if (st != NULL) {
    ort->ReleaseStatus(st);
    return NULL;
  }
  return kernel;
}

static const char *ORT_API_CALL time_op_name(const OrtCustomOp *op) { return ((const TimeOp *)op)->name; }
static size_t ORT_API_CALL two(const OrtCustomOp *op) {
  (void)op;
  return 2;
}
static ONNXTensorElementDataType ORT_API_CALL float_type(const OrtCustomOp *op, size_t i) {
  (void)op, (void)i;
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}

/* Y is shaped like the input, the next state like the state. */
static OrtStatus *ORT_API_CALL time_op_infer(const OrtCustomOp *op, OrtShapeInferContext *ctx) {
  (void)op;
  OrtTensorTypeAndShapeInfo *x = NULL, *state = NULL;
  RETURN_IF_ERROR(ort->ShapeInferContext_GetInputTypeShape(ctx, 0, &x));
  RETURN_IF_ERROR(ort->ShapeInferContext_GetInputTypeShape(ctx, 1, &state));
  RETURN_IF_ERROR(ort->ShapeInferContext_SetOutputTypeShape(ctx, 0, x));
  return ort->ShapeInferContext_SetOutputTypeShape(ctx, 1, state);
}

static TimeOp time_ops[2];
static const char *const time_op_names[2] = {"TimeSum", "TimeDiff"};

static void init_time_op(TimeOp *op, const char *name, int diff) {
  memset(op, 0, sizeof(*op));
  init_common(&op->base, PMSM_ORT_API);
  op->base.CreateKernel = time_op_create;
  op->base.GetName = time_op_name;
  op->base.GetInputType = float_type;
  op->base.GetInputTypeCount = two;
  op->base.GetOutputType = float_type;
  op->base.GetOutputTypeCount = two;
  op->base.KernelCompute = time_op_compute_v1;
  op->base.GetInputCharacteristic = required;
  op->base.CreateKernelV2 = time_op_create_v2;
  op->base.KernelComputeV2 = time_op_compute_v2;
  op->base.InferOutputShapeFn = time_op_infer;
  op->name = name;
  op->diff = diff;
}

/* The entry point onnxruntime calls (SessionOptions.register_custom_ops_library). A new domain
 * per call: the session options own it (the Python binding releases it with them); the op
 * descriptions are static and written once. */
static int ops_ready = 0;

PMSM_EXPORT OrtStatus *ORT_API_CALL RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *api_base) {
  if (ort == NULL) ort = api_base->GetApi(PMSM_ORT_API);
  if (ort == NULL) return NULL; /* onnxruntime older than 1.17: nothing registered, cannot report */
  if (!ops_ready) {
    const int inplace = api_base->GetApi(PMSM_ORT_API_INPLACE) != NULL;
    for (int i = 0; i < N_OPS; ++i) init_op(&ops[i], op_names[i], op_kinds[i], i % 2, i >= 6, inplace);
    for (int i = 0; i < 2; ++i) init_time_op(&time_ops[i], time_op_names[i], i);
    ops_ready = 1;
  }
  OrtCustomOpDomain *domain = NULL, *time_domain = NULL;
  RETURN_IF_ERROR(ort->CreateCustomOpDomain("pmsm.kernels", &domain));
  for (int i = 0; i < N_OPS; ++i) RETURN_IF_ERROR(ort->CustomOpDomain_Add(domain, &ops[i].base));
  RETURN_IF_ERROR(ort->AddCustomOpDomain(options, domain));
  RETURN_IF_ERROR(ort->CreateCustomOpDomain("pmsm.kernels.time", &time_domain));
  for (int i = 0; i < 2; ++i) RETURN_IF_ERROR(ort->CustomOpDomain_Add(time_domain, &time_ops[i].base));
  return ort->AddCustomOpDomain(options, time_domain);
}

/* For the loader: which onnxruntime C API version this library needs. */
PMSM_EXPORT int pmsm_kernels_api_version(void) { return PMSM_ORT_API; }
