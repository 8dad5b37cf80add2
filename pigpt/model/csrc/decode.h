/* The interface between the C decode kernels (decode.c) and their Python side (pigpt/model/cpu_decode.py, which
   mirrors it in ctypes): value types, weight layouts, activations, limits, and the structs a call passes.

   Each struct's fields are listed once, in an X-macro, so that pigpt_interface() (decode.c) reports the size of
   each struct and the offset and size of every field from the same list the struct is declared from; Python compares that report
   with its ctypes mirror when it loads the library and falls back to the torch path if they disagree. Change a
   field here and in cpu_decode.py together. */
#ifndef PIGPT_DECODE_H
#define PIGPT_DECODE_H

#include <stdint.h>

enum { F32 = 0, BF16 = 1, I8 = 2 };  /* value types */
/* weight layouts: [in, out] (GPT-2's Conv1D), [out, in] (wte as the head; int8 copies), bfloat16 pair-blocked
   [N/64, K/2, 64, 2] copies of Conv1D weights (see PB_TILE in decode.c), int8 [out, in] multiplied in integers
   against activations quantized per block of 32 (see Q8_TILE), or a Conv1D's bfloat16 weight stored [out, in] for
   avx512_bf16 dot products on each output's row (see DP_TILE) */
enum { KN = 0, NK = 1, PAIRS = 2, NK_Q8 = 3, NK_DOTS = 4 };
enum { ACT_NONE = 0, ACT_GELU_TANH = 1, ACT_GELU_ERF = 2, ACT_RELU = 3 };
/* the phases of one block in a decode step; a step has n_layer * PHASES_PER_LAYER + 1 (ln_f) <= MAX_PHASES */
enum { QKV, ATTN, PROJ, FC, PROJ2, PHASES_PER_LAYER };
#define MAX_PHASES 4096

#define PIGPT_FIELD(type, name) type name;

/* One linear layer: y = act(x W + b), W of type wtype in `layout`. */
#define LINEAR_FIELDS(X)                                                       \
  X(const void*, w)      /* KN: [K, N]; NK: [N, K]; PAIRS: see above */       \
  X(const float*, scale) /* [N] per-output-channel scale (int8), or NULL */   \
  X(const void*, bias)   /* [N] in the model's float type, or NULL */          \
  X(int64_t, K)                                                                \
  X(int64_t, N)                                                                \
  X(int32_t, wtype)                                                            \
  X(int32_t, layout)                                                           \
  X(int32_t, act)
typedef struct { LINEAR_FIELDS(PIGPT_FIELD) } Linear;

/* One transformer block. */
#define LAYER_FIELDS(X)                                                        \
  X(const void*, ln1_w) X(const void*, ln1_b) X(const void*, ln2_w) X(const void*, ln2_b) \
  X(Linear, qkv) X(Linear, proj) X(Linear, fc) X(Linear, proj2)                \
  X(float, attn_scale)
typedef struct { LAYER_FIELDS(PIGPT_FIELD) } Layer;

/* The KV cache as a step reads and writes it. The rows' own keys: layer l, row b, head h, slot s at
   k + l*layer + b*row + h*head + s*hs (elements); pos is this step's slot, start[M] each row's first real slot
   (left padding) or NULL. Keys of shared prompts (SharedPrefixKVCache), read by every row continuing them, at
   pk/pv (NULL if none) with strides p_layer, p_row, p_head, P slots each; prompt[M] is each row's prompt and
   p_start[prompts] each prompt's first real slot, or NULL. */
#define CACHE_FIELDS(X)                                                        \
  X(void*, k) X(void*, v)                                                      \
  X(int64_t, layer) X(int64_t, row) X(int64_t, head) X(int64_t, pos)           \
  X(const int64_t*, start)                                                     \
  X(const void*, pk) X(const void*, pv)                                        \
  X(int64_t, p_layer) X(int64_t, p_row) X(int64_t, p_head) X(int64_t, P)       \
  X(const int64_t*, prompt) X(const int64_t*, p_start)                         \
  X(int32_t, kvtype)
typedef struct { CACHE_FIELDS(PIGPT_FIELD) } Cache;

/* The model: L blocks of width C with nh heads, parameters (norms, biases) of type ptype. */
#define MODEL_FIELDS(X)                                                        \
  X(int32_t, L) X(int32_t, C) X(int32_t, nh) X(int32_t, ptype)                 \
  X(float, eps)                                                                \
  X(const Layer*, layers)                                                      \
  X(const void*, lnf_w) X(const void*, lnf_b)
typedef struct { MODEL_FIELDS(PIGPT_FIELD) } Model;

/* -- entry points (see decode.c) -- */
typedef struct {
  const char* name;  /* "sizeof(Linear)", "Linear.K" (its offset), "sizeof(Linear.K)", "MAX_PHASES", ... */
  int64_t value;
} InterfaceEntry;
int pigpt_interface(const InterfaceEntry** entries);  /* the table; returns its length */
int64_t pigpt_work_floats(int M, int64_t C, int64_t inner, int64_t S, int nthreads);
int pigpt_decode(float* x, int M, const Model* md, const Cache* c, float* work, int64_t S, int nthreads);
int pigpt_has_avx512bf16(void);
int pigpt_vector_width(void);
int pigpt_int8_vnni(int on);  /* -1: ask; 0/1: turn the int8 VNNI tiles off/on (on only where the CPU has them) */
void pigpt_linear(const Linear* L, int ptype, const float* x, int M, float* y, int nthreads, uint16_t* xb, int dot);
int64_t pigpt_hugepages(const void* p, int64_t bytes);

#endif
