//! The pure core: one message in, sums out. No I/O, no locks, no configuration; time is
//! passed in, so everything here is tested exhaustively and fast.

pub mod attribution;
pub mod cells;
pub mod condition;
pub mod decode;
pub mod dedup;
pub mod key;
pub mod key_state;
pub mod kpi;
pub mod limits;
pub mod partition;
pub mod pipeline;
pub mod rebuild;
pub mod touches;
pub mod window;
