"""nginx as the reference reverse proxy: plain HTTP, or terminating TLS with our certificate.

One foreground process (`daemon off; master_process off;`) so a single pid carries all of its
CPU and memory, like the proxy's; with `workers` > 1 (the saturation figure of
`bench.workers`) a master and that many worker processes, their CPU summed over the tree.
The configuration is what an operator would write for MCP behind nginx: HTTP/1.1 keep-alive
to the upstream, streaming responses (`proxy_buffering off`, as SSE needs and as mcp-tunnel
always does), Host passed through, X-Forwarded-* set, and an access log line per request
(mcp-tunnel runs with its per-request info lines on).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bench.servers import Process, wait_listening

CONF = """\
{user}
daemon off;
master_process {master};
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    client_header_timeout 300s;
    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port}{ssl} backlog=4096;
        {tls}
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Forwarded-Host $host;
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""

TLS = """ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if found is None:
        raise RuntimeError("nginx is not installed: `./dev bench` installs it from the system packages")
    return found


def nginx_version() -> str:
    out = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True, check=False)
    return out.stderr.strip().removeprefix("nginx version: ")


def start_nginx(
    prefix: Path,
    *,
    port: int,
    upstream_port: int,
    connections: int,
    tls: tuple[Path, Path] | None = None,
    workers: int = 1,
) -> Process:
    """Start nginx in `prefix` (created); `tls` is (cert_file, key_file) to terminate TLS."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(
        CONF.format(
            user="user root;" if os.geteuid() == 0 else "",
            master="on" if workers > 1 else "off",
            workers=workers,
            prefix=prefix,
            nofile=connections * 9 // 8 + 1024,
            # nginx starts closing idle keep-alive connections when under 1/16 of its
            # connection slots are free: leave room above what the idle figure holds.
            connections=connections * 9 // 8 + 256,
            upstream_port=upstream_port,
            port=port,
            ssl=" ssl" if tls else "",
            tls=TLS.format(cert=tls[0], key=tls[1]) if tls else "",
        )
    )
    log = prefix / "stderr.log"
    proc = Process(
        [nginx_binary(), "-p", str(prefix), "-c", str(conf)], log, name="nginx-tls" if tls else "nginx"
    )
    wait_listening(proc, port)
    return proc
