#pragma once
// The gate math, once, for host and device; the same helper names as maskrnn/_cpu/cells.py. Values are in
// the accumulation type (float for float/half/bfloat16 storage, double for double).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>  // expf/tanhf on the host side (nvcc declares them for device code itself)

namespace maskrnn {

template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };
template <typename T> using acc_t = typename AccType<T>::type;

template <typename T> __host__ __device__ inline acc_t<T> to_acc(T v) { return static_cast<acc_t<T>>(v); }
template <> __host__ __device__ inline float to_acc<__half>(__half v) { return __half2float(v); }
template <> __host__ __device__ inline float to_acc<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __host__ __device__ inline T from_acc(acc_t<T> v) { return static_cast<T>(v); }
template <> __host__ __device__ inline __half from_acc<__half>(float v) { return __float2half(v); }
template <> __host__ __device__ inline __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

// Between a storage type and its accumulation type, either way (the running states of half-precision scans).
template <typename U, typename T> __host__ __device__ inline U convert(T v) { return from_acc<U>(to_acc(v)); }

__host__ __device__ inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
__host__ __device__ inline double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
__host__ __device__ inline float tanh_(float x) { return tanhf(x); }
__host__ __device__ inline double tanh_(double x) { return tanh(x); }

// LSTM, one unit of one row. g: pre-activations (i, f, c~, o) in, activations out.
template <typename A>
__host__ __device__ inline void lstm_cell_fwd(A (&g)[4], A c_prev, A& c_new, A& h_new) {
  g[0] = sigmoid(g[0]);
  g[1] = sigmoid(g[1]);
  g[2] = tanh_(g[2]);
  g[3] = sigmoid(g[3]);
  c_new = g[1] * c_prev + g[0] * g[2];
  h_new = g[3] * tanh_(c_new);
}

// a: activations (i, f, c~, o); dh: total gradient of h_t; dc: in of c_t, out of c_{t-1}; dg: pre-activation grads.
template <typename A>
__host__ __device__ inline void lstm_cell_bwd(const A (&a)[4], A c_prev, A c_new, A dh, A& dc, A (&dg)[4]) {
  const A tc = tanh_(c_new);
  const A dct = dc + dh * a[3] * (A(1) - tc * tc);
  dg[0] = dct * a[2] * a[0] * (A(1) - a[0]);
  dg[1] = dct * c_prev * a[1] * (A(1) - a[1]);
  dg[2] = dct * a[0] * (A(1) - a[2] * a[2]);
  dg[3] = dh * tc * a[3] * (A(1) - a[3]);
  dc = dct * a[1];
}

// GRU candidate and new state: hh = tanh(x_h + term), h' = z h + (1 - z) hh.
template <typename A>
__host__ __device__ inline A gru_cell_fwd(A z, A x_h, A term, A h_prev, A& hh) {
  hh = tanh_(x_h + term);
  return z * h_prev + (A(1) - z) * hh;
}

// Gradients through h' = z h + (1 - z) hh: of z's and hh's pre-activations; dh becomes the direct part dh * z.
template <typename A>
__host__ __device__ inline void gru_cell_bwd(A z, A hh, A h_prev, A& dh, A& dz_pre, A& dhh_pre) {
  dz_pre = dh * (h_prev - hh) * z * (A(1) - z);
  dhh_pre = dh * (A(1) - z) * (A(1) - hh * hh);
  dh = dh * z;
}

}  // namespace maskrnn
