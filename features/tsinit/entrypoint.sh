#!/bin/sh
# The tsinit Feature's entrypoint: starts tsinit in the background (`tsinit up`: a no-op
# when it runs already), then the container's own command if there is one. Returns at
# once; tsinit goes on logging in by itself (its log: /var/lib/tailscale/tsinit.log).
if [ "$(id -u)" = 0 ]; then
  /usr/local/bin/tsinit up || echo "tsinit feature: 'tsinit up' failed; see /var/lib/tailscale/tsinit.log" >&2
else
  echo "tsinit feature: the container runs as $(id -un), not root: tailscale is started by postStartCommand (sudo)" >&2
fi
if [ $# -gt 0 ]; then
  exec "$@"
fi
