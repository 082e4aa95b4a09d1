"""Checks of deploy/ that schema validators cannot make; run by scripts/check-deploy.sh.

  python deploy/check_manifests.py DOCKERFILE COMPOSE_CONFIG_YAML K8S_YAML...

COMPOSE_CONFIG_YAML is the output of `docker-compose -f deploy/compose.yaml
config` (anchors and merges resolved). Needs PyYAML. Exits 1 naming every
failure. What it checks:

- Kubernetes pod templates pass the "restricted" Pod Security Standard
  (https://kubernetes.io/docs/concepts/security/pod-security-standards/).
- Native sidecars (init containers with restartPolicy: Always) have a
  startupProbe, so the app starts only once they serve.
- A memory-backend coordinator is a StatefulSet of one, its data dir on a
  volumeClaimTemplate, and a Service selects it.
- compose: one service builds the image the others use; every long-running
  service has a healthcheck; every depends_on has a condition.
- The Dockerfile: base images pinned by tag and digest, a numeric non-root
  USER, the data dir is a VOLUME, the listen ports are the EXPOSEd ones, the
  HEALTHCHECK calls the gRPC port.
- Every TURNSTILE_* variable and turnstiled flag used anywhere in deploy/ is
  one turnstiled has, and every `turnstile` command in a probe or healthcheck
  is a subcommand and flags the CLI has (read from the Rust sources), so that
  a typo is not silently ignored. Flags that other work is adding are listed
  in PENDING and only reported while they are missing.
"""

import glob
import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER_SRC = ROOT + "/crates/turnstile-server/src"
CLI_SRC = ROOT + "/crates/turnstile-client/src/bin/turnstile"
# Used by deploy/ but added by other work (issue 10 §2 and §4); reported, not failed, while missing.
PENDING = {"--insecure": "turnstiled --insecure (issue 10 §2)", "health": "`turnstile health` (issue 10 §4)"}

failures = []
pending_seen = set()


def fail(where, what):
    failures.append(f"{where}: {what}")


# ---- what the Rust sources define -------------------------------------------

def rust_flags_and_envs(src_dir):
    """Long flags (`--name`) and env variables declared with clap's derive API."""
    flags, envs = set(), set()
    field = re.compile(
        r"#\[arg\((.*?)\)\]\s*"                      # #[arg(...)]
        r"(?:(?:#\[[^\n]*\]|///[^\n]*)\s*)*"          # more attributes or doc lines
        r"(?:pub(?:\([a-z]+\))?\s+)?([a-z_][a-z0-9_]*)\s*:",  # the field
        re.S)
    for path in glob.glob(src_dir + "/**/*.rs", recursive=True):
        text = open(path, encoding="utf-8").read()
        envs.update(re.findall(r'env\s*=\s*"(TURNSTILE_[A-Z0-9_]+)"', text))
        for attr, name in field.findall(text):
            named = re.search(r'\blong\s*=\s*"([a-z0-9-]+)"', attr)
            if named:
                flags.add("--" + named.group(1))
            elif re.search(r"\blong\b", attr):
                flags.add("--" + name.replace("_", "-"))
    return flags, envs


def cli_subcommands(src_dir):
    subs = set()
    for path in glob.glob(src_dir + "/**/*.rs", recursive=True):
        text = open(path, encoding="utf-8").read()
        for block in re.findall(r"enum Command \{(.*?)\n\}", text, re.S):
            for name in re.findall(r"^    ([A-Z][A-Za-z0-9]*)\b", block, re.M):
                subs.add(re.sub(r"(?<!^)([A-Z])", r"-\1", name).lower())
    return subs


SERVER_FLAGS, SERVER_ENVS = rust_flags_and_envs(SERVER_SRC)
CLI_FLAGS, CLI_ENVS = rust_flags_and_envs(CLI_SRC)
CLI_SUBS = cli_subcommands(CLI_SRC)
if not SERVER_FLAGS or not SERVER_ENVS or not CLI_SUBS:
    sys.exit(f"check_manifests: found no flags in {SERVER_SRC} or no subcommands in {CLI_SRC}: has the code moved?")


def known(item, defined, where, kind):
    if item in defined:
        return
    if item in PENDING:
        pending_seen.add(PENDING[item])
        return
    fail(where, f"{kind} {item} is not defined in the sources")


def check_server_args(args, where):
    for a in args or []:
        if a.startswith("--"):
            known(a.split("=", 1)[0], SERVER_FLAGS, where, "turnstiled flag")


