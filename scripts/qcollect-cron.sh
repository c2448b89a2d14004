#!/usr/bin/env bash
# qcollect-cron.sh — run `qcollect --poll-all --quiet` unattended (cron, systemd timer).
#
# Runs in the study directory — the directory you run qsubmit in (your experiment
# repository, with its .env and results/): $QCOURIER_HOME if set, else the current
# directory (so a crontab line reads `cd /home/you/my-study && .../qcollect-cron.sh`).
# Activates the virtualenv qcourier is installed in, runs `qcollect --poll-all --quiet
# ARGS...` there and appends its stdout and stderr, each line prefixed with a UTC
# timestamp, to the log. Prints nothing on success, so cron mails nothing; when qcollect
# fails, this run's lines also go to stderr, so cron mails them. A run with nothing to say
# still leaves one "alive" line in the log when the log has been quiet for an hour, so a
# look at the log tells whether cron is running.
#
# Usage:
#   cd STUDY && /path/to/qcourier/scripts/qcollect-cron.sh [QCOLLECT_ARGS...]
#   QCOURIER_HOME=STUDY scripts/qcollect-cron.sh --prometheus /var/lib/node_exporter/textfile/qcourier.prom
#
# Environment:
#   QCOURIER_HOME  the study directory [default: the current directory]
#   QCOURIER_VENV  the virtualenv with qcourier, relative to the study or absolute
#                  [default: the study's .venv if it has one, else the .venv of the
#                  qcourier checkout this script is in, else qcollect on PATH]
#   QCOURIER_LOG   the log file, relative to the study or absolute, or "-" for stdout
#                  (systemd: the journal) [default: results/qcollect.log]
#
# Exit codes: qcollect's own (0 ok, 1 a runtime failure, 2 bad usage); 1 when the project
# directory, the virtualenv or qcollect cannot be found.
set -euo pipefail

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
home=${QCOURIER_HOME:-$PWD}
log=${QCOURIER_LOG:-results/qcollect.log}
alive_minutes=60

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

cd -- "$home" 2>/dev/null || fail "study directory $home not found (set QCOURIER_HOME)"
home=$(pwd)
if [[ -n ${QCOURIER_VENV:-} ]]; then
    venv=$QCOURIER_VENV
    [[ $venv = /* ]] || venv=$home/$venv
    [[ -f $venv/bin/activate ]] ||
        fail "no virtualenv at $venv (set QCOURIER_VENV, or create it: python3 -m venv $venv && $venv/bin/pip install qcourier)"
elif [[ -f $home/.venv/bin/activate ]]; then
    venv=$home/.venv
elif [[ -f $script_dir/../.venv/bin/activate ]]; then
    venv=$(cd -- "$script_dir/.." && pwd)/.venv
else
    venv=
fi
if [[ -n $venv ]]; then
    set +u  # activate scripts are not all written for `set -u`
    # shellcheck disable=SC1091
    source "$venv/bin/activate"
    set -u
fi
command -v qcollect >/dev/null ||
    fail "qcollect not found${venv:+ in $venv} (set QCOURIER_VENV to the virtualenv qcourier is installed in)"
if [[ ! -f .env && ! -d results && -z ${QCOURIER_LEDGER_DIR:-} ]]; then
    fail "$home has no .env and no results/: is it the study directory? (cd into the directory you run qsubmit in, or set QCOURIER_HOME)"
fi

if [[ $log != - ]]; then
    [[ $log = /* ]] || log=$home/$log
    # `: >>` creates the log without touching its modification time (the "alive" clock).
    { mkdir -p -- "$(dirname -- "$log")" && : >>"$log"; } 2>/dev/null || fail "cannot write log $log"
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

if ((status == 0)) && [[ $log != - && ! -s $run_lines ]]; then
    # Nothing to say: leave one line an hour, so that the log shows cron is alive.
    if [[ ! -s $log || -n $(find "$log" -mmin +$((alive_minutes - 1)) 2>/dev/null) ]]; then
        echo "$(now) qcollect-cron: alive; nothing new (next \"alive\" line in ${alive_minutes} min unless something happens)" >>"$log"
    fi
fi

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
