#pragma once
// Framework-free C++ API of the CUDA scans (the contract of maskrnn/_scan.py). Glossary: B batch, T time,
// H hidden units; arrays time-major and C-contiguous: gx (T,B,G*H), U (H,G*H), out (T,B,H), hs/cs (T+1,B,H),
// hr (T,B,H), d_out (T,B,H), dh/dc (B,H); LSTM gates i,f,c,o (G=4), GRU z,r,h (G=3). All pointers are
// device pointers: nothing of a scan is read on the host, so a call queues its kernels without waiting.
#include <cuda_runtime.h>

#include <cstdint>

namespace maskrnn {

struct ScanParams {
  int T = 0, B = 0, H = 0;
  // device (T,) int32, non-increasing: rows [0, n_rows[t]) are computed at step t, and a row at or past n_rows[t]
  // is past its last real step (finished); nullptr: every row at every step
  const int32_t* n_rows = nullptr;
  const uint8_t* mask = nullptr;         // device (T,B) bool selecting the real rows among them; nullptr: all
  bool zero_output = false;              // padded steps output 0 instead of the previous output
  bool reset_after = true;               // GRU variant
  void* scratch = nullptr;               // device, 3*B*H accumulation-type values: backward, and forward in
                                         // float16/bfloat16 (the running states); may be null otherwise
  cudaStream_t stream = nullptr;
};

template <typename T> void lstm_fwd(const ScanParams& p, T* gx, const T* U, T* out, T* hs, T* cs);
template <typename T>
void lstm_bwd(const ScanParams& p, const T* gx, const T* U, const T* cs, const T* d_out, T* dh, T* dc, T* dgx);
template <typename T> void gru_fwd(const ScanParams& p, T* gx, const T* U, const T* b_rec, T* out, T* hs, T* hr);
template <typename T>
void gru_bwd(const ScanParams& p, const T* gx, const T* U, const T* hs, const T* hr, const T* d_out, T* dh, T* dgx,
             T* dgr);

// The row plan of a (T,B) bool mask (device pointers; maskrnn/_dispatch.py device_plan), queued on stream: span_b =
// row b's last real step + 1 (0 for none); rows sorted by span, longest first, rows of equal span in their order (a
// stable sort). Writes order (B): plan position -> row; inverse (B): row -> plan position; counts (T+1): counts[t]
// = rows with span > t (ScanParams::n_rows is counts[0..T), non-increasing; counts[T] == 0). work: T+1 int32 of
// scratch. One block: a few microseconds at B = 64, T = 100.
void row_plan(int T, int B, const uint8_t* mask, int32_t* order, int32_t* inverse, int32_t* counts, int32_t* work,
              cudaStream_t stream);

}  // namespace maskrnn
