#!/usr/bin/env bash
# A simulated cluster on one machine: N "hosts" that are Linux network namespaces joined by veth
# pairs on a private bridge, so that MPI ranks talk over TCP as on real nodes. Needs root and
# iproute2 (`ip`, `tc`; Debian: apt-get install iproute2) and util-linux (`unshare`).
#
#   scripts/sim_cluster.sh up N          make hosts lfm2h0..lfm2h{N-1} (idempotent: re-made from scratch)
#   scripts/sim_cluster.sh down          remove everything `up` made, also after a failed run (idempotent)
#   scripts/sim_cluster.sh status        hosts, addresses, links, processes; exit 1 when no cluster is up
#   scripts/sim_cluster.sh run -- CMD... run CMD with MPIRUN set to the cluster's launcher, e.g.
#                                        scripts/sim_cluster.sh run -- ./scripts/run.sh -v --plan ep
#   scripts/sim_cluster.sh mpirun ARGS.. Open MPI's mpirun on the cluster (what MPIRUN points at)
#   scripts/sim_cluster.sh link K up|down        take host K's link up or down (a pulled cable)
#   scripts/sim_cluster.sh shape K|all [delay D] [rate R] [loss P%]   shape host K's outgoing traffic
#                                        (all: every host's), e.g. shape all rate 25gbit, shape 2 loss 2%:
#                                        tc netem where the kernel has it, else tc tbf (rate) and an
#                                        nftables random drop (loss; needs nftables); delay needs netem
#   scripts/sim_cluster.sh shape K|all off      remove it
#
# Addresses: host K is 10.213.0.(10+K)/24 on bridge lfm2br0 (the bridge itself has no address; no
# route leaves the namespaces). Names resolve through /etc/netns/lfm2hK/hosts, which `ip netns exec`
# shows as /etc/hosts inside the namespace only (the machine's /etc/hosts is never touched).
# mpirun itself runs on host 0 (the "login node"); ranks are placed one per host (hostfile slots=1,
# more ranks than hosts wrap around), shared memory is off, TCP is pinned to the bridge's subnet.
# Faults: `--with-ft ulfm` makes a dead peer an error the engine can name (instead of an abort inside
# Open MPI); the engine's heartbeat (lfm2engine/parallel/heartbeat.py, LFM2_HEARTBEAT) names a
# silent one (host or link down). Backstops: TCP keepalive on Open MPI's daemon connections
# (LFM2_SIM_KEEPALIVE seconds idle, default 6, + 3 probes 1 s apart) and net.ipv4.tcp_retries2=4
# in every host (a connection with unacknowledged data to a lost host gives up after ~6 s).
# Override with LFM2_SIM_PREFIX / LFM2_SIM_SUBNET (first three octets) / LFM2_SIM_DIR; LFM2_SIM_FT=0
# launches without --with-ft ulfm (to compare).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PREFIX="${LFM2_SIM_PREFIX:-lfm2h}"
BRIDGE="${PREFIX%h}br0"
NET="${LFM2_SIM_SUBNET:-10.213.0}"
STATE="${LFM2_SIM_DIR:-/tmp/${PREFIX}-sim}"
KEEPALIVE="${LFM2_SIM_KEEPALIVE:-6}"

die() { echo "[sim_cluster] $*" >&2; exit 2; }

need() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces, veth, bridge)"
  for t in ip tc unshare; do
    command -v "$t" >/dev/null || die "needs '$t' (Debian: apt-get install iproute2 util-linux)"
  done
}

hosts() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${PREFIX}[0-9]+$" | sort -V || true; }

host_ns() {  # K or a host name -> namespace name
  case "$1" in [0-9]*) echo "${PREFIX}$1" ;; *) echo "$1" ;; esac
}

cmd_down() {
  need
  local h pids
  for h in $(hosts); do
    pids="$(ip netns pids "$h" 2>/dev/null || true)"
    if [ -n "$pids" ]; then
      kill -KILL $pids 2>/dev/null || true
    fi
  done
  for h in $(hosts); do
    ip link del "${h}-br" 2>/dev/null || true
    ip netns del "$h" 2>/dev/null || true
    rm -rf "/etc/netns/$h"
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  rmdir /etc/netns 2>/dev/null || true  # only when empty: another tool's entries stay
  rm -rf "$STATE"
}

