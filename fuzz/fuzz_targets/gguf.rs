//! The GGUF reader on arbitrary bytes: it parses the header, metadata and tensor table or says
//! what is wrong, and every tensor it accepts lies inside the file. Never a panic.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use tenets::gguf::Gguf;

fuzz_target!(|data: &[u8]| {
    let Ok(mut file) = tempfile::Builder::new().suffix(".gguf").tempfile() else {
        return;
    };
    if file.write_all(data).is_err() {
        return;
    }
    if let Ok(gguf) = Gguf::open(file.path()) {
        let _ = gguf.architecture();
        for tensor in &gguf.tensors {
            let bytes = gguf.data(tensor);
            assert!(bytes.len() as u64 <= data.len() as u64);
        }
    }
});
