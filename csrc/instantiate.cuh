#pragma once
// Included by one tiny .cu file per dtype: compiles every scan for that storage type.
#include "gru_kernels.cuh"
#include "lstm_kernels.cuh"

#define MASKRNN_INSTANTIATE(T)                                                                               \
  template void maskrnn::lstm_fwd<T>(const ScanParams&, T*, const T*, T*, T*, T*);                          \
  template void maskrnn::lstm_bwd<T>(const ScanParams&, const T*, const T*, const T*, const T*, T*, T*, T*); \
  template void maskrnn::gru_fwd<T>(const ScanParams&, T*, const T*, const T*, T*, T*, T*);                 \
  template void maskrnn::gru_bwd<T>(const ScanParams&, const T*, const T*, const T*, const T*, const T*, T*, \
                                    T*, T*);
