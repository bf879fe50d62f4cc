"""The benchmark command on a tiny configuration: every peer has a row, measured or skipped with a reason,
in the table and in the JSON, so `python -m maskrnn bench` cannot silently rot."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maskrnn import bench
from maskrnn.__main__ import main


def test_tiny_benchmark_reports_every_peer(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--configs", "4,8,8,8", "--devices", "cpu", "--repeats", "1", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["devices"] == {"cpu": bench._device_name("cpu")}
    for cell in ("lstm", "gru"):
        for pass_ in ("fwd", "fwd+bwd"):
            for mask in ("post", "holes"):
                case = dict(device="cpu", config=[4, 8, 8, 8], cell=cell, pass_=pass_, mask=mask)
                measured = {r["impl"]: r for r in report["rows"] if all(r[k] == v for k, v in case.items())}
                skipped = {s["impl"]: s["reason"] for s in report["skipped"]
                           if all(s[k] == v for k, v in case.items())}
                assert measured["maskrnn"]["median_ms"] > 0 and measured["maskrnn"]["ratio"] is None
                for r in measured.values():
                    assert r["min_ms"] <= r["q1_ms"] <= r["median_ms"] <= r["q3_ms"] <= r["max_ms"]
                for peer in bench.PEERS:
                    assert (peer in measured) != (peer in skipped), (case, peer)
                    if peer in measured:
                        assert measured[peer]["ratio"] > 0
                    else:
                        assert skipped[peer]
                assert "torch-packed" in skipped or mask == "post"
    train = {r["impl"]: r for r in report["rows"] if r["pass_"] == "train"}
    assert set(train) == {"maskrnn", "torch-unpacked"} and train["torch-unpacked"]["ratio"] > 0
    keras_rows = [r for r in report["rows"] if r["pass_"] == "train_on_batch"]  # maskrnn/bench_keras.py
    assert sorted((r["mask"], r["impl"]) for r in keras_rows) == [(m, i) for m in ("holes", "post")
                                                                  for i in ("keras", "maskrnn")]
    assert report["load_average"]["max"] >= 0 and "IQR ms" in table
    assert "cudnn-packed: cuDNN runs on the GPU only" in table or bench.available_devices() == ["cpu", "cuda"]
    for peer in bench.PEERS:
        assert peer in table
    import maskrnn

    assert report["build"]["path"] == str(Path(maskrnn.__file__).parent)
    assert report["build"]["native_extension"] == maskrnn.info()["native_extension"]
    assert 0 < report["import_s"] < 60 and 0 < report["first_call_cpu_s"] and 0 < report["first_call_s"] < 600
    assert f"first_call_s {report['first_call_s']:.2f} s" in table


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    report = dict(commit="abc", rows=[dict(device="cpu", cell="lstm", config=[1, 2, 3, 4], pass_="fwd",
                                           mask="post", impl="keras", median_ms=2.0, ratio=3.0)])
    path = tmp_path / "ratios.png"
    bench.plot(report, path)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_measure_interleaves_runners_in_rotating_order():
    calls = []
    fns = {name: (lambda i, name=name: calls.append((name, i))) for name in "abc"}
    stats, first = bench.measure(fns, "cpu", repeats=3, warmup=1)
    timed = calls[3:]  # after one warm-up call each
    assert [name for name, _ in timed] == list("abc" "bca" "cab")
    assert [i for _, i in timed] == [0] * 3 + [1] * 3 + [2] * 3
    assert set(stats) == set(first) == set("abc")
    assert all(s["min"] <= s["median"] <= s["max"] for s in stats.values())


def test_table_warns_about_load_and_spread():
    row = dict(device="cpu", cell="lstm", config=[1, 2, 3, 4], pass_="fwd", mask="post", impl="maskrnn",
               median_ms=2.0, q1_ms=1.0, q3_ms=3.0, min_ms=1.0, max_ms=9.0, ratio=None, spread_ok=False)
    report = dict(commit="abc", devices={"cpu": "x"}, rows=[row], skipped=[], note="",
                  build=dict(path="/x", native_extension=True, cuda_extension=False),
                  import_s=0.1, first_call_s=0.2, first_call_cpu_s=0.2, first_in_run_s={},
                  load_average=dict(max=5.0, samples=[5.0]),
                  other_work=dict(cpu_share=0.6, limit=0.25, load_threshold=1.5, busy=True))
    table = bench.format_table(report)
    assert "kept 60% of the cores busy" in table and "spread above" in table and "1.00-3.00" in table
    report["other_work"].update(cpu_share=None)  # no /proc/stat: the load average decided
    assert "load average reached 5.0 (> 1.5)" in bench.format_table(report)
    report["other_work"]["busy"], row["spread_ok"] = False, True
    assert "WARNING" not in bench.format_table(report)


def _spin(seconds):
    """Spins for seconds of this process's CPU time (not wall time: on a loaded machine a second of wall time
    gave it as little as 0.67 s of CPU)."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


