//! The HTTP server's edge: TLS and authentication in front of the read side's router.

pub mod web;
