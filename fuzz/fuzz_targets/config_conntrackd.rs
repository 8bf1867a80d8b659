//! The conntrackd.conf parser on arbitrary text: it must never panic, every
//! refusal must render as a message, and what it accepts must print as YAML
//! that our own parser reads back to the same configuration.
#![no_main]

use std::path::Path;

use ctsync::config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = config::conntrackd::is_conntrackd_syntax(text);
    match config::conntrackd::from_str(text, Path::new("conntrackd.conf")) {
        Ok(mut cfg) => {
            // Warnings about conntrackd options are not configuration: the
            // YAML has no place for them.
            cfg.warnings.clear();
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
