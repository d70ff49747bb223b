#!/bin/sh
# Open MPI's remote launch agent for the simulated cluster (scripts/sim_cluster.sh): stands in for
# `ssh HOST 'command'`. Open MPI calls it as `sim_agent.sh [-opts] HOST COMMAND...`, where HOST is a
# network namespace made by `sim_cluster.sh up`; the command runs in that namespace with its own
# hostname (a private UTS namespace), so every "host" has its own name, address and network.
# Like ssh with ConnectTimeout, it gives up when the host cannot be reached: exit 255 and one line
# `ssh: connect to host HOST: ...` on stderr, which Open MPI reports as a daemon that failed to start.
while [ $# -gt 0 ]; do case "$1" in -*) shift ;; *) break ;; esac; done
host="$1"; shift
if ! ip netns pids "$host" >/dev/null 2>&1 && ! [ -e "/run/netns/$host" ]; then
  echo "ssh: connect to host $host: no such simulated host (sim_cluster.sh up?)" >&2; exit 255
fi
if [ "$(ip -netns "$host" -o link show eth0 2>/dev/null | grep -c 'state UP')" = 0 ]; then
  echo "ssh: connect to host $host: network is down (link eth0 of $host is not up); no rank can start there" >&2
  exit 255
fi
exec ip netns exec "$host" unshare --uts -- sh -c 'hostname "$0" || exit 255; eval "$1"' "$host" "$*"
