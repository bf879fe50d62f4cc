#!/usr/bin/env bash
# Install checks (issue 10), run by .ci/run after the README's commands, as root on a clean clone:
#  1. the sdist is complete and builds: installed into a fresh venv (MASKRNN_CUDA=OFF, to stay fast: the CUDA
#     build is the README's), then a smoke test from outside the tree, whose first call must load the kernels
#     compiled at build time (.ci/install_smoke.py);
#  2. a read-only copy of that install, run as a non-root user without a writable home: kernels cache in a
#     private temp dir; and with no writable location at all they still run;
#  3. the build without a C++ compiler succeeds without the extension; MASKRNN_CUDA=ON without nvcc or without
#     a C++ compiler fails with one clear last line. These use --no-build-isolation with the build
#     requirements the README's Development section lists.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=$(mktemp -d /tmp/maskrnn-install-checks.XXXXXX)
user=maskrnn-ci
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
# The fresh venv must be usable by the non-root user: the system Python when there is one (a pyenv Python
# under /root is not reachable by other users).
base_python=$(command -v /usr/bin/python3 || command -v python3)
step() { echo "+ install check: $*"; }

step "sdist"
"$base_python" -m venv "$work/venv"
"$work/venv/bin/pip" install -q build "setuptools>=64"
"$work/venv/bin/python" -m build --sdist --no-isolation --skip-dependency-check -o "$work/dist" . \
  > "$work/sdist.log" 2>&1 || { cat "$work/sdist.log"; exit 1; }
sdist=$(ls "$work"/dist/maskrnn-*.tar.gz)
tar tzf "$sdist" > "$work/sdist.txt"
for f in CMakeLists.txt LICENSE README.md csrc/bindings.cpp csrc/scan_f32.cu tests/test_scan.py \
         tests/cuda_emulation/emulate.cpp examples/train_masked.py; do
  grep -q "^maskrnn-[^/]*/$f\$" "$work/sdist.txt" || { echo "sdist lacks $f" >&2; exit 1; }
done

step "sdist into a fresh venv ($base_python), MASKRNN_CUDA=OFF"
MASKRNN_CUDA=OFF "$work/venv/bin/pip" install -q "$sdist"
cp .ci/install_smoke.py "$work/"
(cd "$work" && venv/bin/python install_smoke.py yes yes)

step "read-only copy, non-root user, no writable home"
id "$user" > /dev/null 2>&1 || useradd --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$user"
uid=$(id -u "$user")
site=$("$work/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir "$work/ro" && cp -r "$site/maskrnn" "$work/ro/" && chmod -R a-w,a+rX "$work/ro"
tmpcache=/tmp/maskrnn-numba-cache-$uid  # the user's tempfile.gettempdir() under env -i
rm -rf "$tmpcache"
as_user() {
  (cd "$work" && setpriv --reuid="$uid" --regid="$(id -g "$user")" --clear-groups \
    env -i HOME=/nonexistent PATH=/usr/bin:/bin PYTHONPATH="$work/ro" venv/bin/python install_smoke.py yes yes float64) \
    2>&1 | tee "$work/ro.log"
  ! grep -q "no locator available" "$work/ro.log"
}
as_user
ls "$tmpcache"/*/infer._lstm_steps-*.nbi > /dev/null  # the float64 (inference) kernel was cached in the private temp dir
rm -rf "$tmpcache" && mkdir -m 755 "$tmpcache"  # owned by root: refused, so nothing is writable for the user
as_user
rmdir "$tmpcache"

step "no C++ compiler: the install goes on without the extension"
tar xzf "$sdist" -C "$work" && src=$(ls -d "$work"/maskrnn-*/)
"$work/venv/bin/pip" install -q "setuptools>=64" wheel "pybind11>=2.12" "cmake>=3.24" ninja
nobuild=(--no-deps --no-build-isolation)
CXX=/nonexistent/c++ MASKRNN_PRECOMPILE=0 "$work/venv/bin/pip" wheel -v "${nobuild[@]}" -w "$work/nocxx" "$src" \
  > "$work/nocxx.log" 2>&1 || { cat "$work/nocxx.log"; exit 1; }
grep "maskrnn: no C++ compiler was found (set CXX to one): installing without the native extension" "$work/nocxx.log"
"$work/venv/bin/pip" install -q --force-reinstall --no-deps "$work"/nocxx/maskrnn-*.whl
(cd "$work" && venv/bin/python install_smoke.py no no quick)

expect_failure() {  # $1: the line the failed build must end with; the rest: environment for the build
  local line=$1; shift
  if env "$@" MASKRNN_PRECOMPILE=0 "$work/venv/bin/pip" wheel "${nobuild[@]}" -w "$work/fail" "$src" \
      > "$work/fail.log" 2>&1; then
    echo "the build succeeded with $*" >&2; exit 1
  fi
  last=$(grep -B1 "\[end of output\]" "$work/fail.log" | head -1 | sed 's/^ *//')
  [ "$last" = "$line" ] || { cat "$work/fail.log"; echo "expected the last line: $line" >&2; exit 1; }
  echo "$last"
}
step "MASKRNN_CUDA=ON without nvcc, and without a C++ compiler: one clear last line"
expect_failure "maskrnn: MASKRNN_CUDA=ON but no CUDA compiler (nvcc) was found: put it on PATH or set CUDACXX" \
  -u CUDACXX MASKRNN_CUDA=ON PATH="$work/venv/bin:/usr/bin:/bin"
expect_failure "maskrnn: MASKRNN_CUDA=ON but no C++ compiler was found (set CXX to one)" \
  MASKRNN_CUDA=ON CXX=/nonexistent/c++
echo "install checks passed"
