/* What the counting rules add to the fused neuron loop itself, away from onnxruntime and its threads.
 *
 *   cc -O3 -std=gnu11 -fno-math-errno -fno-trapping-math -ffp-contract=off \
 *      -I pmsm_compiler/kernels/include bench/counter_kernel_cost.c -o /tmp/counter_kernel_cost -lm
 *   /tmp/counter_kernel_cost
 *
 * (the flags of pmsm_compiler/kernels/__init__.py, without -shared). Times the AIF block of
 * neurons.c on 2^20 neurons (s_min -2, s_max 8, inputs spread over both caps) with the sum |k|
 * count only (aif_block, the *Count ops) and with every counting rule (aif_block_sums, the
 * *Counters ops), at the first step's shape (initial membrane a scalar, no reset: the T = 1 step)
 * and at a middle step's (membrane read and rewritten). The fastest of 400 repetitions of each, the
 * four variants interleaved in rotating order: the least disturbed by other processes.
 */
#include "../pmsm_compiler/kernels/neurons.c"

#include <stdio.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(void) {
  const int64_t n = 1 << 20;
  float *cur = malloc(n * sizeof(float)), *spk = malloc(n * sizeof(float));
  float *mem = malloc(n * sizeof(float)), *next = malloc(n * sizeof(float));
  if (!cur || !spk || !mem || !next) return 1;
  uint32_t s = 1;
  for (int64_t i = 0; i < n; ++i) { /* about -3 .. 10: below the lower cap to above the upper one */
    s = s * 1103515245u + 12345u;
    cur[i] = (float)((s >> 16) % 2000) / 150.0f - 3.0f;
    mem[i] = 0.3f;
  }
  double best[4] = {1e9, 1e9, 1e9, 1e9};
  int64_t sink = 0;
  Sums sums;
  for (int r = 0; r < 400; ++r) {
    for (int j = 0; j < 4; ++j) { /* the order rotates: each variant runs after each other one */
      const int v = (j + r) % 4, first = v < 2, counters = v % 2;
      float *nx = first ? NULL : next;
      const double t0 = now();
      if (counters) {
        aif_block_sums(cur, mem, first, 0.5f, spk, nx, n, -2.0f, 8.0f, &sums);
        sink += sums.magnitude;
      } else {
        sink += aif_block(cur, mem, first, 0.5f, spk, nx, n, -2.0f, 8.0f);
      }
      const double t = now() - t0;
      if (t < best[v]) best[v] = t;
    }
  }
  printf("first step (scalar membrane, no reset): sum|k| only %.0f us, all counters %.0f us per 2^20 neurons (x%.3f)\n",
         1e6 * best[0], 1e6 * best[1], best[1] / best[0]);
  printf("middle step (membrane read and rewritten): sum|k| only %.0f us, all counters %.0f us (x%.3f)\n",
         1e6 * best[2], 1e6 * best[3], best[3] / best[2]);
  return sink == 42; /* keeps the results live */
}
