#!/usr/bin/env bash
# qcollect-cron.sh — run `qcollect --poll-all --quiet` unattended (cron, systemd timer).
#
# Finds the project (this script's parent's parent, or $QCOURIER_HOME), activates its
# virtualenv, cd's there (so .env and results/ resolve as by hand), runs
# `qcollect --poll-all --quiet ARGS...` and appends its stdout and stderr, each line prefixed
# with a UTC timestamp, to the log. Prints nothing on success, so cron mails nothing; when
# qcollect fails, this run's lines also go to stderr, so cron mails them.
#
# Usage:
#   scripts/qcollect-cron.sh [QCOLLECT_ARGS...]
#   scripts/qcollect-cron.sh --prometheus /var/lib/node_exporter/textfile/qcourier.prom
#
# Environment:
#   QCOURIER_HOME  the project directory [default: the directory above scripts/]
#   QCOURIER_VENV  its virtualenv, relative to QCOURIER_HOME or absolute [default: .venv]
#   QCOURIER_LOG   the log file, relative to QCOURIER_HOME or absolute, or "-" for stdout
#                  (systemd: the journal) [default: results/qcollect.log]
#
# Exit codes: qcollect's own (0 ok, 1 a runtime failure, 2 bad usage); 1 when the project
# directory, the virtualenv or qcollect cannot be found.
set -euo pipefail

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
home=${QCOURIER_HOME:-$(dirname -- "$script_dir")}
venv=${QCOURIER_VENV:-.venv}
log=${QCOURIER_LOG:-results/qcollect.log}

fail() {
    echo "qcollect-cron: error: $*" >&2
    exit 1
}

now() { date -u +%Y-%m-%dT%H:%M:%SZ; }

# Each input line, prefixed with the UTC time it was read (`date`, not bash 4's printf %T:
# this also runs under macOS's bash 3.2; qcollect --quiet prints few lines).
stamp() {
    local line
    while IFS= read -r line || [[ -n $line ]]; do
        printf '%s %s\n' "$(now)" "$line"
    done
}

cd -- "$home" 2>/dev/null || fail "project directory $home not found (set QCOURIER_HOME)"
home=$(pwd)
[[ $venv = /* ]] || venv=$home/$venv
[[ -f $venv/bin/activate ]] ||
    fail "no virtualenv at $venv (set QCOURIER_VENV, or create it: cd $home && python3 -m venv .venv && .venv/bin/pip install .)"
set +u  # activate scripts are not all written for `set -u`
# shellcheck disable=SC1091
source "$venv/bin/activate"
set -u
command -v qcollect >/dev/null || fail "qcollect not found in $venv (run: $venv/bin/pip install $home)"

if [[ $log != - ]]; then
    [[ $log = /* ]] || log=$home/$log
    { mkdir -p -- "$(dirname -- "$log")" && touch -- "$log"; } || fail "cannot write log $log"
fi

run_lines=$(mktemp "${TMPDIR:-/tmp}/qcollect-cron.XXXXXX")
trap 'rm -f -- "$run_lines"' EXIT

set +e
if [[ $log = - ]]; then
    qcollect --poll-all --quiet "$@" 2>&1 | stamp
    status=${PIPESTATUS[0]}
else
    qcollect --poll-all --quiet "$@" 2>&1 | stamp | tee -- "$run_lines" >>"$log"
    status=${PIPESTATUS[0]}
fi
set -e

if ((status != 0)); then
    note="$(now) qcollect-cron: qcollect exited with $status"
    if [[ $log = - ]]; then
        echo "$note"
    else
        echo "$note" >>"$log"
        { cat -- "$run_lines"; echo "$note (log: $log)"; } >&2
    fi
fi
exit "$status"
