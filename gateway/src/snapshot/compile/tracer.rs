//! Mesh config tracing → the snapshot's tracer: the first `defaultProviders.tracing`
//! provider, which must be an `opentelemetry` collector in the registry, sampled at
//! `defaultConfig.tracing.sampling` percent (Istio's default: 1), unless a Telemetry
//! resource names another provider or percentage.

use std::{sync::Arc, time::Duration};

use http::uri::PathAndQuery;

use super::{registry::Registry, telemetry::Overrides, Report};
use crate::{
    config::{Bootstrap, Diagnostic, MeshConfig, Resource},
    snapshot::Caches,
    telemetry::{
        otlp::{self, Collector},
        trace::Tracer,
    },
};

/// The tracer, or `None` when tracing is off or not configured.
pub(super) fn compile(
    mesh: Option<(&Resource, &MeshConfig)>,
    telemetry: &Overrides,
    bootstrap: &Bootstrap,
    registry: &mut Registry<'_>,
    caches: &Caches,
    report: &mut Report,
) -> Option<Arc<Tracer>> {
    let (r, m) = mesh?;
    if m.enable_tracing == Some(false) {
        return None;
    }
    let name = telemetry.tracing_provider.as_ref().or_else(|| m.default_providers.tracing.first())?;
    let mut error = |field: &str, msg: String| report.diagnostics.push(Diagnostic::error(&r.origin, &r.id, field, msg));
    let Some(provider) = m.extension_providers.iter().find(|p| &p.name == name) else {
        error("data.mesh.defaultProviders.tracing", format!("no extension provider {name:?}"));
        return None;
    };
    let Some(otel) = &provider.opentelemetry else {
        let msg = format!("provider {name:?} is not an opentelemetry provider (the only tracer Wicket speaks)");
        error("data.mesh.extensionProviders", msg);
        return None;
    };
    let (host, cluster) = match registry.provider_cluster(&otel.service, otel.port) {
        Ok(found) => found,
        Err(e) => {
            error("data.mesh.extensionProviders", format!("provider {name:?}: {e}"));
            return None;
        }
    };
    let path = otel.http.path.as_deref().unwrap_or("/v1/traces");
    let Ok(path) = PathAndQuery::try_from(path) else {
        error("data.mesh.extensionProviders", format!("provider {name:?}: invalid http.path {path:?}"));
        return None;
    };
    let app = bootstrap.labels.get("app").or_else(|| bootstrap.labels.get("istio")).map_or("wicket", String::as_str);
    let service = format!("{app}.{}", bootstrap.namespace);
    let node_id = format!("router~{}~{service}", bootstrap.bind_ip);
    let sampling = telemetry.sampling.or(m.default_config.tracing.sampling).unwrap_or(1.0);
    let counters = caches.tracing.get().map(|(_, c)| c.clone()).unwrap_or_default();
    let queue = caches.tracing.get().filter(|_| !telemetry.spans_disabled).and_then(|(upstreams, counters)| {
        let collector = Collector {
            upstreams: upstreams.clone(),
            cluster,
            authority: format!("{host}:{}", otel.port),
            path,
            timeout: otel.http.timeout.map_or(Duration::from_secs(5), |t| t.0),
        };
        otlp::spawn(collector, service.clone(), counters.clone())
    });
    Some(Arc::new(Tracer::new(sampling, service, node_id, queue, counters)))
}
