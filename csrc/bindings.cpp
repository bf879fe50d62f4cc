// The only file that includes pybind11: converts Python arguments (sizes, raw device pointers as integers, a
// CUDA stream handle) to the framework-free C++ API of scan.h. Releases the GIL while kernels are queued.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef MASKRNN_CPU_GEMM
#include "cpu_gemm.h"
#endif

#ifdef MASKRNN_WITH_CUDA
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "device_info.h"
#include "scan.h"
#include "upload.h"
#endif

namespace py = pybind11;

#ifdef MASKRNN_WITH_CUDA
namespace {

using maskrnn::ScanParams;

// Scan sizes and flags from Python: rows [0, n_rows[t]) are computed at step t (`n_rows`: a device pointer to
// T int32, 0 for all rows); a non-zero `mask` (device pointer) selects the real ones among them (masked kernels),
// mask 0 means all of them are real (packed).
struct Call {
  ScanParams p;
  Call(int T, int B, int H, std::uintptr_t n_rows, std::uintptr_t mask, bool zero_output, bool reset_after,
       std::uintptr_t scratch, std::uintptr_t stream) {
    p.T = T;
    p.B = B;
    p.H = H;
    p.n_rows = reinterpret_cast<const int32_t*>(n_rows);
    p.mask = reinterpret_cast<const uint8_t*>(mask);
    p.zero_output = zero_output;
    p.reset_after = reset_after;
    p.scratch = reinterpret_cast<void*>(scratch);
    p.stream = reinterpret_cast<cudaStream_t>(stream);
  }
};

template <typename F>
void by_dtype(const std::string& dtype, F&& f) {
  if (dtype == "float32") return f(float{});
  if (dtype == "float64") return f(double{});
  if (dtype == "float16") return f(__half{});
  if (dtype == "bfloat16") return f(__nv_bfloat16{});
  throw std::invalid_argument("maskrnn CUDA kernels support float32, float64, float16, bfloat16; got " + dtype);
}

template <typename T> T* ptr(std::uintptr_t a) { return reinterpret_cast<T*>(a); }

using uptr = std::uintptr_t;

void lstm_fwd(const std::string& dtype, int T, int B, int H, uptr n_rows, uptr mask, bool zero_output, uptr gx, uptr U,
              uptr out, uptr hs, uptr cs, uptr scratch, uptr stream) {
  Call c(T, B, H, n_rows, mask, zero_output, true, scratch, stream);
  by_dtype(dtype, [&](auto tag) {
    using S = decltype(tag);
    maskrnn::lstm_fwd<S>(c.p, ptr<S>(gx), ptr<const S>(U), ptr<S>(out), ptr<S>(hs), ptr<S>(cs));
  });
}

void lstm_bwd(const std::string& dtype, int T, int B, int H, uptr n_rows, uptr mask, bool zero_output, uptr gx, uptr U,
              uptr cs, uptr d_out, uptr dh, uptr dc, uptr dgx, uptr scratch, uptr stream) {
  Call c(T, B, H, n_rows, mask, zero_output, true, scratch, stream);
  by_dtype(dtype, [&](auto tag) {
    using S = decltype(tag);
    maskrnn::lstm_bwd<S>(c.p, ptr<const S>(gx), ptr<const S>(U), ptr<const S>(cs), ptr<const S>(d_out), ptr<S>(dh),
                         ptr<S>(dc), ptr<S>(dgx));
  });
}

void gru_fwd(const std::string& dtype, int T, int B, int H, uptr n_rows, uptr mask, bool zero_output, bool reset_after,
             uptr gx, uptr U, uptr b_rec, uptr out, uptr hs, uptr hr, uptr scratch, uptr stream) {
  Call c(T, B, H, n_rows, mask, zero_output, reset_after, scratch, stream);
  by_dtype(dtype, [&](auto tag) {
    using S = decltype(tag);
    maskrnn::gru_fwd<S>(c.p, ptr<S>(gx), ptr<const S>(U), ptr<const S>(b_rec), ptr<S>(out), ptr<S>(hs),
                        ptr<S>(hr));
  });
}

void gru_bwd(const std::string& dtype, int T, int B, int H, uptr n_rows, uptr mask, bool zero_output, bool reset_after,
             uptr gx, uptr U, uptr hs, uptr hr, uptr d_out, uptr dh, uptr dgx, uptr dgr, uptr scratch, uptr stream) {
  Call c(T, B, H, n_rows, mask, zero_output, reset_after, scratch, stream);
  by_dtype(dtype, [&](auto tag) {
    using S = decltype(tag);
    maskrnn::gru_bwd<S>(c.p, ptr<const S>(gx), ptr<const S>(U), ptr<const S>(hs), ptr<const S>(hr),
                        ptr<const S>(d_out), ptr<S>(dh), ptr<S>(dgx), ptr<S>(dgr));
  });
}

// Gates of an inference cell by name: 4 (LSTM), 3 (GRU).
int infer_gates(const std::string& cell) {
  if (cell != "lstm" && cell != "gru") throw std::invalid_argument("maskrnn inference: lstm or gru, got " + cell);
  return cell == "lstm" ? 4 : 3;
}

std::size_t infer_workspace(const std::string& cell, const std::string& dtype, int T, int B, int H) {
  std::size_t bytes = 0;
  by_dtype(dtype, [&](auto tag) { bytes = maskrnn::infer_workspace<decltype(tag)>(infer_gates(cell), T, B, H); });
  return bytes;
}

// One chunk of an inference forward (scan.h InferChunk; maskrnn/_cuda.py _infer): pointers and element strides.
void infer(const std::string& cell, const std::string& dtype, int T, int B, int H, uptr n_rows, uptr mask,
           bool zero_output, bool reset_after, int t0, int work_steps, int carry, uptr proj, int64_t proj_t,
           int64_t proj_b, uptr bias, uptr order, uptr inverse, uptr plan_mask, uptr out, int64_t out_t, int64_t out_b,
           uptr init0, uptr init1, uptr final0, uptr final1, uptr U, uptr b_rec, uptr work, uptr stream) {
  const int G = infer_gates(cell);
  Call call(T, B, H, n_rows, mask, zero_output, reset_after, 0, stream);
  maskrnn::InferChunk c;
  c.t0 = t0;
  c.work_steps = work_steps;
  c.carry = carry;
  c.proj = ptr<const void>(proj);
  c.proj_t = proj_t;
  c.proj_b = proj_b;
  c.bias = ptr<const void>(bias);
  c.order = ptr<const int32_t>(order);
  c.inverse = ptr<const int32_t>(inverse);
  c.plan_mask = ptr<const uint8_t>(plan_mask);
  c.out = ptr<void>(out);
  c.out_t = out_t;
  c.out_b = out_b;
  c.init[0] = ptr<const void>(init0);
  c.init[1] = ptr<const void>(init1);
  c.final[0] = ptr<void>(final0);
  c.final[1] = ptr<void>(final1);
  by_dtype(dtype, [&](auto tag) {
    using S = decltype(tag);
    if (G == 4)
      maskrnn::lstm_infer<S>(call.p, c, ptr<const S>(U), ptr<void>(work));
    else
      maskrnn::gru_infer<S>(call.p, c, ptr<const S>(U), ptr<const S>(b_rec), ptr<void>(work));
  });
}

void row_plan(int T, int B, uptr mask, uptr order, uptr inverse, uptr counts, uptr work, uptr stream) {
  maskrnn::row_plan(T, B, ptr<const uint8_t>(mask), ptr<int32_t>(order), ptr<int32_t>(inverse), ptr<int32_t>(counts),
                    ptr<int32_t>(work), reinterpret_cast<cudaStream_t>(stream));
}

// host_plan's plan (below) of mask (a (T,B) unchecked proxy), written to bytes.
template <typename Mask>
void write_host_plan(const Mask& mask, int T, int B, uint8_t* bytes) {
  auto* order = reinterpret_cast<int32_t*>(bytes);
  int32_t* inverse = order + B;
  int32_t* counts = inverse + B;
  uint8_t* plan_mask = reinterpret_cast<uint8_t*>(counts + T);
  std::vector<int32_t> span(B, 0), first(T + 2, 0);
  for (int b = 0; b < B; ++b) {
    for (int t = T - 1; t >= 0; --t) {
      if (mask(t, b)) {
        span[b] = t + 1;
        break;
      }
    }
    ++first[T - span[b] + 1];  // longest first: bucket T - span, counted one place on
  }
  for (int k = 1; k <= T + 1; ++k) first[k] += first[k - 1];  // first[T - s]: plan position of span s's first row
  for (int b = 0; b < B; ++b) order[first[T - span[b]]++] = b;
  for (int i = 0; i < B; ++i) inverse[order[i]] = i;
  int rows = 0;  // rows with span > t, from t = T - 1 down
  for (int t = T - 1; t >= 0; --t) {
    while (rows < B && span[order[rows]] > t) ++rows;
    counts[t] = rows;
  }
  for (int t = 0; t < T; ++t) {
    for (int i = 0; i < B; ++i) plan_mask[static_cast<std::size_t>(t) * B + i] = mask(t, order[i]) ? 1 : 0;
  }
}

// The row plan of a (T,B) bool host mask (any strides), on the host: the same plan as row_plan (scan.h) makes on
// the device, for host lengths (maskrnn/_dispatch.py host_plan). Written into a pinned buffer and queued to the
// device buffer `dst` of dst_bytes == 4 * (2B + T) + T * B bytes (staged_upload, upload.h): order (B), inverse (B)
// and counts[0..T) (T) as int32, then the mask's columns in plan order ((T,B) bytes). A counting sort by span
// (stable): O(T*B), ~10 NumPy calls before, which a GPU forward's launch waited for.
void host_plan(const py::array_t<bool, 0>& mask_in, std::uintptr_t dst, std::size_t dst_bytes, std::uintptr_t stream) {
  if (mask_in.ndim() != 2) throw std::invalid_argument("host_plan needs a 2-D (T, B) bool mask");
  const auto mask = mask_in.unchecked<2>();
  const int T = static_cast<int>(mask.shape(0)), B = static_cast<int>(mask.shape(1));
  const std::size_t n = std::size_t(4) * (2 * B + T) + std::size_t(T) * B;
  if (dst_bytes != n)
    throw std::invalid_argument("host_plan: the device buffer has " + std::to_string(dst_bytes) + " bytes, the plan " +
                                std::to_string(n));
  py::gil_scoped_release release;  // the wait for a pinned buffer lets other Python threads run
  maskrnn::staged_upload(n, ptr<void>(dst), reinterpret_cast<cudaStream_t>(stream),
                         [&](uint8_t* bytes) { write_host_plan(mask, T, B, bytes); });
}

// Bytes of a C-contiguous host array queued to the device buffer dst (staged_upload, upload.h): maskrnn/_cuda.py
// _upload.
void upload(const py::array_t<uint8_t, py::array::c_style>& bytes, std::uintptr_t dst, std::uintptr_t stream) {
  const auto n = static_cast<std::size_t>(bytes.size());
  const uint8_t* src = bytes.data();
  py::gil_scoped_release release;
  maskrnn::staged_upload(n, ptr<void>(dst), reinterpret_cast<cudaStream_t>(stream),
                         [&](uint8_t* staged) { std::copy(src, src + n, staged); });
}

}  // namespace
#endif

