"""The GPU engine: the scan-kernel contract of maskrnn/_scan.py on CuPy arrays, through the CUDA kernels of
the native extension (csrc/scan.h). Raw device pointers and CuPy's current stream go to C++; nothing is copied
(except a strided mask, made dense) and nothing is read back: the per-step row counts are a device array (the
dispatcher builds the plan on the device, ``DEVICE_PLAN``), so a call only queues work. The all-step GEMMs run on
CuPy (cuBLAS, ``matmul``).

Inference (``lstm_infer``, ``gru_infer``: the CPU engine's fused contract, maskrnn/_cpu/infer.py) is one GEMM and
one native call per chunk of steps (csrc/infer.cu): the projection of the caller's inputs in their own memory order,
then the gather into plan order with the bias, the states, the scan, the outputs into the caller's array and the
final states, queued from C++ (a forward's wall time waits for the host to queue its work: each CuPy operation
those replaced cost 20-70 us in a cold call).

Host <-> device transfers per call, beyond kernel arguments: none with a mask or no mask; with ``lengths=`` on
the GPU, one bool read back (their range check in maskrnn._validate, which waits for the work queued before it);
with lengths on the host, the plan copied over from a pinned buffer (``_upload``), nothing read back.

Set ``MASKRNN_CUDA_SYNC=1`` (read once per process) to make every kernel launch wait for its kernel and raise
at the launch that faulted: slow, for a first run on new hardware or under compute-sanitizer.
"""

import functools

import numpy as np

from . import _scan
from ._info import _extension, cuda_ready

_ready = False
DEVICE_PLAN = True  # the dispatcher builds this engine's plans on the device (row_plan), never reading them
WHOLE_SCAN = True  # one launch per training scan, whatever T (maskrnn/_scan.py, chunks)
INFER_WORKSPACE = 256 << 20  # bytes of an inference scan's buffers: its chunks' only bound (WHOLE_SCAN)
ZERO_STATES = True  # zero initial states reach the driver as None: its state buffers' first step is zeroed in place


def available():
    """(True, "") when the CUDA engine can run, else (False, why and how to fix it)."""
    global _ready
    if _ready:  # asked on every call; the device query behind it costs more than a small scan
        return True, ""
    ok, why = cuda_ready()
    _ready = ok
    return ok, why


def _ext():
    return _extension()


def _stream():
    import cupy

    return cupy.cuda.get_current_stream().ptr


def _addr(a):
    """The device address of a's first element (a view's, whatever its strides)."""
    return a.data.ptr


def _ptr(a):
    # The kernels index every array as dense C order; a strided view would be read as garbage.
    if not a.flags.c_contiguous:
        raise ValueError(f"maskrnn CUDA kernels need C-contiguous arrays, got shape {a.shape} strides {a.strides}")
    return _addr(a)


def _dense(a):
    """a C-contiguous (itself, or a copy); None stays None."""
    return a if a is None or a.flags.c_contiguous else a.copy(order="C")


def _strided(a):
    """(address, step stride, row stride) of a (k,B,F) view with unit-stride rows; strides in elements."""
    if a.strides[2] != a.itemsize and a.shape[2] > 1 and a.size:
        raise ValueError(f"maskrnn CUDA kernels need unit-stride rows, got shape {a.shape} strides {a.strides}")
    return _addr(a), a.strides[0] // a.itemsize, a.strides[1] // a.itemsize


@functools.cache
def _name(dtype):
    """dtype.name, remembered: NumPy's property builds the string at every read (~3 us)."""
    return dtype.name


def _empty(shape, dtype):
    import cupy

    return cupy.empty(shape, dtype)


