//! The `wicket` command line: parses arguments and calls into the library.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use wicket::{
    config::{Bootstrap, KubernetesSettings, SidecarSettings},
    sidecar::{capture::CaptureConfig, inject::InjectConfig},
    telemetry::AccessLog,
};

#[derive(Parser)]
#[command(name = "wicket", version, about = "A WebAssembly-extensible Istio ingress gateway and sidecar")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options every serving mode shares.
#[derive(Args)]
struct ServeArgs {
    /// Directory of Istio YAML (watched and hot-reloaded); default `config`, or none
    /// with --kubernetes.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Read Istio resources, Services, EndpointSlices, Pods and Secrets from the
    /// Kubernetes API (merged with --config, whose files win).
    #[arg(long)]
    kubernetes: bool,
    /// Kubeconfig for --kubernetes (default: KUBECONFIG, ~/.kube/config, else the
    /// in-cluster service account).
    #[arg(long, requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// Namespaces --kubernetes watches, comma-separated (default: all).
    #[arg(long, requires = "kubernetes", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// The proxy's namespace (and the default for resources without one).
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Admin listener address (/ready, /metrics, /config_dump).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// On SIGTERM, how long open connections may finish (Istio `terminationDrainDuration`).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_time: std::time::Duration,
    /// Open connections allowed per listener; more are closed at once.
    #[arg(long, default_value_t = 100_000)]
    max_connections: usize,
    /// Worker threads serving traffic (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Cache of compiled Wasm modules, by sha256 (default: <tmp>/wicket-wasm-cache).
    #[arg(long)]
    wasm_cache_dir: Option<PathBuf>,
    /// Largest request body accepted, in bytes (413 above it); default no limit.
    #[arg(long)]
    max_request_body: Option<u64>,
    /// The workload identity for mutual TLS in the mesh: a directory with
    /// cert-chain.pem, key.pem, root-cert.pem (istio-agent), svid.pem, svid_key.pem,
    /// bundle.pem (SPIRE) or tls.crt, tls.key, ca.crt; rotated files are picked up.
    #[arg(long)]
    identity_dir: Option<PathBuf>,
    /// SPIFFE trust domain of the mesh.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Address listeners bind.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: std::net::IpAddr,
}

impl ServeArgs {
    fn bootstrap(self, labels: &str) -> anyhow::Result<Bootstrap> {
        Ok(Bootstrap {
            config_dir: match (self.config, self.kubernetes) {
                (Some(dir), _) => Some(dir),
                (None, true) => None,
                (None, false) => Some(PathBuf::from("config")),
            },
            kubernetes: self.kubernetes.then(|| KubernetesSettings {
                kubeconfig: self.kubeconfig,
                namespaces: self.watch_namespaces.into_iter().filter(|n| !n.is_empty()).collect(),
                identity: KubernetesSettings::default_identity(),
            }),
            namespace: self.namespace,
            labels: parse_map(labels)?,
            admin: Some(self.admin),
            bind_ip: self.bind_address,
            max_connections: self.max_connections,
            wasm_cache_dir: self.wasm_cache_dir.or_else(|| Bootstrap::default().wasm_cache_dir),
            max_request_body: self.max_request_body,
            identity_dir: self.identity_dir,
            trust_domain: self.trust_domain,
            ..Bootstrap::default()
        })
    }
}

