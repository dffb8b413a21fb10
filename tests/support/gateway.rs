//! A real gateway for a test: config in a temp dir, Gateway port 80 on an ephemeral
//! loopback port, access log lines readable by the test.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, sync::mpsc, time::Duration};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use wicket::{config::Bootstrap, telemetry::AccessLog};

use crate::{client, Resp};

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

    /// Starts a gateway on an existing directory.
    pub async fn start_in(dir: tempfile::TempDir) -> Self {
        let bootstrap = Bootstrap {
            config_dir: dir.path().to_path_buf(),
            admin: Some("127.0.0.1:0".parse().unwrap()),
            port_map: BTreeMap::from([(80, 0), (8080, 0)]),
            bind_ip: "127.0.0.1".parse().unwrap(),
            ..Bootstrap::default()
        };
        let (log, logs) = AccessLog::channel();
        let gateway = wicket::start_ingress(bootstrap, log).await.unwrap();
        let version = gateway.snapshot().version;
        Self {
            gateway,
            dir,
            logs,
            version,
        }
    }

    /// The config directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The bound address of Gateway port 80.
    pub fn addr(&self) -> SocketAddr {
        self.gateway.listener_addr(80).expect("port 80 is open")
    }

    /// GET `path` with `Host: host`.
    pub async fn get(&self, host: &str, path: &str) -> Resp {
        client::send(self.addr(), client::get(host, path)).await
    }

    /// Sends any request over HTTP/1.1.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Resp {
        client::send(self.addr(), req).await
    }

    /// Writes a config file and waits until the gateway applied a new snapshot.
    pub async fn write(&mut self, file: &str, yaml: &str) -> u64 {
        std::fs::write(self.dir.path().join(file), yaml).unwrap();
        self.wait_for_reload().await
    }

    /// Waits for the next snapshot (generous limit; never asserts on time).
    pub async fn wait_for_reload(&mut self) -> u64 {
        let next = tokio::time::timeout(
            Duration::from_secs(30),
            self.gateway.wait_for_version_after(self.version),
        )
        .await
        .expect("the gateway reloads");
        self.version = next;
        next
    }

    /// The access log lines written so far, parsed.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.logs
            .try_iter()
            .map(|l| serde_json::from_str(&l).unwrap())
            .collect()
    }

    /// Waits for the next access log line.
    pub fn next_log(&self) -> serde_json::Value {
        let line = self
            .logs
            .recv_timeout(Duration::from_secs(10))
            .expect("an access log line");
        serde_json::from_str(&line).unwrap()
    }
}
