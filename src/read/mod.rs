//! The read side: what scrapers and API clients see.

pub mod feed;
pub mod history;
pub mod http;
pub mod metrics;
pub mod page;
pub mod rows;
pub mod rules;
