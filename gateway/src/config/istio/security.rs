//! `security.istio.io` RequestAuthentication, AuthorizationPolicy and PeerAuthentication.

use serde::Deserialize;

use super::MatchLabelsSelector;
use crate::config::GoDuration;

/// RequestAuthentication spec: JWT rules for the selected workloads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RequestAuthentication {
    /// Workloads it applies to (same namespace; root namespace: all).
    pub selector: Option<MatchLabelsSelector>,
    /// Kubernetes Gateway API targets (not supported at this gateway).
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Single target (deprecated form).
    pub target_ref: Option<PolicyTargetReference>,
    /// JWT rules.
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
}

/// Gateway API policy target.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// API group.
    #[serde(default)]
    pub group: String,
    /// Kind.
    #[serde(default)]
    pub kind: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace.
    pub namespace: Option<String>,
}

/// One JWT issuer's rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct JwtRule {
    /// Required `iss`.
    #[serde(default)]
    pub issuer: String,
    /// Accepted `aud` values (empty: no audience check).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// JWKS URL.
    pub jwks_uri: Option<String>,
    /// Inline JWKS JSON.
    pub jwks: Option<String>,
    /// Headers to read the token from.
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters to read the token from.
    #[serde(default)]
    pub from_params: Vec<String>,
    /// Cookies to read the token from.
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// Keep the token when forwarding (default: removed).
    #[serde(default)]
    pub forward_original_token: bool,
    /// Header receiving the base64url payload.
    pub output_payload_to_header: Option<String>,
    /// Claims copied to headers.
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// JWKS fetch timeout.
    pub timeout: Option<GoDuration>,
    /// Extra claims split on spaces for authorization.
    #[serde(default)]
    pub space_delimited_claims: Vec<String>,
}

/// A header location of a token.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct JwtHeader {
    /// Header name.
    pub name: String,
    /// Prefix before the token (e.g. `Bearer `).
    #[serde(default)]
    pub prefix: String,
}

/// `outputClaimToHeaders` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ClaimToHeader {
    /// Header to set.
    pub header: String,
    /// Claim to copy (`a.b.c` for nested claims).
    pub claim: String,
}

/// AuthorizationPolicy spec.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// Workloads it applies to.
    pub selector: Option<MatchLabelsSelector>,
    /// Gateway API targets (not supported at this gateway).
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Single target (deprecated form).
    pub target_ref: Option<PolicyTargetReference>,
    /// ALLOW (default), DENY, AUDIT, CUSTOM.
    pub action: Option<String>,
    /// External authorizer of a CUSTOM policy.
    pub provider: Option<ExtensionProvider>,
    /// Rules: any matching rule matches the policy.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// CUSTOM provider reference.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    /// Name in mesh config `extensionProviders`.
    pub name: String,
}

/// One rule: from AND to AND when.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Sources (any).
    #[serde(default)]
    pub from: Vec<RuleFrom>,
    /// Operations (any).
    #[serde(default)]
    pub to: Vec<RuleTo>,
    /// Conditions (all).
    #[serde(default)]
    pub when: Vec<Condition>,
}

/// `from` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    /// The source.
    #[serde(default)]
    pub source: Source,
}

/// `to` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    /// The operation.
    #[serde(default)]
    pub operation: Operation,
}

/// Who sends the request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// mTLS peer identities.
    #[serde(default)]
    pub principals: Vec<String>,
    /// Negated.
    #[serde(default)]
    pub not_principals: Vec<String>,
    /// JWT principals `iss/sub`.
    #[serde(default)]
    pub request_principals: Vec<String>,
    /// Negated.
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    /// Peer namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Negated.
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// Peer service accounts.
    #[serde(default)]
    pub service_accounts: Vec<String>,
    /// Negated.
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    /// Peer trust domains.
    #[serde(default)]
    pub trust_domains: Vec<String>,
    /// Negated.
    #[serde(default)]
    pub not_trust_domains: Vec<String>,
    /// Direct peer IPs/CIDRs.
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    /// Negated.
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    /// Original client IPs/CIDRs.
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    /// Negated.
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

/// What is requested.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// Hosts (with port as sent).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Negated.
    #[serde(default)]
    pub not_hosts: Vec<String>,
    /// Listener ports (strings).
    #[serde(default)]
    pub ports: Vec<String>,
    /// Negated.
    #[serde(default)]
    pub not_ports: Vec<String>,
    /// Methods.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Negated.
    #[serde(default)]
    pub not_methods: Vec<String>,
    /// Normalized paths.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Negated.
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// `when` condition.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// Attribute key.
    pub key: String,
    /// Accepted values.
    #[serde(default)]
    pub values: Vec<String>,
    /// Refused values.
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// PeerAuthentication spec: which mutual TLS the selected workloads accept inbound.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct PeerAuthentication {
    /// Workloads it applies to (none: the whole namespace, or the mesh in the root namespace).
    pub selector: Option<MatchLabelsSelector>,
    /// The mode for every port.
    pub mtls: Option<PeerMtls>,
    /// Per-port modes (workload-selecting policies only), keyed by container port.
    #[serde(default)]
    pub port_level_mtls: std::collections::BTreeMap<String, PeerMtls>,
}

/// `mtls` of a PeerAuthentication.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct PeerMtls {
    /// `UNSET`, `DISABLE`, `PERMISSIVE` or `STRICT`.
    pub mode: Option<String>,
}
