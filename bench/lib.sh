# Shared by the bench drivers: `source bench/lib.sh` after `cd` to the repository root.

# Exits with a one-line message unless $1 is an executable python (the peers' venv).
require_python() {
  if [[ ! -x "$1" ]]; then
    echo "$0: no python at $1 (make the venv: see bench/peers/requirements.txt)" >&2
    exit 1
  fi
}

# The first free log name PREFIX-YYYY-MM-DD<letter>.txt (letters a to z, so reruns on one day never overwrite).
next_log() {
  local letter log
  for letter in {a..z}; do
    log="$1-$(date -u +%F)$letter.txt"
    [[ -e "$log" ]] || break
  done
  echo "$log"
}

# The machine line every log starts with: time, CPU, cores, load, commit.
machine_line() {
  echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores," \
    "load average $(cut -d' ' -f1-3 /proc/loadavg), git $(git rev-parse --short HEAD 2> /dev/null || echo '?')"
}

# Sets VENV (the argument, else $PEERS_VENV, else bench/peers/.venv), PY (its python, which must exist) and DATA
# ($DATA, else the Debian Fashion-MNIST directory): the prelude of every driver that runs peers.
peers_setup() {
  VENV=$(realpath -m "${1:-${PEERS_VENV:-bench/peers/.venv}}")
  PY="$VENV/bin/python"
  require_python "$PY"
  DATA=$(realpath -m "${DATA:-/usr/share/datasets/fashion-mnist}")
}
