"""The emulation itself (selftest.cu's kernels): launches fail with the error a GPU gives, blocks run concurrently
with their own shared memory, grid and cluster barriers, distributed shared memory, warp primitives, graphs, WMMA
Runs with the CUDA-emulation suite (``-p plugin``, after build.py); skipped otherwise."""

import importlib.machinery
import importlib.util
import sys

import ml_dtypes
import numpy as np
import pytest

if "plugin" not in sys.modules:
    pytest.skip("the CUDA emulation suite runs with -p plugin after build.py", allow_module_level=True)

_path = sys.modules["plugin"].BUILD / f"_emu_selftest{importlib.machinery.EXTENSION_SUFFIXES[0]}"
_loader = importlib.machinery.ExtensionFileLoader("_emu_selftest", str(_path))
_spec = importlib.util.spec_from_file_location("_emu_selftest", _path, loader=_loader)
st = importlib.util.module_from_spec(_spec)
_loader.exec_module(st)


def ints(n, value=0):
    return np.full(n, value, np.int32)


@pytest.mark.parametrize("grid, block, smem, optin, error", [
    ((1, 1), (1025, 1, 1), 0, 0, "cudaErrorInvalidConfiguration"),
    ((1, 1), (32, 32, 2), 0, 0, "cudaErrorInvalidConfiguration"),
    ((1, 1), (1, 1, 65), 0, 0, "cudaErrorInvalidConfiguration"),
    ((1, 65536), (32, 1, 1), 0, 0, "cudaErrorInvalidConfiguration"),
    ((0, 1), (32, 1, 1), 0, 0, "cudaErrorInvalidConfiguration"),
    ((1, 1), (32, 1, 1), 49153, 0, "cudaErrorInvalidValue"),
    ((1, 1), (32, 1, 1), 100_000, 99_999, "cudaErrorInvalidValue"),
    ((1, 1), (32, 1, 1), 0, 232_449, "cudaErrorInvalidValue"),
])
def test_launch_configuration_errors(grid, block, smem, optin, error):
    with pytest.raises(RuntimeError, match=error):
        st.launch(*grid, *block, smem, optin)


@pytest.mark.parametrize("grid, block, smem, error", [
    ((2**31 - 1, 65535), (1024, 1, 1), 0, "cudaSuccess"), ((1, 1), (1, 1, 64), 49152, "cudaSuccess"),
    ((1, 1), (64, 16, 1), 0, "cudaSuccess"), ((1, 1), (32, 33, 1), 0, "cudaErrorInvalidConfiguration"),
    ((1, 65536), (1, 1, 1), 0, "cudaErrorInvalidConfiguration"),
])
def test_launch_limits(grid, block, smem, error):
    assert st.check(*grid, *block, smem) == error


@pytest.mark.parametrize("smem, optin", [(49152, 0), (232_448, 232_448), (100_000, 100_000)])
def test_launches_within_the_shared_memory_limits_run(smem, optin):
    st.launch(1, 1, 32, 1, 1, smem, optin)


def test_blocks_have_their_own_shared_memory_filled_with_garbage():
    out = ints(6, 1)
    st.own_shared(6, 64, 64 * 4, out.ctypes.data)
    np.testing.assert_array_equal(out, 1)


def test_blocks_run_concurrently():
    flag = ints(1)
    st.waits_for_last(5, 2, 0, flag.ctypes.data)  # block 0 spins until the last block has run
    assert flag[0] == 1


@pytest.mark.parametrize("launch", ["grid_sum_cooperative", "launch_ex"])
def test_grid_sync_in_a_cooperative_launch(launch):
    slots, out = ints(7), ints(7)
    if launch == "launch_ex":
        st.launch_ex(7, 32, 1, True, False, slots.ctypes.data, out.ctypes.data)
    else:
        st.grid_sum_cooperative(7, slots.ctypes.data, out.ctypes.data)
    np.testing.assert_array_equal(out, sum(range(1, 8)))


def test_grid_sync_outside_a_cooperative_launch_fails():
    slots, out = ints(3), ints(3)
    with pytest.raises(RuntimeError, match="cudaErrorLaunchFailure.*cooperative"):
        st.grid_sum_plain(3, slots.ctypes.data, out.ctypes.data)


def test_cooperative_grid_larger_than_the_device_fails():
    slots, out = ints(1), ints(1)
    # 1024-thread blocks: 2 per SM, 132 SMs -> at most 264 co-resident blocks.
    with pytest.raises(RuntimeError, match="cudaErrorCooperativeLaunchTooLarge"):
        st.launch_ex(265, 1024, 1, True, False, slots.ctypes.data, out.ctypes.data)


@pytest.mark.parametrize("cluster, grid", [(4, 8), (2, 6), (16, 16)])
def test_cluster_distributed_shared_memory(cluster, grid):
    out = ints(grid)
    st.launch_ex(grid, 32, cluster, False, cluster > 8, 0, out.ctypes.data)
    b = np.arange(grid)
    peer = b - b % cluster + (b % cluster + 1) % cluster
    np.testing.assert_array_equal(out, 100 * peer + 7)


@pytest.mark.parametrize("cluster, non_portable, smem, clusters", [
    (8, False, 0, 256), (16, True, 0, 128), (8, False, 200_000, 16), (16, True, 120_000, 8)])
def test_max_active_clusters(cluster, non_portable, smem, clusters):
    # 8 GPCs of 16 SMs; 128-thread blocks fit 16 to an SM by threads, 1 by 200 KB or 120 KB of shared memory.
    assert st.max_active_clusters(cluster, non_portable, smem) == clusters


