//! The wire decoder against arbitrary bytes: it must never panic, and whatever it accepts must
//! encode back to exactly the bytes it decoded (there is one encoding of each message).
//!
//! The first input byte chooses how many fds "arrived" with the message (0 to 79), so the fd-count
//! checks are exercised too.

#![no_main]

use lava_flow::ipc::wire::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&fds, bytes)) = data.split_first() else { return };
    let fds = usize::from(fds % 80);
    if let Ok(message) = decode(bytes, fds) {
        assert_eq!(message.fd_count(), fds, "a decoded message carries the fds that arrived");
        let again = encode(&message).expect("a decoded message encodes");
        assert_eq!(again, bytes, "decode and encode are inverse");
    }
});