def check_envs(names, where):
    for n in names:
        if n.startswith("TURNSTILE_") and n != "TURNSTILE_ADDR":
            known(n, SERVER_ENVS, where, "turnstiled variable")
        elif n == "TURNSTILE_ADDR":
            known(n, CLI_ENVS, where, "turnstile CLI variable")


def check_cli_command(cmd, where):
    """cmd: an exec-form command that starts with `turnstile`."""
    rest = cmd[1:]
    sub = rest[0] if rest and not rest[0].startswith("-") else None
    if sub is None:
        fail(where, f"{cmd}: write the subcommand first")
        return
    known(sub, CLI_SUBS, where, "turnstile subcommand")
    for a in rest[1:]:
        if a.startswith("--"):
            known(a.split("=", 1)[0], CLI_FLAGS, where, "turnstile flag")


def is_turnstile_image(image):
    return bool(re.match(r"^(.*/)?turnstile(:|@|$)", image or ""))


# ---- Kubernetes ---------------------------------------------------------------

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}


def pss_restricted(pod, where):
    psc = pod.get("securityContext") or {}
    for k in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(k):
            fail(where, f"{k} is not allowed")
    for v in pod.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            fail(where, f"volume {v.get('name')}: {sorted(kinds - ALLOWED_VOLUMES)} not allowed")
    containers = [("initContainers", c) for c in pod.get("initContainers") or []] + \
                 [("containers", c) for c in pod.get("containers") or []]
    if not containers:
        fail(where, "no containers")
    for kind, c in containers:
        cw = f"{where} {kind}/{c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            fail(cw, "privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(cw, "allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            fail(cw, "capabilities.drop must include ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            fail(cw, f"capabilities.add {caps.get('add')} not allowed")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            fail(cw, "runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            fail(cw, "runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            fail(cw, "seccompProfile.type must be RuntimeDefault or Localhost (pod or container)")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                fail(cw, "hostPort not allowed")
        if sc.get("procMount", "Default") != "Default":
            fail(cw, "procMount must be Default")


def container_env(c):
    return {e["name"]: e.get("value") for e in c.get("env") or []}


def check_turnstile_container(c, where):
    check_envs(container_env(c), where)
    check_server_args(c.get("args"), where)
    if c.get("command"):
        fail(where, "command replaces the image's entrypoint (turnstiled); use args")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        cmd = ((c.get(probe) or {}).get("exec") or {}).get("command")
        if cmd and cmd[0] == "turnstile":
            check_cli_command(cmd, f"{where} {probe}")


def check_k8s(paths):
    docs = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            docs += [(path, d) for d in yaml.safe_load_all(f) if d]
    services = [d for _, d in docs if d.get("kind") == "Service"]
    for path, d in docs:
        kind, name = d.get("kind"), (d.get("metadata") or {}).get("name")
        where = f"{path} {kind}/{name}"
        if kind not in ("Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"):
            continue
        pod = d["spec"] if kind == "Pod" else d["spec"]["template"]["spec"]
        pss_restricted(pod, where)
        for c in pod.get("initContainers") or []:
            if c.get("restartPolicy") == "Always" and not c.get("startupProbe"):
                fail(f"{where} sidecar {c['name']}", "a native sidecar needs a startupProbe")
        for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
            if not is_turnstile_image(c.get("image")):
                continue
            cw = f"{where} {c['name']}"
            check_turnstile_container(c, cw)
            env = container_env(c)
            args = c.get("args") or []
            etcd = env.get("TURNSTILE_BACKEND") == "etcd" or "etcd" in args or "--backend=etcd" in args
            if etcd:
                continue
            # The memory backend: one process, its data dir on a volume that outlives the pod.
            if kind != "StatefulSet" or d["spec"].get("replicas", 1) != 1:
                fail(cw, "a memory-backend coordinator must be a StatefulSet of one")
                continue
            data_dir = env.get("TURNSTILE_DATA_DIR")
            claims = {t["metadata"]["name"] for t in d["spec"].get("volumeClaimTemplates") or []}
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts") or []}
            if not data_dir or mounts.get(data_dir) not in claims:
                fail(cw, f"TURNSTILE_DATA_DIR ({data_dir}) must be mounted from a volumeClaimTemplate")
            labels = d["spec"]["template"]["metadata"].get("labels") or {}
            if not any(s["spec"].get("selector") and s["spec"].get("clusterIP") != "None"
                       and all(labels.get(k) == v for k, v in s["spec"]["selector"].items()) for s in services):
                fail(cw, "no (non-headless) Service selects the coordinator")


# ---- compose ------------------------------------------------------------------

def check_compose(path):
    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    services = cfg.get("services") or {}
    builders = [n for n, s in services.items() if s.get("build")]
    if len(builders) != 1:
        fail(path, f"exactly one service should build the image, not {builders}")
    built = services[builders[0]].get("image") if builders else None
    for name, s in services.items():
        where = f"{path} service {name}"
        if is_turnstile_image(s.get("image")):
            if s.get("image") != built:
                fail(where, f"uses {s.get('image')}, not the one built image {built}")
            check_envs(s.get("environment") or {}, where)
            if not s.get("entrypoint"):
                check_server_args(s.get("command"), where)
        hc = s.get("healthcheck")
        if not s.get("profiles") and (not hc or hc.get("disable")):
            fail(where, "no healthcheck")
        if hc and hc.get("test", [None])[0] == "CMD" and hc["test"][1] == "turnstile":
            check_cli_command(hc["test"][1:], f"{where} healthcheck")
        for dep, spec in (s.get("depends_on") or {}).items():
            if (spec or {}).get("condition") not in ("service_healthy", "service_completed_successfully"):
                fail(where, f"depends_on {dep} without a health or completion condition")


# ---- Dockerfile ---------------------------------------------------------------

def check_dockerfile(path):
    lines, cont = [], ""
    for raw in open(path, encoding="utf-8").read().splitlines():
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        if s.endswith("\\"):
            cont += s[:-1] + " "
            continue
        lines.append(cont + s)
        cont = ""
    stages = [l for l in lines if l.upper().startswith("FROM ")]
    names = {m.group(1) for l in stages if (m := re.search(r"\sAS\s+(\S+)", l, re.I))}
    for l in stages:
        image = l.split()[1]
        if image in names:
            continue
        if not re.match(r"^[^@]+:[^@:]+@sha256:[0-9a-f]{64}$", image):
            fail(path, f"{image}: pin the base image by exact tag and digest")
    final = lines[max(i for i, l in enumerate(lines) if l.upper().startswith("FROM ")):]
    env, exposed, volumes, user, health = {}, set(), set(), None, None
    for l in final:
        word, _, rest = l.partition(" ")
        word = word.upper()
        if word == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", rest))
        elif word == "EXPOSE":
            exposed |= {p.split("/")[0] for p in rest.split()}
        elif word == "VOLUME":
            volumes |= set(re.findall(r'"([^"]+)"', rest) or rest.split())
        elif word == "USER":
            user = rest.strip()
        elif word == "HEALTHCHECK":
            health = rest
    if not user or not re.match(r"^[1-9][0-9]*(:[0-9]+)?$", user):
        fail(path, f"USER {user}: a numeric non-root user (Kubernetes' runAsNonRoot can check only that)")
    check_envs(env, path)
    if env.get("TURNSTILE_DATA_DIR") not in volumes:
        fail(path, f"the data dir {env.get('TURNSTILE_DATA_DIR')} is not a VOLUME")
    for var in ("TURNSTILE_LISTEN", "TURNSTILE_HTTP_LISTEN"):
        port = (env.get(var) or ":").rsplit(":", 1)[1]
        if port not in exposed:
            fail(path, f"{var}={env.get(var)}: port not in EXPOSE {sorted(exposed)}")
    m = re.search(r"CMD\s+(\[.*\])", health or "")
    if not m:
        fail(path, "no exec-form HEALTHCHECK")
    else:
        cmd = yaml.safe_load(m.group(1))
        check_cli_command(cmd, f"{path} HEALTHCHECK")
        addr = next((cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a == "--addr"), "")
        if addr.rsplit(":", 1)[-1] != (env.get("TURNSTILE_LISTEN") or ":").rsplit(":", 1)[1]:
            fail(path, f"HEALTHCHECK --addr {addr} is not TURNSTILE_LISTEN's port")


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__.split("\n\n")[1])
    dockerfile, compose, k8s = sys.argv[1], sys.argv[2], sys.argv[3:]
    check_dockerfile(dockerfile)
    check_compose(compose)
    check_k8s(k8s)
    for p in sorted(pending_seen):
        print(f"pending: deploy/ uses {p}, which the sources do not have yet")
    for f in failures:
        print(f"FAIL {f}")
    print(f"check_manifests: {len(failures)} failure(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
