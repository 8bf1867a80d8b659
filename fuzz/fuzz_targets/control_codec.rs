//! The control protocol's decoders on arbitrary bytes: the request decoder
//! must never panic and must only accept canonical encodings; the response
//! decoder must never panic whatever the read sizes.
#![no_main]

use ctsync::control::{ResponseDecoder, decode_request, encode_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((req, json)) = decode_request(data) {
        assert_eq!(encode_request(&req, json), data);
    }
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut decoder = ResponseDecoder::new();
    for piece in data.chunks(step) {
        decoder.push(piece);
        while let Ok(Some(_)) = decoder.next() {}
    }
});
