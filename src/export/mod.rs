//! The read side: what scrapers and API clients see.

pub mod http;
pub mod metrics;
