//! Parquet files read as JSON lines: polars reads the file, and the rows come back as the same
//! JSON objects a JSONL file would hold, so one parser (and one set of error messages) serves
//! both formats. Row N is line N.

use std::path::Path;

/// The rows of `path` and the names of `columns` it has, keeping only those columns; null
/// members are dropped so a missing value reads like an absent field. Errors carry no path.
pub fn rows_as_jsonl(
    path: &Path,
    columns: &[&str],
) -> Result<(Vec<u8>, Vec<String>), ParquetError> {
    use polars::prelude::*;
    let file = std::fs::File::open(path).map_err(ParquetError::Read)?;
    let df = ParquetReader::new(file)
        .finish()
        .map_err(|e| ParquetError::Format(format!("cannot read Parquet: {e}")))?;
    let keep: Vec<PlSmallStr> = df
        .get_column_names()
        .into_iter()
        .filter(|c| columns.contains(&c.as_str()))
        .cloned()
        .collect();
    let names = keep.iter().map(|c| c.to_string()).collect();
    let mut df = df
        .select(keep)
        .map_err(|e| ParquetError::Format(format!("cannot select columns: {e}")))?;
    let mut out = Vec::new();
    if df.width() > 0 {
        JsonWriter::new(&mut out)
            .with_json_format(JsonFormat::JsonLines)
            .finish(&mut df)
            .map_err(|e| ParquetError::Format(format!("cannot convert rows: {e}")))?;
    }
    let mut cleaned = Vec::with_capacity(out.len());
    for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let mut value: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.retain(|_, v| !v.is_null());
        }
        cleaned.extend(serde_json::to_vec(&value).unwrap_or_default());
        cleaned.push(b'\n');
    }
    Ok((cleaned, names))
}

/// Why a Parquet file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParquetError {
    #[error("{0}")]
    Read(std::io::Error),
    #[error("{0}")]
    Format(String),
}
