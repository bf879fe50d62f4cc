#pragma once
// nvcuda::wmma for the host emulation (found before the CUDA toolkit's <mma.h>, which needs nvcc): fragments of
// the shapes m16n16k16, m32n8k16 and m8n32k16 with __half or __nv_bfloat16 inputs and float accumulators;
// load_matrix_sync, store_matrix_sync, fill_fragment, mma_sync.
//
// As on a GPU, a fragment is spread over the 32 lanes of a warp: each lane holds num_elements of the tile's
// elements in x[]. CUDA leaves the mapping unspecified, so this one is deliberately not a simple one (element i
// of the tile in row-major order goes to lane (5 * (i % 32) + i / 32) % 32, slot i / 32): a kernel that indexes
// fragment elements as if it knew the mapping gets wrong results here. load, store and mma are warp-collective:
// every lane of the warp must call them (a partial warp, or lanes that diverge, fail the launch or deadlock,
// as emu_device.h's warp calls do), with the same pointer, ldm and layout (checked), the pointer 256-bit aligned
// and ldm a multiple of 16 bytes (checked: CUDA's stated requirements). mma_sync adds the 16 products of each
// dot product (exact in float for these input types) to the accumulator in order of k, in float.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "emu_device.h"

namespace nvcuda::wmma {

struct row_major;
struct col_major;
struct matrix_a;
struct matrix_b;
struct accumulator;
enum layout_t { mem_row_major, mem_col_major };

namespace detail {

template <class Use, int M, int N, int K> struct Dims;
template <int M, int N, int K> struct Dims<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K> struct Dims<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K> struct Dims<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

template <int M, int N, int K>
constexpr bool kShape = K == 16 && ((M == 16 && N == 16) || (M == 32 && N == 8) || (M == 8 && N == 32));
template <class T> constexpr bool kInput = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

// Element i (row-major) of a tile: held by lane(i) in slot i / 32. For a fixed slot the lanes are a permutation.
constexpr unsigned lane_of(int i) { return (5u * unsigned(i % 32) + unsigned(i / 32)) % 32u; }

inline float to_float(float v) { return v; }
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// The warp-collective part of a load or store: every lane of the warp meets here, all with the same arguments.
inline void collective(const char* what, const void* p, unsigned ldm, int layout, size_t element) {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  if (address % 32) emu::device_error(std::string(what) + ": the pointer is not 256-bit aligned");
  if (ldm * element % 16) emu::device_error(std::string(what) + ": ldm is not a multiple of 16 bytes");
  if (ldm >= 1u << 14) emu::device_error(std::string(what) + ": ldm beyond what the emulation checks");
  const uint64_t key = uint64_t(address) | uint64_t(ldm * 2 + unsigned(layout)) << 48;
  const auto all = emu::exchange(0xffffffffu, key, what);
  for (uint64_t k : all)
    if (k != key) emu::device_error(std::string(what) + ": the lanes of the warp passed different arguments");
}

}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment {
  static_assert(detail::kShape<M, N, K>, "the emulated shapes: m16n16k16, m32n8k16, m8n32k16");
  static_assert(std::is_same_v<Use, accumulator> ? std::is_same_v<T, float> && std::is_void_v<Layout>
                                                 : detail::kInput<T> && !std::is_void_v<Layout>,
                "__half or __nv_bfloat16 inputs with a row_major/col_major layout, float accumulators");

 public:
  using element_type = T;
  using storage_element_type = T;
  using use = Use;
  using layout = Layout;
  static constexpr int rows = detail::Dims<Use, M, N, K>::rows, cols = detail::Dims<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols / 32;
  T x[num_elements];

  // Element (r, c) of the tile, held by this lane (lane() == the calling lane) or another.
  static constexpr unsigned lane(int r, int c) { return detail::lane_of(r * cols + c); }
  static constexpr int slot(int r, int c) { return (r * cols + c) / 32; }
};

template <class Use, int M, int N, int K, class T, class L>
void fill_fragment(fragment<Use, M, N, K, T, L>& f, T v) {
  for (T& e : f.x) e = v;
}

namespace detail {

// fn(r, c, slot) for every element of an F tile that the calling lane holds.
template <class F, class Fn>
void each_mine(Fn fn) {
  const unsigned me = emu::lane_id();
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      if (F::lane(r, c) == me) fn(r, c, F::slot(r, c));
}

inline size_t offset(int r, int c, unsigned ldm, bool row) {
  return row ? size_t(r) * ldm + size_t(c) : size_t(c) * ldm + size_t(r);
}

}  // namespace detail

template <class Use, int M, int N, int K, class T, class L>
void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const T* p, unsigned ldm) {
  static_assert(!std::is_same_v<Use, accumulator>, "an accumulator load takes a layout_t");
  constexpr bool row = std::is_same_v<L, row_major>;
  detail::collective("load_matrix_sync", p, ldm, row, sizeof(T));
  using F = fragment<Use, M, N, K, T, L>;
  detail::each_mine<F>([&](int r, int c, int s) { f.x[s] = p[detail::offset(r, c, ldm, row)]; });
}

template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ldm, layout_t layout) {
  detail::collective("load_matrix_sync", p, ldm, layout, sizeof(float));
  using F = fragment<accumulator, M, N, K, float>;
  const bool row = layout == mem_row_major;
  detail::each_mine<F>([&](int r, int c, int s) { f.x[s] = p[detail::offset(r, c, ldm, row)]; });
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
  detail::collective("store_matrix_sync", p, ldm, layout, sizeof(float));
  using F = fragment<accumulator, M, N, K, float>;
  const bool row = layout == mem_row_major;
  detail::each_mine<F>([&](int r, int c, int s) { p[detail::offset(r, c, ldm, row)] = f.x[s]; });
}

// d = a b + c over the warp: each lane reads the other lanes' shares of a, b and c (their addresses travel
// through the warp rendezvous), computes its own share of d, and writes it only after a second rendezvous, when
// no lane reads a, b or c any more (d may be one of them).
template <int M, int N, int K, class T, class LA, class LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
              const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  using A = fragment<matrix_a, M, N, K, T, LA>;
  using B = fragment<matrix_b, M, N, K, T, LB>;
  using D = fragment<accumulator, M, N, K, float>;
  struct Operands {
    const A* a;
    const B* b;
    const D* c;
  } mine{&a, &b, &c};
  const auto all = emu::exchange(0xffffffffu, emu::bits(&mine), "mma_sync");
  auto of = [&](unsigned lane) { return emu::unbits<const Operands*>(all[lane]); };
  const unsigned me = emu::lane_id();
  float out[D::num_elements];
  for (int r = 0; r < M; ++r)
    for (int n = 0; n < N; ++n) {
      if (D::lane(r, n) != me) continue;
      float s = of(me)->c->x[D::slot(r, n)];
      for (int k = 0; k < K; ++k)
        s += detail::to_float(of(A::lane(r, k))->a->x[A::slot(r, k)]) *
             detail::to_float(of(B::lane(k, n))->b->x[B::slot(k, n)]);
      out[D::slot(r, n)] = s;
    }
  emu::exchange(0xffffffffu, 0, "mma_sync");
  for (int i = 0; i < D::num_elements; ++i) d.x[i] = out[i];
}

}  // namespace nvcuda::wmma
