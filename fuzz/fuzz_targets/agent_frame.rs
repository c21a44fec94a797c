//! libFuzzer target: any bytes as a stream from the agent socket. `read_frame` splits it into
//! frames and each frame is decoded as the agent decodes requests and the driver decodes
//! replies. Nothing may panic; a bogus length must end in an error, not an allocation storm.
#![no_main]

use std::io::Cursor;

use hutch_driver::agent::{read_frame, AgentReply, AgentRequest, Envelope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut stream = Cursor::new(data);
    while let Ok(Some(frame)) = read_frame(&mut stream) {
        let _ = serde_json::from_slice::<Envelope<AgentRequest>>(&frame);
        let _ = serde_json::from_slice::<Envelope<AgentReply>>(&frame);
    }
    // The same bytes as one frame's JSON, so the decoder is reached without a valid prefix.
    let _ = serde_json::from_slice::<Envelope<AgentRequest>>(data);
    let _ = serde_json::from_slice::<Envelope<AgentReply>>(data);
});