#[derive(Subcommand)]
// Parsed once at start-up: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the ingress gateway on a directory of Istio YAML.
    Run {
        #[command(flatten)]
        serve: ServeArgs,
        /// The gateway's labels, matched by Gateway selectors.
        #[arg(long, default_value = "istio=ingressgateway")]
        labels: String,
        /// Bind Gateway server ports elsewhere, like a Service's targetPort: 80=8080,443=8443.
        #[arg(long, default_value = "")]
        port_map: String,
        /// Where Gateway `credentialName` secrets live: DIR/<namespace>/<name>/tls.crt, tls.key, ca.crt.
        #[arg(long, default_value = "credentials")]
        credentials_dir: PathBuf,
        /// Also serve VirtualServices bound to `mesh` on this port, routed by Host
        /// (a sidecar's outbound listener, without traffic capture).
        #[arg(long)]
        mesh_port: Option<u16>,
        /// Also start a built-in echo upstream: ADDR=NAME (repeatable; for demos).
        #[arg(long = "echo", value_name = "ADDR=NAME")]
        echo: Vec<String>,
    },
    /// Run as a workload's sidecar: serve traffic captured by `wicket capture`
    /// (outbound from the application, inbound from peers) with mutual TLS.
    Sidecar {
        #[command(flatten)]
        serve: ServeArgs,
        /// The workload's labels (policy selectors, subsets, metrics): app=reviews,version=v2.
        #[arg(long, default_value = "")]
        labels: String,
        /// The workload's service account (its SPIFFE identity).
        #[arg(long, default_value = "default")]
        service_account: String,
        /// Listener for captured outbound traffic.
        #[arg(long, default_value_t = 15001)]
        outbound_port: u16,
        /// Listener for captured inbound traffic.
        #[arg(long, default_value_t = 15006)]
        inbound_port: u16,
        /// Put this SO_MARK on the sidecar's own connections (pair with `capture --mark`
        /// when the sidecar shares the application's uid; needs CAP_NET_ADMIN).
        #[arg(long)]
        mark: Option<u32>,
        /// Serve readiness (/healthz/ready) and the application's rewritten kubelet
        /// probes (ISTIO_KUBE_APP_PROBERS) on this port.
        #[arg(long)]
        probe_port: Option<u16>,
    },
    /// Install (or print, or remove) the iptables rules that send a pod's TCP through
    /// its sidecar, as Istio's init container does.
    Capture(CaptureArgs),
    /// Add the sidecar to workloads (Pod, Deployment, StatefulSet, DaemonSet, Job,
    /// CronJob; multi-document YAML), like `istioctl kube-inject`.
    Inject {
        /// Input YAML ("-" for stdin).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Write here instead of stdout.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        values: InjectArgs,
        /// Labels of the target namespace (istio-injection=enabled|disabled decides
        /// for pods that do not say); omitted: inject unless a pod opts out.
        #[arg(long)]
        namespace_labels: Option<String>,
    },
    /// Serve the injection as a Kubernetes mutating admission webhook (HTTPS, /inject).
    InjectWebhook {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:9443")]
        addr: SocketAddr,
        /// Serving certificate (PEM; re-read when it changes).
        #[arg(long)]
        cert: PathBuf,
        /// Its private key.
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        values: InjectArgs,
    },
    /// A development certificate authority for workload identities.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Check a directory of Istio YAML offline; exits non-zero on any error.
    Validate {
        /// Directory to check.
        dir: PathBuf,
        /// Namespace for resources without one.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Gateway labels to bind with.
        #[arg(long, default_value = "istio=ingressgateway")]
        labels: String,
        /// Where Gateway `credentialName` secrets live, as for `run`.
        #[arg(long, default_value = "credentials")]
        credentials_dir: PathBuf,
    },
    /// Serve a demo upstream that echoes each request as JSON: ADDR=NAME (repeatable).
    Echo {
        /// Listeners as ADDR=NAME.
        #[arg(required = true, value_name = "ADDR=NAME")]
        upstreams: Vec<String>,
    },
}

/// `wicket capture`: istio-iptables' options under their long names.
#[derive(Args)]
struct CaptureArgs {
    /// Print the rules instead of installing them.
    #[arg(long)]
    dry_run: bool,
    /// Remove the rules and chains instead.
    #[arg(long, conflicts_with = "dry_run")]
    remove: bool,
    /// Also capture IPv6 (ip6tables).
    #[arg(long)]
    ipv6: bool,
    /// Outbound listener port.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Inbound listener port.
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// The proxy's uid, never redirected ("" for none).
    #[arg(long, default_value = "1337")]
    proxy_uid: String,
    /// The proxy's gid, never redirected ("" for none).
    #[arg(long, default_value = "1337")]
    proxy_gid: String,
    /// Traffic with this SO_MARK is the proxy's own (see `sidecar --mark`).
    #[arg(long)]
    mark: Option<u32>,
    /// Inbound ports to capture: a list or "*".
    #[arg(long, default_value = "*")]
    include_inbound_ports: String,
    /// Inbound ports to leave alone.
    #[arg(long, default_value = "15020,15021,15090")]
    exclude_inbound_ports: String,
    /// Outbound address ranges to capture: a list or "*".
    #[arg(long, default_value = "*")]
    include_outbound_ip_ranges: String,
    /// Outbound address ranges to leave alone.
    #[arg(long, default_value = "")]
    exclude_outbound_ip_ranges: String,
    /// Outbound ports always captured.
    #[arg(long, default_value = "")]
    include_outbound_ports: String,
    /// Outbound ports to leave alone.
    #[arg(long, default_value = "")]
    exclude_outbound_ports: String,
}