cmd_up() {
  need
  local n="${1:-}"
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 200 ] || die "up N: N must be 1..200, got '${n}'"
  cmd_down
  trap 'cmd_down; echo "[sim_cluster] up failed; removed what was made" >&2' ERR
  mkdir -p "$STATE"
  ip link add "$BRIDGE" type bridge
  ip link set "$BRIDGE" up
  local k h hostsfile="$STATE/hosts"
  {
    echo "127.0.0.1 localhost"
    for ((k = 0; k < n; k++)); do echo "$NET.$((10 + k)) ${PREFIX}$k"; done
  } > "$hostsfile"
  : > "$STATE/hostfile"
  for ((k = 0; k < n; k++)); do
    h="${PREFIX}$k"
    ip netns add "$h"
    ip link add "${h}-br" type veth peer name eth0 netns "$h"
    ip link set "${h}-br" master "$BRIDGE" up
    ip -netns "$h" addr add "$NET.$((10 + k))/24" dev eth0
    ip -netns "$h" link set lo up
    ip -netns "$h" link set eth0 up
    # a connection with unacknowledged data to a lost host gives up after ~6 s (default: ~15 min)
    ip netns exec "$h" sysctl -q -w net.ipv4.tcp_retries2=4
    mkdir -p "/etc/netns/$h"
    cp "$hostsfile" "/etc/netns/$h/hosts"
    echo "$h slots=1" >> "$STATE/hostfile"
  done
  echo "$n" > "$STATE/size"
  write_launcher
  trap - ERR
  echo "[sim_cluster] $n hosts up: $(hosts | tr '\n' ' ')on $BRIDGE ($NET.0/24); MPIRUN=$STATE/mpirun" >&2
}

write_launcher() {  # $STATE/mpirun: what `run` points MPIRUN at (a path, as scripts/env.sh wants)
  cat > "$STATE/mpirun" <<EOF
#!/bin/sh
exec "$HERE/sim_cluster.sh" mpirun "\$@"
EOF
  chmod +x "$STATE/mpirun"
}

cmd_mpirun() {
  [ -f "$STATE/size" ] || die "no simulated cluster is up (scripts/sim_cluster.sh up N)"
  unset MPIRUN  # `run` points MPIRUN at this script; the real one comes from env.sh
  source "$HERE/env.sh"
  [ -n "$MPIRUN" ] && "$MPIRUN" --version 2>/dev/null | grep -q "Open MPI" ||
    die "the simulated cluster needs Open MPI's mpirun (found '${MPIRUN}'); pip install -e .[mpi-wheel]"
  local sub="$NET.0/24" h0="${PREFIX}0" errlog rc FT_FLAGS=(--with-ft ulfm)
  [ "${LFM2_SIM_FT:-ulfm}" = ulfm ] || FT_FLAGS=()  # LFM2_SIM_FT=0: Open MPI without fault tolerance
  errlog="$(mktemp "$STATE/mpirun-stderr.XXXXXX")"
  export LFM2_SIM_HOSTFILE="$STATE/hostfile"  # the launch agent names the ranks of a host it cannot reach
  set +e
  { ip netns exec "$h0" unshare --uts -- sh -c 'hostname "$0" && exec "$@"' "$h0" \
    "$MPIRUN" --hostfile "$STATE/hostfile" \
    --prtemca plm_ssh_agent "$HERE/sim_agent.sh" --prtemca plm_ssh_no_tree_spawn 1 \
    --prtemca oob_tcp_if_include "$sub" --mca oob_tcp_if_include "$sub" \
    --prtemca oob_tcp_keepalive_time "$KEEPALIVE" --prtemca oob_tcp_keepalive_intvl 1 \
    --prtemca oob_tcp_keepalive_probes 3 \
    --mca btl tcp,self --mca btl_tcp_if_include "$sub" --mca pml ob1 \
    ${FT_FLAGS[@]+"${FT_FLAGS[@]}"} --map-by node --bind-to none "$@" 2>&1 1>&3 3>&- | tee "$errlog" >&2; } 3>&1
  rc="${PIPESTATUS[0]}"
  set -e
  # Open MPI 5.0.11's prterun can exit 0 after "lost communication with a remote daemon" (a host or
  # link gone), and under --with-ft ulfm after a rank's MPI_Abort (when several ranks abort at once):
  # a failed job must never look like success.
  local aborted
  aborted="$(grep -a -A3 "MPI_ABORT was invoked on rank" "$errlog" | grep -a -o "Errorcode: [0-9]*" | head -1 |
             cut -d' ' -f2 || true)"
  if [ "$rc" = 0 ] && [ -n "$aborted" ]; then
    [ "$aborted" = 0 ] && aborted=1
    echo "[sim_cluster] a rank called MPI_Abort but mpirun exited 0; exit status $aborted" >&2
    rc="$aborted"
  elif [ "$rc" = 0 ] && grep -q "lost communication with a remote daemon" "$errlog"; then
    echo "[sim_cluster] mpirun lost a host but exited 0; exit status 1" >&2
    rc=1
  fi
  rm -f "$errlog"
  return "$rc"
}

