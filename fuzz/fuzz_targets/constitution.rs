//! The constitution loader on arbitrary text: it returns the constitution or its problems
//! (each with a line and column inside the text), and never panics or hangs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenets::constitution::Constitution;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Constitution::parse(&text) {
        Ok(constitution) => {
            // A constitution that loads can be used: hashed, sampled from.
            let _ = constitution.content_hash();
            let _ = constitution.sample_principles(7, "fuzz", 3);
        }
        Err(problems) => {
            // Lines as YAML counts them (a lone CR breaks a line too); a problem found at the
            // end of the input may sit on the line after the last break.
            let breaks = text.replace("\r\n", "\n").matches(['\n', '\r']).count();
            for p in &problems {
                assert!(p.line >= 1 && p.col >= 1, "problem without a place: {p:?}");
                assert!(p.line <= breaks + 2, "problem placed past the end: {p:?}");
            }
        }
    }
});
