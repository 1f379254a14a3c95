//! The native GGUF reader and the scalar dequantizers on the real default model, checked against
//! an independent implementation (gguf-py's `quants.dequantize`, figures recorded below), and
//! against truncated, corrupted and hand-made hostile files: errors, never panics.

use crate::common;

use std::io::Write;

use tenets::gguf::{Gguf, GgufError};
use tenets::quant::{dequantize_row, QuantType};

/// (tensor, type, elements, Σx, Σx², first three values as f64: they are exact f32 values).
type Reference = (&'static str, QuantType, usize, f64, f64, [f64; 3]);

/// The default model's figures from gguf 0.17 (Python) on the same file.
const REFERENCE: &[Reference] = &[
    (
        "token_embd.weight",
        QuantType::Q8_0,
        49152 * 576,
        -15353.04449415207,
        520415.71544763993,
        [
            -0.10654449462890625,
            0.032978057861328125,
            0.048198699951171875,
        ],
    ),
    (
        "blk.0.attn_q.weight",
        QuantType::Q4_1,
        576 * 576,
        59.22322082519531,
        26749.573275085306,
        [-0.0963134765625, 0.1573486328125, -0.0963134765625],
    ),
    (
        "blk.0.ffn_down.weight",
        QuantType::Q4_1,
        1536 * 576,
        150.63577270507812,
        33220.11995097203,
        [-0.330810546875, 0.3460693359375, 0.0753173828125],
    ),
    (
        "output_norm.weight",
        QuantType::F32,
        576,
        1038.33203125,
        1921.7355499267578,
        [1.7578125, 1.8203125, 1.78125],
    ),
];

/// The same figures for one tensor of each type in Gemma 3 270M Q4_K_M.
const GEMMA_REFERENCE: &[Reference] = &[
    (
        "output_norm.weight",
        QuantType::F32,
        640,
        16861.6953125,
        1871095.028137207,
        [7.125, 9.5625, 47.0],
    ),
    (
        "token_embd.weight",
        QuantType::Q8_0,
        167772160,
        -27668.36862385273,
        278708.59100772557,
        [
            -0.007244110107421875,
            0.042860984802246094,
            -0.034409523010253906,
        ],
    ),
    (
        "blk.0.attn_k.weight",
        QuantType::Q5_0,
        163840,
        32.07246398925781,
        256.29940138361417,
        [0.0, -0.027557373046875, 0.011810302734375],
    ),
    (
        "blk.0.attn_output.weight",
        QuantType::Q4K,
        655360,
        -1.8330761790275574,
        930.2992641774874,
        [
            -0.015705108642578125,
            0.04966926574707031,
            -0.03749656677246094,
        ],
    ),
    (
        "blk.0.ffn_down.weight",
        QuantType::Q6K,
        1310720,
        6.480193614959717,
        610.7072775584979,
        [
            0.0052117109298706055,
            0.02171546220779419,
            -0.02518993616104126,
        ],
    ),
];

/// Dequantizes each named tensor row by row and compares with the reference figures.
fn check_against_reference(gguf: &Gguf, reference: &[Reference]) {
    for (name, kind, elements, sum, sum_sq, first) in reference {
        let t = gguf.tensor(name).unwrap();
        assert_eq!(t.kind, *kind, "{name}");
        assert_eq!(t.elements() as usize, *elements, "{name}");
        let row = t.dims[0] as usize;
        let row_bytes = kind.row_bytes(row);
        let mut out = vec![0.0f32; row];
        let (mut s, mut s2) = (0.0f64, 0.0f64);
        for (r, bytes) in gguf.data(t).chunks_exact(row_bytes).enumerate() {
            dequantize_row(*kind, bytes, &mut out).unwrap();
            if r == 0 {
                let head: Vec<f64> = out[..3].iter().map(|x| f64::from(*x)).collect();
                assert_eq!(head, first, "{name}");
            }
            for x in &out {
                s += f64::from(*x);
                s2 += f64::from(*x) * f64::from(*x);
            }
        }
        assert!(
            (s - sum).abs() <= 1e-6 * sum_sq.max(1.0),
            "{name}: Σx {s} vs {sum}"
        );
        assert!(
            (s2 - sum_sq).abs() <= 1e-9 * sum_sq,
            "{name}: Σx² {s2} vs {sum_sq}"
        );
    }
}

#[test]
fn reads_gemma_k_quants_like_the_reference() {
    let gguf = Gguf::open(&common::second_model()).unwrap();
    assert_eq!(gguf.architecture(), Some("gemma3"));
    assert_eq!(gguf.tensors.len(), 236);
    check_against_reference(&gguf, GEMMA_REFERENCE);
}

#[test]
fn reads_the_default_model_and_dequantizes_like_the_reference() {
    let gguf = Gguf::open(&common::model()).unwrap();
    assert_eq!(gguf.version, 3);
    assert_eq!(gguf.architecture(), Some("llama"));
    assert_eq!(gguf.tensors.len(), 272);
    let count = |k| gguf.tensors.iter().filter(|t| t.kind == k).count();
    assert_eq!(
        (
            count(QuantType::Q4_1),
            count(QuantType::F32),
            count(QuantType::Q8_0)
        ),
        (210, 61, 1)
    );
    assert_eq!(
        gguf.get("llama.embedding_length").and_then(|v| v.as_u64()),
        Some(576)
    );
    let tokens = gguf.get("tokenizer.ggml.tokens").unwrap();
    assert!(matches!(tokens, tenets::gguf::Value::Array(a) if a.len() == 49152));

    check_against_reference(&gguf, REFERENCE);
}

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    path
}

