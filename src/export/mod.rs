//! The read side: what scrapers and API clients see.

pub mod feed;
pub mod http;
pub mod metrics;
