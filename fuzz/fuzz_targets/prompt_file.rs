//! The prompt-file readers on arbitrary bytes: the first byte picks the format (JSONL, CSV,
//! plain text, Parquet), the rest is the file. Every outcome is a prompt set with its bad lines
//! or an error naming the file; never a panic.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

const FORMATS: [&str; 4] = ["jsonl", "csv", "txt", "parquet"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let ext = FORMATS[usize::from(pick) % FORMATS.len()];
    let Ok(mut file) = tempfile::Builder::new()
        .suffix(&format!(".{ext}"))
        .tempfile()
    else {
        return;
    };
    if file.write_all(body).is_err() {
        return;
    }
    match tenets::prompt::load(file.path()) {
        Ok(set) => {
            for item in &set.items {
                assert!(!item.messages.is_empty());
            }
            let _ = set.report();
        }
        Err(e) => assert!(e.to_string().contains(&*file.path().to_string_lossy())),
    }
});
