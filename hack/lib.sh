# Shared helpers for hack/ scripts: installing what Paddock needs on a fresh
# Debian machine. Every step is idempotent and quiet when already done.

PADDOCK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNTIME_TARGET=x86_64-unknown-linux-musl
# Builds are cached on the machine, not in the checkout, so a fresh clone
# (CI) reuses what an earlier build compiled.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/paddock/target}
RUNTIME_BIN="$CARGO_TARGET_DIR/$RUNTIME_TARGET/release/paddock-runtime"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  if ! apt-get install -y -q "${missing[@]}" >/tmp/paddock-apt.log 2>&1; then
    apt-get update -q >/dev/null 2>&1
    apt-get install -y -q "${missing[@]}" >/tmp/paddock-apt.log 2>&1 || {
      cat /tmp/paddock-apt.log >&2; return 1; }
  fi
}

# Toolchain for building Paddock: protoc for the envd protos, the musl
# target (and its C compiler) for the static runtime binary, and what the
# embedded infrastructure builds and runs with (libseccomp, debootstrap,
# nftables, tini).
ensure_build_deps() {
  apt_install protobuf-compiler musl-tools pkg-config
  "$PADDOCK_ROOT/hack/deps-embedded.sh"
  if ! rustup target list --installed 2>/dev/null | grep -qx "$RUNTIME_TARGET"; then
    log "adding Rust target $RUNTIME_TARGET"
    rustup target add "$RUNTIME_TARGET"
  fi
}

# ensure_venv DIR PYTHON REQUIREMENTS IMPORTS WHAT: a virtualenv made with
# PYTHON from REQUIREMENTS, (re)built unless IMPORTS already import in it.
ensure_venv() {
  local venv=$1 python=$2 requirements=$3 imports=$4 what=$5
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import $imports" 2>/dev/null; then
    log "creating $venv ($what)"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q -r "$requirements"
  fi
}

# The unmodified E2B SDKs and pytest, in a virtualenv under the repo.
ensure_python_sdk() {
  ensure_venv "$PADDOCK_ROOT/.venv" python3 "$PADDOCK_ROOT/tests/sdk/requirements.txt" \
    "e2b, e2b_code_interpreter, pytest" "the E2B Python SDKs"
}

# The Python the runtime's code interpreter starts kernels with in tests:
# Debian's python3 (readable by the sandbox user, unlike a pyenv under
# /root) with ipykernel, bash_kernel and the data-science stack. It lives
# outside the checkout: the test runtime gets a private /tmp, and a checkout
# under /tmp would be hidden from its kernels.
export PADDOCK_KERNEL_VENV=${PADDOCK_KERNEL_VENV:-/var/cache/paddock/kernel-venv}
export PADDOCK_KERNEL_PYTHON="$PADDOCK_KERNEL_VENV/bin/python"
ensure_kernel_venv() {
  apt_install python3 python3-venv
  ensure_venv "$PADDOCK_KERNEL_VENV" /usr/bin/python3 "$PADDOCK_ROOT/tests/sdk/kernel-requirements.txt" \
    "ipykernel, bash_kernel, numpy, pandas, matplotlib" "Jupyter kernels for the code interpreter tests"
}

# A 2.45-era e2b SDK in a virtualenv of its own, for the v1-route tests.
ensure_legacy_sdk() {
  ensure_venv "$PADDOCK_ROOT/.venv-e2b-2.45" python3 "$PADDOCK_ROOT/tests/e2e_legacy/requirements.txt" \
    "e2b, pytest" "e2b 2.45"
}

# Schemathesis, which fuzzes the manager's API from its OpenAPI document (tests/fuzz).
ensure_fuzz_venv() {
  ensure_venv "$PADDOCK_ROOT/.venv-fuzz" python3 "$PADDOCK_ROOT/tests/fuzz/requirements.txt" \
    "schemathesis" "schemathesis, the API fuzzer"
}

ensure_js_sdk() {
  if [ ! -d "$PADDOCK_ROOT/tests/js/node_modules/e2b" ] || [ ! -d "$PADDOCK_ROOT/tests/js/node_modules/@e2b/code-interpreter" ]; then
    log "installing the E2B JS SDK"
    (cd "$PADDOCK_ROOT/tests/js" && npm install --no-audit --no-fund --loglevel=error)
  fi
}

PADDOCK_BIN="$CARGO_TARGET_DIR/debug/paddock"
build_paddock() {
  log "building paddock"
  (cd "$PADDOCK_ROOT" && cargo build -p paddock)
}

# `hack/run` runs an optimized build: it is what users measure and deploy.
PADDOCK_RELEASE_BIN="$CARGO_TARGET_DIR/release/paddock"
build_paddock_release() {
  log "building paddock (release)"
  (cd "$PADDOCK_ROOT" && cargo build --release -p paddock)
}

build_runtime() {
  log "building the static runtime ($RUNTIME_TARGET, release)"
  (cd "$PADDOCK_ROOT" && cargo build --release --target "$RUNTIME_TARGET" -p paddock-runtime)
}
