//! `snapshot::decode` on arbitrary bytes: never a panic, and whatever decodes re-encodes to
//! something that decodes to the same body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vu_core::snapshot::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = decode(data) {
        let again = encode(&body).expect("a decoded body encodes");
        assert_eq!(decode(&again).expect("re-encoded snapshot decodes"), body);
    }
});
