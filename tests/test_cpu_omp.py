"""The CPU engine's threads on PyTorch's OpenMP team (maskrnn/_cpu/omp.py): the same results bit for bit as on
maskrnn's own helper threads, for the row split, the unit split and the threaded GEMMs; failures re-raised; a
team smaller than the job runs none of it (the helpers then run all of it); never in a forked child."""

import os
import sys

import numpy as np
import pytest
from cells import CELLS, cell_fns, make_problem, random_upstream

torch = pytest.importorskip("torch")
from maskrnn._cpu import blas, omp, rows  # noqa: E402

if omp.runtime() is None:
    pytest.skip("no GNU OpenMP runtime behind this PyTorch (or not Linux)", allow_module_level=True)


@pytest.fixture
def teams(monkeypatch):
    """How many jobs ran on the OpenMP team, in a list (length: jobs run there)."""
    ran, real = [], omp.run

    def spy(tasks):
        done = real(tasks)
        if done:
            ran.append(len(tasks))
        return done

    monkeypatch.setattr(omp, "run", spy)
    return ran


def _call(monkeypatch, on_team, cell, p, mask, ups):
    # The engine's own products and threads (PyTorch's GEMM, which would take the all-step products, off).
    monkeypatch.setattr(blas, "TORCH_GEMM", False)
    monkeypatch.setenv("MASKRNN_TORCH_OMP", "1" if on_team else "0")
    _, vjp, _, extra = cell_fns(cell)
    args = [p[k] for k in ("x", "kernel", "recurrent_kernel", "bias")]
    state = {k: v for k, v in p.items() if k == "initial_state"}
    outs, pullback = vjp(*args, **state, mask=mask, **extra)
    return [np.array(o) for o in outs] + [g for g in pullback(*ups) if g is not None]


# B=48, H=64: rows split over threads; B=4, H=256: units split (cols.py, a spin barrier per step). 40 steps: a
# call large enough to be shared (rows.small_call).
@pytest.mark.parametrize("B, H", [(48, 64), (4, 256)])
@pytest.mark.parametrize("cell", CELLS)
def test_same_results_as_the_helper_threads(rng, monkeypatch, teams, cell, B, H):
    T = 40
    p = make_problem(rng, cell, B, T, 7, H, "float32", initial_state=True)
    mask = rng.random((B, T)) > 0.25
    ups = random_upstream(rng, cell, B, T, H, "float32")
    mine = _call(monkeypatch, False, cell, p, mask, ups)
    assert not teams
    on_team = _call(monkeypatch, True, cell, p, mask, ups)
    assert teams, "nothing ran on torch's OpenMP team"
    for a, b in zip(mine, on_team):
        np.testing.assert_array_equal(a, b)


def test_a_failure_is_reraised_and_every_task_runs_once(monkeypatch):
    monkeypatch.setenv("MASKRNN_TORCH_OMP", "1")
    ran = []

    def fail():
        ran.append("fail")
        raise KeyError("task 1")

    with pytest.raises(KeyError, match="task 1"):
        rows.parallel([lambda: ran.append("ok"), fail])
    assert sorted(ran) == ["fail", "ok"]


def test_a_short_team_runs_nothing_and_the_helpers_run_it_all(monkeypatch):
    monkeypatch.setenv("MASKRNN_TORCH_OMP", "1")
    par, tid, _ = omp.runtime()
    monkeypatch.setattr(omp, "_runtime", (par, tid, lambda: 1))  # as inside another OpenMP region
    ran = []
    assert not omp.run([lambda: ran.append(0), lambda: ran.append(1)])
    assert ran == []
    rows.parallel([lambda: ran.append(0), lambda: ran.append(1)])
    assert sorted(ran) == [0, 1]


def test_off_without_torch_with_the_switch_and_in_a_forked_child(monkeypatch):
    monkeypatch.setenv("MASKRNN_TORCH_OMP", "0")
    assert omp.runtime() is None
    monkeypatch.setenv("MASKRNN_TORCH_OMP", "1")
    monkeypatch.delitem(sys.modules, "torch")
    assert omp.runtime() is None
    monkeypatch.undo()
    if not hasattr(os, "fork"):
        return
    pid = os.fork()
    if pid == 0:  # the child: no pytest here, only an exit code
        os._exit(0 if omp.runtime() is None and blas._torch() is None else 1)  # nor PyTorch's GEMM (blas.py)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