impl CaptureArgs {
    fn config(&self) -> anyhow::Result<CaptureConfig> {
        use wicket::sidecar::capture::{parse_cidrs, parse_ports};
        let list = |s: &str, what: &str| -> anyhow::Result<Vec<u16>> {
            Ok(parse_ports(s).map_err(anyhow::Error::msg).with_context(|| what.to_string())?.unwrap_or_default())
        };
        let id = |s: &str| -> anyhow::Result<Option<u32>> {
            if s.is_empty() {
                Ok(None)
            } else {
                Ok(Some(s.parse().with_context(|| format!("id {s:?}"))?))
            }
        };
        Ok(CaptureConfig {
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            proxy_uid: id(&self.proxy_uid)?,
            proxy_gid: id(&self.proxy_gid)?,
            mark: self.mark,
            include_inbound_ports: parse_ports(&self.include_inbound_ports)
                .map_err(anyhow::Error::msg)
                .context("--include-inbound-ports")?,
            exclude_inbound_ports: list(&self.exclude_inbound_ports, "--exclude-inbound-ports")?,
            include_outbound_cidrs: parse_cidrs(&self.include_outbound_ip_ranges)
                .map_err(anyhow::Error::msg)
                .context("--include-outbound-ip-ranges")?,
            exclude_outbound_cidrs: parse_cidrs(&self.exclude_outbound_ip_ranges)
                .map_err(anyhow::Error::msg)
                .context("--exclude-outbound-ip-ranges")?
                .unwrap_or_default(),
            include_outbound_ports: list(&self.include_outbound_ports, "--include-outbound-ports")?,
            exclude_outbound_ports: list(&self.exclude_outbound_ports, "--exclude-outbound-ports")?,
        })
    }
}

/// What injected sidecars look like.
#[derive(Args)]
struct InjectArgs {
    /// Image holding the wicket binary.
    #[arg(long)]
    image: Option<String>,
    /// ConfigMap with the mesh's Istio YAML, mounted as the sidecar's config.
    #[arg(long, default_value = "wicket-mesh")]
    config_map: String,
    /// SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
}

