//! Every xDS resource type keel accepts, chosen by the first byte (index into `TYPE_URLS`), decoded, validated
//! and used (snapshot, live cluster, request deadlines).
#![no_main]
use keel_fuzz::{decode_and_use, TYPE_URLS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else { return };
    decode_and_use(TYPE_URLS[usize::from(kind) % TYPE_URLS.len()], bytes);
});
