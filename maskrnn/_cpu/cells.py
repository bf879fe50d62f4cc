"""Gate math for the Numba kernels, one row (one batch element, one step) at a time.

Names match the CUDA header (``csrc/cell_math.cuh``) so the two read side by side. Loops are kept
simple so LLVM vectorises them. Both dtypes use a SIMD-friendly ``exp`` (Cody-Waite reduction + polynomial:
Cephes's for float32, <2 ulp; Taylor to degree 13 for float64, ~1 ulp) and a ``tanh`` from it (Cephes's for
float32, (e^2x - 1) / (e^2x + 1) for float64), because Numba has no vector math library here: scalar libm calls
ran ~10x slower (float64 gate math took 38 ns per unit with libm's exp/tanh against 4 ns in float32).
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic, overload

# No 'nnan'/'ninf'/'reassoc': NaN in a real step must still propagate, and the exp reduction needs
# its operations in order.
FASTMATH = {"contract", "arcp", "nsz", "afn"}
JIT = dict(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)
_OPTS = dict(fastmath=FASTMATH, error_model="numpy")
INLINE = dict(_OPTS, inline="always")


@intrinsic
def _bits_to_float32(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _bits_to_float64(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def unit(typingctx, a):
    """A row (a 1-D view with unit stride) typed as contiguous. A thread's rows of the batch are strided views
    (rows.py), which Numba types as 'A' layout, and so are their rows, whose loops LLVM then left scalar: the
    gate math ran 3x slower."""
    if not isinstance(a, types.Array) or a.ndim != 1:
        return None

    def codegen(context, builder, signature, args):
        return impl_ret_borrowed(context, builder, signature.return_type, args[0])

    return a.copy(layout="C")(a), codegen


@njit(**INLINE)
def _exp_f32(x):
    # Clamp written so that NaN falls through both tests and propagates.
    x = np.float32(-87.0) if x < np.float32(-87.0) else x
    x = np.float32(88.0) if x > np.float32(88.0) else x
    ni = np.int32(x * np.float32(1.44269504) + np.float32(128.5)) - np.int32(128)
    n = np.float32(ni)
    r = x - n * np.float32(0.693359375)
    r = r - n * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * _bits_to_float32((ni + np.int32(127)) << np.int32(23))


@njit(**INLINE)
def _tanh_f32(x):
    # Cephes tanhf: odd polynomial near 0 keeps the relative error small, 1 - 2/(e^2x + 1) elsewhere.
    z = x * x
    p = np.float32(-5.70498872745e-3)
    p = p * z + np.float32(2.06390887954e-2)
    p = p * z + np.float32(-5.37397155531e-2)
    p = p * z + np.float32(1.33314422036e-1)
    p = p * z + np.float32(-3.33332819422e-1)
    small = x + x * z * p
    e = _exp_f32(np.float32(2.0) * x)
    large = np.float32(1.0) - np.float32(2.0) / (e + np.float32(1.0))
    return small if abs(x) < np.float32(0.625) else large


@njit(**INLINE)
def _expm1_f64(x):
    """(e^r - 1, 2^n) with e^x = 2^n e^r. As _exp_f32: clamp (NaN passes), n = round(x / ln 2) with ln 2 split
    in two, e^r - 1 by its Taylor series (|r| <= ln 2 / 2: the degree-14 term is below 1e-17 relative), 2^n
    through the exponent bits."""
    x = -708.0 if x < -708.0 else x
    x = 709.0 if x > 709.0 else x
    ni = np.int64(x * 1.4426950408889634 + 1024.5) - np.int64(1024)
    n = np.float64(ni)
    r = x - n * 6.93147180369123816490e-1
    r = r - n * 1.90821492927058770002e-10
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    return p * r * r + r, _bits_to_float64((ni + np.int64(1023)) << np.int64(52))


@njit(**INLINE)
def _exp_f64(x):
    em, s = _expm1_f64(x)
    return (em + 1.0) * s


@njit(**INLINE)
def _tanh_f64(x):
    # e / (e + 2) with e = e^2x - 1 = 2^n (e^r - 1) + 2^n - 1: one division, and near 0 (n = 0) e is e^r - 1
    # itself, accurate where 1 - 2/(e^2x + 1) cancels (<1.8 eps measured). Cephes's rational function for
    # |x| < 0.625 beside it cost a second division and polynomial per element: float64 tanh 2.0 ns, now 1.5.
    # |2x| <= 40 keeps tanh at exactly +-1 beyond (2 vanishes next to e, and 2^n - 1 rounds to -1).
    y = 2.0 * x
    y = -40.0 if y < -40.0 else y
    y = 40.0 if y > 40.0 else y
    em, s = _expm1_f64(y)
    e = s * em + (s - 1.0)
    return e / (e + 2.0)


def sigmoid(x):
    """Logistic sigmoid of a scalar (Numba only)."""


def tanh(x):
    """Hyperbolic tangent of a scalar (Numba only)."""


# The overloads are inlined in Numba's IR: LLVM declined to inline the float64 ones, and a call per element ran
# the float64 gate math 2.5x slower. Numba 0.68's pedantic SSA check then warns about the selects it inlined
# (the generated code is right: tests/test_cpu_math.py); cache.njit silences that warning while it compiles.
INLINED_SELECT_WARNING = r"variable '_(sigmoid|tanh)__locals"


@overload(sigmoid, jit_options=_OPTS, inline="always")
def _sigmoid(x):
    if x == types.float32:
        return lambda x: np.float32(1.0) / (np.float32(1.0) + _exp_f32(-x))
    return lambda x: 1.0 / (1.0 + _exp_f64(-x))


@overload(tanh, jit_options=_OPTS, inline="always")
def _tanh(x):
    if x == types.float32:
        return lambda x: _tanh_f32(x)
    return lambda x: _tanh_f64(x)


@njit(**INLINE)
def carry_row(t, b, zero_output, out, hs, cs):
    """A padded step (b, t): states carried; output 0 or the previous step's output."""
    unit(hs[t + 1, b])[:] = unit(hs[t, b])
    if cs is not None:
        unit(cs[t + 1, b])[:] = unit(cs[t, b])
    if zero_output or t == 0:
        unit(out[t, b])[:] = 0
    else:
        unit(out[t, b])[:] = unit(out[t - 1, b])


