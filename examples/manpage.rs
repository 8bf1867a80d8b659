//! Writes `man/ctsyncd.8`.
//!
//! NAME, SYNOPSIS, DESCRIPTION and OPTIONS come from the command-line
//! definition ([`ctsync::cli::command`]), the other sections from
//! `man/sections.roff`, so the flags in the page cannot drift from the
//! binary. `tests/package.rs` fails when the committed page is not what
//! this renders.
//!
//! ```sh
//! cargo run --example manpage             # write it
//! cargo run --example manpage -- --check  # fail if it is stale
//! ```

use std::path::{Path, PathBuf};

/// The hand-written sections.
const SECTIONS: &str = include_str!("../man/sections.roff");

/// Where the page lives in the source tree.
pub fn path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("man").join("ctsyncd.8")
}

/// The whole page, in roff.
pub fn render() -> Vec<u8> {
    let man = clap_mangen::Man::new(ctsync::cli::command())
        .title("CTSYNCD")
        .section("8")
        .source(format!("ctsync {}", env!("CARGO_PKG_VERSION")))
        .manual("System Administration");
    let mut out = Vec::new();
    let sections = [
        clap_mangen::Man::render_title,
        clap_mangen::Man::render_name_section,
        clap_mangen::Man::render_synopsis_section,
        clap_mangen::Man::render_description_section,
        clap_mangen::Man::render_options_section,
    ];
    for section in sections {
        // Writing into a Vec cannot fail.
        let _ = section(&man, &mut out);
    }
    out.extend_from_slice(SECTIONS.as_bytes());
    out
}

#[cfg_attr(test, allow(dead_code))]
fn main() {
    let path = path();
    if std::env::args().nth(1).as_deref() == Some("--check") {
        if std::fs::read(&path).ok() != Some(render()) {
            eprintln!("manpage: {} is stale: run `cargo run --example manpage`", path.display());
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = std::fs::write(&path, render()) {
        eprintln!("manpage: cannot write {}: {e}", path.display());
        std::process::exit(1);
    }
    println!("wrote {}", path.display());
}
