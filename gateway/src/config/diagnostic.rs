//! Problems found in configuration, rendered as `file:line: kind/ns/name: field: message`.

use std::fmt;

use super::{Origin, ResourceRef};

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Reported; the configuration still applies.
    Warning,
    /// The resource is rejected (or, for unresolved references, will answer 503).
    Error,
}

/// One problem in the user's configuration, pointing at the file and field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// File and line.
    pub origin: Origin,
    /// The resource, when it could be identified.
    pub resource: Option<ResourceRef>,
    /// Dotted field path (`spec.http[0].route`), empty when the whole document is at fault.
    pub field: String,
    /// What is wrong, naming the value involved.
    pub message: String,
}

impl Diagnostic {
    /// An error about `field` of `resource`.
    pub fn error(
        origin: &Origin,
        resource: &ResourceRef,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            severity: Severity::Error,
            origin: origin.clone(),
            resource: Some(resource.clone()),
            field: field.into(),
            message: message.into(),
        }
    }

    /// A warning about `field` of `resource`.
    pub fn warning(
        origin: &Origin,
        resource: &ResourceRef,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self { severity: Severity::Warning, ..Self::error(origin, resource, field, message) }
    }

    /// An error about a whole document whose resource could not be identified.
    pub fn document(origin: &Origin, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            origin: origin.clone(),
            resource: None,
            field: String::new(),
            message: message.into(),
        }
    }

    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{}: ", self.origin)?;
        match &self.resource {
            Some(r) => write!(f, "{r}: ")?,
            None => f.write_str("-: ")?,
        }
        let field = if self.field.is_empty() { "-" } else { &self.field };
        write!(f, "{field}: {level}: {}", self.message)
    }
}
