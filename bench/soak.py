#!/usr/bin/env python3
"""Soak: mixed traffic through Wicket while its config reloads and an upstream fails.

Outside CI, bounded in time (default 5 minutes, at most 10). Starts two echo
upstreams (`wicket echo`, one of which is killed and restarted every few seconds),
a gateway in front of them with retries and outlier detection, drives it with wrk
(HTTP/1.1 keep-alive) for the whole run, and rewrites the routes every second. At
the end it prints the requests sent, the failures (non-2xx and socket errors), the
reloads applied, and the gateway's memory at the start and the end of the load.

    python3 bench/soak.py [--minutes 5]
"""

import argparse
import os
import re
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WICKET = os.path.join(ROOT, "target", "release", "wicket")
GATEWAY_PORT, ADMIN_PORT, STEADY_PORT, FLAKY_PORT = 19080, 19090, 19081, 19082

CONFIG = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: soak}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gw}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo}}
spec:
  hosts: [echo.soak]
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {steady}}}}}
  - {{address: 127.0.0.1, ports: {{http: {flaky}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo}}
spec:
  host: echo.soak
  trafficPolicy:
    outlierDetection: {{consecutiveGatewayErrors: 2, baseEjectionTime: 2s, maxEjectionPercent: 50}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo}}
spec:
  hosts: ["*"]
  gateways: [soak]
  http:
  - match: [{{uri: {{prefix: /gen-{generation}/}}}}]
    route: [{{destination: {{host: echo.soak}}}}]
  - retries: {{attempts: 3, retryOn: "connect-failure,reset,503"}}
    headers: {{response: {{set: {{x-generation: "{generation}"}}}}}}
    route: [{{destination: {{host: echo.soak}}}}]
"""


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def wait_ready(timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the gateway never became ready")


def config_version():
    with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/metrics", timeout=2) as r:
        return int(re.search(r"^wicket_config_version (\d+)", r.read().decode(), re.M).group(1))


def echo(port, name):
    return subprocess.Popen([WICKET, "echo", f"127.0.0.1:{port}={name}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=5)
    args = ap.parse_args()
    seconds = int(min(args.minutes, 10) * 60)
    subprocess.run(["cargo", "build", "--release", "-p", "wicket"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="wicket-soak-")
    path = os.path.join(work, "soak.yaml")
    write = lambda g: open(path, "w").write(
        CONFIG.format(gw=GATEWAY_PORT, steady=STEADY_PORT, flaky=FLAKY_PORT, generation=g)
    )
    write(0)
    steady, flaky = echo(STEADY_PORT, "steady"), echo(FLAKY_PORT, "flaky")
    gw = subprocess.Popen(
        [WICKET, "run", "--config", work, "--admin", f"127.0.0.1:{ADMIN_PORT}", "--bind-address", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready()
        base_version = config_version()
        wrk = subprocess.Popen(
            ["wrk", "-t1", "-c16", f"-d{seconds}s", f"http://127.0.0.1:{GATEWAY_PORT}/"],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(2)
        rss_start = rss_kb(gw.pid)
        started, generation = time.time(), 0
        while time.time() - started < seconds - 3:
            generation += 1
            write(generation)
            if generation % 5 == 0:  # the flaky upstream dies, and comes back 2 s later
                flaky.kill()
                flaky.wait()
            if generation % 5 == 2:
                flaky = echo(FLAKY_PORT, "flaky")
            time.sleep(1)
        rss_end = rss_kb(gw.pid)
        out, _ = wrk.communicate(timeout=seconds + 30)
        reloads = config_version() - base_version
    finally:
        for p in (gw, steady, flaky):
            p.kill()
    sent = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    print(f"soak {seconds}s: {sent} requests, {non2xx} non-2xx, {errors} socket errors, {reloads} reloads applied")
    print(f"gateway RSS: {rss_start / 1024:.1f} MB after warm-up, {rss_end / 1024:.1f} MB at the end "
          f"({(rss_end - rss_start) / 1024:+.1f} MB)")


if __name__ == "__main__":
    main()
