#!/usr/bin/env python3
"""Memory and reload figures the request benchmarks do not show.

1. Idle RSS, and RSS with 10,000 open keep-alive connections (each has sent one
   request and read the answer), for Wicket and nginx configured as in run.py.
2. Time to apply a reload of 1,000 VirtualServices: the config file is rewritten and
   Wicket's `wicket_config_reload_seconds` (read, compile, reconcile listeners) read
   back once the new version serves; the median of five.

    python3 bench/capacity.py [--no-build] [--connections 10000]

Loopback only; uses run.py's configurations and helpers.
"""

import argparse
import os
import re
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402


def rss_kb(pid):
    total = 0
    for p in run.tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(l.split()[1]) for l in f if l.startswith("VmRSS:")), 0)
        except OSError:
            pass
    return total


def hold_connections(port, n):
    """Opens `n` connections, sends a request on each and reads the answer; returns
    the open sockets."""
    sel = selectors.DefaultSelector()
    socks, pending = [], {}
    request = b"GET / HTTP/1.1\r\nHost: bench.local\r\n\r\n"
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
        sel.register(s, selectors.EVENT_WRITE)
        pending[s.fileno()] = b""
    done, deadline = 0, time.time() + 120
    while done < n and time.time() < deadline:
        for key, events in sel.select(timeout=1):
            s = key.fileobj
            if events & selectors.EVENT_WRITE:
                try:
                    s.send(request)
                    sel.modify(s, selectors.EVENT_READ)
                except OSError:
                    sel.unregister(s)
                    done += 1
            elif events & selectors.EVENT_READ:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                pending[s.fileno()] += data
                if not data or b"\r\n\r\n" in pending[s.fileno()]:
                    sel.unregister(s)
                    done += 1
    answered = sum(1 for v in pending.values() if v.startswith(b"HTTP/1.1 200"))
    return socks, answered


def memory(work, certs, n):
    rows = []
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    for who in ("wicket", "nginx"):
        if who == "wicket":
            proxy, port = run.start_wicket(work, certs, "http1"), run.WICKET_HTTP
        else:
            proxy = run.Proc([nginx, "-e", "stderr", "-c", os.path.join(work, "proxy.conf")], 0)
            run.wait_port(run.NGINX_H1)
            port = run.NGINX_H1
        try:
            time.sleep(1)
            idle = rss_kb(proxy.pid)
            socks, answered = hold_connections(port, n)
            time.sleep(1)
            held = rss_kb(proxy.pid)
            for s in socks:
                s.close()
            rows.append((who, idle / 1024, held / 1024, answered))
        finally:
            proxy.stop()
            time.sleep(0.5)
    print(f"\n{'proxy':<8}{'idle RSS MB':>12}{f'RSS MB with {n} conns':>24}{'answered':>10}")
    for who, idle, held, answered in rows:
        print(f"{who:<8}{idle:>12.1f}{held:>24.1f}{answered:>10}")


def metric(name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{run.WICKET_ADMIN}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def reload_time(work, certs):
    proxy = run.start_wicket(work, certs, "1000-routes")
    cfg = os.path.join(work, "wicket-1000-routes", "bench.yaml")
    took = []
    with open(cfg) as f:
        original = f.read()
    try:
        for i in range(5):
            version = metric("wicket_config_version")
            # A real change each time: the matching route's prefix.
            text = original.replace("match: [{uri: {prefix: /}}]", f"match: [{{uri: {{prefix: /v{i}/}}}}]")
            with open(cfg, "w") as f:
                f.write(text)
            deadline = time.time() + 30
            while metric("wicket_config_version") == version and time.time() < deadline:
                time.sleep(0.02)
            took.append(metric("wicket_config_reload_seconds") * 1000)
    finally:
        proxy.stop()
    print(f"\nreload of 1,000 VirtualServices applied in {statistics.median(took):.0f} ms (median of 5: "
          + ", ".join(f"{t:.0f}" for t in took) + " ms)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    # Every process here needs one descriptor per connection (and some): raise the
    # soft limit to what the machine allows.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard if hard != resource.RLIM_INFINITY else args.connections * 2 + 1024
    if limit < args.connections + 512:
        sys.exit(f"the descriptor limit ({limit}) is too low for {args.connections} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "wicket"], cwd=run.ROOT, check=True)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    work = tempfile.mkdtemp(prefix="wicket-capacity-")
    certs = os.path.join(work, "certs")
    os.makedirs(certs)
    run.sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
            "-subj", "/CN=bench.local", "-keyout", f"{certs}/tls.key", "-out", f"{certs}/tls.crt"])
    for name, conf in (("upstream", run.upstream_conf(work)), ("proxy", run.nginx_conf(work, certs))):
        with open(os.path.join(work, f"{name}.conf"), "w") as f:
            f.write(conf.replace("worker_processes 1;", f"worker_processes 1;\nworker_rlimit_nofile {limit};"))
    upstream = run.Proc([nginx, "-e", "stderr", "-c", os.path.join(work, "upstream.conf")], 1)
    run.wait_port(run.UPSTREAM_PORT)
    try:
        memory(work, certs, args.connections)
        reload_time(work, certs)
    finally:
        upstream.stop()


if __name__ == "__main__":
    main()
