#!/usr/bin/env bash
# Container smoke test: build the bento, containerize it, run the image and check it answers like the
# model on the host. Run from the project root after `python -m export ... --bentoml` put
# cifar10-simplecnn:latest into the BentoML store. `scripts/container_smoke.sh --help` for options.
# Not part of pytest (it needs a container tool and minutes); see docs/deploy.md.
# Bash does what must be bash (tool choice, build, run, clean-up); the HTTP checks are
# scripts/container_checks.py (on clients.Client, tested in tests/test_container_checks.py) and the
# offline base image is scripts/offline_base.sh.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/container_smoke.sh [options] [-e NAME=VALUE ...]

Builds the bento (bentofile.yaml, or bentofile.gpu.yaml with --gpu), containerizes it with docker or
podman, runs the image on a free loopback port and checks it: readiness, non-root user, /classify on
real CIFAR-10 test images against the same model run on the host, /classify_batch order, a refused
text upload, no torch and no CUDA libraries in the CPU image, image size. Prints PASS/FAIL per check
and a summary; exit 0 only when nothing failed. The container is always removed; the image is kept.

Options:
  --gpu                 GPU variant: bentofile.gpu.yaml -> cifar10_classifier_gpu, run with the GPU
                        (docker --gpus all, podman --device nvidia.com/gpu=all) when nvidia-smi works
  --tool docker|podman  container tool (default: $CONTAINER_TOOL, else docker if `docker info`
                        works, else podman)
  --image NAME:TAG      image to build (default cifar10-classifier:cpu, or :gpu with --gpu)
  --port N              host port on 127.0.0.1 (default: a free one)
  -e NAME=VALUE         environment for the container (repeatable); CIFAR10_RUNTIME, CIFAR10_DEVICE,
                        CIFAR10_WORKERS, CIFAR10_THREADS, CIFAR10_BATCHING, CIFAR10_MAX_BATCH,
                        CIFAR10_MAX_UPLOAD_MB, CIFAR10_MAX_PIXELS, CIFAR10_ACCESS_LOG,
                        CIFAR10_TRACING, CIFAR10_FAST_LANE, CIFAR10_MODEL, CIFAR10_SHUTDOWN_DELAY and
                        CIFAR10_GRACEFUL_SHUTDOWN are passed through when set
  --data DIR            CIFAR-10 folder with test/<class>/*.jpg (default $CIFAR10_DATA, else
                        ../shared/datasets/cifar10, else ./data)
  --per-class N         test images per class sent to /classify (default 2)
  --ready-timeout S     seconds to wait for /readyz 200 (default 240)
  --pull-timeout S      seconds allowed for pulling the base image (default 300)
  --no-build            containerize the latest bento of that name instead of running `bentoml build`
  --no-fallback         never build the offline stand-in base image (fail instead)
  --install-deps        as root, apt-get install missing podman/runc/debootstrap (default: say what to install)
  --rm-image            remove the built image at the end (default: keep it)
  -v, --verbose         stream build output (default: written to a log file, tail shown on failure)
  -h, --help            this text

Environment: CONTAINER_TOOL, CONTAINERS_CONF (podman; when unset this script writes its own, see
below), BENTOML_HOME (the store used), CIFAR10_CONTAINER_CACHE (cache folder, default
~/.cache/cifar10-service/container), DEBOOTSTRAP_MIRROR (offline fallback).

Podman: unless CONTAINERS_CONF is set, podman runs with a containers.conf written to the cache folder
(default ulimits nofile=1024:1024 and nproc=1000:1000, runtime runc, cgroup manager cgroupfs), for
hosts where crun fails on hybrid cgroups and podman's default ulimits exceed the hard limits.

OFFLINE FALLBACK: when the bento's base image python:3.11-slim is neither local nor pullable (no
registry reachable), a local stand-in is built once with debootstrap (Debian bookworm minbase with
python3, python3-venv, python3-pip, ca-certificates, the host's CA bundle) and imported under the name
docker.io/library/python:3.11-slim, marked by ENV CIFAR10_BASE_STANDIN. The bento and its generated
Dockerfile are unchanged. Needs root, debootstrap and a reachable Debian mirror and PyPI. Remove the
stand-in with `podman rmi docker.io/library/python:3.11-slim` once the registry is reachable.
EOF
}

# ---------------------------------------------------------------------------------------- helpers
log() { printf '==> %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 2; }
now() { date +%s; }

RESULTS=()
record() {  # record STATUS NAME DETAIL
    RESULTS+=("$1|$2|$3")
    printf '  %-4s %-28s %s\n' "$1" "$2" "$3"
}

# ---------------------------------------------------------------------------------------- options
GPU=0
TOOL="${CONTAINER_TOOL:-}"
IMAGE=""
PORT=""
DATA=""
PER_CLASS=2
READY_TIMEOUT=240
PULL_TIMEOUT=300
BUILD=1
FALLBACK=1
INSTALL_DEPS=0
RM_IMAGE=0
VERBOSE=0
USER_ENVS=()

need_arg() { [[ $# -ge 2 && -n "$2" ]] || die "option $1 needs a value (see --help)."; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --gpu) GPU=1 ;;
        --tool) need_arg "$@"; TOOL="$2"; shift ;;
        --image) need_arg "$@"; IMAGE="$2"; shift ;;
        --port) need_arg "$@"; PORT="$2"; shift ;;
        -e|--env) need_arg "$@"; USER_ENVS+=("$2"); shift ;;
        --data) need_arg "$@"; DATA="$2"; shift ;;
        --per-class) need_arg "$@"; PER_CLASS="$2"; shift ;;
        --ready-timeout) need_arg "$@"; READY_TIMEOUT="$2"; shift ;;
        --pull-timeout) need_arg "$@"; PULL_TIMEOUT="$2"; shift ;;
        --no-build) BUILD=0 ;;
        --no-fallback) FALLBACK=0 ;;
        --install-deps) INSTALL_DEPS=1 ;;
        --rm-image) RM_IMAGE=1 ;;
        -v|--verbose) VERBOSE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)." ;;
    esac
    shift
done

for pair in "${USER_ENVS[@]}"; do
    [[ "$pair" =~ ^[A-Za-z_][A-Za-z0-9_]*=.*$ ]] || die "-e needs NAME=VALUE, got '$pair'."
done
[[ "$PER_CLASS" =~ ^[1-9][0-9]*$ ]] || die "--per-class must be a positive whole number, got '$PER_CLASS'."
[[ "$READY_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "--ready-timeout must be a positive whole number, got '$READY_TIMEOUT'."
[[ "$PULL_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "--pull-timeout must be a positive whole number, got '$PULL_TIMEOUT'."

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ -x .venv/bin/python ]]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3 || true)"; fi
[[ -n "$PY" ]] || die "no Python found: create the project's .venv first (make install)."
if [[ -x .venv/bin/bentoml ]]; then BENTOML="$ROOT/.venv/bin/bentoml"; else BENTOML="$(command -v bentoml || true)"; fi
[[ -n "$BENTOML" ]] || die "bentoml is not installed: create the project's .venv first (make install)."
command -v curl >/dev/null || die "curl is needed (apt-get install -y curl)."

MODEL_TAG="${CIFAR10_MODEL:-cifar10-simplecnn:latest}"
if [[ $GPU -eq 1 ]]; then
    BENTOFILE=bentofile.gpu.yaml; BENTO_NAME=cifar10_classifier_gpu; IMAGE="${IMAGE:-cifar10-classifier:gpu}"
else
    BENTOFILE=bentofile.yaml; BENTO_NAME=cifar10_classifier; IMAGE="${IMAGE:-cifar10-classifier:cpu}"
fi
[[ -f "$BENTOFILE" ]] || die "$BENTOFILE not found in $ROOT."

if [[ -z "$DATA" ]]; then
    if [[ -n "${CIFAR10_DATA:-}" ]]; then DATA="$CIFAR10_DATA"
    elif [[ -d ../shared/datasets/cifar10/test ]]; then DATA="../shared/datasets/cifar10"
    else DATA="./data"; fi
fi
[[ -d "$DATA/test" ]] || die "no CIFAR-10 test images in '$DATA/test' (set --data or CIFAR10_DATA to a folder with test/<class>/*.jpg)."
DATA="$(cd "$DATA" && pwd)"

CACHE_DIR="${CIFAR10_CONTAINER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cifar10-service/container}"
mkdir -p "$CACHE_DIR"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cifar10-smoke.XXXXXX")"
CID=""
T_START="$(now)"

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$?
    if [[ -n "$CID" ]]; then
        "$TOOL" rm -f "$CID" >/dev/null 2>&1 || warn "could not remove container $CID"
        echo "container ${CID:0:12} removed"
    fi
    if [[ $RM_IMAGE -eq 1 && -n "${IMAGE_BUILT:-}" ]]; then
        "$TOOL" rmi -f "$IMAGE" >/dev/null 2>&1 && echo "image $IMAGE removed (--rm-image)"
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Run a long step quietly into a log file (streamed with -v); show its tail when it fails.
run_logged() {  # run_logged LOGFILE CMD...
    local logfile="$1"; shift
    if [[ $VERBOSE -eq 1 ]]; then
        "$@" 2>&1 | tee "$logfile"; return "${PIPESTATUS[0]}"
    fi
    if ! "$@" >"$logfile" 2>&1; then
        echo "---- last 40 lines of $logfile ----" >&2
        tail -n 40 "$logfile" >&2
        return 1
    fi
}

# ---------------------------------------------------------------------------------- container tool
install_hint="apt-get install -y podman runc debootstrap"
maybe_install() {  # maybe_install PKG... : apt-get install them when --install-deps and root
    if [[ $INSTALL_DEPS -eq 1 && $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        log "installing $* (--install-deps)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >"$WORK/apt.log" 2>&1 \
            || { tail -n 20 "$WORK/apt.log" >&2; die "apt-get install $* failed."; }
        return 0
    fi
    return 1
}

if [[ -z "$TOOL" ]]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then TOOL=docker
    elif command -v podman >/dev/null; then TOOL=podman
    elif maybe_install podman runc; then TOOL=podman
    else die "no container tool: docker is not installed or its daemon is not running, and podman is not installed ($install_hint, or --install-deps as root)."
    fi
fi
case "$TOOL" in
    docker|podman) ;;
    *) die "container tool must be docker or podman, got '$TOOL'." ;;
esac
if ! command -v "$TOOL" >/dev/null; then
    if [[ "$TOOL" != podman ]] || ! maybe_install podman runc; then
        die "$TOOL is not installed (for podman: $install_hint, or --install-deps as root)."
    fi
fi

if [[ "$TOOL" == podman && -z "${CONTAINERS_CONF:-}" ]]; then
    # Podman's defaults fail here: crun on hybrid (v1 + v2) cgroups, and default ulimits above the
    # hard limits. Never edit the system's containers.conf: point podman at our own.
    CONTAINERS_CONF="$CACHE_DIR/containers.conf"
    {
        echo '# Written by scripts/container_smoke.sh (used only when CONTAINERS_CONF is unset).'
        echo '[containers]'
        echo 'default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]'
        echo '[engine]'
        if command -v runc >/dev/null; then echo 'runtime = "runc"'; else warn "runc is not installed; podman keeps its default OCI runtime ($install_hint)."; fi
        echo 'cgroup_manager = "cgroupfs"'
    } >"$CONTAINERS_CONF"
    export CONTAINERS_CONF
    log "podman uses CONTAINERS_CONF=$CONTAINERS_CONF"
fi

if ! "$TOOL" info >"$WORK/info.log" 2>&1; then
    tail -n 5 "$WORK/info.log" >&2
    die "'$TOOL info' fails, so $TOOL cannot run containers here."
fi
log "container tool: $TOOL ($("$TOOL" --version | head -n 1))"

image_exists() { "$TOOL" image inspect "$1" >/dev/null 2>&1; }
image_env() { "$TOOL" image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$1" 2>/dev/null; }
is_standin() { [[ "$(image_env "$1")" == *CIFAR10_BASE_STANDIN=* ]]; }
image_size() { "$TOOL" image inspect --format '{{.Size}}' "$1" 2>/dev/null; }
have_gpu() { command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; }
human() { numfmt --to=iec-i --suffix=B --format='%.1f' "$1" 2>/dev/null || echo "$1 bytes"; }

# ---------------------------------------------------------------------------------------- port
port_free() { "$PY" -c 'import socket,sys
s=socket.socket()
try: s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError: sys.exit(1)' "$1"; }
if [[ -n "$PORT" ]]; then
    [[ "$PORT" =~ ^[0-9]+$ && "$PORT" -ge 1 && "$PORT" -le 65535 ]] || die "--port must be 1-65535, got '$PORT'."
    port_free "$PORT" || die "port $PORT on 127.0.0.1 is busy; pick another with --port or leave it out to use a free one."
else
    PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi

# ---------------------------------------------------------------------------------------- model + bento
export BENTOML_DO_NOT_TRACK=true
if ! MODEL_PATH="$("$BENTOML" models get "$MODEL_TAG" -o path 2>/dev/null)" || [[ ! -d "$MODEL_PATH" ]]; then
    die "no model $MODEL_TAG in the BentoML store (BENTOML_HOME=${BENTOML_HOME:-~/bentoml}); run python -m export --checkpoint checkpoints/best.pt --out artifacts --bentoml first."
fi
log "model in store: $MODEL_TAG -> $MODEL_PATH"

T0="$(now)"
if [[ $BUILD -eq 1 ]]; then
    log "bentoml build -f $BENTOFILE"
    run_logged "$WORK/build.log" "$BENTOML" build -f "$BENTOFILE" -o tag || die "bentoml build -f $BENTOFILE failed (log above)."
    BENTO_TAG="$(sed -n 's/^__tag__://p' "$WORK/build.log" | tail -n 1)"
    [[ -n "$BENTO_TAG" ]] || die "bentoml build printed no bento tag (see $WORK/build.log)."
else
    latest="$("$BENTOML" get "$BENTO_NAME:latest" -o path 2>/dev/null)" \
        || die "no bento $BENTO_NAME:latest in the store; run without --no-build."
    BENTO_TAG="$BENTO_NAME:$(basename "$latest")"
fi
T_BUILD=$(( $(now) - T0 ))
BENTO_PATH="$("$BENTOML" get "$BENTO_TAG" -o path 2>/dev/null)" || die "bento $BENTO_TAG not found in the store."
DOCKERFILE="$BENTO_PATH/env/docker/Dockerfile"
echo
echo "Checks:"
if [[ -f "$DOCKERFILE" ]]; then
    record PASS "bento build" "$BENTO_TAG (${T_BUILD}s), Dockerfile: $DOCKERFILE"
else
    record FAIL "bento build" "$BENTO_TAG has no generated Dockerfile at $DOCKERFILE"
fi
BASE_IMAGE="$(awk 'toupper($1)=="FROM"{print $2; exit}' "$DOCKERFILE" 2>/dev/null || true)"
[[ -n "$BASE_IMAGE" ]] || die "no FROM line in $DOCKERFILE."

# ---------------------------------------------------------------------------------------- base image
STANDIN_REF="docker.io/library/python:3.11-slim"
BASE_NOTE=""

# OFFLINE FALLBACK (scripts/offline_base.sh): a Debian bookworm rootfs imported under the base image's
# name, so the standard generated Dockerfile builds without a registry.
build_standin() {
    if ! command -v debootstrap >/dev/null; then
        maybe_install debootstrap || die "the offline fallback needs debootstrap ($install_hint, or --install-deps as root)."
    fi
    "$ROOT/scripts/offline_base.sh" "$TOOL" "$STANDIN_REF" "$CACHE_DIR" || die "the offline fallback base could not be built (above)."
}

# Docker's reading of a short name (podman without unqualified-search registries refuses to pull
# one; once pulled, podman finds it locally under the short name the Dockerfile uses).
qualify() {
    local first="${1%%/*}"
    if [[ "$1" == */* && ( "$first" == *.* || "$first" == *:* || "$first" == localhost ) ]]; then echo "$1"
    elif [[ "$1" == */* ]]; then echo "docker.io/$1"
    else echo "docker.io/library/$1"; fi
}

ensure_base() {  # 0: base available; 1: not available (message in BASE_NOTE)
    if image_exists "$BASE_IMAGE" && ! is_standin "$BASE_IMAGE"; then
        BASE_NOTE="$BASE_IMAGE (local)"; return 0
    fi
    local ref why; ref="$(qualify "$BASE_IMAGE")"
    log "pulling base image $ref"
    if timeout "$PULL_TIMEOUT" "$TOOL" pull "$ref" >"$WORK/pull.log" 2>&1; then
        BASE_NOTE="$ref (pulled)"; return 0
    fi
    why="$(grep -v '^Trying to pull' "$WORK/pull.log" | tail -n 1)"
    why="${why:-timed out after ${PULL_TIMEOUT}s}"
    log "cannot pull $ref: $why"
    if [[ "$BASE_IMAGE" =~ ^(docker\.io/)?(library/)?python:3\.11-slim$ && $FALLBACK -eq 1 ]]; then
        if image_exists "$STANDIN_REF" && is_standin "$STANDIN_REF"; then
            log "[OFFLINE FALLBACK] using the cached local stand-in $STANDIN_REF (debootstrap bookworm)"
        else
            build_standin
        fi
        BASE_NOTE="$STANDIN_REF = OFFLINE FALLBACK stand-in (debootstrap bookworm, python3.11), registry unreachable"
        return 0
    fi
    BASE_NOTE="$ref cannot be pulled (no registry access?): $why"
    return 1
}

finish() {  # print the summary and exit 0 (no FAIL) or 1
    local n_pass=0 n_fail=0 n_skip=0 r
    for r in "${RESULTS[@]}"; do
        case "${r%%|*}" in PASS) n_pass=$((n_pass + 1)) ;; FAIL) n_fail=$((n_fail + 1)) ;; SKIP) n_skip=$((n_skip + 1)) ;; esac
    done
    echo
    echo "Summary ($( [[ $GPU -eq 1 ]] && echo GPU || echo CPU ) image, $TOOL, $(( $(now) - T_START ))s in all):"
    echo "  bento:      ${BENTO_TAG:-?}"
    echo "  base image: ${BASE_NOTE:-?}"
    if [[ -n "${IMAGE_BUILT:-}" ]]; then echo "  image:      $IMAGE ($IMAGE_SIZE)"; else echo "  image:      $IMAGE (not built)"; fi
    for r in "${RESULTS[@]}"; do
        [[ "${r%%|*}" == PASS ]] && continue
        IFS='|' read -r s name detail <<<"$r"
        printf '  %s %s: %s\n' "$s" "$name" "$detail"
    done
    if [[ $n_fail -eq 0 ]]; then
        echo "PASS: $n_pass passed, $n_fail failed, $n_skip skipped"
        exit 0
    fi
    echo "FAIL: $n_pass passed, $n_fail failed, $n_skip skipped"
    exit 1
}

if ! ensure_base; then
    if [[ $GPU -eq 1 ]]; then
        record SKIP "GPU image build" "skipped: base image $(qualify "$BASE_IMAGE") cannot be pulled; bento and Dockerfile built (above)"
        if have_gpu; then record SKIP "GPU run" "GPU run skipped: no GPU image"
        else record SKIP "GPU run" "GPU run skipped: no GPU (nvidia-smi not working here), and no GPU image"; fi
        finish
    fi
    record FAIL "base image" "$BASE_NOTE"
    finish
fi
record PASS "base image" "$BASE_NOTE"

# ---------------------------------------------------------------------------------------- containerize
log "bentoml containerize $BENTO_TAG --backend $TOOL -t $IMAGE (minutes on a cold cache)"
OLD_ID="$("$TOOL" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
T0="$(now)"
if ! run_logged "$WORK/containerize.log" "$BENTOML" containerize "$BENTO_TAG" --backend "$TOOL" -t "$IMAGE"; then
    record FAIL "containerize" "bentoml containerize failed after $(( $(now) - T0 ))s (log tail above)"
    finish
fi
IMAGE_BUILT=1
# The previous build of this tag is now untagged: drop it (refused, and kept, if anything still uses it).
if [[ -n "$OLD_ID" && "$OLD_ID" != "$("$TOOL" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null)" ]]; then
    "$TOOL" rmi "$OLD_ID" >/dev/null 2>&1 || true
fi
T_CONTAINERIZE=$(( $(now) - T0 ))
IMAGE_SIZE="$(human "$(image_size "$IMAGE")")"
record PASS "containerize" "$IMAGE in ${T_CONTAINERIZE}s, image size $IMAGE_SIZE"
if is_standin "$IMAGE"; then
    echo "       (built on the OFFLINE FALLBACK stand-in base; the image carries ENV CIFAR10_BASE_STANDIN)"
fi

# ---------------------------------------------------------------------------------------- run
# --cidfile: the container's id is known even when `run` creates it and then fails to start it (a busy port,
# --gpus without the toolkit), so that cleanup() removes it too.
RUN_ARGS=(run -d --cidfile "$WORK/cid" -p "127.0.0.1:$PORT:3000")
if [[ $GPU -eq 1 ]]; then
    if ! have_gpu; then
        record SKIP "GPU run" "GPU run skipped: no GPU (nvidia-smi not working on this host)"
        finish
    fi
    if [[ "$TOOL" == docker ]]; then RUN_ARGS+=(--gpus all); else RUN_ARGS+=(--device nvidia.com/gpu=all); fi
fi
for name in CIFAR10_RUNTIME CIFAR10_DEVICE CIFAR10_WORKERS CIFAR10_THREADS CIFAR10_BATCHING CIFAR10_MAX_BATCH \
            CIFAR10_MAX_UPLOAD_MB CIFAR10_MAX_PIXELS CIFAR10_ACCESS_LOG CIFAR10_TRACING CIFAR10_FAST_LANE \
            CIFAR10_MODEL CIFAR10_SHUTDOWN_DELAY CIFAR10_GRACEFUL_SHUTDOWN; do
    if [[ -n "${!name:-}" ]]; then RUN_ARGS+=(-e "$name=${!name}"); fi
done
for pair in "${USER_ENVS[@]}"; do RUN_ARGS+=(-e "$pair"); done

log "$TOOL ${RUN_ARGS[*]} $IMAGE"
T0="$(now)"
CID="$("$TOOL" "${RUN_ARGS[@]}" "$IMAGE" 2>"$WORK/run.log")" || {
    cat "$WORK/run.log" >&2
    CID="$(cat "$WORK/cid" 2>/dev/null || true)"  # created but not started: still removed on exit
    if grep -qiE 'address already in use|port is already allocated' "$WORK/run.log"; then
        die "port $PORT on 127.0.0.1 is busy; pick another with --port."
    fi
    record FAIL "container start" "$TOOL run failed: $(tail -n 1 "$WORK/run.log")"
    finish
}
URL="http://127.0.0.1:$PORT"
ready=0
while (( $(now) - T0 < READY_TIMEOUT )); do
    if [[ "$("$TOOL" inspect --format '{{.State.Running}}' "$CID" 2>/dev/null)" != true ]]; then break; fi
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$URL/readyz" || true)" == 200 ]]; then ready=1; break; fi
    sleep 1
done
T_READY=$(( $(now) - T0 ))
if [[ $ready -ne 1 ]]; then
    echo "---- container logs ($TOOL logs ${CID:0:12}) ----" >&2
    "$TOOL" logs --tail 200 "$CID" >&2 || true
    state="$("$TOOL" inspect --format '{{.State.Status}} (exit code {{.State.ExitCode}})' "$CID" 2>/dev/null || echo gone)"
    if [[ "$state" == running* ]]; then
        record FAIL "readiness" "no /readyz 200 within ${READY_TIMEOUT}s (container still running); logs above"
    else
        record FAIL "readiness" "container is $state after ${T_READY}s, before /readyz answered 200; logs above"
    fi
    finish
fi
record PASS "readiness" "/readyz 200 ${T_READY}s after start on $URL"
ready_line="$("$TOOL" logs "$CID" 2>&1 | grep -m 1 'cifar10_classifier ready' || true)"
[[ -n "$ready_line" ]] && echo "       log: ${ready_line#*cifar10_classifier }"

# ---------------------------------------------------------------------------------------- checks
uid="$("$TOOL" exec "$CID" id -u 2>&1 || true)"
uname_="$("$TOOL" exec "$CID" id -un 2>/dev/null || true)"
if [[ "$uid" =~ ^[0-9]+$ && "$uid" -ne 0 ]]; then
    record PASS "non-root user" "uid $uid ($uname_)"
else
    record FAIL "non-root user" "id -u inside the container: $uid"
fi

if [[ $GPU -eq 0 ]]; then
    torch_out="$("$TOOL" exec "$CID" python -c 'import torch' 2>&1)" && torch_rc=0 || torch_rc=$?
    if [[ $torch_rc -ne 0 && "$torch_out" == *"No module named 'torch'"* ]]; then
        record PASS "no torch" "python -c 'import torch' fails: No module named 'torch'"
    else
        record FAIL "no torch" "python -c 'import torch' exit $torch_rc: $(tail -n 1 <<<"$torch_out")"
    fi
    # shellcheck disable=SC2016  # $f etc. expand inside the container's shell
    cuda_libs="$("$TOOL" exec "$CID" sh -c 'find / -xdev \( -name "libcudart*" -o -name "libcublas*" -o -name "libcudnn*" \) -print 2>/dev/null | head -n 5' || true)"
    providers="$("$TOOL" exec "$CID" python -c 'import onnxruntime as o; print(o.__version__, ",".join(o.get_available_providers()))' 2>&1 || true)"
    if [[ -z "$cuda_libs" ]]; then
        record PASS "no CUDA libs" "no libcudart/libcublas/libcudnn; onnxruntime $providers"
    else
        record FAIL "no CUDA libs" "found: $(tr '\n' ' ' <<<"$cuda_libs")"
    fi
fi

EXPECT_DEVICE=any
[[ $GPU -eq 1 ]] && EXPECT_DEVICE=cuda

T0="$(now)"
while IFS= read -r line; do
    if [[ "$line" == RESULT$'\t'* ]]; then
        IFS=$'\t' read -r _ s name detail <<<"$line"
        record "$s" "$name" "$detail"
    else
        printf '%s\n' "$line"
    fi
done < <(cd "$ROOT" && "$PY" scripts/container_checks.py "$URL" --data "$DATA" --per-class "$PER_CLASS" \
             --expect-device "$EXPECT_DEVICE" 2>&1 || printf 'RESULT\tFAIL\thttp checks\tscripts/container_checks.py exited with an error (output above)\n')
echo "       HTTP checks took $(( $(now) - T0 ))s"
if [[ "$("$TOOL" inspect --format '{{.State.Running}}' "$CID" 2>/dev/null)" == true ]]; then
    record PASS "still running" "container up after all requests"
else
    record FAIL "still running" "the container stopped during the checks"
fi
# The fast lane depends on the BentoML inside the image (serving/platform/fastlane.py): say whether it is on there.
lane_line="$("$TOOL" logs "$CID" 2>&1 | grep -m 1 -o 'fast lane o[nf][^(]*' || true)"
if [[ "$lane_line" == "fast lane on"* ]]; then
    record PASS "fast lane" "$lane_line"
elif [[ -z "$lane_line" ]]; then  # the service logs on or off once the lane is asked for
    record SKIP "fast lane" "not asked for (CIFAR10_FAST_LANE, CIFAR10_ACCESS_LOG or CIFAR10_TRACING)"
else
    record FAIL "fast lane" "$lane_line"
fi

echo "Timings: bento build ${T_BUILD}s, containerize ${T_CONTAINERIZE}s, start to ready ${T_READY}s"
finish
