//! The pure core: one message in, sums out. No I/O, no locks, no configuration; time is
//! passed in, so everything here is tested exhaustively and fast.

pub mod decode;
pub mod dedup;
pub mod kpi;
pub mod window;