PYBIND11_MODULE(_ext, m) {
  m.doc() = "maskrnn native extension: CUDA scan kernels when built with nvcc (see csrc/scan.h)";
#ifdef MASKRNN_WITH_CUDA
  m.attr("cuda_built") = true;
  m.attr("cuda_archs") = std::string(MASKRNN_CUDA_ARCHS);
  m.def("gpu_names", &maskrnn::gpu_names, "Names of the visible CUDA devices (empty without driver/GPU)");
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("lstm_fwd", &lstm_fwd, nogil);
  m.def("lstm_bwd", &lstm_bwd, nogil);
  m.def("gru_fwd", &gru_fwd, nogil);
  m.def("gru_bwd", &gru_bwd, nogil);
  m.def("infer", &infer, nogil);
  m.def("infer_workspace", &infer_workspace);
  m.def("row_plan", &row_plan, nogil);
  m.def("host_plan", &host_plan);
  m.def("upload", &upload);
  m.attr("upload_stages") = maskrnn::kUploadStages;
#else
  m.attr("cuda_built") = false;
  m.attr("cuda_archs") = std::string();
  m.def("gpu_names", []() { return std::vector<std::string>(); });
#endif
#ifdef MASKRNN_CPU_GEMM
  m.def(
      "cpu_gemm_addresses",
      [](const std::string& level) {
        const maskrnn::CpuGemm g = maskrnn::cpu_gemm(level);
        return py::dict(py::arg("level") = g.level, py::arg("gemm_float32") = g.gemm_f32,
                        py::arg("gemm_float64") = g.gemm_f64, py::arg("pack_float32") = g.pack_f32,
                        py::arg("pack_float64") = g.pack_f64, py::arg("gemm_tn_float32") = g.gemm_tn_f32,
                        py::arg("gemm_tn_float64") = g.gemm_tn_f64);
      },
      py::arg("level") = "auto",
      "Addresses of the CPU engine's packed per-step product (csrc/cpu_gemm.h) at an instruction-set level: auto, "
      "avx512, avx2, portable; level '' and addresses 0 when this CPU or build cannot run it");
#endif
}
