//! Access log formats from mesh config: Wicket's JSON record, or text with Envoy
//! command operators (`accessLogEncoding: TEXT`, `accessLogFormat`), or off.

use std::fmt::Write as _;

use http::{header::HeaderName, HeaderMap};

use super::AccessRecord;

/// Istio's default TEXT format.
pub(crate) const ISTIO_TEXT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// How access log lines are written.
#[derive(Debug, Default)]
pub enum LogFormat {
    /// One JSON object per line (Wicket's default).
    #[default]
    Json,
    /// Envoy-style text.
    Text(TextFormat),
    /// No access log (`accessLogFile: ""`).
    Off,
}

/// A parsed Envoy format string.
#[derive(Debug)]
pub struct TextFormat {
    parts: Vec<Part>,
    /// Request headers the format reads, captured when the request starts.
    pub headers: Vec<Vec<HeaderName>>,
}

#[derive(Debug)]
enum Part {
    Literal(String),
    Field(Field),
    /// Index into `headers`: the first of the alternatives present.
    Req(usize),
    /// Not available here: rendered as `-`.
    Dash,
}

#[derive(Debug, Clone, Copy)]
enum Field {
    StartTime,
    Method,
    Path,
    Authority,
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    DownstreamRemoteAddress,
    RouteName,
}

impl TextFormat {
    /// Parses a format string; an unknown operator is an error naming it.
    pub fn parse(format: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut headers = Vec::new();
        let mut rest = format;
        while let Some(start) = rest.find('%') {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            let after = &rest[start + 1..];
            let end = after.find('%').ok_or_else(|| format!("unterminated operator in {format:?}"))?;
            let op = &after[..end];
            parts.push(operator(op, &mut headers)?);
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Self { parts, headers })
    }

    /// Renders a finished request (without a trailing newline unless the format has one).
    pub fn render(&self, r: &AccessRecord, out: &mut Vec<u8>) {
        let mut line = String::with_capacity(256);
        for part in &self.parts {
            match part {
                Part::Literal(l) => line.push_str(l),
                Part::Dash => line.push('-'),
                Part::Req(i) => line.push_str(r.captured.get(*i).and_then(|v| v.as_deref()).unwrap_or("-")),
                Part::Field(f) => {
                    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                    let _ = match f {
                        Field::StartTime => write!(line, "{}", r.start_time),
                        Field::Method => write!(line, "{}", r.method),
                        Field::Path => write!(line, "{}", r.path),
                        Field::Authority => write!(line, "{}", r.authority),
                        Field::Protocol => write!(line, "{}", r.protocol),
                        Field::ResponseCode => write!(line, "{}", r.response_code),
                        Field::ResponseFlags => write!(line, "{}", r.flag_bits),
                        Field::ResponseCodeDetails => write!(line, "{}", opt(&r.response_details)),
                        Field::BytesReceived => write!(line, "{}", r.bytes_received),
                        Field::BytesSent => write!(line, "{}", r.bytes_sent),
                        Field::Duration => write!(line, "{}", r.duration),
                        Field::UpstreamHost => write!(line, "{}", opt(&r.upstream_host)),
                        Field::UpstreamCluster => write!(line, "{}", opt(&r.upstream_cluster)),
                        Field::DownstreamRemoteAddress => write!(line, "{}", r.downstream_remote_address),
                        Field::RouteName => write!(line, "{}", opt(&r.route_name)),
                    };
                }
            }
        }
        if !line.ends_with('\n') {
            line.push('\n');
        }
        out.extend_from_slice(line.as_bytes());
    }

    /// The values of the headers this format reads.
    pub fn capture(&self, headers: &HeaderMap) -> Vec<Option<String>> {
        self.headers
            .iter()
            .map(|alternatives| {
                alternatives.iter().find_map(|h| headers.get(h).and_then(|v| v.to_str().ok()).map(str::to_string))
            })
            .collect()
    }
}

fn operator(op: &str, headers: &mut Vec<Vec<HeaderName>>) -> Result<Part, String> {
    // `REQ(A?B)` or `REQ(A?B):N`: header A, else B (the length limit is ignored).
    if let Some((inner, _)) = op.strip_prefix("REQ(").and_then(|r| r.split_once(')')) {
        let alternatives: Vec<&str> = inner.split('?').collect();
        let field = |name: &str| match name.to_ascii_uppercase().as_str() {
            ":METHOD" => Some(Field::Method),
            ":PATH" => Some(Field::Path),
            ":AUTHORITY" => Some(Field::Authority),
            _ => None,
        };
        if let Some(f) = field(alternatives[0]) {
            return Ok(Part::Field(f));
        }
        // `X-ENVOY-ORIGINAL-PATH?:PATH`: no rewrite happens before logging, so the path.
        if let Some(f) = alternatives.iter().find_map(|a| field(a)) {
            return Ok(Part::Field(f));
        }
        let names = alternatives
            .iter()
            .map(|n| {
                HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("invalid header {n:?} in %{op}%"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        headers.push(names);
        return Ok(Part::Req(headers.len() - 1));
    }
    Ok(match op {
        "START_TIME" => Part::Field(Field::StartTime),
        "PROTOCOL" => Part::Field(Field::Protocol),
        "RESPONSE_CODE" => Part::Field(Field::ResponseCode),
        "RESPONSE_FLAGS" => Part::Field(Field::ResponseFlags),
        "RESPONSE_CODE_DETAILS" => Part::Field(Field::ResponseCodeDetails),
        "BYTES_RECEIVED" => Part::Field(Field::BytesReceived),
        "BYTES_SENT" => Part::Field(Field::BytesSent),
        "DURATION" => Part::Field(Field::Duration),
        "UPSTREAM_HOST" => Part::Field(Field::UpstreamHost),
        "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => Part::Field(Field::UpstreamCluster),
        "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => {
            Part::Field(Field::DownstreamRemoteAddress)
        }
        "ROUTE_NAME" => Part::Field(Field::RouteName),
        // Known Envoy operators Wicket does not track yet.
        "CONNECTION_TERMINATION_DETAILS"
        | "UPSTREAM_TRANSPORT_FAILURE_REASON"
        | "UPSTREAM_LOCAL_ADDRESS"
        | "DOWNSTREAM_LOCAL_ADDRESS"
        | "REQUESTED_SERVER_NAME" => Part::Dash,
        o if o.starts_with("RESP(") || o.starts_with("TRAILER(") || o.starts_with("DYNAMIC_METADATA(") => Part::Dash,
        other => return Err(format!("unknown access log operator %{other}%")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_default_format_parses_and_unknown_operators_are_errors() {
        let f = TextFormat::parse(ISTIO_TEXT).unwrap();
        assert_eq!(f.headers.len(), 3, "x-forwarded-for, user-agent, x-request-id");
        assert!(TextFormat::parse("%NOT_AN_OPERATOR%").unwrap_err().contains("NOT_AN_OPERATOR"));
        assert!(TextFormat::parse("%START_TIME").is_err());
    }
}
