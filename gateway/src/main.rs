//! The `wicket` command line: parses arguments and calls into the library.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use wicket::{config::Bootstrap, telemetry::AccessLog};

#[derive(Parser)]
#[command(name = "wicket", version, about = "A WebAssembly-extensible Istio ingress gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once at start-up: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the ingress gateway on a directory of Istio YAML.
    Run {
        /// Directory of Istio YAML (watched and hot-reloaded).
        #[arg(long, default_value = "config")]
        config: PathBuf,
        /// The gateway's labels, matched by Gateway selectors.
        #[arg(long, default_value = "istio=ingressgateway")]
        labels: String,
        /// The gateway's namespace (and the default for resources without one).
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Admin listener address (/ready, /config_dump).
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
        /// Bind Gateway server ports elsewhere, like a Service's targetPort: 80=8080,443=8443.
        #[arg(long, default_value = "")]
        port_map: String,
        /// Address listeners bind when a server has no `bind`.
        #[arg(long, default_value = "0.0.0.0")]
        bind_address: std::net::IpAddr,
        /// Where Gateway `credentialName` secrets live: DIR/<namespace>/<name>/tls.crt, tls.key, ca.crt.
        #[arg(long, default_value = "credentials")]
        credentials_dir: PathBuf,
        /// Also serve VirtualServices bound to `mesh` on this port, routed by Host
        /// (a sidecar's outbound listener, without traffic capture).
        #[arg(long)]
        mesh_port: Option<u16>,
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
        /// Also start a built-in echo upstream: ADDR=NAME (repeatable; for demos).
        #[arg(long = "echo", value_name = "ADDR=NAME")]
        echo: Vec<String>,
    },
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
    },
    /// Serve a demo upstream that echoes each request as JSON: ADDR=NAME (repeatable).
    Echo {
        /// Listeners as ADDR=NAME.
        #[arg(required = true, value_name = "ADDR=NAME")]
        upstreams: Vec<String>,
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
        Command::Validate { dir, namespace, labels } => {
            let bootstrap =
                Bootstrap { config_dir: dir.clone(), namespace, labels: parse_map(&labels)?, ..Bootstrap::default() };
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
        Command::Run {
            config,
            labels,
            namespace,
            admin,
            port_map,
            bind_address,
            mesh_port,
            credentials_dir,
            drain_time,
            max_connections,
            workers,
            wasm_cache_dir,
            max_request_body,
            echo,
        } => {
            let bootstrap = Bootstrap {
                config_dir: config.clone(),
                namespace,
                labels: parse_map(&labels)?,
                admin: Some(admin),
                port_map: parse_port_map(&port_map)?,
                bind_ip: bind_address,
                mesh_port,
                credentials_dir,
                max_connections,
                wasm_cache_dir: wasm_cache_dir.or_else(|| Bootstrap::default().wasm_cache_dir),
                max_request_body,
                ..Bootstrap::default()
            };
            let rt = runtime(workers)?;
            let result = rt.block_on(async {
                for spec in &echo {
                    let (addr, name) = parse_echo(spec)?;
                    wicket::echo::serve(addr, name).await.with_context(|| format!("binding echo upstream {addr}"))?;
                }
                let gateway = wicket::start_ingress(bootstrap, AccessLog::stdout())
                    .await
                    .with_context(|| format!("starting on {}", config.display()))?;
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
    }
}

fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n.max(1));
    }
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