@pytest.mark.skipif(bench.cpu_clock() is None, reason="no /proc/stat")
def test_other_work_counts_other_processes_not_this_one():
    # The benchmark's own threads keep the load average near the core count, so the busy test must tell its
    # own CPU time from other processes'. Each check holds whatever else the machine runs (other processes only
    # add busy time), so the test holds beside other pytest workers too:
    # a child process spinning for 1 s of CPU is other work: at least ~1 core-second of it shows.
    tick = 2.0 / os.sysconf("SC_CLK_TCK")  # /proc/stat counts whole ticks
    start, t0 = bench.cpu_clock(), time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + 1.0\n"
                              "while time.process_time() < end: pass"])
    child.wait()
    wall = time.perf_counter() - t0
    assert bench.other_work(start, bench.cpu_clock(), wall) * wall * os.cpu_count() >= 0.7
    # This process spinning for 1 s of CPU: its own clock has it, and so does the machine's (so other_work,
    # which takes the one from the other, leaves it out).
    start = bench.cpu_clock()
    _spin(1.0)
    end = bench.cpu_clock()
    own = end[1] - start[1]
    assert own >= 0.7
    assert end[0] - start[0] >= own - tick
    # The arithmetic: (machine busy - own) over the wall time and the cores, never below zero.
    n = os.cpu_count()
    assert bench.other_work((100.0, 5.0), (103.0, 6.0), 2.0) == pytest.approx(2.0 / (2.0 * n))
    assert bench.other_work((100.0, 5.0), (101.0, 6.5), 1.0) == 0.0
    assert bench.other_work(None, end, 1.0) is None and bench.other_work(start, end, 0) is None


def test_keras_rows_run_where_their_device_says(device):
    """bench_keras's models, batches and steps run on the row's device (Keras's torch backend would put a CPU
    row on a visible GPU), and each device gets both layers' rows."""
    pytest.importorskip("keras")
    from maskrnn import bench_keras

    if bench_keras._unsupported(device):
        pytest.skip(bench_keras._unsupported(device))
    import keras

    fns = bench_keras.runners((4, 5, 3, 8), "holes", seed=0, device=device)
    losses = [float(keras.ops.convert_to_numpy(fns[impl](0))) for impl in bench_keras.IMPLS]
    assert abs(losses[0] - losses[1]) <= 1e-4 * max(1.0, abs(losses[1]))  # same weights, same batch: same loss
    for fn in fns.values():
        for w in fn.model.weights:
            assert device in str(w.value.device).lower(), (w.path, w.value.device)
    skipped = []
    rows = bench_keras.stack_rows([(4, 5, 3, 8)], [device], 1, skipped)
    assert not skipped
    assert sorted((r["device"], r["mask"], r["impl"]) for r in rows) == [
        (device, m, i) for m in ("holes", "post") for i in ("keras", "maskrnn")]
    assert [(r["mask"], r["impl"]) for r in rows] == [(m, i) for m in ("post", "holes") for i in bench_keras.IMPLS]
    assert all(r["pass_"] == "train_on_batch" and r["median_ms"] > 0 for r in rows)
    assert all(r["ratio"] > 0 for r in rows if r["impl"] == "keras")


def test_train_rows_have_a_dense_torch_peer_on_each_device(device):
    """The train row's peer, torch.nn.LSTM on the dense batch, is measured on the row's device too (cuDNN on a
    GPU; the first H100 run had a GPU train row with no peer)."""
    pytest.importorskip("torch")
    from maskrnn import _bench_runners

    case = dict(device=device, config=[4, 5, 3, 8], cell="lstm", pass_="train", mask="post")
    weights, batches = _bench_runners.workload((4, 5, 3, 8), "lstm", "post", seed=0)
    fns = {}
    for impl, factory in bench.RUNNERS.items():
        try:
            fns[impl] = factory(case, weights, batches)
        except bench._Skip:
            pass
    assert set(fns) == {"maskrnn", "torch-unpacked"}
    for fn in fns.values():
        fn(0), fn(1)


def test_partial_rows_reach_the_json_and_stdout_before_the_run_ends(tmp_path, monkeypatch, capsys):
    """--partial: a run cut short (here at its second job, as a step cut at its budget in bench/gpu_verify.sh)
    leaves the first job's rows, maskrnn and its peers, printed and in the JSON."""
    out = tmp_path / "bench.json"
    real, jobs = bench.stat_rows, []

    def cut_at_the_second_job(case, *args, **kwargs):
        if jobs:
            raise KeyboardInterrupt
        jobs.append(case)
        return real(case, *args, **kwargs)

    monkeypatch.setattr(bench, "stat_rows", cut_at_the_second_job)
    with pytest.raises(KeyboardInterrupt):
        main(["bench", "--configs", "4,8,8,8", "--cells", "lstm", "--devices", "cpu", "--repeats", "1", "--partial",
              "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["partial"] is True
    assert {r["impl"] for r in report["rows"]} >= {"maskrnn", "torch-unpacked"}
    assert all(all(r[k] == v for k, v in jobs[0].items()) for r in report["rows"])
    printed = capsys.readouterr().out
    for r in report["rows"]:
        assert bench.format_row(r) in printed


@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd", "train"])
def test_maskrnn_fp16_row_runs_float16_on_the_gpu_only(device, monkeypatch, pass_):
    """The 'maskrnn-fp16' runner (issue 14's float16 goal): on a GPU it runs maskrnn on the case's batches in
    float16, forward and forward+backward; on the CPU, and for the training step, it is skipped with the reason."""
    import maskrnn
    from maskrnn import _bench_runners

    case = dict(device=device, config=[4, 5, 3, 8], cell="lstm", pass_=pass_, mask="holes")
    weights, batches = _bench_runners.workload((4, 5, 3, 8), "lstm", "holes", seed=0)
    if device != "cuda" or pass_ == "train":
        reason = "float16 runs on the GPU only" if device != "cuda" else "the training step runs in float32"
        with pytest.raises(bench._Skip, match=reason):
            bench.RUNNERS["maskrnn-fp16"](case, weights, batches)
        return
    seen = []
    for name in ("lstm", "lstm_vjp"):
        real = getattr(maskrnn, name)
        monkeypatch.setattr(maskrnn, name, lambda x, *a, _real=real, **k: seen.append(x.dtype) or _real(x, *a, **k))
    run = bench.RUNNERS["maskrnn-fp16"](case, weights, batches)
    run(0), run(1)
    assert [str(d) for d in seen] == ["float16", "float16"]
