// Host emulation of the CUDA scan kernels (see build.py and include/emu_core.h): the CUDA runtime calls the
// kernels' host code makes, on host memory, followed by csrc's kernels (launches rewritten by build.py).
// No CUDA runtime is linked.
#include "emu_device.h"

using emu::set_error;

extern "C" {

cudaError_t cudaGetLastError() {
  const cudaError_t e = emu::last_error;
  emu::last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return emu::last_error; }
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorCooperativeLaunchTooLarge: return "cudaErrorCooperativeLaunchTooLarge";
    case cudaErrorInvalidClusterSize: return "cudaErrorInvalidClusterSize";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    default: return "cudaError (emulated)";
  }
}
// The name of the error and, for the last one raised on this thread, why (check.h puts it in the exception).
const char* cudaGetErrorString(cudaError_t e) {
  static thread_local std::string text;
  text = std::string(cudaGetErrorName(e)) + " (emulated)";
  if (e == emu::last_message_code) text += ": " + emu::last_message;
  return text.c_str();
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  std::lock_guard lock(emu::funcs_mutex);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || size_t(value) > emu::kSmemOptIn)
      return set_error(cudaErrorInvalidValue, "MaxDynamicSharedMemorySize above 227 KB");
    emu::funcs[func].max_dynamic_smem = value;
  } else if (attr == cudaFuncAttributeNonPortableClusterSizeAllowed) {
    emu::funcs[func].non_portable_cluster = value != 0;
  }
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : set_error(cudaErrorInvalidDevice, "one emulated device");
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = emu::kSMs; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = emu::kSmemOptIn; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = emu::kSmemDefault; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = emu::kSmemPerSM; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = emu::kThreadsPerSM; break;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxGridDimY: *value = 65535; break;
    case cudaDevAttrComputeCapabilityMajor: *value = emu::sm_major(); break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrCooperativeLaunch:  // EMU_NO_COOPERATIVE set: a GPU without cooperative launch
      *value = !std::getenv("EMU_NO_COOPERATIVE");
      break;
    case cudaDevAttrClusterLaunch: *value = emu::sm_major() >= 9; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    default: return set_error(cudaErrorInvalidValue, "device attribute not emulated");
  }
  return cudaSuccess;
}
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, const void* func, int threads, size_t smem) {
  *n = emu::blocks_per_sm(emu::config(1, threads, smem), emu::func_info(func));
  return cudaSuccess;
}
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* n, const void* func, int threads, size_t smem,
                                                                   unsigned) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(n, func, threads, smem);
}

// Clusters of the configuration resident at once: as many as the GPCs hold (a cluster stays within one GPC);
// a configuration that cannot launch returns the launch's error.
cudaError_t cudaOccupancyMaxActiveClusters(int* n, const void* func, const cudaLaunchConfig_t* c) {
  const emu::Config cfg = emu::config_of(c);
  if (const cudaError_t e = emu::check(cfg, func); e != cudaSuccess) return e;
  const unsigned per_gpc = emu::kSMsPerGPC * emu::blocks_per_sm(cfg, emu::func_info(func)) / emu::count(cfg.cluster);
  *n = int(emu::kSMs / emu::kSMsPerGPC * per_gpc);
  return cudaSuccess;
}

// Launches complete before they return; a fault they left is reported here (EMU_ASYNC_ERRORS, emu_core.h).
cudaError_t cudaDeviceSynchronize() { return emu::take_pending(); }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return emu::take_pending(); }

cudaError_t cudaMalloc(void** p, size_t n) {
  *p = std::malloc(n ? n : 1);
  return *p ? cudaSuccess : set_error(cudaErrorMemoryAllocation, "host allocation failed");
}
cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaHostAlloc(void** p, size_t n, unsigned) { return cudaMalloc(p, n); }
cudaError_t cudaFreeHost(void* p) { return cudaFree(p); }
cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t) { return cudaMalloc(p, n); }
cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return cudaFree(p); }
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t stream) {
  return emu::enqueue(stream, [=] { return std::memmove(dst, src, n), cudaSuccess; });
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, n, kind, nullptr);
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t n, cudaStream_t stream) {
  return emu::enqueue(stream, [=] { return std::memset(dst, value, n), cudaSuccess; });
}
cudaError_t cudaMemset(void* dst, int value, size_t n) { return cudaMemsetAsync(dst, value, n, nullptr); }

// Events: the work queued before a record has run by then (launches and copies complete before they return).
struct CUevent_st {};
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned) {
  *event = new CUevent_st;
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t) {
  return event ? cudaSuccess : set_error(cudaErrorInvalidResourceHandle, "record of a null event");
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  return event ? emu::take_pending() : set_error(cudaErrorInvalidResourceHandle, "wait on a null event");
}

// CUDA graphs by stream capture. Capturing the legacy default stream is an error, as on a GPU.
cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode) {
  if (stream == nullptr) return set_error(cudaErrorStreamCaptureUnsupported, "capture of the legacy default stream");
  std::lock_guard lock(emu::capture_mutex);
  emu::capturing[stream] = std::make_shared<emu::Graph>();
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  std::lock_guard lock(emu::capture_mutex);
  auto it = emu::capturing.find(stream);
  if (it == emu::capturing.end()) return set_error(cudaErrorIllegalState, "the stream is not capturing");
  *graph = reinterpret_cast<cudaGraph_t>(new emu::Graph(*it->second));
  emu::capturing.erase(it);
  return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  std::lock_guard lock(emu::capture_mutex);
  *status = emu::capturing.count(stream) ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  *exec = reinterpret_cast<cudaGraphExec_t>(new emu::Graph(*reinterpret_cast<emu::Graph*>(graph)));
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  const emu::Graph graph = *reinterpret_cast<emu::Graph*>(exec);
  return emu::enqueue(stream, [graph] {
    for (const auto& node : graph.nodes)
      if (const cudaError_t e = node(); e != cudaSuccess) return e;
    return cudaSuccess;
  });
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete reinterpret_cast<emu::Graph*>(graph);
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete reinterpret_cast<emu::Graph*>(exec);
  return cudaSuccess;
}

// Untyped launches cannot be emulated (the argument types are lost): build.py rewrites the typed C++ forms.
cudaError_t cudaLaunchKernelExC(const cudaLaunchConfig_t*, const void*, void**) {
  return set_error(cudaErrorNotSupported, "untyped cudaLaunchKernelExC: use the C++ cudaLaunchKernelEx");
}
cudaError_t cudaLaunchCooperativeKernel(const void*, dim3, dim3, void**, size_t, cudaStream_t) {
  return set_error(cudaErrorNotSupported, "untyped cudaLaunchCooperativeKernel: use the C++ template");
}

}  // extern "C"

#include "device_info.h"
#include "instantiate.cuh"

using maskrnn::ScanParams;
MASKRNN_INSTANTIATE(float)
MASKRNN_INSTANTIATE(double)
MASKRNN_INSTANTIATE(__half)
MASKRNN_INSTANTIATE(__nv_bfloat16)

std::vector<std::string> maskrnn::gpu_names() { return {"host emulation"}; }
