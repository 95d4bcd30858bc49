#!/usr/bin/env bash
# The end-to-end tier's tools: Debian packages, and the pinned LiveKit server and SIP bridge built
# from the Go module proxy, once, into a cache outside the repository.
#
#   bash e2e/build-tools.sh           install what is missing, build what is not cached
#   bash e2e/build-tools.sh --paths   only print where the binaries are (exit 1 if not built)
#
# Versions: e2e/tools/livekit-server/go.mod and e2e/tools/livekit-sip/go.mod (with their go.sum,
# checked by the go command). A binary is cached under
#   ${RENTAL_E2E_CACHE:-~/.cache/rental-e2e}/bin/<tool>-<version>-<go.sum hash>/
# so changing a pin builds again and an unchanged pin never does. Nothing built lands in the repo.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${RENTAL_E2E_CACHE:-$HOME/.cache/rental-e2e}"

# Debian packages the tier runs (redis-server, sipp from sip-tester, espeak-ng, sox; unshare and ip
# for the loopback-only network namespace) and that livekit-sip's cgo build links against.
DEBIAN_PACKAGES=(redis-server sip-tester espeak-ng sox pkg-config libopus-dev libopusfile-dev
                 libsoxr-dev iproute2 util-linux)

tool_dir() {  # tool_dir <tool> <module path>: the cache folder for the pinned build
  local tool="$1" module="$2" mod="$HERE/tools/$1"
  local version sum
  version="$(awk -v m="$module" '$1 == m {print $2; exit}' "$mod/go.mod")"
  [ -n "$version" ] || { echo "e2e: no version of $module in $mod/go.mod" >&2; exit 1; }
  sum="$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-10)"
  echo "$CACHE/bin/$tool-$version-$sum"
}

SERVER_DIR="$(tool_dir livekit-server github.com/livekit/livekit-server)"
SIP_DIR="$(tool_dir livekit-sip github.com/livekit/sip)"
SERVER_BIN="$SERVER_DIR/livekit-server"
SIP_BIN="$SIP_DIR/livekit-sip"

if [ "${1:-}" = "--paths" ]; then
  echo "LIVEKIT_SERVER_BIN=$SERVER_BIN"
  echo "LIVEKIT_SIP_BIN=$SIP_BIN"
  [ -x "$SERVER_BIN" ] && [ -x "$SIP_BIN" ]
  exit $?
fi

missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "e2e: missing Debian packages: ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "e2e: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v go >/dev/null || { echo "e2e: the go command is needed to build livekit-server and livekit-sip" >&2; exit 1; }

build() {  # build <tool> <package> <output>
  local tool="$1" pkg="$2" out="$3"
  if [ -x "$out" ]; then
    echo "e2e: $tool cached: $out"
    return
  fi
  echo "e2e: building $tool ($pkg, pinned in e2e/tools/$tool/go.mod); the first build takes minutes"
  local started=$SECONDS tmp
  mkdir -p "$(dirname "$out")"
  tmp="$out.tmp.$$"
  (cd "$HERE/tools/$tool" && CGO_ENABLED=1 go build -trimpath -buildvcs=false -o "$tmp" "$pkg")
  mv "$tmp" "$out"
  echo "e2e: $tool built in $((SECONDS - started)) s: $out"
}

build livekit-server github.com/livekit/livekit-server/cmd/server "$SERVER_BIN"
build livekit-sip github.com/livekit/sip/cmd/livekit-sip "$SIP_BIN"
