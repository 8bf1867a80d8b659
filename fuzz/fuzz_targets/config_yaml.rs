//! The YAML configuration parser on arbitrary text: it must never panic,
//! every refusal must render as a message, and a configuration it accepts
//! must print (`--print-config`) to YAML that reads back to the same one.
#![no_main]

use std::path::Path;

use ctsync::config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match config::from_str(text, Path::new("fuzz.yaml")) {
        Ok(cfg) => {
            let printed = cfg.to_yaml();
            let again = config::from_str(&printed, Path::new("printed.yaml"))
                .unwrap_or_else(|e| panic!("printed config does not read back: {e}\n{printed}"));
            assert_eq!(again, cfg, "{printed}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
