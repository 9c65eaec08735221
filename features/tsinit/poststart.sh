#!/bin/sh
# The tsinit Feature's postStartCommand, for Dev Container CLIs that do not run a Feature's
# entrypoint: the same `tsinit up` (a no-op when the entrypoint started it). Never fails:
# the editor keeps its container whatever tailscale does.
if [ "$(id -u)" = 0 ]; then
  /usr/local/bin/tsinit up
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  # sudo starts from a clean environment: tsinit's settings (containerEnv) go along.
  names=$(env | sed -n 's/^\(\(TS\|TSINIT\|TAILSCALE\)_[A-Za-z0-9_]*\)=.*/\1/p' | tr '\n' ',')
  sudo -n --preserve-env="${names%,}" /usr/local/bin/tsinit up
else
  echo "tsinit feature: cannot start tailscale as $(id -un) (no sudo); run 'tsinit up' as root" >&2
fi
exit 0
