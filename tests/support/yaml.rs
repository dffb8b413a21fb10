//! YAML builders for tests: ServiceEntries pointing at test upstreams, a Gateway.

use crate::Upstream;

/// A Gateway `gw` in `default` with an HTTP server on port 80 for every host; tests
/// map port 80 to an ephemeral port.
pub const GATEWAY: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*\"]
";

/// A STATIC ServiceEntry for `host` on service port `port` (protocol `protocol`), with
/// one endpoint per upstream carrying `version: <label>`.
pub fn service_entry(host: &str, port: u16, protocol: &str, endpoints: &[(&Upstream, &str)]) -> String {
    let mut out = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: se-{}, namespace: default}}
spec:
  hosts: [{host}]
  resolution: STATIC
  ports:
  - {{number: {port}, name: http, protocol: {protocol}}}
  endpoints:
",
        host.replace('.', "-")
    );
    for (u, version) in endpoints {
        out.push_str(&format!(
            "  - {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{version: {version}}}}}\n",
            u.addr.port()
        ));
    }
    out
}

/// A DestinationRule for `host` with subsets named after `versions`.
pub fn subsets(host: &str, versions: &[&str]) -> String {
    let mut out = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: dr-{}, namespace: default}}\nspec:\n  host: {host}\n  subsets:\n",
        host.replace('.', "-")
    );
    for v in versions {
        out.push_str(&format!("  - {{name: {v}, labels: {{version: {v}}}}}\n"));
    }
    out
}

/// Joins documents with `---`.
pub fn docs(parts: &[&str]) -> String {
    parts.join("\n---\n")
}

/// A Gateway with a TCP server on port 9000 routed to `echo` at `127.0.0.1:upstream_port`.
pub fn tcp_gateway(upstream_port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 9000, name: tcp, protocol: TCP}}
    hosts: [\"*\"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo}}
spec:
  hosts: [echo.default.svc.cluster.local]
  resolution: STATIC
  ports: [{{number: 9000, name: tcp, protocol: TCP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{tcp: {upstream_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo}}
spec:
  hosts: [\"*\"]
  gateways: [gw]
  tcp:
  - match: [{{port: 9000}}]
    route: [{{destination: {{host: echo, port: {{number: 9000}}}}}}]
"
    )
}

/// A Kubernetes Service `name` in `default` with one TCP port `port` named `port_name`.
pub fn kube_service(name: &str, port: u16, port_name: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  selector: {{app: {name}}}
  ports:
  - {{name: {port_name}, port: {port}, targetPort: {port_name}, protocol: TCP}}
"
    )
}

/// An EndpointSlice `name` of Service `service` in `default`: its endpoints (each a
/// Pod name and whether it is ready) on 127.0.0.1, serving port `port_name` on `port`.
pub fn endpoint_slice(name: &str, service: &str, port_name: &str, port: u16, pods: &[(&str, bool)]) -> String {
    let mut out = format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: default
  labels: {{kubernetes.io/service-name: {service}}}
addressType: IPv4
ports: [{{name: {port_name}, port: {port}, protocol: TCP}}]
endpoints:
"
    );
    for (pod, ready) in pods {
        out.push_str(&format!(
            "- addresses: [127.0.0.1]
  conditions: {{ready: {ready}, serving: {ready}, terminating: false}}
  targetRef: {{kind: Pod, name: {pod}, namespace: default}}
"
        ));
    }
    out
}

/// A Pod `name` in `default` with `labels` (`k: v` pairs), as `kubectl get pod -o yaml`
/// prints the part Wicket reads.
pub fn pod(name: &str, labels: &[(&str, &str)]) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{{}}}}}
spec:
  serviceAccountName: {name}-sa
  containers: [{{name: app, image: example/app}}]
status: {{phase: Running}}
",
        labels.join(", ")
    )
}