# cuBLAS's enum values, as cupy_backends' gemmEx takes them: cudaDataType_t (library_types.h) by dtype name,
# cublasComputeType_t and cublasOperation_t (cublas_api.h).
_CUDA_TYPES = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 14}  # CUDA_R_32F, _64F, _16F, _16BF
_COMPUTE_32F, _COMPUTE_64F = 68, 70  # CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_64F
_OP_N, _OP_T = 0, 1
_GEMM_DEFAULT = -1
_SCALARS = [np.array([1.0, 0.0], t) for t in (np.float32, np.float64)]  # alpha, beta: host memory, kept alive
_ALPHA_BETA = {t: (a.ctypes.data, a.ctypes.data + a.itemsize) for t, a in zip((_COMPUTE_32F, _COMPUTE_64F), _SCALARS)}
_INT_MAX = 2**31 - 1


@functools.cache
def _cublas_api():
    """(cupy_backends' cuBLAS module, CuPy's get_cublas_handle), imported once (~1 us a from-import)."""
    from cupy.cuda import device
    from cupy_backends.cuda.libs import cublas

    return cublas, device.get_cublas_handle


def _cublas():
    """(cupy_backends' cuBLAS module, the current device's cuBLAS handle); its gemmEx sets the handle's stream to
    CuPy's current one."""
    cublas, handle = _cublas_api()
    return cublas, handle()


def _cupy_matmul(a, b, out):
    import cupy

    return cupy.matmul(a, b, out=out)


def _operand(m):
    """(op, ld) that hand the 2-D array m (r,c) to column-major cuBLAS as m^T (c,r), read in place: op N with ld
    its row stride where its rows have unit stride (C order), op T with ld its column stride where its columns
    do (a transposed C-order array); None for any other layout. Strides in elements; a stride along an axis of
    length 1 is never used, and ld then takes the least value cuBLAS accepts."""
    r, c = m.shape
    s0, s1 = m.strides
    isz = m.itemsize
    if s0 % isz or s1 % isz:
        return None
    s0, s1 = s0 // isz, s1 // isz
    if s1 == 1 or c == 1:
        ld = s0 if r > 1 else max(c, 1)
        return (_OP_N, ld) if max(c, 1) <= ld <= _INT_MAX else None
    if s0 == 1 or r == 1:
        ld = s1 if c > 1 else max(r, 1)
        return (_OP_T, ld) if max(r, 1) <= ld <= _INT_MAX else None
    return None


def matmul(a, b, out=None):
    """The all-step GEMMs (maskrnn/_scan.py): a (M,K) @ b (K,N) into out (M,N) (or a new array) in one
    cublasGemmEx call through CuPy's binding, operands read in place (C order or transposed), accumulating in
    float32 (float64 for float64; TF32 never: README, GPU engine). cupy.matmul makes the same cuBLAS call behind
    its general-purpose checks, a few tens of us of host time per GEMM before the first kernel's launch
    (bench/results/gpu-H100-20261127f/call2-gaps.txt). Other shapes, layouts and dtypes, and empty products,
    go to cupy.matmul. out must not overlap a or b."""
    if out is None and a.ndim == b.ndim == 2 and a.dtype == b.dtype:
        out = _empty((a.shape[0], b.shape[1]), a.dtype)
    plan = _gemm_plan(a, b, out)
    if plan is None:
        return _cupy_matmul(a, b, out)
    cublas, handle = _cublas()
    dtype, compute, (opa, lda), (opb, ldb), ldc = plan
    alpha, beta = _ALPHA_BETA[compute]
    M, K = a.shape
    N = b.shape[1]
    # Row-major C = A B is column-major C^T = B^T A^T: cuBLAS's first operand is b, its second a.
    cublas.gemmEx(handle, opb, opa, N, M, K, alpha, _addr(b), dtype, ldb, _addr(a), dtype, lda, beta, _addr(out),
                  dtype, ldc, compute, _GEMM_DEFAULT)
    return out


