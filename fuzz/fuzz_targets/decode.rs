//! The event decoder on arbitrary bytes: an event or a rejection with a reason, never a
//! panic, and nothing allocated beyond the size of the input.
#![no_main]

use std::sync::LazyLock;

use ecom_pulse::pure::decode::Decoder;
use libfuzzer_sys::fuzz_target;

static DECODER: LazyLock<Decoder> =
    LazyLock::new(|| Decoder::new("USD", [("EUR".to_string(), 1.08)]));

fuzz_target!(|data: &[u8]| {
    let _ = DECODER.decode(data, 1_795_334_400_000);
});
