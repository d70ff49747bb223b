#!/bin/sh
# Open MPI's remote launch agent for the simulated cluster (scripts/sim_cluster.sh): stands in for
# `ssh HOST 'command'`. Open MPI calls it as `sim_agent.sh [-opts] HOST COMMAND...`, where HOST is a
# network namespace made by `sim_cluster.sh up`; the command runs in that namespace with its own
# hostname (a private UTS namespace), so every "host" has its own name, address and network.
# Like ssh with ConnectTimeout, it gives up when the host cannot be reached: exit 255 and one line
# `ssh: connect to host HOST: ... (rank 3 of 4)` on stderr naming the ranks mapped there (from the
# hostfile in LFM2_SIM_HOSTFILE and mpirun's -np), which Open MPI then reports as a daemon that
# failed to start.
while [ $# -gt 0 ]; do case "$1" in -*) shift ;; *) break ;; esac; done
host="$1"; shift
if ! ip netns pids "$host" >/dev/null 2>&1 && ! [ -e "/run/netns/$host" ]; then
  echo "ssh: connect to host $host: no such simulated host (sim_cluster.sh up?)" >&2; exit 255
fi
ranks_of() {  # the ranks mpirun maps to $host: --map-by node over the hostfile, -np from mpirun's command line
  [ -r "${LFM2_SIM_HOSTFILE:-}" ] || return 0
  local k n np
  k="$(awk -v h="$host" '$1 == h { print NR - 1 }' "$LFM2_SIM_HOSTFILE")"
  n="$(wc -l < "$LFM2_SIM_HOSTFILE")"
  np="$(tr '\0' '\n' < "/proc/$PPID/cmdline" 2>/dev/null | awk 'p { print; exit } $0 == "-np" || $0 == "-n" { p = 1 }')"
  [ -n "$k" ] && [ -n "$np" ] && [ "$n" -gt 0 ] || return 0
  awk -v k="$k" -v n="$n" -v np="$np" 'BEGIN { s = ""; for (r = k; r < np; r += n) s = s (s ? ", " : "") r
    if (s != "") printf " (rank%s %s of %d)", (index(s, ",") ? "s" : ""), s, np }'
}
if [ "$(ip -netns "$host" -o link show eth0 2>/dev/null | grep -c 'state UP')" = 0 ]; then
  echo "ssh: connect to host $host: network is down (link eth0 of $host is not up); no rank can start there$(ranks_of)" >&2
  # Open MPI 5.0.11's prterun usually ends the job on this exit code, but now and then (seen under
  # load) it keeps waiting for the daemon forever: stop it after a grace period so the job's bound
  # holds. Detached, with no inherited output, so a launcher that does exit is not held up.
  launcher=$PPID grace="${LFM2_SIM_UNREACHABLE_GRACE:-5}"
  ( sleep "$grace"; kill -0 "$launcher" 2>/dev/null && kill -TERM "$launcher" ) </dev/null >/dev/null 2>&1 &
  exit 255
fi
exec ip netns exec "$host" unshare --uts -- sh -c 'hostname "$0" || exit 255; eval "$1"' "$host" "$*"
