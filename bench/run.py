#!/usr/bin/env python3
"""Wicket vs nginx, side by side on this machine, in one run.

Builds the release binary, starts a fixed upstream (nginx serving a small body with
keep-alive), then Wicket and nginx as equivalent reverse proxies (one worker each,
access logs on in both, written to /dev/null), and drives them in alternation
(A, B, A, B, ...) so machine noise hits both. The proxy under test runs on core 0;
the load generator and the upstream share core 1. Everything is on 127.0.0.1 and
every run is bounded in time.

Per scenario it prints requests/s, p50 and p99 latency, the proxy's CPU time per
request (utime+stime from /proc, the figure that holds up best on a shared 2-core
machine), peak RSS, and the Wicket/nginx ratio of each.

    python3 bench/run.py [--duration 5] [--rounds 2] [--scenario NAME ...]

Without --scenario it then runs the other two harnesses, so one command covers every
scenario: bench/capacity.py (idle memory, memory with 10,000 open connections, the
reload time of 1,000 VirtualServices) and, as root, bench/sidecar.py (the
two-sidecar path against a direct call).
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WICKET = os.path.join(ROOT, "target", "release", "wicket")
WASM_DIR = os.path.join(ROOT, "target", "wasm-filters", "wasm32-wasip1", "release")
# The same edit (one response header) by a raw proxy-wasm filter and by the SDK's header-policy.
WASM_FILTERS = {
    "wasm": (os.path.join(WASM_DIR, "conformance.wasm"), '{response_add: [[x-bench, "1"]]}'),
    "header-policy": (os.path.join(WASM_DIR, "header_policy.wasm"), '{rules: [{response: {add: {x-bench: "1"}}}]}'),
}
TICK_US = 1_000_000 / os.sysconf("SC_CLK_TCK")

UPSTREAM_PORT = 18080
NGINX_H1, NGINX_H2C, NGINX_TLS = 18081, 18083, 18443
WICKET_HTTP, WICKET_TLS, WICKET_ADMIN = 18082, 18444, 18090


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            import socket

            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def tree(pid):
    """`pid` and its descendants (nginx serves from worker children)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(c for c, pp in parents.items() if pp == p)
    return found


def cpu_ticks(pid, kernel_only=False):
    """CPU time of `pid` and its descendants, all threads: user+system, or system only."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[12]) if kernel_only else int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total


def peak_rss_kb(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(l.split()[1]) for l in f if l.startswith("VmHWM:")), 0)
        except OSError:
            pass
    return total


def busy_other_cpu(seconds):
    """CPU share of core 0 used by processes other than the proxy (noise flag)."""
    with open("/proc/stat") as f:
        cpu0 = next(line for line in f if line.startswith("cpu0 "))
    vals = list(map(int, cpu0.split()[1:]))
    return sum(vals[:3]) + vals[5] + vals[6], sum(vals)


class Proc:
    def __init__(self, cmd, core, **kw):
        self.p = subprocess.Popen(["taskset", "-c", str(core)] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)

    @property
    def pid(self):
        return self.p.pid

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()


def nginx_conf(work, certs):
    return textwrap.dedent(f"""
        worker_processes 1;
        daemon off;
        pid {work}/nginx-proxy.pid;
        error_log stderr error;
        events {{ worker_connections 20000; }}
        http {{
            access_log /dev/null;
            upstream up {{ server 127.0.0.1:{UPSTREAM_PORT}; keepalive 256; }}
            server {{
                listen 127.0.0.1:{NGINX_H1};
                listen 127.0.0.1:{NGINX_H2C} http2;
                listen 127.0.0.1:{NGINX_TLS} ssl http2;
                ssl_certificate {certs}/tls.crt;
                ssl_certificate_key {certs}/tls.key;
                keepalive_requests 1000000;
                location / {{
                    proxy_pass http://up;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_set_header Host $host;
                }}
            }}
        }}
    """)


def upstream_conf(work):
    return textwrap.dedent(f"""
        worker_processes 1;
        daemon off;
        pid {work}/nginx-upstream.pid;
        error_log stderr error;
        events {{ worker_connections 20000; }}
        http {{
            access_log off;
            server {{
                listen 127.0.0.1:{UPSTREAM_PORT} reuseport;
                keepalive_requests 1000000;
                location / {{ return 200 "hello from the upstream\\n"; }}
            }}
        }}
    """)


JWT_SECRET = b"wicket-bench-secret-0123456789abcdef"


def b64url(data):
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def bench_jwt():
    """An HS256 token valid for an hour, and the inline JWKS that verifies it."""
    import hashlib
    import hmac
    import json

    header = b64url(json.dumps({"alg": "HS256", "kid": "bench", "typ": "JWT"}).encode())
    claims = {"iss": "https://bench.local", "sub": "loadgen", "exp": int(time.time()) + 3600}
    payload = b64url(json.dumps(claims).encode())
    sig = hmac.new(JWT_SECRET, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    jwks = json.dumps({"keys": [{"kty": "oct", "kid": "bench", "alg": "HS256", "k": b64url(JWT_SECRET)}]})
    return f"{header}.{payload}.{b64url(sig)}", jwks


def wicket_conf(certs, routes=1, canary=False, jwt=False, wasm=None, telemetry=True):
    """A Gateway with HTTP and HTTPS servers; `routes` VirtualServices, the one that
    matches last; with `canary`, a 90/10 split across two subsets of one endpoint."""
    docs = [
        f"""apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: bench}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {WICKET_HTTP}, name: http, protocol: HTTP}}
    hosts: ["*"]
  - port: {{number: {WICKET_TLS}, name: https, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: SIMPLE, serverCertificate: {certs}/tls.crt, privateKey: {certs}/tls.key}}
