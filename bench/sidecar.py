#!/usr/bin/env python3
"""What the two-sidecar path adds to a call, measured against a direct call.

Pods are network namespaces on a bridge of their own (root only). The direct path:
a client pod calls an nginx pod by its address. The mesh path: a client pod with
Istio's capture rules and a Wicket sidecar calls the service address; its sidecar
opens mutual TLS (SPIFFE identities from `wicket ca`) to the server pod's sidecar,
which hands the request to the same nginx on localhost (PeerAuthentication STRICT).
Both sidecars run one worker on core 0; wrk and nginx share core 1. The two paths
alternate (direct, mesh, direct, mesh, ...) and every run is bounded in time.

It prints p50/p99 latency at one connection (the latency a call pays) and requests/s
at 16 connections, for both paths, the difference and the ratio, and the sidecars'
CPU time per request.

    sudo python3 bench/sidecar.py [--duration 5] [--rounds 2] [--no-build]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import ROOT, TICK_US, WICKET, Proc, cpu_ticks, run_wrk, sh  # noqa: E402

PREFIX = f"wkb{os.getpid() % 100000}"
VIP = "10.96.0.20"
HOST = "echo.bench.svc.cluster.local"
MARK = 1337


def ip(*args):
    sh(["ip", *args])


def make_pods(names):
    """A bridge namespace and one namespace per pod: {name: (netns, address)}."""
    ip("netns", "add", f"{PREFIX}-br")
    ip("-n", f"{PREFIX}-br", "link", "add", "br0", "type", "bridge")
    ip("-n", f"{PREFIX}-br", "link", "set", "br0", "up")
    pods = {}
    for i, name in enumerate(names):
        ns, addr = f"{PREFIX}-{name}", f"10.78.0.{i + 2}"
        inside, outside = f"{PREFIX}p{i}", f"{PREFIX}b{i}"
        ip("netns", "add", ns)
        ip("link", "add", inside, "type", "veth", "peer", "name", outside)
        ip("link", "set", inside, "netns", ns)
        ip("link", "set", outside, "netns", f"{PREFIX}-br")
        ip("-n", f"{PREFIX}-br", "link", "set", outside, "master", "br0", "up")
        ip("-n", ns, "link", "set", inside, "name", "eth0")
        ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "route", "add", "default", "dev", "eth0")
        pods[name] = (ns, addr)
    return pods


def remove_pods(pods):
    for ns, _ in pods.values():
        subprocess.run(["ip", "netns", "del", ns], check=False)
    subprocess.run(["ip", "netns", "del", f"{PREFIX}-br"], check=False)


def nginx_app(work, name):
    conf = os.path.join(work, f"nginx-{name}.conf")
    with open(conf, "w") as f:
        f.write(textwrap.dedent(f"""
            worker_processes 1;
            daemon off;
            pid {work}/nginx-{name}.pid;
            error_log stderr error;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                server {{
                    listen 8080 reuseport;
                    keepalive_requests 1000000;
                    location / {{ return 200 "hello from the app\\n"; }}
                }}
            }}
        """))
    return conf


def mesh_config(work, server_ip):
    config = os.path.join(work, "config")
    os.makedirs(config)
    with open(os.path.join(config, "mesh.yaml"), "w") as f:
        f.write(textwrap.dedent(f"""
            apiVersion: networking.istio.io/v1
            kind: ServiceEntry
            metadata: {{name: echo, namespace: bench}}
            spec:
              hosts: [{HOST}]
              addresses: [{VIP}]
              resolution: STATIC
              ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
              endpoints: [{{address: {server_ip}, labels: {{app: echo, security.istio.io/tlsMode: istio}}}}]
            ---
            apiVersion: security.istio.io/v1
            kind: PeerAuthentication
            metadata: {{name: default, namespace: bench}}
            spec: {{mtls: {{mode: STRICT}}}}
            ---
            apiVersion: telemetry.istio.io/v1
            kind: Telemetry
            metadata: {{name: default, namespace: istio-system}}
            spec:
              accessLogging: [{{disabled: true}}]
        """))
    return config


def in_pod(ns, cmd, core):
    return Proc(["ip", "netns", "exec", ns, "taskset", "-c", str(core), *cmd], core)


def wrk(ns, url, host, duration, conns):
    return run_wrk(None, duration, conns, [f"Host: {host}"], url=url, prefix=["ip", "netns", "exec", ns])


def wait_http(ns, url, host, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                            "-H", f"Host: {host}", "--max-time", "1", url], capture_output=True, text=True)
        if r.stdout.strip() == "200":
            return
        time.sleep(0.1)
    sys.exit(f"{url} from {ns} does not answer 200")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("network namespaces need root")
    for tool in ("nginx", "wrk", "taskset", "ip", "iptables-restore", "curl"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} is missing: apt-get install nginx-light wrk util-linux iproute2 iptables curl")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "wicket"], cwd=ROOT, check=True)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    work = tempfile.mkdtemp(prefix="wicket-sidecar-bench-")
    pods = make_pods(["client", "direct", "sleep", "echo"])
    procs = []
    try:
        sh([WICKET, "ca", "init", "--dir", f"{work}/ca"])
        for name, sa in (("sleep", "sleep"), ("echo", "echo")):
            sh([WICKET, "ca", "issue", "--ca", f"{work}/ca", "--namespace", "bench", "--service-account", sa,
                "--out", f"{work}/{name}-certs"])
        config = mesh_config(work, pods["echo"][1])
        for name in ("direct", "echo"):
            procs.append(in_pod(pods[name][0], [nginx, "-e", "stderr", "-c", nginx_app(work, name)], 1))
        sidecars = []
        for name, labels in (("sleep", "app=sleep"), ("echo", "app=echo")):
            ns = pods[name][0]
            sh(["ip", "netns", "exec", ns, WICKET, "capture", f"--mark={MARK}"])
            sidecar = in_pod(ns, [WICKET, "sidecar", "--config", config, "--namespace", "bench", "--labels", labels,
                                  "--service-account", name, "--identity-dir", f"{work}/{name}-certs",
                                  f"--mark={MARK}", "--workers", "1"], 0)
            procs.append(sidecar)
            sidecars.append(sidecar)
        paths = {
            "direct": (pods["client"][0], f"http://{pods['direct'][1]}:8080/"),
            "sidecars": (pods["sleep"][0], f"http://{VIP}/"),
        }
        for ns, url in paths.values():
            wait_http(ns, url, HOST)
        results = {p: {"latency": [], "load": []} for p in paths}
        for _ in range(args.rounds):
            for path, (ns, url) in paths.items():
                wrk(ns, url, HOST, 1, 4)  # warm up
                results[path]["latency"].append(wrk(ns, url, HOST, args.duration, 1))
                before = sum(cpu_ticks(s.pid) for s in sidecars)
                load = wrk(ns, url, HOST, args.duration, 16)
                load["cpu_us"] = (sum(cpu_ticks(s.pid) for s in sidecars) - before) * TICK_US / max(1, load["requests"])
                results[path]["load"].append(load)
        report(results, args)
    finally:
        for p in procs:
            p.stop()
        remove_pods(pods)
        shutil.rmtree(work, ignore_errors=True)


def report(results, args):
    best = lambda runs, key, pick: pick(r[key] for r in runs)
    d, s = results["direct"], results["sidecars"]
    bad = sum(r["bad"] for p in results.values() for kind in p.values() for r in kind)
    print(f"\nTwo-sidecar path vs direct call ({args.rounds} rounds x {args.duration}s, best of rounds; non-2xx: {bad})\n")
    print(f"{'':28}{'direct':>12}{'sidecars':>12}{'added':>12}{'ratio':>8}")
    for label, kind, key, pick, unit in (
        ("p50 latency, 1 connection", "latency", "p50", min, "ms"),
        ("p99 latency, 1 connection", "latency", "p99", min, "ms"),
        ("requests/s, 16 connections", "load", "rps", max, ""),
        ("p99 latency, 16 connections", "load", "p99", min, "ms"),
    ):
        a, b = best(d[kind], key, pick), best(s[kind], key, pick)
        print(f"{label:28}{a:>12.3f}{b:>12.3f}{b - a:>+12.3f}{b / a:>8.2f}  {unit}")
    cpu = best(s["load"], "cpu_us", min)
    print(f"{'sidecar CPU per request':28}{'':>12}{cpu:>12.1f}{'':>12}{'':>8}  us (both sidecars)")


if __name__ == "__main__":
    main()