/// The model's header: everything before the tensor data.
fn header() -> Vec<u8> {
    let path = common::model();
    let gguf = Gguf::open(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    bytes[..gguf.data_offset as usize].to_vec()
}

#[test]
fn truncated_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let header = header();
    // Cut inside the metadata, inside the tensor infos, and with the data missing.
    for cut in [
        3,
        10,
        30,
        1000,
        header.len() / 2,
        header.len() - 10,
        header.len(),
    ] {
        let path = write(dir.path(), "cut.gguf", &header[..cut]);
        match Gguf::open(&path) {
            Err(
                GgufError::NotGguf { .. } | GgufError::Corrupt { .. } | GgufError::Tensor { .. },
            ) => {}
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    let path = write(dir.path(), "cut.gguf", &header);
    let err = Gguf::open(&path).unwrap_err().to_string();
    assert!(err.contains("past the end of the file"), "{err}");
}

/// Little-endian bytes for hand-made headers: `Le::default().s("key").u32(8).0`.
#[derive(Default)]
struct Le(Vec<u8>);

impl Le {
    fn u32(mut self, v: u32) -> Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    /// A GGUF string: u64 length, then the bytes.
    fn s(self, text: &str) -> Self {
        let mut me = self.u64(text.len() as u64);
        me.0.extend(text.as_bytes());
        me
    }
}

/// A minimal GGUF: magic, version 3, counts, then `rest`.
fn handmade(tensors: u64, kvs: u64, rest: Le) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(Le::default().u32(3).u64(tensors).u64(kvs).0);
    b.extend(rest.0);
    b
}

#[test]
fn hostile_headers_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad_version = handmade(0, 0, Le::default());
    bad_version[4] = 9;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("magic", b"GGML\x03\0\0\0".to_vec(), "not a GGUF file"),
        ("version", bad_version, "version 9"),
        (
            "huge string",
            handmade(0, 1, Le::default().s("a").u32(8).u64(1 << 60)),
            "needs 1152921504606846976 bytes",
        ),
        ("counts", handmade(u64::MAX, 1, Le::default()), "cannot fit"),
        (
            "huge array",
            handmade(0, 1, Le::default().s("a").u32(9).u32(4).u64(1 << 40)),
            "array: 1099511627776 items of at least 4 bytes each cannot fit",
        ),
        // Counts believed one byte per item (the old check) but more than the bytes hold at
        // the item's real size: refused before any item is read or any room is reserved.
        (
            "u64 array past the bytes",
            handmade(
                0,
                1,
                Le::default().s("a").u32(9).u32(10).u64(10).u64(0).u64(0),
            ),
            "array: 10 items of at least 8 bytes each cannot fit in the 16 bytes left",
        ),
        (
            "tensor infos past the bytes",
            handmade(4, 0, Le::default().s("t").u32(1).u64(32).u32(0).u64(0)),
            "4 tensors and 0 metadata entries cannot fit",
        ),
        (
            "unknown type",
            handmade(0, 1, Le::default().s("a").u32(99)),
            "unknown metadata type 99",
        ),
        (
            "too many dims",
            handmade(1, 0, Le::default().s("t").u32(9).u64(0).u64(0).u64(0)),
            "9 dimensions",
        ),
        (
            "unsupported tensor type",
            handmade(1, 0, Le::default().s("t").u32(1).u64(32).u32(19).u64(0)),
            "ggml type 19",
        ),
        (
            "overflowing dims",
            handmade(
                1,
                0,
                Le::default()
                    .s("t")
                    .u32(2)
                    .u64(u64::MAX)
                    .u64(u64::MAX)
                    .u32(0)
                    .u64(0),
            ),
            "overflow",
        ),
    ];
    for (what, bytes, needle) in cases {
        let path = write(dir.path(), "h.gguf", &bytes);
        let err = Gguf::open(&path).expect_err(what).to_string();
        assert!(err.contains(needle), "{what}: {err}");
        assert!(err.contains("h.gguf"), "{what}: {err}");
    }
}

/// A file big enough for the count its header gives, one byte an item, but with more values
/// than any real tokenizer holds: refused at the header of the array, before the reader reserves
/// (at ~32 bytes a parsed value) half a gigabyte for it or reads a single item.
#[test]
fn a_hostile_count_is_refused_before_it_becomes_an_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let count: u64 = (1 << 24) + 1;
    let bytes = handmade(0, 1, Le::default().s("a").u32(9).u32(0).u64(count));
    let path = write(dir.path(), "sparse.gguf", &bytes);
    // The rest of the file is a hole: it reads as zeros and takes no disk.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(bytes.len() as u64 + count + 64).unwrap();
    let started = std::time::Instant::now();
    let err = Gguf::open(&path).unwrap_err().to_string();
    assert!(
        err.contains("metadata holds more than 16777216 values"),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "took {:?}: the items were read",
        started.elapsed()
    );
}

#[test]
fn random_corruption_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let header = header();
    // A fixed xorshift sequence: the same corruptions every run.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..200 {
        let mut bytes = header.clone();
        for _ in 0..4 {
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = next() as u8;
        }
        let path = write(dir.path(), "flip.gguf", &bytes);
        let _ = Gguf::open(&path); // Ok or Err; a panic fails the test
    }
}