def _gemm_plan(a, b, out):
    """(cudaDataType, compute type, a's (op, ld), b's, out's ld) for matmul's cuBLAS call, or None."""
    if a.ndim != 2 or b.ndim != 2 or out is None or out.ndim != 2 or not a.dtype == b.dtype == out.dtype:
        return None
    dtype = _CUDA_TYPES.get(_name(a.dtype))
    M, K = a.shape
    N = b.shape[1]
    if dtype is None or b.shape[0] != K or out.shape != (M, N) or 0 in (M, K, N) or max(M, K, N) > _INT_MAX:
        return None
    A, Bm, C = _operand(a), _operand(b), _operand(out)
    if A is None or Bm is None or C is None or C[0] != _OP_N:
        return None
    return dtype, _COMPUTE_64F if dtype == 1 else _COMPUTE_32F, A, Bm, C[1]


def _ptrs(gx, *arrays):
    """Pointers of gx and the other storage-type arrays; the kernels read them all as gx's dtype."""
    for a in arrays:
        if a.dtype != gx.dtype:
            raise TypeError(f"maskrnn CUDA kernels need one dtype, got {a.dtype} beside gx's {gx.dtype}")
    return [_ptr(a) for a in (gx, *arrays)]


def _upload(a):
    """A device copy of host array a, queued on the current stream without the host waiting: through the next of
    the extension's pinned host buffers (csrc/upload.h). cupy.asarray of a NumPy array (staged through CuPy's pinned
    pool) took ~70 us of host time per call, before the scan's launch (bench/results/gpu-H100-20261127e,
    call2-gaps.txt); the same staging in Python ~40 (gpu-H100-20261127f)."""
    a = np.ascontiguousarray(a)
    out = _empty(a.shape, a.dtype)
    _ext().upload(a.reshape(-1).view(np.uint8), _addr(out), _stream())
    return out


def _steps(steps):
    """(device row counts or None for all rows, device mask or None for the packed kernels). The caller keeps
    both alive until the kernels are queued: they may be fresh copies."""
    mask, sizes = steps if isinstance(steps, tuple) else (None, steps)
    if isinstance(sizes, np.ndarray):
        sizes = _upload(sizes)
    if sizes is not None and (sizes.dtype != np.int32 or not sizes.flags.c_contiguous):
        raise TypeError(f"maskrnn CUDA kernels need dense int32 row counts, got {sizes.dtype}")
    mask = _dense(mask)  # a row permutation of the plan can leave it strided
    if mask is not None and mask.dtype != np.bool_:
        raise TypeError(f"maskrnn CUDA kernels need a bool mask, got {mask.dtype}")
    return sizes, mask


def row_plan(xp, mask):
    """(order, inverse, counts): the row plan of a C-contiguous (T,B) bool device mask as int32 device arrays
    (B,), (B,), (T+1,), from one kernel (csrc/scan.h, row_plan); one allocation, nothing read back."""
    T, B = mask.shape
    if mask.dtype != np.bool_:
        raise TypeError(f"maskrnn row plan needs a bool mask, got {mask.dtype}")
    ints = xp.empty_like(mask, np.int32, shape=(2 * B + 2 * (T + 1),))  # like the mask: CuPy's (or a test's) type
    order, inverse, counts, work = ints[:B], ints[B : 2 * B], ints[2 * B : 2 * B + T + 1], ints[2 * B + T + 1 :]
    _ext().row_plan(T, B, _ptr(mask), _ptr(order), _ptr(inverse), _ptr(counts), _ptr(work), _stream())
    return order, inverse, counts


def host_plan(mask):
    """The row plan of a (T,B) bool host mask, made on the host (csrc/bindings.cpp, host_plan) into a pinned buffer
    and queued to the device from there (as _upload): one uint8 device array of order (B), inverse (B) and counts
    (T) as int32, then the mask's columns in plan order."""
    T, B = mask.shape
    out = _empty((4 * (2 * B + T) + T * B,), np.uint8)
    _ext().host_plan(mask, _addr(out), out.nbytes, _stream())
    return out


def _opt_ptr(a):
    return 0 if a is None else _ptr(a)


def _sizes(gx, U):
    T, B, _ = gx.shape
    return T, B, U.shape[0]


