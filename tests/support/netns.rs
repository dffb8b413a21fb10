//! Pods as network namespaces: each pod is a namespace with an `eth0` on a bridge
//! that lives in a namespace of its own, so nothing of the machine's own network is
//! touched. Code "in" a pod runs on a Tokio runtime whose threads entered the pod's
//! namespace, so its sockets (a sidecar's, an app's) are the pod's.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use tokio::{runtime::Handle, sync::oneshot};

/// Why these tests cannot run here (not root, no `ip`/`iptables`), or `None`.
pub fn unavailable() -> Option<String> {
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false);
    if !root {
        return Some("network namespace tests need root".into());
    }
    for tool in ["ip", "iptables-restore"] {
        let found = Command::new(tool).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
        if !found {
            return Some(format!("{tool} is not installed (apt-get install iproute2 iptables)"));
        }
    }
    None
}

/// Runs `ip` (or another tool) and fails the test on an error.
fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// The pods' network: 10.77.<net>.0/24 on a bridge in its own namespace.
pub struct Network {
    prefix: String,
    net: u8,
    pods: AtomicU32,
}

static NETWORKS: AtomicU32 = AtomicU32::new(0);

impl Network {
    /// A new, empty network (names carry the process id, so parallel runs differ).
    pub fn new() -> Self {
        let n = NETWORKS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("wk{}n{n}", std::process::id() % 100_000);
        let ns = format!("{prefix}-br");
        run("ip", &["netns", "add", &ns]);
        run("ip", &["-n", &ns, "link", "add", "br0", "type", "bridge"]);
        run("ip", &["-n", &ns, "link", "set", "br0", "up"]);
        Self { prefix, net: u8::try_from(n % 200).unwrap_or(0), pods: AtomicU32::new(0) }
    }

    /// A pod with a default route out of `eth0` (so captured calls to service
    /// addresses have somewhere to go before iptables redirects them).
    pub fn pod(&self, name: &str) -> Pod {
        let i = self.pods.fetch_add(1, Ordering::Relaxed);
        let ns = format!("{}-{name}", self.prefix);
        let ip = Ipv4Addr::new(10, 77, self.net, u8::try_from(i + 2).unwrap_or(254));
        let (inside, outside) = (format!("{}p{i}", self.prefix), format!("{}b{i}", self.prefix));
        run("ip", &["netns", "add", &ns]);
        run("ip", &["link", "add", &inside, "type", "veth", "peer", "name", &outside]);
        run("ip", &["link", "set", &inside, "netns", &ns]);
        run("ip", &["link", "set", &outside, "netns", &format!("{}-br", self.prefix)]);
        run("ip", &["-n", &format!("{}-br", self.prefix), "link", "set", &outside, "master", "br0", "up"]);
        run("ip", &["-n", &ns, "link", "set", &inside, "name", "eth0"]);
        run("ip", &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        run("ip", &["-n", &ns, "route", "add", "default", "dev", "eth0"]);
        let ip6 = Ipv6Addr::new(0xfd77, u16::from(self.net), 0, 0, 0, 0, 0, u16::try_from(i + 2).unwrap_or(0xfe));
        // No duplicate address detection: the address is usable at once.
        run("ip", &["-n", &ns, "addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"]);
        run("ip", &["-n", &ns, "-6", "route", "add", "default", "dev", "eth0"]);
        Pod::enter(ns, ip, ip6)
    }
}

impl Default for Network {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &format!("{}-br", self.prefix)]).status();
    }
}

/// One pod: its namespace, address and runtime.
pub struct Pod {
    /// Namespace name.
    pub ns: String,
    /// `eth0` address.
    pub ip: Ipv4Addr,
    /// `eth0` IPv6 address.
    pub ip6: Ipv6Addr,
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pod {
    fn enter(ns: String, ip: Ipv4Addr, ip6: Ipv6Addr) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let path = format!("/var/run/netns/{ns}");
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            // Worker threads are spawned from this thread and inherit its namespace.
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            ready_tx.send(rt.handle().clone()).unwrap();
            rt.block_on(async {
                let _ = stopped.await;
            });
            rt.shutdown_timeout(std::time::Duration::from_millis(100));
        });
        let handle = ready_rx.recv().expect("pod runtime");
        Self { ns, ip, ip6, handle, stop: Some(stop), thread: Some(thread) }
    }

    /// Runs `fut` inside the pod and waits for it from any runtime.
    pub async fn run<F>(&self, fut: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn(fut).await.expect("task in pod")
    }

    /// Starts `fut` inside the pod.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }

    /// Installs iptables rules (`iptables-restore` input) in the pod.
    pub fn iptables(&self, rules: &str) {
        self.restore("iptables-restore", rules);
    }

    /// Installs ip6tables rules in the pod.
    pub fn ip6tables(&self, rules: &str) {
        self.restore("ip6tables-restore", rules);
    }

    fn restore(&self, tool: &str, rules: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns, tool, "--noflush"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), rules.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}
