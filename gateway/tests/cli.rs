//! The `wicket` binary's own commands, run as a user would: the README's gateway on the
//! bundled config, capture rules installed and removed in a network namespace, the
//! development CA, injection on stdin.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output, Stdio};

fn wicket(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wicket")).args(args).output().unwrap()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// A scratch network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Option<Self> {
        let name = format!("wkcli{}", std::process::id());
        let made = Command::new("ip").args(["netns", "add", &name]).stderr(Stdio::null()).status();
        let tools = Command::new("iptables-restore").arg("-V").stdout(Stdio::null()).status().is_ok();
        match made {
            Ok(s) if s.success() && tools => Some(Self(name)),
            _ => None,
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip").args(["netns", "exec", &self.0, program]).args(args).output().unwrap()
    }

    fn nat_rules(&self) -> String {
        text(&self.run("iptables", &["-t", "nat", "-S"]).stdout)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The README's command (with one worker, as the benchmarks run it) in a namespace of
/// its own, so its fixed ports cannot clash: it routes by the bundled config and exits
/// cleanly on SIGTERM.
#[test]
fn the_readme_gateway_serves_the_bundled_config_and_exits_on_sigterm() {
    let has_curl = Command::new("curl").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    let (Some(ns), true) = (Netns::new(), has_curl) else {
        eprintln!("skipped: needs root, ip, iptables and curl");
        return;
    };
    assert!(ns.run("ip", &["link", "set", "lo", "up"]).status.success());
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");
    let bin = env!("CARGO_BIN_EXE_wicket");
    let args = ["netns", "exec", &ns.0, bin, "run", "--config", config, "--workers", "1"];
    let gateway = Command::new("ip")
        .args(args)
        .args(["--echo", "127.0.0.1:9081=v1", "--echo", "127.0.0.1:9082=v2", "--drain-time", "1s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let curl = |extra: &[&str]| {
        let mut args = vec!["-s", "--max-time", "5"];
        args.extend_from_slice(extra);
        text(&ns.run("curl", &args).stdout)
    };
    // The first request waits, by curl's retries, for the listener to open.
    let hello = curl(&["--retry", "20", "--retry-connrefused", "--retry-delay", "1", "http://127.0.0.1:8080/hello"]);
    let tester = curl(&["-H", "end-user: tester", "http://127.0.0.1:8080/items"]);
    let canary = curl(&["-i", "http://127.0.0.1:8080/"]);
    // `ip netns exec` execs the gateway, so the child is the gateway itself. It is
    // stopped before any assertion so that a failure leaves no gateway behind.
    let pid = gateway.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = gateway.wait_with_output().unwrap();

    assert_eq!(hello, "hello from wicket\n", "{}", text(&out.stderr));
    assert!(tester.contains("\"upstream\": \"v2\"") && tester.contains("\"path\": \"/items\""), "{tester}");
    assert!(canary.contains("x-served-by: wicket"), "{canary}");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("drained; exiting"), "{}", text(&out.stderr));
}

#[test]
fn capture_installs_and_removes_istios_rules_in_a_namespace() {
    let Some(ns) = Netns::new() else {
        eprintln!("skipped: needs root, ip and iptables");
        return;
    };
    let bin = env!("CARGO_BIN_EXE_wicket");
    let out = ns.run(bin, &["capture", "--mark", "1337", "--exclude-outbound-ports", "5432"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rules = ns.nat_rules();
    for expected in [
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A ISTIO_OUTPUT -m mark --mark 0x539 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "--dports 5432 -j RETURN",
    ] {
        assert!(rules.contains(expected), "{expected:?} missing from\n{rules}");
    }
    for _ in 0..2 {
        let out = ns.run(bin, &["capture", "--remove"]);
        assert!(out.status.success(), "removing twice is fine: {}", text(&out.stderr));
        assert!(!ns.nat_rules().contains("ISTIO"), "{}", ns.nat_rules());
    }
}

#[test]
fn bad_capture_options_and_a_second_ca_init_are_errors_that_say_why() {
    let out = wicket(&["capture", "--dry-run", "--include-inbound-ports", "80,web"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("--include-inbound-ports") && err.contains("\"web\""), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let ca = ca.to_str().unwrap();
    assert!(wicket(&["ca", "init", "--dir", ca]).status.success());
    let again = wicket(&["ca", "init", "--dir", ca]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("already holds a root certificate"), "{}", text(&again.stderr));
    let out_dir = dir.path().join("certs");
    let issued = wicket(&[
        "ca",
        "issue",
        "--ca",
        ca,
        "--namespace",
        "shop",
        "--service-account",
        "cart",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(issued.status.success(), "{}", text(&issued.stderr));
    assert!(text(&issued.stdout).contains("spiffe://cluster.local/ns/shop/sa/cart"));
    for f in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
        assert!(out_dir.join(f).is_file(), "{f}");
    }
}

#[test]
fn inject_reads_stdin_and_passes_other_kinds_through_with_a_warning() {
    let input = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: fast\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: web\n    image: nginx\n";
    let mut child = Command::new(env!("CARGO_BIN_EXE_wicket"))
        .args(["inject", "-f", "-", "--image", "wicket:dev"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stderr.contains("ConfigMap/settings: not a workload; passed through unchanged"), "{stderr}");
    assert!(
        stdout.starts_with("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: fast\n---\n"),
        "{stdout}"
    );
    assert!(stdout.contains("name: istio-proxy") && stdout.contains("image: wicket:dev"), "{stdout}");
}

/// `validate` names every field it reads but does not apply, with its path.
#[test]
fn validate_reports_fields_that_are_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dr.yaml"),
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer:
        simple: LEAST_REQUEST
        localityLbSetting: {enabled: true}
",
    )
    .unwrap();
    let out = wicket(&["validate", dir.path().to_str().unwrap()]);
    let stdout = text(&out.stdout) + &text(&out.stderr);
    assert!(out.status.success(), "warnings only: {stdout}");
    assert!(
        stdout.contains(
            "dr.yaml:1: DestinationRule/default/reviews: spec.subsets[0].trafficPolicy.loadBalancer.localityLbSetting: \
             warning: not applied: locality load balancing is not implemented"
        ),
        "{stdout}"
    );
}

/// `validate` runs offline: a remote module it cannot fetch is a warning (the fail
/// strategy decides at run time), and `--credentials-dir` is where `credentialName`
/// secrets are looked up.
#[test]
fn validate_warns_of_unfetchable_modules_and_reads_the_credentials_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("wasm.yaml"),
        "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: remote, namespace: istio-system}
spec:
  url: oci://registry.example/filters/auth:v1
",
    )
    .unwrap();
    let out = wicket(&["validate", dir.path().to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("warning: cannot fetch") && stdout.contains("FAIL_CLOSE"), "{stdout}");

    std::fs::write(
        dir.path().join("gw.yaml"),
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [shop.test]
    tls: {mode: SIMPLE, credentialName: shop-cert}
",
    )
    .unwrap();
    let creds = tempfile::tempdir().unwrap();
    let args = ["validate", dir.path().to_str().unwrap(), "--credentials-dir", creds.path().to_str().unwrap()];
    let stdout = text(&wicket(&args).stdout);
    assert!(stdout.contains(creds.path().to_str().unwrap()), "the error names the directory it looked in: {stdout}");
}
