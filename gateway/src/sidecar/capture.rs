//! `wicket capture`: the `nat` rules Istio's init container (`istio-iptables`)
//! installs, so the application's TCP goes through the sidecar: outbound to the
//! outbound listener except the proxy's own traffic, inbound to the inbound listener.
//! The same options and pod annotations, the same chain names (so `istioctl` and
//! operators' habits carry over); written for `iptables-restore`.

use std::{
    collections::BTreeMap,
    io::Write,
    net::IpAddr,
    process::{Command, Stdio},
};

/// What to capture. Defaults are Istio's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Outbound listener port (`-p`).
    pub outbound_port: u16,
    /// Inbound listener port (`-z`).
    pub inbound_port: u16,
    /// The proxy's uid, whose traffic is never redirected (`-u`).
    pub proxy_uid: Option<u32>,
    /// The proxy's gid (`-g`).
    pub proxy_gid: Option<u32>,
    /// Wicket: traffic carrying this `SO_MARK` is the proxy's own (for a proxy that
    /// shares the application's uid).
    pub mark: Option<u32>,
    /// Inbound ports redirected (`-b`): `None` for all (`*`).
    pub include_inbound_ports: Option<Vec<u16>>,
    /// Inbound ports left alone (`-d`), with all ports captured.
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destinations redirected (`-i`): `None` for all (`*`).
    pub include_outbound_cidrs: Option<Vec<Cidr>>,
    /// Outbound destinations left alone (`-x`).
    pub exclude_outbound_cidrs: Vec<Cidr>,
    /// Outbound ports always redirected (`-q`), whatever the address.
    pub include_outbound_ports: Vec<u16>,
    /// Outbound ports left alone (`-o`).
    pub exclude_outbound_ports: Vec<u16>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            outbound_port: 15001,
            inbound_port: 15006,
            proxy_uid: Some(1337),
            proxy_gid: Some(1337),
            mark: None,
            include_inbound_ports: None,
            // The injector's defaults: Envoy's Prometheus, health and agent ports.
            exclude_inbound_ports: vec![15020, 15021, 15090],
            include_outbound_cidrs: None,
            exclude_outbound_cidrs: Vec::new(),
            include_outbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
        }
    }
}

/// An address range `addr/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub len: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = addr.trim().parse().map_err(|_| format!("{s:?} is not an address range (a.b.c.d/n)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len =
            if len.is_empty() { max } else { len.trim().parse().map_err(|_| format!("{s:?}: bad prefix length"))? };
        if len > max {
            return Err(format!("{s:?}: prefix length over {max}"));
        }
        Ok(Self { addr, len })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A comma-separated port list (`*` means all, `None`).
pub fn parse_ports(s: &str) -> Result<Option<Vec<u16>>, String> {
    let s = s.trim();
    if s == "*" {
        return Ok(None);
    }
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().map_err(|_| format!("{p:?} is not a port")))
        .collect::<Result<Vec<u16>, _>>()
        .map(Some)
}

/// A comma-separated CIDR list (`*` means all, `None`).
pub fn parse_cidrs(s: &str) -> Result<Option<Vec<Cidr>>, String> {
    let s = s.trim();
    if s == "*" {
        return Ok(None);
    }
    s.split(',').map(str::trim).filter(|c| !c.is_empty()).map(str::parse).collect::<Result<_, _>>().map(Some)
}

impl CaptureConfig {
    /// Applies a pod's `traffic.sidecar.istio.io/*` annotations; a bad value is an
    /// error naming the annotation.
    pub fn with_annotations(mut self, annotations: &BTreeMap<String, String>) -> Result<Self, String> {
        for (key, value) in annotations {
            let Some(name) = key.strip_prefix("traffic.sidecar.istio.io/") else { continue };
            let bad = |e: String| format!("annotation {key}: {e}");
            match name {
                "includeInboundPorts" => self.include_inbound_ports = parse_ports(value).map_err(bad)?,
                "excludeInboundPorts" => {
                    let extra = parse_ports(value).map_err(bad)?.unwrap_or_default();
                    self.exclude_inbound_ports.extend(extra);
                }
                "includeOutboundIPRanges" => self.include_outbound_cidrs = parse_cidrs(value).map_err(bad)?,
                "excludeOutboundIPRanges" => {
                    self.exclude_outbound_cidrs.extend(parse_cidrs(value).map_err(bad)?.unwrap_or_default())
                }
                "includeOutboundPorts" => {
                    self.include_outbound_ports.extend(parse_ports(value).map_err(bad)?.unwrap_or_default())
                }
                "excludeOutboundPorts" => {
                    self.exclude_outbound_ports.extend(parse_ports(value).map_err(bad)?.unwrap_or_default())
                }
                _ => {}
            }
        }
        Ok(self)
    }

