#!/usr/bin/env bash
# Kubernetes smoke test without a cluster: render deploy/kubernetes/overlays/cpu, run its Deployment and ConfigMap
# with `podman kube play` on the image scripts/container_smoke.sh built, check the pod answers like the model on
# the host, then take it down under load and count the requests lost. Not part of pytest (it needs podman and
# minutes); what podman does and does not exercise is in docs/deploy.md ("Kubernetes").
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/kube_smoke.sh [options]

Renders a kustomization (kubectl kustomize) with components/drain-filter added (podman has no Service that
would stop sending to a terminating pod: the service's own socket filter is what keeps new connections away,
and on kernels like the CI VM's it needs CAP_NET_ADMIN), keeps what podman kube play runs (Deployment,
ConfigMap, Secret), runs the pod in the host's network on --port (podman's published ports are reserved by a
conmon socket that takes connections while the pod goes down: --publish to see it), plays it, waits for /readyz,
checks the pod as it runs (non-root, read-only root filesystem, CPU quota = CIFAR10_THREADS, memory limit),
posts real CIFAR-10 test images (scripts/container_checks.py), then runs `podman kube down` while hey keeps
posting /classify on new connections (-disable-keepalive) and counts the requests that were accepted but not
answered (target 0). Prints PASS/FAIL per check; exit 0 only when nothing failed. The pod is always removed.

