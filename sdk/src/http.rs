//! The request and response a filter sees: headers (with HTTP/2-style
//! pseudo-headers), bodies, properties, local responses and outbound calls.

use std::{net::IpAddr, time::Duration};

use crate::host::{self, Buf, Map};

/// The request of the current stream.
#[derive(Debug)]
pub struct Request {
    _private: (),
}

impl Request {
    pub(crate) fn new() -> Self {
        Self { _private: () }
    }

    /// `:method`.
    pub fn method(&self) -> String {
        self.header(":method").unwrap_or_default()
    }

    /// `:path`, with the query.
    pub fn path(&self) -> String {
        self.header(":path").unwrap_or_default()
    }

    /// `:authority` (the Host).
    pub fn authority(&self) -> String {
        self.header(":authority").unwrap_or_default()
    }

    /// The first value of a header (names are case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        host::header(Map::Request, name)
    }

    /// Every header line, pseudo-headers first.
    pub fn headers(&self) -> Vec<(String, String)> {
        host::headers(Map::Request)
    }

    /// Replaces every value of `name` with `value`.
    pub fn set_header(&mut self, name: &str, value: &str) {
        host::set_header(Map::Request, name, Some(value));
    }

    /// Adds a value, keeping the others.
    pub fn add_header(&mut self, name: &str, value: &str) {
        host::add_header(Map::Request, name, value);
    }

    /// Removes every value of `name`.
    pub fn remove_header(&mut self, name: &str) {
        host::set_header(Map::Request, name, None);
    }

    /// The body buffered so far (in [`crate::Filter::on_request_body`]).
    pub fn body(&self) -> Vec<u8> {
        host::buffer(Buf::Request)
    }

    /// Replaces the buffered body.
    pub fn set_body(&mut self, body: &[u8]) {
        host::set_buffer(Buf::Request, body);
    }

    /// A property by path (`["source", "address"]`), as the proxy encodes it.
    pub fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        host::property(path)
    }

    /// A string property.
    pub fn property_str(&self, path: &[&str]) -> Option<String> {
        self.property(path).and_then(|b| String::from_utf8(b).ok())
    }

    /// The client's address (`source.address`).
    pub fn source_ip(&self) -> Option<IpAddr> {
        let addr = self.property_str(&["source", "address"])?;
        addr.parse::<std::net::SocketAddr>().map(|a| a.ip()).ok().or_else(|| addr.parse().ok())
    }

    /// The verified JWT's principal (`iss/sub`), once the gateway authenticated the
    /// request (AUTHZ-phase plugins and later).
    pub fn jwt_principal(&self) -> Option<String> {
        self.property_str(&["request", "auth", "principal"])
    }

    /// A claim of the verified JWT: strings as written, other values as JSON.
    pub fn jwt_claim(&self, name: &str) -> Option<String> {
        self.property_str(&["request", "auth", "claims", name])
    }

    /// Answers the request locally; the upstream never sees it.
    pub fn respond(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        host::respond(status, headers, body);
    }

    /// Sends a request to `cluster` (a cluster the gateway knows, e.g.
    /// `outbound|80||auth.example.com` or `auth.example.com:80`); the answer comes to
    /// [`crate::Filter::on_call_answer`]. Return [`crate::Action::Pause`] to wait for it.
    pub fn call(
        &mut self,
        cluster: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, String> {
        let mut all = vec![(":method", method), (":path", path), (":authority", cluster)];
        all.extend_from_slice(headers);
        host::call(cluster, &all, body, timeout)
    }

    /// Continues a paused request.
    pub fn resume(&mut self) {
        host::resume(true);
    }
}

/// The response of the current stream.
#[derive(Debug)]
pub struct Response {
    _private: (),
}

impl Response {
    pub(crate) fn new() -> Self {
        Self { _private: () }
    }

    /// `:status`.
    pub fn status(&self) -> u16 {
        self.header(":status").and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<String> {
        host::header(Map::Response, name)
    }

    /// Every header line, `:status` first.
    pub fn headers(&self) -> Vec<(String, String)> {
        host::headers(Map::Response)
    }

    /// Replaces every value of `name`.
    pub fn set_header(&mut self, name: &str, value: &str) {
        host::set_header(Map::Response, name, Some(value));
    }

    /// Adds a value.
    pub fn add_header(&mut self, name: &str, value: &str) {
        host::add_header(Map::Response, name, value);
    }

    /// Removes every value of `name`.
    pub fn remove_header(&mut self, name: &str) {
        host::set_header(Map::Response, name, None);
    }

    /// A header of the request this response answers.
    pub fn request_header(&self, name: &str) -> Option<String> {
        host::header(Map::Request, name)
    }

    /// The body buffered so far (in [`crate::Filter::on_response_body`]).
    pub fn body(&self) -> Vec<u8> {
        host::buffer(Buf::Response)
    }

    /// Replaces the buffered body.
    pub fn set_body(&mut self, body: &[u8]) {
        host::set_buffer(Buf::Response, body);
    }

    /// A property by path.
    pub fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        host::property(path)
    }
}

/// The answer to [`Request::call`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallAnswer {
    /// HTTP status; 0 when the call failed (connect failure, reset).
    pub status: u16,
    /// Headers, `:status` first.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl CallAnswer {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}
