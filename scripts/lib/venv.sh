# Sourced by the check scripts: Python tools in venvs under $TURNSTILE_TOOLS_CACHE
# (default ~/.cache/turnstile-tools, or /tmp/turnstile-tools without a HOME),
# installed when missing. Needs python3 with venv and PyPI.

cache="${TURNSTILE_TOOLS_CACHE:-${HOME:+$HOME/.cache/turnstile-tools}}"
cache="${cache:-/tmp/turnstile-tools}"

# venv DIR REQUIREMENTS [CONSTRAINT...]: a venv at DIR with REQUIREMENTS, made
# anew when it is missing or was made for other requirements.
venv() {
    local dir="$1" reqs="$2" stamp="$1/.requirements"
    shift 2
    if [ -x "$dir/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$reqs" ]; then
        return
    fi
    echo "installing $reqs into $dir" >&2
    rm -rf "$dir"
    python3 -m venv "$dir"
    local constraints=""
    if [ $# -gt 0 ]; then
        constraints="$dir/constraints.txt"
        printf '%s\n' "$@" >"$constraints"
    fi
    # shellcheck disable=SC2086 # $reqs is a list of requirements
    PIP_CONSTRAINT="$constraints" "$dir/bin/pip" install --quiet --disable-pip-version-check $reqs
    echo "$reqs" >"$stamp"
}