@njit(**INLINE)
def carry_row_grad(t, b, zero_output, d_out, d_carry, t_base=0):
    """Backward of carry_row for the output: its gradient flows to out[t-1, b] unless out was 0. t_base: the
    global index of step 0 of a chunk of steps (the first step of the sequence has no previous output)."""
    if zero_output or t + t_base == 0:
        unit(d_carry[b])[:] = 0
    else:
        unit(d_carry[b])[:] += unit(d_out[t, b])


# Each loop below writes one array and indexes from 0: LLVM vectorises that shape, not loops that write
# several segments of one row or start at an offset (measured: 4x slower).
@njit(**INLINE)
def _sigmoid_add(a, b):
    for j in range(a.size):
        a[j] = sigmoid(a[j] + b[j])


@njit(**INLINE)
def _tanh_add(a, b):
    for j in range(a.size):
        a[j] = tanh(a[j] + b[j])


@njit(**INLINE)
def lstm_cell_fwd(g, u, c_prev, c_new, h_new, H):
    """g: x_t W + b (4H,) becomes the activations (i, f, c~, o); u: h_{t-1} U (4H,)."""
    _sigmoid_add(g[: 2 * H], u[: 2 * H])
    _tanh_add(g[2 * H : 3 * H], u[2 * H : 3 * H])
    _sigmoid_add(g[3 * H :], u[3 * H :])
    i, f, cc, o = g[:H], g[H : 2 * H], g[2 * H : 3 * H], g[3 * H :]
    for j in range(H):
        c = f[j] * c_prev[j] + i[j] * cc[j]
        c_new[j] = c
        h_new[j] = o[j] * tanh(c)


@njit(**INLINE)
def lstm_cell_bwd(a, c_prev, c_new, dh, dc, dg, H):
    """a: activations (i, f, c~, o); dh: total gradient of h_t; dc (in: of c_t, out: of c_{t-1});
    dg (4H,) written: gradient of the pre-activations."""
    i, f, cc, o = a[:H], a[H : 2 * H], a[2 * H : 3 * H], a[3 * H :]
    di, df, dcc, do = dg[:H], dg[H : 2 * H], dg[2 * H : 3 * H], dg[3 * H :]
    # 1 of the array's dtype: Numba types `1 - x` (an int literal and a float32) as float64, and the float32
    # kernels converted every operand to double and back (vcvtps2pd in their machine code).
    one = a.dtype.type(1)
    for j in range(H):
        tc = tanh(c_new[j])
        do[j] = dh[j] * tc * o[j] * (one - o[j])
        dc[j] += dh[j] * o[j] * (one - tc * tc)
    for j in range(H):
        di[j] = dc[j] * cc[j] * i[j] * (one - i[j])
        df[j] = dc[j] * c_prev[j] * f[j] * (one - f[j])
        dcc[j] = dc[j] * i[j] * (one - cc[j] * cc[j])
    for j in range(H):
        dc[j] *= f[j]


@njit(**INLINE)
def gru_gates_zr(g, u, b_rec, H):
    """z and r in place in g[:2H]: g = x_t W + b_in, u = h_{t-1} U_zr, b_rec the recurrent bias."""
    zr, uzr, bzr = g[: 2 * H], u[: 2 * H], b_rec[: 2 * H]
    for j in range(2 * H):
        zr[j] = sigmoid(zr[j] + uzr[j] + bzr[j])


@njit(**INLINE)
def gru_cell_fwd(g, hr_term, h_prev, h_new, H):
    """g: (z, r, x_t W_h + b_h) -> (z, r, h~); hr_term: the reset-gated recurrent term of the candidate
    (r * (h U_h + b_rec_h) when reset_after, else (r*h) U_h)."""
    z, hh = g[:H], g[2 * H :]
    one = g.dtype.type(1)
    _tanh_add(hh, hr_term)
    for j in range(H):
        h_new[j] = z[j] * h_prev[j] + (one - z[j]) * hh[j]


@njit(**INLINE)
def gru_cell_bwd(a, h_prev, dh, dg, H):
    """a: (z, r, h~); dh: total gradient of h_t. Writes dg[:H] (z pre-activation) and dg[2H:] (candidate
    pre-activation); the reset gate's depends on the variant and is the caller's. dh becomes dh * z, the
    direct part of the gradient of h_{t-1}."""
    z, hh = a[:H], a[2 * H :]
    dz, dhh = dg[:H], dg[2 * H :]
    one = a.dtype.type(1)
    for j in range(H):
        dz[j] = dh[j] * (h_prev[j] - hh[j]) * z[j] * (one - z[j])
    for j in range(H):
        dhh[j] = dh[j] * (one - z[j]) * (one - hh[j] * hh[j])
    for j in range(H):
        dh[j] *= z[j]