""",
        f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: upstream}}
spec:
  hosts: [upstream.bench]
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {UPSTREAM_PORT}}}, labels: {{version: v1}}}}
""",
        """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: upstream}
spec:
  host: upstream.bench
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v1}}
""",
    ]
    for i in range(routes - 1):
        docs.append(f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: other-{i}}}
spec:
  hosts: ["*"]
  gateways: [bench]
  http:
  - match: [{{uri: {{prefix: /other-{i}/}}}}, {{headers: {{x-tenant: {{exact: t{i}}}}}}}]
    route: [{{destination: {{host: upstream.bench}}}}]
""")
    dest = (
        "    - {destination: {host: upstream.bench, subset: v1}, weight: 90}\n"
        "    - {destination: {host: upstream.bench, subset: v2}, weight: 10}\n"
        if canary
        else "    - destination: {host: upstream.bench}\n"
    )
    if jwt:
        _, jwks = bench_jwt()
        docs.append(f"""apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: bench, namespace: default}}
spec:
  jwtRules:
  - issuer: https://bench.local
    jwks: '{jwks}'
""")
    if not telemetry:
        docs.append("""apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: off, namespace: istio-system}
spec:
  metrics:
  - overrides: [{disabled: true}]
  accessLogging:
  - disabled: true
""")
    if wasm:
        module, config = wasm
        docs.append(f"""apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: bench, namespace: default}}
spec:
  url: file://{module}
  pluginConfig: {config}
""")
    docs.append(f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: zz-main}}
spec:
  hosts: ["*"]
  gateways: [bench]
  http:
  - match: [{{uri: {{prefix: /}}}}]
    route:
{dest}""")
    return "---\n".join(docs)


def parse_latency(text, unit_re):
    m = re.search(unit_re, text)
    if not m:
        return None
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(port, duration, conns, headers=(), url=None, prefix=()):
    """wrk on core 1 against 127.0.0.1:`port` (or `url`), run under `prefix` (e.g. `ip netns exec NS`)."""
    extra = [arg for h in headers for arg in ("-H", h)]
    url = url or f"http://127.0.0.1:{port}/"
    out = sh([*prefix, "taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", *extra, url]).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    return {
        "requests": reqs,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": parse_latency(out, r"50%\s+([\d.]+)(us|ms|s)"),
        "p99": parse_latency(out, r"99%\s+([\d.]+)(us|ms|s)"),
        "bad": int(non2xx.group(1)) if non2xx else 0,
        "errors": errors.group(0) if errors else "",
    }


