//! Telemetry resources → what this gateway traces, counts and logs. Istio's
//! inheritance: the root namespace, then the gateway's namespace, then a selector
//! matching the gateway; each level overrides only the fields it sets. Also the
//! access log the mesh config asks for.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use super::Report;
use crate::{
    config::{istio::Telemetry, AccessLogEncoding, Bootstrap, Diagnostic, MeshConfig, Resource, Spec},
    telemetry::{
        log_format::{TextFormat, ISTIO_TEXT},
        LogFormat,
    },
};

/// The settings the applicable Telemetry resources make.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Overrides {
    /// Tracing provider by name (instead of `defaultProviders.tracing`).
    pub(super) tracing_provider: Option<String>,
    /// Sampling percentage.
    pub(super) sampling: Option<f64>,
    /// Propagate but export no spans.
    pub(super) spans_disabled: bool,
    /// Istio request metrics off.
    pub(super) metrics_disabled: bool,
    /// Access log off.
    pub(super) access_log_disabled: bool,
}

/// Folds the Telemetry resources that apply, least specific first.
pub(super) fn overrides(
    resources: &[Resource],
    mesh: &MeshConfig,
    bootstrap: &Bootstrap,
    report: &mut Report,
) -> Overrides {
    let level = |r: &Resource, t: &Telemetry| -> Option<u8> {
        let selected = t.selector.as_ref().map(|s| s.selects(&bootstrap.labels));
        match (r.id.namespace == mesh.root_namespace, r.id.namespace == bootstrap.namespace, selected) {
            (_, _, Some(false)) => None,
            (_, true, Some(true)) => Some(3),
            (true, _, Some(true)) => Some(3),
            (_, true, None) => Some(2),
            (true, _, None) => Some(1),
            _ => None,
        }
    };
    let mut applicable: Vec<(u8, &Resource, &Telemetry)> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Telemetry(t) => level(r, t).map(|l| (l, r, t)),
            _ => None,
        })
        .collect();
    applicable.sort_by_key(|(l, _, _)| *l); // stable: load order within a level
    let mut out = Overrides::default();
    for (_, r, t) in applicable {
        if !t.target_refs.is_empty() || t.target_ref.is_some() {
            report.diagnostics.push(Diagnostic::warning(
                &r.origin,
                &r.id,
                "spec.targetRefs",
                "targetRefs are not supported; use selector",
            ));
            continue;
        }
        if let Some(tr) = t.tracing.first() {
            if let Some(p) = tr.providers.first() {
                out.tracing_provider = Some(p.name.clone());
            }
            if let Some(s) = tr.random_sampling_percentage {
                out.sampling = Some(s);
            }
            if let Some(d) = tr.disable_span_reporting {
                out.spans_disabled = d;
            }
        }
        for (i, m) in t.metrics.iter().enumerate() {
            for (j, o) in m.overrides.iter().enumerate() {
                let all = o.selector.as_ref().is_none_or(|sel| {
                    sel.get("metric").is_none_or(|m| m == "ALL_METRICS") && sel.get("customMetric").is_none()
                });
                match (o.disabled, all) {
                    (Some(d), true) => out.metrics_disabled = d,
                    (Some(_), false) => report.diagnostics.push(Diagnostic::warning(
                        &r.origin,
                        &r.id,
                        format!("spec.metrics[{i}].overrides[{j}].match"),
                        "only ALL_METRICS can be turned off at this gateway; ignored",
                    )),
                    (None, _) => {}
                }
            }
        }
        if let Some(d) = t.access_logging.iter().find_map(|a| a.disabled) {
            out.access_log_disabled = d;
        }
    }
    out
}

/// The access log: its format (mesh config `accessLogEncoding`, `accessLogFormat`; off
/// when a Telemetry resource or `accessLogFile: ""` turns it off) and its file.
pub(super) fn access_log(
    mesh: Option<(&Resource, &MeshConfig)>,
    overrides: &Overrides,
    report: &mut Report,
) -> (Arc<LogFormat>, Option<PathBuf>) {
    let file = mesh.and_then(|(r, m)| match access_log_file(m) {
        Ok(file) => file,
        Err(e) => {
            report.diagnostics.push(Diagnostic::error(&r.origin, &r.id, "data.mesh.accessLogFile", e));
            None
        }
    });
    let format = match mesh.map(|(r, m)| (r, access_log_format(m))) {
        _ if overrides.access_log_disabled => LogFormat::Off,
        None => LogFormat::Json,
        Some((_, Ok(f))) => f,
        Some((r, Err(e))) => {
            report.diagnostics.push(Diagnostic::error(&r.origin, &r.id, "data.mesh.accessLogFormat", e));
            LogFormat::Json
        }
    };
    (Arc::new(format), file)
}

/// Mesh config `accessLogFile` (`""` turns logs off), `accessLogEncoding`,
/// `accessLogFormat`; JSON unless TEXT is asked for.
fn access_log_format(mesh: &MeshConfig) -> Result<LogFormat, String> {
    if mesh.access_log_file.as_deref() == Some("") {
        return Ok(LogFormat::Off);
    }
    match mesh.access_log_encoding.unwrap_or(AccessLogEncoding::Json) {
        AccessLogEncoding::Json => Ok(LogFormat::Json),
        AccessLogEncoding::Text => {
            TextFormat::parse(mesh.access_log_format.as_deref().unwrap_or(ISTIO_TEXT)).map(LogFormat::Text)
        }
    }
}

/// Mesh config `accessLogFile` when it names a file; `/dev/stdout` (and no setting)
/// keep the gateway's own output.
fn access_log_file(mesh: &MeshConfig) -> Result<Option<PathBuf>, String> {
    let Some(file) = mesh.access_log_file.as_deref().filter(|f| !f.is_empty() && *f != "/dev/stdout") else {
        return Ok(None);
    };
    let path = PathBuf::from(file);
    if !path.is_absolute() {
        return Err(format!("accessLogFile {file:?} must be an absolute path"));
    }
    if !path.parent().is_some_and(Path::is_dir) {
        return Err(format!("accessLogFile {file:?}: its directory does not exist"));
    }
    Ok(Some(path))
}
