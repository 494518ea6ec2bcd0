#!/bin/sh
# The image's ENTRYPOINT. The default CMD is `-config /etc/mcp-gateway/config.yaml`, so
# `docker run IMAGE` runs the proxy exactly as the official image does, and a Compose `command:`
# or Kubernetes `args:` made of proxy flags (`-config FILE`, `-tunnel-domain D`, `-check`)
# replaces only the flags.
#
#   (no arguments) or -flag ...       -> mcp-tunnel proxy [flags]   (proxy; Go-style flags)
#   setup init|renew-cert ...         -> mcp-tunnel setup ...       (same as the /setup entrypoint)
#   proxy|certs|call|connect|demo|doctor|version ... -> mcp-tunnel <command> ...
#   anything else                     -> run it as given (for example `python -c ...`)
#
# `exec` everywhere: the Python process becomes PID 1 and receives SIGTERM itself, which the
# proxy turns into a graceful drain bounded by shutdown_timeout.
set -eu

if [ "$#" -eq 0 ]; then
    exec mcp-tunnel proxy
fi

case "$1" in
    -*)
        exec mcp-tunnel proxy "$@"
        ;;
    proxy | setup | certs | call | connect | demo | doctor)
        exec mcp-tunnel "$@"
        ;;
    version)
        exec mcp-tunnel --version
        ;;
    *)
        exec "$@"
        ;;
esac