def run_h2load(url, duration, conns, streams):
    out = sh(["taskset", "-c", "1", "h2load", "-c", str(conns), "-m", str(streams), "-D", str(duration), url]).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    lat = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", out)
    to_ms = lambda v, u: float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[u]
    reqs = int(done.group(1))
    return {
        "requests": reqs,
        "rps": reqs / duration,
        # h2load reports min/max/mean per request; mean stands in for p50, max for p99.
        "p50": to_ms(lat.group(5), lat.group(6)) if lat else None,
        "p99": to_ms(lat.group(3), lat.group(4)) if lat else None,
        "bad": reqs - int(done.group(2)),
        "errors": "",
    }


SCENARIOS = {
    "http1": lambda p, d: run_wrk(p["h1"], d, 32),
    "h2c": lambda p, d: run_h2load(f"http://127.0.0.1:{p['h2c']}/", d, 8, 16),
    "tls-h2": lambda p, d: run_h2load(f"https://127.0.0.1:{p['tls']}/", d, 8, 16),
    "canary-90-10": lambda p, d: run_wrk(p["h1"], d, 32),
    "1000-routes": lambda p, d: run_wrk(p["h1"], d, 32),
    # nginx does not check JWTs: compare with Wicket's own http1 row (target >= 0.95).
    "jwt": lambda p, d: run_wrk(p["h1"], d, 32, [f"Authorization: Bearer {bench_jwt()[0]}"]),
    # One proxy-wasm filter adding a response header: compare with Wicket's http1 row (target >= 0.9).
    "wasm": lambda p, d: run_wrk(p["h1"], d, 32),
    # Istio metrics and access logs off (Telemetry resource): their cost is the http1 row minus this one.
    "no-telemetry": lambda p, d: run_wrk(p["h1"], d, 32),
    # The same edit through the SDK's header-policy plugin: compare with the wasm row.
    "header-policy": lambda p, d: run_wrk(p["h1"], d, 32),
}


def measure(proxy, ports, scenario, duration):
    before, kernel0, busy0 = cpu_ticks(proxy.pid), cpu_ticks(proxy.pid, kernel_only=True), busy_other_cpu(0)
    result = SCENARIOS[scenario](ports, duration)
    after, kernel1, busy1 = cpu_ticks(proxy.pid), cpu_ticks(proxy.pid, kernel_only=True), busy_other_cpu(0)
    core0_busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    proxy_ticks = after - before
    result["cpu_us"] = proxy_ticks * TICK_US / max(1, result["requests"])
    result["kernel_pct"] = 100 * (kernel1 - kernel0) / max(1, proxy_ticks)
    # Core 0 runs only the proxy: busy time the proxy did not account for is noise.
    proxy_share = proxy_ticks / max(1, busy1[1] - busy0[1])
    result["noise"] = max(0.0, core0_busy - proxy_share) > 0.1
    result["rss_mb"] = peak_rss_kb(proxy.pid) / 1024
    return result


