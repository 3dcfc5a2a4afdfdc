//! Traffic for showing and measuring the service: the generator and the demo built on it.

pub mod demo;
pub mod generate;