cmd_status() {
  local h any=0
  for h in $(hosts); do
    any=1
    printf '%s  %s  link %s  qdisc %s  pids %s\n' "$h" \
      "$(ip -netns "$h" -o -4 addr show eth0 | awk '{print $4}')" \
      "$(ip -netns "$h" -o link show eth0 | grep -o 'state [A-Z]*' | cut -d' ' -f2)" \
      "$(tc -netns "$h" qdisc show dev eth0 | head -1 | awk '{print $2}')$(ip netns exec "$h" nft list \
          table inet lfm2sim 2>/dev/null | grep -o 'mod 1000 < [0-9]*' | sed 's/.*< / loss-permille /')" \
      "$(ip netns pids "$h" | wc -l)"
  done
  [ "$any" = 1 ] || { echo "no simulated cluster is up" >&2; return 1; }
  echo "bridge $BRIDGE; state $STATE; hostfile: $(tr '\n' ' ' < "$STATE/hostfile" 2>/dev/null)"
}

cmd_link() {
  need
  local h; h="$(host_ns "${1:-}")"
  case "${2:-}" in up|down) ;; *) die "link K up|down" ;; esac
  ip link show "${h}-br" >/dev/null 2>&1 || die "no simulated host $h"
  ip link set "${h}-br" "$2"
}

have_netem() {  # can this kernel add latency? (CONFIG_NET_SCH_NETEM)
  local h="$1" ok=1
  tc -netns "$h" qdisc add dev lo root netem delay 0ms 2>/dev/null && ok=0
  tc -netns "$h" qdisc del dev lo root 2>/dev/null || true
  return "$ok"
}

shape_off() {
  tc -netns "$1" qdisc del dev eth0 root 2>/dev/null || true
  ip netns exec "$1" nft delete table inet lfm2sim 2>/dev/null || true
}

cmd_shape() {  # shape K|all [delay D] [rate R] [loss P%] | off
  need
  local which="${1:-}"; shift || true
  local targets h delay="" rate="" loss=""
  if [ "$which" = all ]; then targets="$(hosts)"; else targets="$(host_ns "$which")"; fi
  [ -n "$targets" ] || die "shape K|all ...: no simulated host"
  if [ "${1:-}" != off ]; then
    while [ $# -gt 0 ]; do
      case "$1" in
        delay) delay="${2:?delay needs a value, e.g. 10us}"; shift 2 ;;
        rate) rate="${2:?rate needs a value, e.g. 25gbit}"; shift 2 ;;
        loss) loss="${2:?loss needs a value, e.g. 1%}"; loss="${loss%\%}"; shift 2 ;;
        *) die "shape K|all [delay D] [rate R] [loss P%] | off: unknown '$1'" ;;
      esac
    done
    [ -n "$delay$rate$loss" ] || die "shape K|all [delay D] [rate R] [loss P%] | off"
  fi
  for h in $targets; do
    ip netns list | grep -qw "$h" || die "no simulated host $h"
    shape_off "$h"
    [ "${1:-}" = off ] && continue
    if have_netem "$h"; then  # one netem qdisc does all three
      tc -netns "$h" qdisc replace dev eth0 root netem ${delay:+delay $delay} ${rate:+rate $rate} \
        ${loss:+loss $loss%}
      continue
    fi
    [ -z "$delay" ] || die "this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM): latency cannot be added; rate (tc tbf) and loss (nftables) can"
    if [ -n "$rate" ]; then  # token bucket: a burst of 4 ms at the rate (>= 4 kB; covers timer ticks)
      local burst; burst="$(awk -v r="$rate" 'BEGIN { m = 1; u = tolower(r); sub(/bit$/, "", u)
        if (u ~ /g$/) m = 1e9; else if (u ~ /m$/) m = 1e6; else if (u ~ /k$/) m = 1e3
        b = (u + 0) * m / 8 * 0.004; printf "%d", (b < 4096 ? 4096 : b) }')"
      tc -netns "$h" qdisc replace dev eth0 root tbf rate "$rate" burst "$burst" latency 50ms
    fi
    if [ -n "$loss" ]; then  # drop each outgoing packet with probability loss %
      command -v nft >/dev/null || die "loss without netem needs nftables (apt-get install nftables)"
      local permille; permille="$(awk -v p="$loss" 'BEGIN { printf "%d", p * 10 + 0.5 }')"
      ip netns exec "$h" nft -f - <<NFT
table inet lfm2sim {
  chain out { type filter hook output priority 0; policy accept; numgen random mod 1000 < $permille counter drop; }
}
NFT
    fi
  done
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  mpirun) shift; cmd_mpirun "$@" ;;
  run)
    shift; [ "${1:-}" = "--" ] && shift
    [ $# -gt 0 ] || die "run -- COMMAND..."
    [ -x "$STATE/mpirun" ] || die "no simulated cluster is up (scripts/sim_cluster.sh up N)"
    MPIRUN="$STATE/mpirun" NP="${NP:-$(cat "$STATE/size")}" exec "$@" ;;
  link) shift; cmd_link "$@" ;;
  shape) shift; cmd_shape "$@" ;;
  *) sed -n '2,30p' "$0" >&2; exit 2 ;;
esac