def start_wicket(work, certs, scenario):
    cfg = os.path.join(work, f"wicket-{scenario}")
    os.makedirs(cfg, exist_ok=True)
    routes = 1000 if scenario == "1000-routes" else 1
    with open(os.path.join(cfg, "bench.yaml"), "w") as f:
        wasm = WASM_FILTERS.get(scenario)
        f.write(wicket_conf(certs, routes=routes, canary=scenario == "canary-90-10", jwt=scenario == "jwt", wasm=wasm,
                            telemetry=scenario != "no-telemetry"))
    proc = Proc([WICKET, "run", "--config", cfg, "--workers", "1", "--bind-address", "127.0.0.1", "--admin", f"127.0.0.1:{WICKET_ADMIN}"], 0)
    wait_port(WICKET_ADMIN)
    for _ in range(200):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{WICKET_ADMIN}/ready", timeout=1).status == 200:
                break
        except OSError:
            time.sleep(0.05)
    wait_port(WICKET_HTTP)
    return proc


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="default: all")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    for tool in ("nginx", "wrk", "h2load", "taskset", "openssl"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} is missing: apt-get install nginx-light wrk nghttp2-client util-linux openssl")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "wicket"], cwd=ROOT, check=True)
        if set(WASM_FILTERS) & set(args.scenario or SCENARIOS):
            subprocess.run(["rustup", "target", "add", "wasm32-wasip1"], check=True)
            for manifest in ("tests/filters/Cargo.toml", "plugins/Cargo.toml"):
                subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip1", "--manifest-path",
                                manifest, "--target-dir", "target/wasm-filters"], cwd=ROOT, check=True)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    scenarios = args.scenario or list(SCENARIOS)
    work = tempfile.mkdtemp(prefix="wicket-bench-")
    certs = os.path.join(work, "certs")
    os.makedirs(certs)
    sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
        "-subj", "/CN=bench.local", "-keyout", f"{certs}/tls.key", "-out", f"{certs}/tls.crt"])
    for name, conf in (("upstream", upstream_conf(work)), ("proxy", nginx_conf(work, certs))):
        with open(os.path.join(work, f"{name}.conf"), "w") as f:
            f.write(conf)
    upstream = Proc([nginx, "-e", "stderr", "-c", os.path.join(work, "upstream.conf")], 1)
    wait_port(UPSTREAM_PORT)
    rows = []
    try:
        for scenario in scenarios:
            results = {"wicket": [], "nginx": []}
            for _ in range(args.rounds):
                for who in ("wicket", "nginx"):
                    if who == "nginx":
                        proxy = Proc([nginx, "-e", "stderr", "-c", os.path.join(work, "proxy.conf")], 0)
                        wait_port(NGINX_H1)
                        ports = {"h1": NGINX_H1, "h2c": NGINX_H2C, "tls": NGINX_TLS}
                    else:
                        proxy = start_wicket(work, certs, scenario)
                        ports = {"h1": WICKET_HTTP, "h2c": WICKET_HTTP, "tls": WICKET_TLS}
                    try:
                        SCENARIOS[scenario](ports, 1)  # warm up connections and caches
                        results[who].append(measure(proxy, ports, scenario, args.duration))
                    finally:
                        proxy.stop()
                        time.sleep(0.3)
            rows.append((scenario, results))
    finally:
        upstream.stop()
    report(rows, args)
    if not args.scenario:
        here = os.path.dirname(os.path.abspath(__file__))
        subprocess.run([sys.executable, os.path.join(here, "capacity.py"), "--no-build"], check=True)
        if os.geteuid() == 0:
            subprocess.run([sys.executable, os.path.join(here, "sidecar.py"), "--no-build",
                            "--duration", str(args.duration), "--rounds", str(args.rounds)], check=True)
        else:
            print("\nsidecar path: skipped (network namespaces need root)")


def best(runs, key, lower=True):
    values = [r[key] for r in runs if r[key] is not None]
    if not values:
        return None
    return min(values) if lower else max(values)


def report(rows, args):
    print(f"\n{args.rounds} alternating rounds of {args.duration}s per proxy; proxy on core 0, load and upstream on core 1")
    header = f"{'scenario':<14}{'proxy':<8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU µs/req':>12}{'kernel %':>10}{'RSS MB':>8}  notes"
    print(header)
    print("-" * len(header))
    for scenario, results in rows:
        summary = {}
        for who, runs in results.items():
            s = {
                "rps": best(runs, "rps", lower=False),
                "p50": best(runs, "p50"),
                "p99": best(runs, "p99"),
                "cpu_us": best(runs, "cpu_us"),
                "kernel_pct": min(runs, key=lambda r: r["cpu_us"] or float("inf"))["kernel_pct"],
                "rss_mb": max(r["rss_mb"] for r in runs),
            }
            summary[who] = s
            notes = []
            if any(r["noise"] for r in runs):
                notes.append("noisy core 0")
            if any(r["bad"] for r in runs):
                notes.append(f"{sum(r['bad'] for r in runs)} bad responses")
            fmt = lambda v, spec: format(v, spec) if v is not None else "-"
            print(f"{scenario:<14}{who:<8}{fmt(s['rps'], '10.0f')}{fmt(s['p50'], '9.2f')}{fmt(s['p99'], '9.2f')}"
                  f"{fmt(s['cpu_us'], '12.1f')}{fmt(s['kernel_pct'], '10.0f')}{fmt(s['rss_mb'], '8.1f')}  {', '.join(notes)}")
        w, n = summary["wicket"], summary["nginx"]
        ratio = lambda k: f"{w[k] / n[k]:.2f}" if w[k] and n[k] else "-"
        print(f"{'':<14}{'ratio':<8}{ratio('rps'):>10}{ratio('p50'):>9}{ratio('p99'):>9}{ratio('cpu_us'):>12}{'':>10}{ratio('rss_mb'):>8}  (wicket/nginx)")


if __name__ == "__main__":
    main()
