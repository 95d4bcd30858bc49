#!/usr/bin/env bash
# Runs a command in a network namespace of its own, where nothing can leave the machine: loopback,
# plus one address (198.18.0.1, the benchmarking range) on a veth pair whose two ends both stay
# inside the namespace. WebRTC clients (libwebrtc in the agent and the rtc caller, pion in
# livekit-sip) gather no candidates on loopback, so they need that one non-loopback address; every
# server still binds 127.0.0.1. No route leads out, and DNS has nothing to ask.
#
#   bash e2e/netns.sh COMMAND...      (root, or a user allowed to unshare the network namespace)
set -euo pipefail
if [ "${E2E_NETNS:-}" != 1 ]; then
  exec unshare --net -- env E2E_NETNS=1 bash "$0" "$@"
fi
ip link set lo up
ip link add e2e0 type veth peer name e2e1
ip addr add 198.18.0.1/32 dev e2e0
ip link set e2e0 up
ip link set e2e1 up
set +e
"$@"
rc=$?
# Whatever the run left behind (a server a crashed test never stopped) lives in this namespace
# only: end exactly those processes, found by their network namespace, none other.
me="$(readlink /proc/$$/ns/net)"
for p in /proc/[0-9]*; do
  pid="${p#/proc/}"
  [ "$pid" = "$$" ] && continue
  [ "$(readlink "$p/ns/net" 2>/dev/null)" = "$me" ] && kill -KILL "$pid" 2>/dev/null
done
exit "$rc"