    /// The `wicket capture` arguments that install this configuration (for an init
    /// container).
    pub fn args(&self) -> Vec<String> {
        let join = |items: Vec<String>| if items.is_empty() { String::new() } else { items.join(",") };
        let ports = |p: &[u16]| join(p.iter().map(u16::to_string).collect());
        let cidrs = |c: &[Cidr]| join(c.iter().map(Cidr::to_string).collect());
        let id = |i: Option<u32>| i.map(|i| i.to_string()).unwrap_or_default();
        let mut args = vec![
            "capture".to_string(),
            format!("--outbound-port={}", self.outbound_port),
            format!("--inbound-port={}", self.inbound_port),
            format!("--proxy-uid={}", id(self.proxy_uid)),
            format!("--proxy-gid={}", id(self.proxy_gid)),
            format!("--include-inbound-ports={}", self.include_inbound_ports.as_deref().map_or("*".into(), ports)),
            format!("--exclude-inbound-ports={}", ports(&self.exclude_inbound_ports)),
            format!(
                "--include-outbound-ip-ranges={}",
                self.include_outbound_cidrs.as_deref().map_or("*".into(), cidrs)
            ),
            format!("--exclude-outbound-ip-ranges={}", cidrs(&self.exclude_outbound_cidrs)),
            format!("--include-outbound-ports={}", ports(&self.include_outbound_ports)),
            format!("--exclude-outbound-ports={}", ports(&self.exclude_outbound_ports)),
        ];
        if let Some(mark) = self.mark {
            args.push(format!("--mark={mark}"));
        }
        args
    }

    /// The `iptables-restore` input for one address family.
    pub fn rules(&self, ipv6: bool) -> String {
        let (localhost, inbound_passthrough) =
            if ipv6 { ("::1/128", "::6/128") } else { ("127.0.0.1/32", "127.0.0.6/32") };
        let family = |c: &&Cidr| c.addr.is_ipv6() == ipv6;
        let ports = |p: &[u16]| p.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
        let mut r = vec![
            "* nat".to_string(),
            "-N ISTIO_INBOUND".into(),
            "-N ISTIO_REDIRECT".into(),
            "-N ISTIO_IN_REDIRECT".into(),
            "-N ISTIO_OUTPUT".into(),
            "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN".into(),
            format!("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {}", self.outbound_port),
            format!("-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}", self.inbound_port),
        ];
        match &self.include_inbound_ports {
            None => {
                r.push("-A PREROUTING -p tcp -j ISTIO_INBOUND".into());
                for p in &self.exclude_inbound_ports {
                    r.push(format!("-A ISTIO_INBOUND -p tcp --dport {p} -j RETURN"));
                }
                r.push("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT".into());
            }
            Some(list) if !list.is_empty() => {
                r.push("-A PREROUTING -p tcp -j ISTIO_INBOUND".into());
                for p in list {
                    r.push(format!("-A ISTIO_INBOUND -p tcp --dport {p} -j ISTIO_IN_REDIRECT"));
                }
            }
            Some(_) => {}
        }
        r.push("-A OUTPUT -p tcp -j ISTIO_OUTPUT".into());
        if !self.exclude_outbound_ports.is_empty() {
            let list = ports(&self.exclude_outbound_ports);
            r.push(format!("-A ISTIO_OUTPUT -p tcp -m multiport --dports {list} -j RETURN"));
        }
        r.push(format!("-A ISTIO_OUTPUT -o lo -s {inbound_passthrough} -j RETURN"));
        if let Some(mark) = self.mark {
            r.push(format!("-A ISTIO_OUTPUT -m mark --mark {mark:#x} -j RETURN"));
        }
        for (flag, id) in [("--uid-owner", self.proxy_uid), ("--gid-owner", self.proxy_gid)] {
            let Some(id) = id else { continue };
            // The proxy calling its own pod's address goes to its inbound listener.
            r.push(format!(
                "-A ISTIO_OUTPUT -o lo ! -d {localhost} -p tcp ! --dport 15008 -m owner {flag} {id} -j ISTIO_IN_REDIRECT"
            ));
            r.push(format!("-A ISTIO_OUTPUT -o lo -m owner ! {flag} {id} -j RETURN"));
            r.push(format!("-A ISTIO_OUTPUT -m owner {flag} {id} -j RETURN"));
        }
        r.push(format!("-A ISTIO_OUTPUT -d {localhost} -j RETURN"));
        for c in self.exclude_outbound_cidrs.iter().filter(family) {
            r.push(format!("-A ISTIO_OUTPUT -d {c} -j RETURN"));
        }
        if !self.include_outbound_ports.is_empty() {
            let list = ports(&self.include_outbound_ports);
            r.push(format!("-A ISTIO_OUTPUT -p tcp -m multiport --dports {list} -j ISTIO_REDIRECT"));
        }
        match &self.include_outbound_cidrs {
            None => r.push("-A ISTIO_OUTPUT -j ISTIO_REDIRECT".into()),
            Some(list) => {
                for c in list.iter().filter(family) {
                    r.push(format!("-A ISTIO_OUTPUT -d {c} -j ISTIO_REDIRECT"));
                }
                r.push("-A ISTIO_OUTPUT -j RETURN".into());
            }
        }
        r.push("COMMIT".into());
        r.join("\n") + "\n"
    }
}

