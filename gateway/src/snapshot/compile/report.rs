//! The one sink every compile stage reports to.

use std::collections::HashSet;

use crate::config::{Diagnostic, Resource, ResourceRef};

/// What the stages found: problems (errors and warnings, each naming file, line,
/// resource and field), the resources left out because of them, the security
/// resources applied in their fail-closed form instead, and references to what does
/// not exist (a destination, a gateway), reported once each after everything else.
#[derive(Debug, Default)]
pub(super) struct Report {
    pub(super) diagnostics: Vec<Diagnostic>,
    pub(super) rejected: Vec<ResourceRef>,
    pub(super) fail_closed: Vec<ResourceRef>,
    pub(super) references: Vec<Diagnostic>,
}

impl Report {
    /// Leaves `r` out, for `errors`.
    pub(super) fn reject(&mut self, r: &Resource, errors: impl IntoIterator<Item = Diagnostic>) {
        self.diagnostics.extend(errors);
        self.rejected.push(r.id.clone());
    }

    /// Every problem, reference errors last and each once.
    pub(super) fn all_diagnostics(&self) -> Vec<Diagnostic> {
        let mut seen = HashSet::new();
        let references = self.references.iter().filter(|d| seen.insert(d.to_string()));
        self.diagnostics.iter().chain(references).cloned().collect()
    }
}
