# Sourced by the test scripts: installs Debian packages that are missing.

# apt_install WHY PACKAGE...: installs PACKAGEs with apt (through sudo when
# not root), saying WHY; does nothing when no package is given.
apt_install() {
    local why="$1"
    shift
    [ $# -gt 0 ] || return 0
    echo "installing $* (needed by $why)" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