def _scratch(n, dh):
    """n (B,H) running gradients or states in the accumulation type (float64 for float64, else float32)."""
    import cupy

    return cupy.empty((n,) + dh.shape, np.float64 if dh.dtype == np.float64 else np.float32)


def _state_scratch(n, hs):
    """Float16/bfloat16 forward scans run their states in float32 between steps (n (B,H) buffers); the others
    in the tape itself: (array or None, pointer)."""
    if hs.dtype in (np.float32, np.float64):
        return None, 0
    scratch = _scratch(n, hs[0])
    return scratch, _ptr(scratch)


def lstm_masked_fwd(gx, U, steps, zero_output, out, hs, cs):
    sizes, mask = _steps(steps)
    scratch, scratch_ptr = _state_scratch(3, hs)  # h (two buffers), c; kept alive until the kernels are queued
    _ext().lstm_fwd(_name(gx.dtype), *_sizes(gx, U), _opt_ptr(sizes), _opt_ptr(mask), bool(zero_output),
                    *_ptrs(gx, U, out, hs, cs), scratch_ptr, _stream())


def lstm_masked_bwd(gx, U, steps, zero_output, hs, cs, d_out, dh, dc, dgx):
    sizes, mask = _steps(steps)
    scratch = _scratch(3, dh)
    _ext().lstm_bwd(_name(gx.dtype), *_sizes(gx, U), _opt_ptr(sizes), _opt_ptr(mask), bool(zero_output),
                    *_ptrs(gx, U, cs, d_out, dh, dc, dgx), _ptr(scratch), _stream())


def gru_masked_fwd(gx, U, b_rec, steps, zero_output, reset_after, out, hs, hr):
    sizes, mask = _steps(steps)
    scratch, scratch_ptr = _state_scratch(2, hs)  # h (two buffers)
    _ext().gru_fwd(_name(gx.dtype), *_sizes(gx, U), _opt_ptr(sizes), _opt_ptr(mask), bool(zero_output),
                   bool(reset_after), *_ptrs(gx, U, b_rec, out, hs, hr), scratch_ptr, _stream())


def gru_masked_bwd(gx, U, steps, zero_output, reset_after, hs, hr, d_out, dh, dgx, dgr):
    sizes, mask = _steps(steps)
    scratch = _scratch(2, dh)
    _ext().gru_bwd(_name(gx.dtype), *_sizes(gx, U), _opt_ptr(sizes), _opt_ptr(mask), bool(zero_output),
                   bool(reset_after), *_ptrs(gx, U, hs, hr, d_out, dh, dgx, dgr), _ptr(scratch), _stream())


# The packed and masked kernels are the same C++ entry points; `steps` tells them apart.
lstm_packed_fwd, lstm_packed_bwd = lstm_masked_fwd, lstm_masked_bwd
gru_packed_fwd, gru_packed_bwd = gru_masked_fwd, gru_masked_bwd


def _project(x, W):
    """x W for a (k,B,I) view x of the caller's inputs (any strides): one GEMM over x's rows in their memory order,
    which needs no copy where the caller's array is dense (batch-major or time-major, either time direction).
    Returns the product's (k,B,GH) view in x's axis order."""
    flip_t, flip_b = x.strides[0] < 0, x.strides[1] < 0
    v = x[::-1] if flip_t else x
    v = v[:, ::-1] if flip_b else v
    swap = abs(v.strides[0]) < abs(v.strides[1])  # rows in batch-major memory order
    v = v.transpose(1, 0, 2) if swap else v
    y = matmul(v.reshape(v.shape[0] * v.shape[1], v.shape[2]), W).reshape(v.shape[0], v.shape[1], W.shape[1])
    y = y.transpose(1, 0, 2) if swap else y
    y = y[:, ::-1] if flip_b else y
    return y[::-1] if flip_t else y


