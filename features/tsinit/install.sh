#!/bin/sh
# Installs the tsinit dev container Feature (run as root while the image is built). Needs
# nothing from the network: tsinit and tailscale are static binaries carried in bin/
# (scripts/feature puts them there), so any base image works (Debian, Ubuntu, Alpine...).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
fail() { echo "tsinit feature: $*" >&2; exit 1; }

case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) fail "$(uname -m) is not supported (amd64, arm64)" ;;
esac
for bin in tsinit tailscale tailscaled; do
  [ -f "$here/bin/$arch/$bin" ] ||
    fail "bin/$arch/$bin is missing: make the Feature with scripts/feature from tsinit's repository"
done
mkdir -p /usr/local/bin /usr/local/share/tsinit /etc/tsinit
for bin in tsinit tailscale tailscaled; do
  cp "$here/bin/$arch/$bin" "/usr/local/bin/$bin"
  chmod 0755 "/usr/local/bin/$bin"
done
cp "$here/entrypoint.sh" "$here/poststart.sh" /usr/local/share/tsinit/
chmod 0755 /usr/local/share/tsinit/entrypoint.sh /usr/local/share/tsinit/poststart.sh

# The options (the Dev Container CLI passes them upper-cased).
networking=${NETWORKING:-auto}
hostname=${NODENAME:-}
ssh=${SSH:-false}
case "$networking" in auto|kernel|userspace) ;; *) fail "networking: \"$networking\" is not auto, kernel or userspace" ;; esac
case "$ssh" in true|false) ;; *) fail "ssh: \"$ssh\" is not true or false" ;; esac
case "$hostname" in *[!A-Za-z0-9-]*) fail "nodeName: \"$hostname\" may only hold letters, digits and '-'" ;; esac

# The remote user (terminals) may run `tailscale` without sudo: --operator at login. A
# CLI that does not say who it is (no _REMOTE_USER): the user with uid 1000, the one
# dev container images make.
operator=""
user=${_REMOTE_USER:-}
if [ -z "$user" ] || [ "$user" = root ]; then
  user=$(awk -F: '$3 == 1000 { print $1; exit }' /etc/passwd)
  user=${user:-root}
fi
if [ "$user" != root ]; then
  case "$user" in *[!A-Za-z0-9._-]*) fail "the remote user \"$user\" is not a plain user name" ;; esac
  operator="\"--operator=$user\""
fi
if [ -e /etc/tsinit/tsinit.toml ]; then
  echo "tsinit feature: keeping the existing /etc/tsinit/tsinit.toml" >&2
else
  cat >/etc/tsinit/tsinit.toml <<CONF
# Written by the tsinit dev container Feature (its options); see tsinit's README.
networking = "$networking"
# The editor keeps its container whatever the login does; tsinit keeps trying.
on_failure = "continue"
ssh = $ssh

[tailscale]
hostname = "$hostname"
extra_up_args = [$operator]
CONF
fi

# Shells that tsinit did not start get TS_SOCKET and, with userspace networking, the
# proxy variables.
hook='command -v tsinit >/dev/null 2>&1 && eval "$(tsinit shellenv 2>/dev/null)"'
mkdir -p /etc/profile.d
echo "$hook" >/etc/profile.d/tsinit.sh
for rc in /etc/bash.bashrc /etc/bash/bashrc /etc/zsh/zshrc; do
  if [ -f "$rc" ] && ! grep -q 'tsinit shellenv' "$rc"; then
    echo "$hook" >>"$rc"
  fi
done

# tailscale talks TLS to its control server: it needs the CA certificates.
if [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then
  if command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ca-certificates >/dev/null ||
      echo "tsinit feature: could not install ca-certificates; tailscale cannot reach its control server without them" >&2
  elif command -v apk >/dev/null 2>&1; then
    apk add --no-cache ca-certificates >/dev/null ||
      echo "tsinit feature: could not install ca-certificates; tailscale cannot reach its control server without them" >&2
  else
    echo "tsinit feature: no CA certificates (/etc/ssl/certs/ca-certificates.crt); tailscale needs them for its control server" >&2
  fi
fi
echo "tsinit feature: installed tsinit $(/usr/local/bin/tsinit --version 2>/dev/null | head -n 1) and tailscale $(/usr/local/bin/tailscale version 2>/dev/null | head -n 1)"