/// Why installing or removing the rules failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The tool could not be run (not installed, no permission).
    #[error("cannot run {tool}: {source}")]
    Spawn {
        /// `iptables-restore` or `ip6tables-restore`.
        tool: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The tool refused the rules.
    #[error("{tool} failed: {stderr}")]
    Refused {
        /// The tool.
        tool: &'static str,
        /// What it said.
        stderr: String,
    },
}

/// Installs the rules (IPv4, and IPv6 when asked) in the current network namespace.
pub fn install(config: &CaptureConfig, ipv6: bool) -> Result<(), CaptureError> {
    restore("iptables-restore", &config.rules(false))?;
    if ipv6 {
        restore("ip6tables-restore", &config.rules(true))?;
    }
    Ok(())
}

fn restore(tool: &'static str, rules: &str) -> Result<(), CaptureError> {
    let mut child = Command::new(tool)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CaptureError::Spawn { tool, source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(rules.as_bytes()).map_err(|source| CaptureError::Spawn { tool, source })?;
    }
    let out = child.wait_with_output().map_err(|source| CaptureError::Spawn { tool, source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CaptureError::Refused { tool, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

/// Removes the rules and chains `install` made (what is already gone is skipped).
pub fn remove(ipv6: bool) {
    let tools: &[&str] = if ipv6 { &["iptables", "ip6tables"] } else { &["iptables"] };
    for tool in tools {
        let run = |args: &[&str]| {
            let _ = Command::new(tool).args(["-t", "nat"]).args(args).stderr(Stdio::null()).status();
        };
        run(&["-D", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND"]);
        run(&["-D", "OUTPUT", "-p", "tcp", "-j", "ISTIO_OUTPUT"]);
        for chain in ["ISTIO_OUTPUT", "ISTIO_INBOUND", "ISTIO_REDIRECT", "ISTIO_IN_REDIRECT"] {
            run(&["-F", chain]);
            run(&["-X", chain]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_match_istio_iptables() {
        let rules = CaptureConfig::default().rules(false);
        let expected = "\
* nat
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
";
        assert_eq!(rules, expected);
    }

    #[test]
    fn annotations_narrow_capture() {
        let annotations: BTreeMap<String, String> = [
            ("traffic.sidecar.istio.io/includeInboundPorts", "8080, 9090"),
            ("traffic.sidecar.istio.io/excludeOutboundPorts", "5432"),
            ("traffic.sidecar.istio.io/includeOutboundIPRanges", "10.96.0.0/12,fd00::/8"),
            ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "10.96.0.1/32"),
            ("sidecar.istio.io/inject", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let config = CaptureConfig::default().with_annotations(&annotations).unwrap();
        let v4 = config.rules(false);
        assert!(v4.contains("-A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT\n"), "{v4}");
        assert!(!v4.contains("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT"), "{v4}");
        assert!(v4.contains("-A ISTIO_OUTPUT -p tcp -m multiport --dports 5432 -j RETURN\n"), "{v4}");
        assert!(v4.contains("-A ISTIO_OUTPUT -d 10.96.0.1/32 -j RETURN\n"), "{v4}");
        assert!(v4.contains("-A ISTIO_OUTPUT -d 10.96.0.0/12 -j ISTIO_REDIRECT\n-A ISTIO_OUTPUT -j RETURN\n"), "{v4}");
        assert!(!v4.contains("fd00::"), "IPv6 ranges stay out of the IPv4 rules");
        let v6 = config.rules(true);
        assert!(v6.contains("-A ISTIO_OUTPUT -d fd00::/8 -j ISTIO_REDIRECT"), "{v6}");
        assert!(v6.contains("-d ::1/128 -j RETURN"), "{v6}");

        let bad: BTreeMap<String, String> =
            [("traffic.sidecar.istio.io/excludeInboundPorts".to_string(), "80,http".to_string())].into();
        let e = CaptureConfig::default().with_annotations(&bad).unwrap_err();
        assert!(e.contains("traffic.sidecar.istio.io/excludeInboundPorts") && e.contains("\"http\""), "{e}");
    }
}
