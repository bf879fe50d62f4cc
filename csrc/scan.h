#pragma once
// Framework-free C++ API of the CUDA scans (the contract of maskrnn/_scan.py). Glossary: B batch, T time,
// H hidden units; arrays time-major and C-contiguous: gx (T,B,G*H), U (H,G*H), out (T,B,H), hs/cs (T+1,B,H),
// hr (T,B,H), d_out (T,B,H), dh/dc (B,H); LSTM gates i,f,c,o (G=4), GRU z,r,h (G=3). All pointers are
// device pointers: nothing of a scan is read on the host, so a call queues its kernels without waiting.
#include <cuda_runtime.h>

#include <cstddef>
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

// One chunk of an inference forward in one call (csrc/infer.cu; maskrnn/_cuda.py lstm_infer): ScanParams are the
// chunk's (T its steps, n_rows and mask from its first step on); three launches: the chunk's projection gathered
// into plan row order with the bias added and the states before its first step set, the scan, then its outputs
// written into the caller's array and, for the last chunk, the final states in the caller's row order. The
// workspace holds the scan's buffers (infer_workspace for work_steps steps), the same for every chunk of a scan.
struct InferChunk {
  int t0 = 0;          // the chunk's first step in the whole scan
  int work_steps = 0;  // steps the workspace's buffers hold (infer_workspace's steps: the longest chunk's)
  int carry = 0;  // > 0: the states before the chunk are the workspace's states at step `carry` (the previous
                  // chunk's last); 0: init
  // The chunk's input projection x W in the caller's layout and row order: step t of caller row b at
  // proj + t * proj_t + b * proj_b (elements, either sign), its G*H gates contiguous.
  const void* proj = nullptr;
  int64_t proj_t = 0, proj_b = 0;
  const void* bias = nullptr;         // (G*H,) added to the projection, or null
  const int32_t* order = nullptr;     // (B,) plan position -> caller row; null: the identity
  const int32_t* inverse = nullptr;   // (B,) caller row -> plan position; null: the identity
  const uint8_t* plan_mask = nullptr;  // the chunk's (T,B) mask in plan order (every plan, packed or not)
  // The caller's outputs of the chunk's steps: step t of caller row b at out + t * out_t + b * out_b, H contiguous.
  void* out = nullptr;
  int64_t out_t = 0, out_b = 0;
  const void* init[2] = {nullptr, nullptr};  // initial states (B,H) in plan order, null for zeros (carry == 0)
  void* final[2] = {nullptr, nullptr};       // the last chunk: final states (B,H) in the caller's order; else null
};

// Bytes of the workspace of an inference chunk of `steps` steps (G = 4: LSTM, 3: GRU): gx, out, the state buffers,
// hr (GRU), the half types' running states.
template <typename T> std::size_t infer_workspace(int G, int steps, int B, int H);
template <typename T> void lstm_infer(const ScanParams& p, const InferChunk& c, const T* U, void* work);
template <typename T>
void gru_infer(const ScanParams& p, const InferChunk& c, const T* U, const T* b_rec, void* work);

// The row plan of a (T,B) bool mask (device pointers; maskrnn/_dispatch.py device_plan), queued on stream: span_b =
// row b's last real step + 1 (0 for none); rows sorted by span, longest first, rows of equal span in their order (a
// stable sort). Writes order (B): plan position -> row; inverse (B): row -> plan position; counts (T+1): counts[t]
// = rows with span > t (ScanParams::n_rows is counts[0..T), non-increasing; counts[T] == 0). work: T+1 int32 of
// scratch. One block: a few microseconds at B = 64, T = 100.
void row_plan(int T, int B, const uint8_t* mask, int32_t* order, int32_t* inverse, int32_t* counts, int32_t* work,
              cudaStream_t stream);

}  // namespace maskrnn
