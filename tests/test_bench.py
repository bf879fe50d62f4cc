"""The benchmark command on a tiny configuration: every peer has a row, measured or skipped with a reason,
in the table and in the JSON, so `python -m maskrnn bench` cannot silently rot."""

import json
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
                for peer in bench.PEERS:
                    assert (peer in measured) != (peer in skipped), (case, peer)
                    if peer in measured:
                        assert measured[peer]["ratio"] > 0
                    else:
                        assert skipped[peer]
                assert "torch-packed" in skipped or mask == "post"
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