def _rows(plan):
    """Addresses of the plan's order and inverse (0, 0 for the caller's row order)."""
    if plan.order is None:
        return 0, 0
    if plan.order.dtype != np.int32 or plan.inverse.dtype != np.int32:
        raise TypeError(f"maskrnn CUDA kernels need int32 row orders, got {plan.order.dtype}")
    return _ptr(plan.order), _ptr(plan.inverse)


def _plan_addresses(plan):
    """The plan's device addresses for the inference kernels: (row counts or 0 for every row, the masked kernels'
    mask or 0 for the packed ones, order and inverse or 0, 0 for the caller's row order, the plan's mask), and
    the arrays behind them (copies _steps may make) to keep alive. A host plan's (_dispatch.UploadedPlan) are
    offsets into its one buffer, making no view."""
    offsets = getattr(plan, "offsets", None)
    if offsets is not None:
        base = _ptr(plan.buffer)
        at = {k: base + v for k, v in offsets.items()}
        return (at["batch_sizes"], 0 if plan.packed else at["mask"], at["order"], at["inverse"], at["mask"]), plan
    sizes, mask = _steps(plan.steps)
    plan_mask = mask if mask is not None else _dense(plan.mask)  # the masked kernels' mask is the plan's
    return (_opt_ptr(sizes), _opt_ptr(mask), *_rows(plan), _ptr(plan_mask)), (sizes, mask, plan_mask)


def _infer(cell, x, W, U, b, b_rec, init, plan, zero_output, reset_after, out):
    """The fused inference of the CPU engine's contract (maskrnn/_cpu/infer.py) in one native call per chunk of
    steps (csrc/infer.cu): x (T,B,I) and out (T,B,H) views of the caller's arrays in scan time order, init the
    initial states in plan order (None: zeros). Returns the final states in the caller's row order."""
    T, B, _ = x.shape
    H, GH, dtype, n = U.shape[0], W.shape[1], x.dtype, len(init)
    U, b, b_rec = _dense(U), _dense(b), _dense(b_rec)
    per_step = B * (2 * GH + (n + 2) * H)  # the projection, its gathered copy, out, the states, hr
    spans = _scan.chunks(T, B, H, GH, (per_step, INFER_WORKSPACE // dtype.itemsize), whole=True)
    k, name = spans[0][1], _name(dtype)
    ext = _ext()
    work = _empty((ext.infer_workspace(cell, name, k, B, H),), np.uint8)
    finals = _empty((n, B, H), dtype)
    # _alive: the arrays behind the addresses, kept until the kernels are queued
    (sizes, mask, order, inverse, plan_mask), _alive = _plan_addresses(plan)
    inits = [_opt_ptr(s) for s in init] + [0] * (2 - n)
    stream = _stream()
    whole = len(spans) == 1  # then no slices of x and out (a CuPy view costs microseconds)
    for t0, t1 in spans:
        proj = _project(x if whole else x[t0:t1], W)  # alive until its chunk's kernels are queued
        ends = [_ptr(f) for f in finals] + [0] * (2 - n) if t1 == T else [0, 0]
        outs = _strided(out if whole else out[t0:t1])
        ext.infer(cell, name, t1 - t0, B, H, sizes + 4 * t0 if sizes else 0, mask + B * t0 if mask else 0,
                  bool(zero_output), bool(reset_after), t0, k, k if t0 else 0, *_strided(proj), _opt_ptr(b), order,
                  inverse, plan_mask + B * t0, *outs, *inits, *ends, _ptr(U), _opt_ptr(b_rec), _ptr(work), stream)
    return list(finals)


def lstm_infer(x, W, U, b, h0, c0, plan, zero_output, out):
    return _infer("lstm", x, W, U, b, None, [h0, c0], plan, zero_output, False, out)


def gru_infer(x, W, U, b_in, b_rec, h0, reset_after, plan, zero_output, out):
    return _infer("gru", x, W, U, b_in, b_rec, [h0], plan, zero_output, reset_after, out)[0]
