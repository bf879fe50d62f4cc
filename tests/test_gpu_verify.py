"""bench/gpu_verify.sh --dry-run (issue 12): without a GPU it checks its tools, that pytest collects the suite
with the options it passes, that the bench and the training example accept their flags, prints every step,
and exits 0; a flag the bench does not know makes it fail."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_verify.sh"
STEPS = ["1 install", "2 info", "3 pytest", "4 memcheck", "4 racecheck", "4 synccheck", "4 initcheck", "5 bench",
         "5 train", "5 host", "5 clusters"]


def dry_run(script=SCRIPT):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(script), "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_dry_run_checks_and_prints_every_step():
    r = dry_run()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in STEPS:
        assert f"== {name} (budget " in r.stdout
        assert f"{name}: dry run" in r.stdout  # and the summary lists it
    assert "compute-sanitizer --tool racecheck" in r.stdout
    assert "--junitxml=" in r.stdout and "bench --full --devices cuda --partial --json" in r.stdout
    budgets = [int(line.split("(budget ")[1].split("s)")[0]) for line in r.stdout.splitlines()
               if line.startswith("== ") and "(budget " in line]
    assert sum(budgets) <= 9 * 60  # issue 12: the whole run under 9 minutes


def test_dry_run_fails_on_a_flag_the_bench_does_not_accept(tmp_path):
    broken = tmp_path / "bench" / "gpu_verify.sh"
    broken.parent.mkdir()
    broken.write_text(SCRIPT.read_text().replace('cd "$(dirname "$0")/.."', f'cd "{ROOT}"')
                      .replace("BENCH_ARGS=(--full", "BENCH_ARGS=(--no-such-flag --full"))
    r = dry_run(broken)
    assert r.returncode != 0
    assert "bench rejects its flags" in r.stderr


@pytest.mark.parametrize("argument", ["--run", "extra"])
def test_unknown_arguments_are_refused(argument):
    r = subprocess.run(["bash", str(SCRIPT), argument], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "usage" in r.stderr