def test_clusters_need_sm90(monkeypatch):
    monkeypatch.setenv("EMU_SM_MAJOR", "8")
    with pytest.raises(RuntimeError, match="cudaErrorInvalidClusterSize.*clusters need sm_90"):
        st.launch_ex(8, 32, 4, False, False, 0, ints(8).ctypes.data)


@pytest.mark.parametrize("cluster, non_portable", [(16, False), (32, True)])
def test_max_active_clusters_of_a_cluster_that_cannot_launch(cluster, non_portable):
    with pytest.raises(RuntimeError, match="cudaErrorInvalidClusterSize"):
        st.max_active_clusters(cluster, non_portable, 0)


@pytest.mark.parametrize("cluster, grid, non_portable", [(3, 8, False), (16, 16, False), (32, 32, True)])
def test_cluster_size_errors(cluster, grid, non_portable):
    out = ints(grid)
    with pytest.raises(RuntimeError, match="cudaErrorInvalidClusterSize"):
        st.launch_ex(grid, 32, cluster, False, non_portable, 0, out.ctypes.data)


@pytest.mark.parametrize("block", [32, 96])
def test_warp_primitives(block):
    out = ints(4 * (block // 32))
    st.warp_ops(1, block, 0, out.ctypes.data)
    for w in range(block // 32):
        lanes = np.arange(32 * w, 32 * w + 32)
        assert out[4 * w] == lanes.sum()  # __shfl_down_sync tree: lane 0 holds the sum
        assert out[4 * w + 1] == 0xAAAAAAAA - 2**32  # odd lanes' ballot, as int32
        assert out[4 * w + 2] == lanes[4:8].sum()  # lane 5's 4-thread tile
        assert out[4 * w + 3] == 4  # lane 5 xor 1


def test_shuffle_naming_an_exited_lane_fails():
    with pytest.raises(RuntimeError, match="exited"):
        st.shuffle_with_exited_lanes(1, 32, 0, ints(32).ctypes.data)


def test_deadlock_fails_after_the_timeout(monkeypatch):
    monkeypatch.setenv("EMU_DEADLOCK_S", "1")
    with pytest.raises(RuntimeError, match="deadlock"):
        st.deadlock(1, 2, 0, ints(1).ctypes.data)


@pytest.mark.parametrize("times, replays", [(3, 0), (3, 2), (1, 5)])
def test_graph_capture_records_and_replays(times, replays):
    x = ints(1)
    st.graph(x.ctypes.data, times, replays, 1)  # any non-null stream handle
    assert x[0] == times * replays


def test_capturing_the_legacy_stream_fails():
    with pytest.raises(RuntimeError, match="cudaErrorStreamCaptureUnsupported"):
        st.graph(ints(1).ctypes.data, 1, 1, 0)


def test_async_copies_land_at_the_wait():
    x = np.arange(10, 42, dtype=np.int32)
    st.async_copy(1, 32, 0, x.ctypes.data)
    np.testing.assert_array_equal(x, 1)


def aligned(values, dtype):
    """`values` as a C-contiguous `dtype` array whose data starts on a 32-byte boundary (WMMA's requirement)."""
    values = np.asarray(values)
    nbytes = values.size * np.dtype(dtype).itemsize
    raw = np.zeros(nbytes + 32, np.uint8)
    start = -raw.ctypes.data % 32
    out = raw[start:start + nbytes].view(dtype).reshape(values.shape)
    out[...] = values.astype(dtype)
    return out


def wmma(rng, dtype, M, a_row, b_row, threads=64, skew=0, offset=0):
    """D = scale (A B + C) through mma.h's fragments on 2 x 3 tiles (1 x 3 for M = 8, 2 x 1 for N = 8: a tile 8
    half values from the last would not start 256-bit aligned), k = 48; returns D and the float64 product of
    the same (rounded) inputs."""
    N, K = 256 // M, 16
    m, n, k = (M if M == 8 else 2 * M), (N if N == 8 else 3 * N), 3 * K
    a, b = aligned(rng.standard_normal((m, k)), dtype), aligned(rng.standard_normal((k, n)), dtype)
    c, d = aligned(rng.standard_normal((m, n)), np.float32), aligned(np.full((n, m), np.nan), np.float32)
    a_mem = a if a_row else aligned(a.T, dtype)  # column-major A: its transpose, row-major
    b_mem = b if b_row else aligned(b.T, dtype)
    st.wmma(dtype == ml_dtypes.bfloat16, M, a_row, b_row, threads, a_mem.ctypes.data + offset, b_mem.ctypes.data,
            c.ctypes.data, d.ctypes.data, m, n, k, 0.5, skew)
    return d.T, 0.5 * (a.astype(np.float64) @ b.astype(np.float64) + c)


@pytest.mark.parametrize("a_row, b_row", [(True, True), (False, True), (True, False), (False, False)])
@pytest.mark.parametrize("M", [8, 16, 32])
@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16], ids=["float16", "bfloat16"])
def test_wmma_matches_a_plain_matmul(rng, dtype, M, a_row, b_row):
    got, want = wmma(rng, dtype, M, a_row, b_row)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # exact products, float32 sums of 48 terms


@pytest.mark.parametrize("kw, error", [
    (dict(offset=2), "load_matrix_sync: the pointer is not 256-bit aligned"),
    (dict(skew=16), "load_matrix_sync: the lanes of the warp passed different arguments"),
    (dict(threads=16), "a lane of the mask has exited"),  # a partial warp
])
def test_wmma_misuse_fails_the_launch(rng, kw, error):
    with pytest.raises(RuntimeError, match=error):
        wmma(rng, np.float16, 8, False, True, **kw)