impl InjectArgs {
    fn config(self) -> InjectConfig {
        let defaults = InjectConfig::default();
        InjectConfig {
            image: self.image.unwrap_or(defaults.image),
            config_map: self.config_map,
            trust_domain: self.trust_domain,
            namespace_labels: None,
        }
    }
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a root CA (root-cert.pem, root-key.pem) in DIR.
    Init {
        /// Directory for the root.
        #[arg(long, default_value = "ca")]
        dir: PathBuf,
        /// Trust domain (the root's organization).
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Issue a workload certificate (cert-chain.pem, key.pem, root-cert.pem) into OUT.
    Issue {
        /// Directory of the root made by `ca init`.
        #[arg(long, default_value = "ca")]
        ca: PathBuf,
        /// Workload namespace.
        #[arg(long)]
        namespace: String,
        /// Workload service account.
        #[arg(long)]
        service_account: String,
        /// Trust domain of the SPIFFE identity.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Lifetime of the certificate.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: std::time::Duration,
        /// Output directory (what `sidecar --identity-dir` reads).
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    wicket::telemetry::log_level::init("info");
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wicket: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { dir, namespace, labels, credentials_dir } => {
            let bootstrap = Bootstrap {
                config_dir: Some(dir.clone()),
                namespace,
                labels: parse_map(&labels)?,
                credentials_dir,
                ..Bootstrap::default()
            };
            let diagnostics = wicket::validate(&bootstrap).with_context(|| format!("reading {}", dir.display()))?;
            for d in &diagnostics {
                println!("{d}");
            }
            let errors = diagnostics.iter().filter(|d| d.is_error()).count();
            println!("{errors} error(s), {} warning(s)", diagnostics.len() - errors);
            Ok(if errors > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::Echo { upstreams } => runtime(None)?.block_on(async {
            for spec in &upstreams {
                let (addr, name) = parse_echo(spec)?;
                let bound = wicket::echo::serve(addr, name.clone()).await.with_context(|| format!("binding {addr}"))?;
                tracing::info!(%bound, name, "echo upstream listening");
            }
            shutdown_signal().await;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Capture(args) => {
            if args.remove {
                wicket::sidecar::capture::remove(args.ipv6);
                return Ok(ExitCode::SUCCESS);
            }
            let config = args.config()?;
            if args.dry_run {
                print!("{}", config.rules(false));
                if args.ipv6 {
                    print!("{}", config.rules(true));
                }
                return Ok(ExitCode::SUCCESS);
            }
            wicket::sidecar::capture::install(&config, args.ipv6)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inject { file, output, values, namespace_labels } => {
            let input = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading stdin")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let config = InjectConfig {
                namespace_labels: namespace_labels.as_deref().map(parse_map).transpose()?,
                ..values.config()
            };
            let (text, warnings) = wicket::sidecar::inject::inject_text(&input, &config)?;
            for w in warnings {
                eprintln!("wicket: warning: {w}");
            }
            match output {
                Some(path) => std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?,
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::InjectWebhook { addr, cert, key, values } => runtime(None)?.block_on(async {
            let bound = wicket::sidecar::webhook::serve(addr, &cert, &key, values.config()).await?;
            tracing::info!(%bound, "injection webhook listening (POST /inject)");
            shutdown_signal().await;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Ca(CaCommand::Init { dir, trust_domain }) => {
            let root = wicket::sidecar::ca::init(&dir, &trust_domain)?;
            println!("root certificate: {}", root.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca(CaCommand::Issue { ca, namespace, service_account, trust_domain, ttl, out }) => {
            let request = wicket::sidecar::ca::IssueRequest {
                trust_domain: &trust_domain,
                namespace: &namespace,
                service_account: &service_account,
                ttl,
            };
            let id = wicket::sidecar::ca::issue(&ca, &out, &request)?;
            println!("{id} → {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Sidecar { serve, labels, service_account, outbound_port, inbound_port, mark, probe_port } => {
            let (workers, drain_time) = (serve.workers, serve.drain_time);
            let probers = match std::env::var(wicket::config::probers::PROBERS_ENV) {
                Ok(json) if !json.is_empty() => wicket::config::probers::parse(&json).map_err(anyhow::Error::msg)?,
                _ => Default::default(),
            };
            let sidecar = SidecarSettings {
                outbound_port,
                inbound_port,
                service_account,
                mark,
                probe_port,
                probers,
                ..Default::default()
            };
            let bootstrap = Bootstrap { sidecar: Some(sidecar), ..serve.bootstrap(&labels)? };
            if bootstrap.identity_dir.is_none() {
                tracing::warn!("no --identity-dir: mutual TLS is off (peers under STRICT will refuse this workload)");
            }
            serve_until_signal(bootstrap, workers, drain_time, &[])
        }
        Command::Run { serve, labels, port_map, credentials_dir, mesh_port, echo } => {
            let (workers, drain_time) = (serve.workers, serve.drain_time);
            let bootstrap = Bootstrap {
                port_map: parse_port_map(&port_map)?,
                mesh_port,
                credentials_dir,
                ..serve.bootstrap(&labels)?
            };
            serve_until_signal(bootstrap, workers, drain_time, &echo)
        }
    }
}

/// Starts the gateway or sidecar and serves until SIGTERM/SIGINT, then drains.
fn serve_until_signal(
    bootstrap: Bootstrap,
    workers: Option<usize>,
    drain_time: std::time::Duration,
    echo: &[String],
) -> anyhow::Result<ExitCode> {
    let from = match (&bootstrap.config_dir, &bootstrap.kubernetes) {
        (Some(dir), None) => dir.display().to_string(),
        (Some(dir), Some(_)) => format!("{} and the Kubernetes API", dir.display()),
        (None, _) => "the Kubernetes API".to_string(),
    };
    let rt = runtime(workers)?;
    let result = rt.block_on(async {
        for spec in echo {
            let (addr, name) = parse_echo(spec)?;
            wicket::echo::serve(addr, name).await.with_context(|| format!("binding echo upstream {addr}"))?;
        }
        let gateway =
            wicket::start(bootstrap, AccessLog::stdout()).await.with_context(|| format!("starting on {from}"))?;
        shutdown_signal().await;
        // A second signal while draining exits at once.
        tokio::select! {
            left = gateway.shutdown(drain_time) => tracing::info!(left, "drained; exiting"),
            _ = shutdown_signal() => tracing::warn!("second signal; exiting now"),
        }
        Ok(ExitCode::SUCCESS)
    });
    // Background work (reload tasks, fetchers) is not waited for once drained.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}

/// One worker is a current-thread runtime, like one nginx worker: every task runs on
/// the thread that accepted its connection, with no cross-thread wake-ups or work
/// stealing. Blocking work (snapshot compiles) still goes to tokio's blocking pool.
fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = match workers {
        Some(0 | 1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build().context("starting the runtime")
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

fn parse_map(s: &str) -> anyhow::Result<BTreeMap<String, String>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
            None => bail!("{p:?} is not key=value"),
        })
        .collect()
}

fn parse_port_map(s: &str) -> anyhow::Result<BTreeMap<u16, u16>> {
    parse_map(s)?
        .into_iter()
        .map(|(k, v)| {
            Ok((k.parse().with_context(|| format!("port {k:?}"))?, v.parse().with_context(|| format!("port {v:?}"))?))
        })
        .collect()
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    wicket::config::GoDuration::parse(s).map(|d| d.0)
}

fn parse_echo(spec: &str) -> anyhow::Result<(SocketAddr, String)> {
    let (addr, name) = spec.split_once('=').with_context(|| format!("{spec:?} is not ADDR=NAME"))?;
    Ok((addr.parse().with_context(|| format!("address {addr:?}"))?, name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_containers_have_arguments_this_binary_accepts() {
        let annotations = [
            ("traffic.sidecar.istio.io/excludeOutboundPorts".to_string(), "5432,6379".to_string()),
            ("traffic.sidecar.istio.io/includeOutboundIPRanges".to_string(), "10.0.0.0/8".to_string()),
            ("traffic.sidecar.istio.io/includeInboundPorts".to_string(), "".to_string()),
        ]
        .into();
        let config =
            CaptureConfig { mark: Some(7), ..CaptureConfig::default() }.with_annotations(&annotations).unwrap();
        let argv = std::iter::once("wicket".to_string()).chain(config.args());
        let Command::Capture(args) = Cli::try_parse_from(argv).unwrap().command else { panic!("capture") };
        assert_eq!(args.config().unwrap(), config, "the init container installs what the annotations said");

        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {app: a}}\nspec: {containers: [{name: a, image: a}]}\n";
        let (out, _) = wicket::sidecar::inject::inject_text(pod, &InjectConfig::default()).unwrap();
        let doc: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
        let proxy = &doc["spec"]["containers"][1];
        let argv = std::iter::once("wicket")
            .chain(proxy["args"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap()))
            .map(|a| a.replace("$(POD_NAMESPACE)", "shop"));
        let Command::Sidecar { serve, labels, service_account, .. } = Cli::try_parse_from(argv).unwrap().command else {
            panic!("sidecar")
        };
        assert_eq!((serve.namespace.as_str(), labels.as_str(), service_account.as_str()), ("shop", "app=a", "default"));
    }
}
