//! Prompt files in every supported format, read through the public loader.

use crate::common;

use std::path::Path;

use polars::prelude::*;
use tenets::prompt;

fn parquet_from_jsonl(path: &Path, jsonl: &str) {
    let mut df = JsonReader::new(std::io::Cursor::new(jsonl.as_bytes()))
        .with_json_format(JsonFormat::JsonLines)
        .finish()
        .unwrap();
    ParquetWriter::new(std::fs::File::create(path).unwrap())
        .finish(&mut df)
        .unwrap();
}

#[test]
fn parquet_with_a_prompt_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.parquet");
    parquet_from_jsonl(
        &path,
        "{\"prompt\": \"first {{ x }}\", \"kind\": \"benign\"}\n{\"prompt\": \"second\", \"kind\": null}\n",
    );
    let set = prompt::load(&path).unwrap();
    assert!(set.bad.is_empty(), "{:?}", set.bad);
    assert_eq!(set.items.len(), 2);
    assert_eq!(set.items[0].text(), "first {{ x }}");
    assert_eq!(set.items[0].kind.as_deref(), Some("benign"));
    assert_eq!(set.items[1].line, 2);
}

#[test]
fn parquet_with_messages_and_a_bad_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.parquet");
    parquet_from_jsonl(
        &path,
        concat!(
            "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hi\"}]}\n",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"Q\"}, {\"role\": \"assistant\", \"content\": \"A\"}]}\n",
        ),
    );
    let set = prompt::load(&path).unwrap();
    assert_eq!(set.items.len(), 1);
    assert_eq!(set.items[0].messages.len(), 2);
    assert_eq!(set.bad.len(), 1);
    assert_eq!(set.bad[0].line, 2);
    assert!(set.report()[0].contains("m.parquet:2: the last message must be from the user"));
}

#[test]
fn parquet_without_prompt_columns_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.parquet");
    parquet_from_jsonl(&path, "{\"text\": \"a\"}\n");
    let err = prompt::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("x.parquet") && err.contains("`prompt`"),
        "{err}"
    );
}

#[test]
fn text_csv_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("p.txt");
    std::fs::write(&txt, "one\n\ntwo\r\none\n").unwrap();
    let set = prompt::load(&txt).unwrap();
    assert_eq!(set.items.len(), 2);
    assert_eq!(set.duplicates.len(), 1);
    let d = &set.duplicates[0];
    assert_eq!((d.line, d.exact, d.of_line), (4, true, 1));

    // Near-duplicates (case, punctuation) are left out too, naming the prompt they match.
    let near = dir.path().join("near.txt");
    std::fs::write(
        &near,
        "How do I bake sourdough bread at home without a mixer?\n\
         Write a haiku about autumn leaves.\n\
         how do i bake sourdough bread at home, without a mixer\n",
    )
    .unwrap();
    let set = prompt::load(&near).unwrap();
    assert_eq!(set.items.len(), 2);
    let d = &set.duplicates[0];
    assert_eq!((d.line, d.exact, d.of_line), (3, false, 1));
    assert_eq!(d.of_id, set.items[0].id);

    let csv = dir.path().join("p.csv");
    std::fs::write(&csv, "kind,prompt\nbenign,\"a, with comma\"\nharmful,\n").unwrap();
    let set = prompt::load(&csv).unwrap();
    assert_eq!(set.items.len(), 1);
    assert_eq!(set.items[0].text(), "a, with comma");
    assert_eq!(set.bad[0].line, 3);

    let empty = dir.path().join("e.jsonl");
    std::fs::write(&empty, "\n\n").unwrap();
    assert!(prompt::load(&empty)
        .unwrap_err()
        .to_string()
        .contains("no prompts"));
}

#[test]
fn oversize_line_is_reported_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.txt");
    let big = "x".repeat(prompt::MAX_PROMPT_BYTES + 1);
    std::fs::write(&path, format!("ok\n{big}\n")).unwrap();
    let set = prompt::load(&path).unwrap();
    assert_eq!(set.items.len(), 1);
    assert_eq!(set.bad[0].line, 2);
    assert!(set.bad[0].message.contains("byte limit"));
}

#[test]
fn the_bundled_demo_prompts_are_all_distinct() {
    let set = prompt::load(&common::repo("prompts/sets/demo.jsonl")).unwrap();
    assert_eq!(set.items.len(), 64);
    assert!(set.duplicates.is_empty(), "{:?}", set.duplicates);
}
