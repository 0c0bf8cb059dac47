//! Client frames arrive from anyone: parsing must never panic, and a frame that parses must
//! survive the same checks the connection applies. Bus envelopes are decoded from Redis.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match confab::protocol::parse(text) {
            Ok(confab::protocol::ClientFrame::Message { body, client_id, reply_to, .. }) => {
                let policy = confab::policy::Policy::default();
                let _ = confab::chat::check_message(&policy, &body, client_id.as_deref(), reply_to);
                let (names, _) = confab::validate::mentions(&body);
                assert!(names.iter().all(|n| confab::validate::username(n)));
            }
            Ok(confab::protocol::ClientFrame::React { emoji, .. }) => {
                let _ = confab::validate::emoji(&emoji);
            }
            Ok(_) => {}
            Err((message, _)) => assert!(!message.is_empty()),
        }
    }
    let _ = confab::bus::Envelope::decode(bytes_of(data));
});

fn bytes_of(data: &[u8]) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(data)
}
