#!/usr/bin/env bash
# Install the Debian packages that the integration tests start or read, where missing.
#
#   bash tests/provision.sh all            # CI (.ci/run), as root, before the tests
#   bash tests/provision.sh chromium       # one component, as the test fixtures do
#
# Components (several may be given):
#   postgresql        the tuning tests' private PostgreSQL server (tests/tune)
#   chromium          the headless browser of the report tests (tests/reports)
#   slurm             a one-node SLURM cluster: slurmctld slurmd slurm-client munge
#                     (started by tests/slurm/start-cluster.sh)
#   slurm-accounting  SLURM's accounting: mariadb-server slurmdbd (start-cluster.sh, optional)
#   fashion-mnist     the real Fashion-MNIST files, /usr/share/datasets/fashion-mnist
#   all               every one of them
#
# Installed packages are left alone (a call with nothing missing takes milliseconds and needs
# no root). Missing ones are installed with apt-get (its package lists are refreshed once if
# the install fails). Two calls at once wait for each other
# (dpkg's lock, up to 300 s).
#
# Exit status: 0 all there; 3 something is missing and cannot be installed here (not root, or
# no apt-get), with the reason on stderr, so that a caller can skip; 1 apt-get failed;
# 2 unknown component.
set -uo pipefail

packages_of() {
    case $1 in
        postgresql) echo postgresql ;;
        chromium) echo chromium ;;
        slurm) echo slurmctld slurmd slurm-client munge ;;
        slurm-accounting) echo mariadb-server slurmdbd ;;
        fashion-mnist) echo dataset-fashion-mnist ;;
        *) return 1 ;;
    esac
}
ALL=(postgresql chromium slurm slurm-accounting fashion-mnist)

say() { echo "provision: $*" >&2; }

(($#)) || { say "usage: $0 COMPONENT... (${ALL[*]} or all)"; exit 2; }
wanted=()
for name in "$@"; do
    if [[ $name == all ]]; then
        wanted+=("${ALL[@]}")
    elif pkgs=$(packages_of "$name"); then
        wanted+=("$name")
    else
        say "unknown component '$name'; allowed: ${ALL[*]}, all"
        exit 2
    fi
done

# Daemons are installed without their recommended packages; chromium and the data package
# with them (fonts, for one, shape the pages the browser test lays out).
with_recommends() { [[ $1 == chromium || $1 == fashion-mnist ]]; }

missing=() lean=() full=()
for name in "${wanted[@]}"; do
    for p in $(packages_of "$name"); do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" && continue
        missing+=("$p")
        if with_recommends "$name"; then full+=("$p"); else lean+=("$p"); fi
    done
done
((${#missing[@]})) || exit 0

if [[ $(id -u) != 0 ]]; then
    say "missing Debian packages ${missing[*]}; installing them needs root: apt-get install ${missing[*]}"
    exit 3
fi
command -v apt-get >/dev/null || { say "missing Debian packages ${missing[*]} and no apt-get"; exit 3; }

apt() { DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 "$@" >&2; }
install() {
    if ((${#lean[@]})); then apt install -y --no-install-recommends "${lean[@]}" || return; fi
    if ((${#full[@]})); then apt install -y "${full[@]}" || return; fi
}

say "apt-get install ${missing[*]}"
# The packages' postinst scripts may start Debian's own services (munge, slurmctld,
# postgresql); the tests start private instances on their own folders and ports instead.
if ! install; then
    say "apt-get update (stale package lists?), then again"
    apt update || say "apt-get update failed"
    install || { say "apt-get install ${missing[*]} failed"; exit 1; }
fi
