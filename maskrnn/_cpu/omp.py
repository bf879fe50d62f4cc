"""The engine's threads on PyTorch's OpenMP team, when PyTorch is loaded.

After each parallel op PyTorch's OpenMP workers spin for a while (GNU libgomp: about 20 ms here) waiting for the
next one. maskrnn's own helper thread then shared a core with a spinning worker, and a call right after a torch
op ran at two thirds of its speed: (16,200,64,128) LSTM forward 7.2 ms right after ``torch.nn.LSTM``, 4.1 ms after
a pause. Run on that team instead (``GOMP_parallel``, through ctypes), the spinning workers take maskrnn's tasks
at once, and torch's next op finds its workers awake.

Only the GNU OpenMP ABI of the runtime torch's CPU library links to, only while torch is imported, never in a
forked child (libgomp's pool does not survive a fork). ``MASKRNN_TORCH_OMP=0`` turns it off. A team smaller than
asked for (a call from inside another OpenMP region, OMP_THREAD_LIMIT) runs nothing: the caller then uses its own
threads.
"""

import ctypes
import itertools
import os
import sys
import threading

_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_runtime = None  # (GOMP_parallel, omp_get_thread_num, omp_get_num_threads), False when there is none
_forked = False
_jobs = {}  # job id -> (tasks, [team size seen]); the callback's data pointer carries the id
_ids = itertools.count(1)
_lock = threading.Lock()


def _after_fork():
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_after_fork)


def forked():
    """Whether this process is a forked child (of a parent that imported maskrnn)."""
    return _forked


def _torch_library():
    """Path of PyTorch's CPU library mapped into this process, or None (Linux: /proc/self/maps). Its own OpenMP
    entry points are looked up through it: the process may map a second libgomp (Numba's OpenMP layer loads the
    system's), whose team would be another set of threads."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip()
                if os.path.basename(path).startswith("libtorch_cpu.") and os.path.isfile(path):
                    return path
    except OSError:
        return None
    return None


def runtime():
    """The loaded libgomp's entry points when maskrnn should run on torch's team, else None."""
    global _runtime
    if _forked or "torch" not in sys.modules or os.environ.get("MASKRNN_TORCH_OMP", "1") == "0":
        return None
    if _runtime is None:
        path = _torch_library()
        _runtime = False
        if path:
            try:  # dlsym through torch's library: the symbols of the runtime it links to
                lib = ctypes.CDLL(path)
                par, tid, size = lib.GOMP_parallel, lib.omp_get_thread_num, lib.omp_get_num_threads
            except (OSError, AttributeError):
                return None
            par.argtypes, par.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint], None
            tid.argtypes, size.argtypes = [], []
            _runtime = (par, tid, size)
    return _runtime or None


@_CALLBACK
def _member(job):
    """One team member's part: task number omp_get_thread_num(), if the team is as large as the job."""
    _, tid, size = _runtime
    tasks, seen = _jobs[job]
    n = size()
    if n != len(tasks):
        seen[0] = n
        return
    tasks[tid()]()


def run(tasks):
    """Runs the callables (which must not raise) on the OpenMP team, one per member, and returns True; False
    without running any where there is no team of that size."""
    rt = runtime()
    if rt is None or len(tasks) < 2:
        return False
    seen = [len(tasks)]
    with _lock:
        job = next(_ids)
        _jobs[job] = (tasks, seen)
    try:
        rt[0](ctypes.cast(_member, ctypes.c_void_p), job, len(tasks), 0)  # ctypes lets go of the GIL meanwhile
    finally:
        with _lock:
            del _jobs[job]
    return seen[0] == len(tasks)
