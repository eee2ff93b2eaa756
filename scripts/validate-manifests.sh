#!/usr/bin/env bash
# Validates deploy/kubernetes/ against the Kubernetes API schemas that the
# kubernetes-validate package ships, and lints it with yamllint. Both tools
# are installed from PyPI into target/manifest-venv the first time.
#
# The manifests are checked against 1.30, the oldest version that runs the
# preStop sleep action by default, and 1.37, the newest the package has schemas for.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly VENV=target/manifest-venv
readonly MANIFESTS=deploy/kubernetes
readonly KUBERNETES_VERSIONS=(1.30 1.37)
readonly PACKAGES=(kubernetes-validate==1.37.0 yamllint==1.38.0)

if ! "$VENV/bin/python" -m pip show --quiet kubernetes-validate yamllint >/dev/null 2>&1; then
    echo "validate-manifests: installing ${PACKAGES[*]} into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
fi

# Strict mode rejects fields the schema does not define, such as a typo.
for version in "${KUBERNETES_VERSIONS[@]}"; do
    "$VENV/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$version" \
        "$MANIFESTS"/*.yaml
done
"$VENV/bin/yamllint" --strict "$MANIFESTS"
echo "validate-manifests: $(ls "$MANIFESTS"/*.yaml | wc -l) manifests valid for Kubernetes ${KUBERNETES_VERSIONS[*]} and lint-clean"