Options:
  --image NAME:TAG      the local image to run (default cifar10-classifier:cpu, as container_smoke.sh builds it)
  --kustomization DIR   what to render (default deploy/kubernetes/overlays/cpu)
  --component DIR       a kustomize component to add to it (repeatable), e.g.
                        deploy/kubernetes/components/drain-filter
  --port N              host port on 127.0.0.1 (default: a free one)
  --data DIR            CIFAR-10 folder with test/<class>/*.jpg (default $CIFAR10_DATA, else
                        ../shared/datasets/cifar10)
  --load-seconds S      how long hey posts during the take-down (default 12; the take-down starts after 3 s)
  --concurrency N       hey's concurrent clients during the take-down (default 8)
  --ready-timeout S     seconds to wait for /readyz 200 (default 120)
  --publish             publish port 3000 on 127.0.0.1:--port through podman (a hostPort) instead of running
                        the pod in the host's network
  --no-drain-filter     render the kustomization as it is, without components/drain-filter
  -h, --help            this text

Needs podman (apt-get install -y podman runc), kubectl, hey (apt-get install -y hey) and the project's .venv.
Podman runs with the containers.conf scripts/container_smoke.sh writes (ulimits, runc, cgroupfs) unless
CONTAINERS_CONF is set.
EOF
}

die() { printf 'ERROR: %s\n' "$*" >&2; exit 2; }
log() { printf '[kube-smoke] %s\n' "$*"; }
need_arg() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"; }

cd "$(dirname "$0")/.."
IMAGE="cifar10-classifier:cpu"
KUSTOMIZATION="deploy/kubernetes/overlays/cpu"
PORT=""
DATA="${CIFAR10_DATA:-}"
LOAD_S=12
CONCURRENCY=8
READY_TIMEOUT=120
HOST_NETWORK=1
DRAIN_FILTER=1
COMPONENTS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --image) need_arg "$@"; IMAGE="$2"; shift ;;
        --kustomization) need_arg "$@"; KUSTOMIZATION="$2"; shift ;;
        --component) need_arg "$@"; [[ -f "$2/kustomization.yaml" ]] || die "$2 has no kustomization.yaml"
                     COMPONENTS+=("$(cd "$2" && pwd)"); shift ;;
        --port) need_arg "$@"; PORT="$2"; shift ;;
        --data) need_arg "$@"; DATA="$2"; shift ;;
        --load-seconds) need_arg "$@"; LOAD_S="$2"; shift ;;
        --concurrency) need_arg "$@"; CONCURRENCY="$2"; shift ;;
        --ready-timeout) need_arg "$@"; READY_TIMEOUT="$2"; shift ;;
        --publish) HOST_NETWORK=0 ;;
        --no-drain-filter) DRAIN_FILTER=0 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
[[ "$LOAD_S" =~ ^[0-9]+$ && "$LOAD_S" -ge 6 ]] || die "--load-seconds must be a whole number of at least 6"
[[ "$CONCURRENCY" =~ ^[0-9]+$ && "$CONCURRENCY" -ge 1 ]] || die "--concurrency must be a whole number of at least 1"
[[ "$READY_TIMEOUT" =~ ^[0-9]+$ ]] || die "--ready-timeout must be a whole number of seconds"
PY=".venv/bin/python"
[[ -x "$PY" ]] || PY="$(command -v python3)"
for tool in podman kubectl hey; do
    command -v "$tool" >/dev/null || die "$tool is not installed (podman: apt-get install -y podman runc; hey: apt-get install -y hey)"
done
[[ -f "$KUSTOMIZATION/kustomization.yaml" ]] || die "$KUSTOMIZATION has no kustomization.yaml"
if [[ -z "$DATA" ]]; then DATA="../shared/datasets/cifar10"; fi
[[ -d "$DATA/test" ]] || die "no CIFAR-10 test folder at $DATA/test (give --data)"
[[ -z "$PORT" ]] && PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
if [[ -z "${CONTAINERS_CONF:-}" ]]; then
    conf="${CIFAR10_CONTAINER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cifar10-service/container}/containers.conf"
    [[ -f "$conf" ]] && export CONTAINERS_CONF="$conf" && log "podman uses CONTAINERS_CONF=$conf"
fi
podman image exists "$IMAGE" || die "no image $IMAGE in podman's store; build it first: CONTAINER_TOOL=podman scripts/container_smoke.sh"

WORK="$(mktemp -d)"
PLAY="$WORK/play.yaml"
PASS=0; FAIL=0
check() {  # check NAME COMMAND...: PASS when the command succeeds
    local name="$1"; shift
    if "$@"; then PASS=$((PASS + 1)); printf 'PASS  %s\n' "$name"; else FAIL=$((FAIL + 1)); printf 'FAIL  %s\n' "$name"; fi
}
cleanup() {
    podman kube down "$PLAY" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

[[ "$DRAIN_FILTER" == 1 ]] && COMPONENTS+=("$(pwd)/deploy/kubernetes/components/drain-filter")
TARGET="$KUSTOMIZATION"
if [[ ${#COMPONENTS[@]} -gt 0 ]]; then  # an overlay of the overlay that adds the components
    TARGET="$WORK/overlay"; mkdir -p "$TARGET"
    { echo "apiVersion: kustomize.config.k8s.io/v1beta1"; echo "kind: Kustomization"
      echo "resources: [\"$(realpath --relative-to="$TARGET" "$KUSTOMIZATION")\"]"; echo "components:"
      for c in "${COMPONENTS[@]}"; do echo "  - \"$(realpath --relative-to="$TARGET" "$c")\""; done
    } >"$TARGET/kustomization.yaml"
fi
log "rendering $KUSTOMIZATION${COMPONENTS[*]:+ with ${COMPONENTS[*]}}"
kubectl kustomize --load-restrictor LoadRestrictionsNone "$TARGET" >"$WORK/rendered.yaml"
# What podman kube play runs, from what a cluster would get: the Service, HPA and PDB are left out (podman has
# none of them); the image is the local one; port 3000 is published on 127.0.0.1 (in a cluster: the Service).
"$PY" - "$WORK/rendered.yaml" "$PLAY" "$IMAGE" "$PORT" "$HOST_NETWORK" >"$WORK/adapted.txt" <<'PYEOF'
import sys
import yaml

rendered, play, image, port, host_network = sys.argv[1:]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
kept = [d for d in docs if d["kind"] in ("Deployment", "ConfigMap", "Secret")]
left_out = sorted(d["kind"] for d in docs if d not in kept)
(deployment,) = [d for d in kept if d["kind"] == "Deployment"]
deployment["spec"]["replicas"] = 1  # one pod: podman publishes one host port
container = deployment["spec"]["template"]["spec"]["containers"][0]
container["image"] = image if "/" in image.split(":")[0] else f"localhost/{image}"
if host_network == "1":  # the service's own socket on the host: no port forwarding in between
    deployment["spec"]["template"]["spec"]["hostNetwork"] = True
    del container["ports"]  # podman maps no ports in the host's network
    container.setdefault("env", []).append({"name": "PORT", "value": port})  # the bento's entrypoint reads it
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        container[probe]["httpGet"]["port"] = int(port)  # the named port went with the ports list
else:
    container["ports"][0].update(hostPort=int(port), hostIP="127.0.0.1")
yaml.safe_dump_all(kept, open(play, "w"), sort_keys=False)
print("left out (podman has no such object): " + ", ".join(left_out))
PYEOF
log "$(cat "$WORK/adapted.txt")"

URL="http://127.0.0.1:$PORT"
log "podman kube play ($IMAGE on $URL)"
start=$(date +%s.%N)
podman kube play "$PLAY" >"$WORK/play.log" 2>&1 || { cat "$WORK/play.log" >&2; die "podman kube play failed"; }
ready=""
for _ in $(seq 1 $((READY_TIMEOUT * 4))); do
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/readyz" || true)" == 200 ]]; then
        ready=$("$PY" -c "import time; print(f'{time.time() - $start:.1f}')"); break
    fi
    sleep 0.25
done
POD_CONTAINER="$(podman ps --filter "label=io.kubernetes.pod.name" --format '{{.Names}}' | grep -- '-classifier$' | head -1 || true)"
[[ -z "$POD_CONTAINER" ]] && POD_CONTAINER="$(podman ps --format '{{.Names}}' | grep -- 'classifier' | head -1 || true)"
if [[ -z "$ready" ]]; then
    [[ -n "$POD_CONTAINER" ]] && podman logs "$POD_CONTAINER" 2>&1 | tail -40 >&2
    die "/readyz did not answer 200 within $READY_TIMEOUT s"
fi
log "/readyz 200 after $ready s (container $POD_CONTAINER)"

inspect() { podman inspect "$POD_CONTAINER" --format "$1"; }
check "runs as the non-root user 1034" test "$(podman exec "$POD_CONTAINER" id -u)" = 1034
check "read-only root filesystem" test "$(inspect '{{.HostConfig.ReadonlyRootfs}}')" = true
check "writable /tmp (emptyDir)" podman exec "$POD_CONTAINER" sh -c 'touch /tmp/.w && rm /tmp/.w'
check "root filesystem refuses writes" bash -c "! podman exec $POD_CONTAINER sh -c 'touch /home/bentoml/.w' 2>/dev/null"
THREADS="$(podman exec "$POD_CONTAINER" printenv CIFAR10_THREADS)"
QUOTA="$(inspect '{{.HostConfig.CpuQuota}}')"; PERIOD="$(inspect '{{.HostConfig.CpuPeriod}}')"
check "CPU limit ($QUOTA/$PERIOD) = CIFAR10_THREADS ($THREADS)" test "$((QUOTA / (PERIOD > 0 ? PERIOD : 1)))" = "$THREADS"
check "memory limit 2 GiB" test "$(inspect '{{.HostConfig.Memory}}')" = $((2 * 1024 * 1024 * 1024))
check "/livez and /metrics answer" bash -c "curl -sf $URL/livez >/dev/null && curl -sf $URL/metrics >/dev/null"
# scripts/container_checks.py prints one `RESULT<TAB>PASS|FAIL|SKIP<TAB>name<TAB>detail` line per check (real
# test images through /classify, the same model run on the host, batch order, a refused upload, /ui).
"$PY" scripts/container_checks.py "$URL" --data "$DATA" --per-class 2 >"$WORK/checks.txt" 2>&1 || true
while IFS=$'\t' read -r tag status name detail; do
    [[ "$tag" == RESULT ]] || continue
    case "$status" in
        PASS) PASS=$((PASS + 1)) ;;
        FAIL) FAIL=$((FAIL + 1)) ;;
    esac
    printf '%-4s  %s: %s\n' "$status" "$name" "$detail"
done <"$WORK/checks.txt"
grep -q $'^RESULT\t' "$WORK/checks.txt" || { FAIL=$((FAIL + 1)); echo "FAIL  container_checks.py ran no check:"; cat "$WORK/checks.txt"; }

# The take-down under load: hey opens a new connection per request; `podman kube down` sends SIGTERM (podman runs
# no preStop), the service drains (serving/platform/shutdown.py) and exits.
IMG="$(find "$DATA/test" -name '*.jpg' -print -quit)"
BODY="$WORK/body"
"$PY" - "$IMG" "$BODY" <<'PYEOF'
import sys
image, body = sys.argv[1:]
data = open(image, "rb").read()
open(body, "wb").write(b"--kubesmoke\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n"
                       b"Content-Type: image/jpeg\r\n\r\n" + data + b"\r\n--kubesmoke--\r\n")
PYEOF
GRACE="$("$PY" -c "import sys, yaml; d = [x for x in yaml.safe_load_all(open(sys.argv[1])) if x and x['kind'] == 'Deployment'][0]; print(d['spec']['template']['spec']['terminationGracePeriodSeconds'])" "$PLAY")"
POD="$(podman inspect "$POD_CONTAINER" --format '{{.Pod}}')"
log "hey -z ${LOAD_S}s -c $CONCURRENCY -disable-keepalive POST /classify; the pod stopped after 3 s (grace $GRACE s)"
hey -z "${LOAD_S}s" -c "$CONCURRENCY" -disable-keepalive -m POST -D "$BODY" \
    -T "multipart/form-data; boundary=kubesmoke" "$URL/classify" >"$WORK/hey.txt" 2>&1 &
HEY=$!
sleep 3
down_start=$(date +%s.%N)
# What a Kubernetes deletion does after preStop: SIGTERM, then SIGKILL when the grace period runs out.
podman pod stop -t "$GRACE" "$POD" >"$WORK/down.log" 2>&1 || true
down_s=$("$PY" -c "import time; print(f'{time.time() - $down_start:.1f}')")
podman logs "$POD_CONTAINER" >"$WORK/pod.log" 2>&1 || true
wait "$HEY" || true
read -r answered ok refused lost < <("$PY" - "$WORK/hey.txt" <<'PYEOF'
import re
import sys

text = open(sys.argv[1]).read()
statuses = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)}
errors = [(int(n), what) for n, what in re.findall(r"^\s*\[(\d+)\]\s+(.+)$", text.split("Error distribution:")[-1],
                                                   re.M)] if "Error distribution:" in text else []
refused = sum(n for n, what in errors if "connection refused" in what)
# Accepted, then reset or closed without an answer, or answered with anything but 200: lost.
lost = sum(n for n, what in errors if "connection refused" not in what) + sum(
    n for c, n in statuses.items() if c != 200)
print(sum(statuses.values()), statuses.get(200, 0), refused, lost)
PYEOF
)
log "take-down: the pod stopped in $down_s s; $answered answered ($ok with 200), $refused refused after the"
log "listener closed (a cluster's Service sends those to the other replicas), $lost lost"
grep -A20 "Error distribution" "$WORK/hey.txt" | head -8 || true
if [[ "$lost" != 0 ]]; then log "the pod's log from SIGTERM on:"; grep -A30 -i "SIGTERM" "$WORK/pod.log" | head -30; fi
check "no request lost while the pod went down ($lost)" test "$lost" = 0
check "requests were answered during the take-down" test "$ok" -gt 0

printf '\n%d passed, %d failed (image %s, %s, ready after %s s)\n' "$PASS" "$FAIL" "$IMAGE" "$KUSTOMIZATION" "$ready"
[[ "$FAIL" -eq 0 ]]
