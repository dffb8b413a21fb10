//! Test support for Wicket's end-to-end tests: real upstreams, a real gateway on
//! ephemeral loopback ports, and a small HTTP client.
