//! A real gateway for a test: config in a temp dir, Gateway port 80 on an ephemeral
//! loopback port, access log lines readable by the test.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, sync::mpsc, time::Duration};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use wicket::{
    config::{Bootstrap, KubernetesSettings},
    telemetry::AccessLog,
};

use crate::{client, Resp};

/// The mesh listener port tests use (mapped to an ephemeral port).
pub const MESH_PORT: u16 = 15001;

/// A gateway under test.
pub struct TestGateway {
    /// The running gateway.
    pub gateway: wicket::Gateway,
    dir: tempfile::TempDir,
    logs: mpsc::Receiver<String>,
    version: u64,
}

impl TestGateway {
    /// Starts a gateway on `config.yaml` = `yaml`; Gateway port 80 binds an ephemeral port.
    pub async fn start(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.yaml"), yaml).unwrap();
        Self::start_in(dir).await
    }

    /// Starts a gateway on `yaml` with bootstrap settings changed by `tune`.
    pub async fn start_with(yaml: &str, tune: impl FnOnce(&mut Bootstrap)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.yaml"), yaml).unwrap();
        Self::launch(dir, tune).await
    }

    /// Starts a gateway that also serves `mesh`-bound VirtualServices on port 15001.
    pub async fn start_mesh(yaml: &str) -> Self {
        Self::start_with(yaml, |b| b.mesh_port = Some(MESH_PORT)).await
    }

    /// Starts a gateway reading the Kubernetes API of `api` (and `yaml` as a config
    /// directory too, when given); returns once it has published its first snapshot.
    pub async fn start_kubernetes(api: &crate::apiserver::FakeApiServer, yaml: Option<&str>) -> Self {
        Self::start_replica(api, yaml, "wicket").await
    }

    /// Like `start_kubernetes`, as the replica `identity` (also its API user).
    pub async fn start_replica(api: &crate::apiserver::FakeApiServer, yaml: Option<&str>, identity: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        if let Some(yaml) = yaml {
            std::fs::write(dir.path().join("config.yaml"), yaml).unwrap();
        }
        let kubeconfig = api.kubeconfig_for(identity);
        let mut gw = Self::launch(dir, |b| {
            if yaml.is_none() {
                b.config_dir = None;
            }
            let namespaces = Vec::new();
            let identity = identity.to_string();
            b.kubernetes = Some(KubernetesSettings { kubeconfig: Some(kubeconfig), namespaces, identity });
        })
        .await;
        gw.wait_for_reload().await;
        gw
    }

    /// Starts a gateway on an existing directory.
    pub async fn start_in(dir: tempfile::TempDir) -> Self {
        Self::launch(dir, |_| {}).await
    }

    async fn launch(dir: tempfile::TempDir, tune: impl FnOnce(&mut Bootstrap)) -> Self {
        let mut bootstrap = Bootstrap {
            config_dir: Some(dir.path().to_path_buf()),
            admin: Some("127.0.0.1:0".parse().unwrap()),
            port_map: BTreeMap::from([(80, 0), (443, 0), (8080, 0), (8443, 0), (9000, 0), (MESH_PORT, 0)]),
            bind_ip: "127.0.0.1".parse().unwrap(),
            ..Bootstrap::default()
        };
        tune(&mut bootstrap);
        let (log, logs) = AccessLog::channel();
        let gateway = wicket::start(bootstrap, log).await.unwrap();
        let version = gateway.snapshot().version;
        Self { gateway, dir, logs, version }
    }

    /// The config directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The bound address of Gateway port 80.
    pub fn addr(&self) -> SocketAddr {
        self.gateway.listener_addr(80).expect("port 80 is open")
    }

    /// The bound address of a Gateway server port.
    pub fn addr_of(&self, port: u16) -> SocketAddr {
        self.gateway.listener_addr(port).expect("the port is open")
    }

    /// GET through the mesh listener, as a workload in the mesh would.
    pub async fn mesh_get(&self, host: &str, path: &str) -> Resp {
        client::send(self.addr_of(MESH_PORT), client::get(host, path)).await
    }

    /// Sends any request through the mesh listener.
    pub async fn mesh_send(&self, req: Request<Full<Bytes>>) -> Resp {
        client::send(self.addr_of(MESH_PORT), req).await
    }

    /// GET `path` with `Host: host`.
    pub async fn get(&self, host: &str, path: &str) -> Resp {
        client::send(self.addr(), client::get(host, path)).await
    }

    /// Sends any request over HTTP/1.1.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Resp {
        client::send(self.addr(), req).await
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        client::send(self.gateway.admin_addr().unwrap(), client::get("admin", "/metrics")).await.body
    }

    /// The admin listener's `/ready` body.
    pub async fn ready(&self) -> String {
        client::send(self.gateway.admin_addr().unwrap(), client::get("admin", "/ready")).await.body
    }

    /// The sum of the samples of `name` whose labels contain each of `labels`
    /// (`cause="trap"`); 0 when there are none.
    pub async fn metric_sum(&self, name: &str, labels: &[&str]) -> u64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
            .filter(|l| labels.iter().all(|label| l.contains(label)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Writes a config file and waits until the gateway applied a new snapshot.
    pub async fn write(&mut self, file: &str, yaml: &str) -> u64 {
        std::fs::write(self.dir.path().join(file), yaml).unwrap();
        self.wait_for_reload().await
    }

    /// Waits for the next snapshot (generous limit; never asserts on time).
    pub async fn wait_for_reload(&mut self) -> u64 {
        let next = tokio::time::timeout(Duration::from_secs(30), self.gateway.wait_for_version_after(self.version))
            .await
            .expect("the gateway reloads");
        self.version = next;
        next
    }

    /// Graceful shutdown with a drain limit; the connections left open at the end.
    pub async fn shutdown(self, limit: Duration) -> usize {
        self.gateway.shutdown(limit).await
    }

    /// Waits for an access log line that satisfies `pred` (lines before it are skipped).
    pub async fn find_log(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        for _ in 0..1000 {
            while let Ok(line) = self.logs.try_recv() {
                let value = serde_json::from_str(&line).unwrap();
                if pred(&value) {
                    return value;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no matching access log line within 10s");
    }

    /// Waits for the next access log line as written (text formats).
    pub async fn next_line(&self) -> Option<String> {
        for _ in 0..300 {
            if let Ok(line) = self.logs.try_recv() {
                return Some(line);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// Waits for the next access log line (without blocking the runtime).
    pub async fn next_log(&self) -> serde_json::Value {
        for _ in 0..1000 {
            if let Ok(line) = self.logs.try_recv() {
                return serde_json::from_str(&line).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no access log line within 10s");
    }
}
