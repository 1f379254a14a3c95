//! Writes GGUF files (version 3): metadata, tensor infos and the aligned data section — for
//! adapters, for small test models, and for dequantized copies of a model.
//!
//! The file is written beside its destination and renamed into place, so a reader never sees
//! half a file.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{Value, DEFAULT_ALIGNMENT, MAGIC};
use crate::quant::QuantType;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tensor `{name}`: {message}")]
    Tensor { name: String, message: String },
    #[error("metadata `{key}`: {message}")]
    Metadata { key: String, message: String },
}

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    kind: QuantType,
    data: Vec<u8>,
}

/// A GGUF file being assembled in memory.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a metadata key (replacing an earlier value of the same key).
    pub fn metadata(&mut self, key: &str, value: Value) -> Result<(), WriteError> {
        if let Value::Array(items) = &value {
            let first = items.first().map(type_id);
            if items.iter().any(|v| Some(type_id(v)) != first) {
                return Err(WriteError::Metadata {
                    key: key.to_string(),
                    message: "array items must all have one type".into(),
                });
            }
        }
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), value));
        Ok(())
    }

    /// Adds a tensor: `dims` in ggml order (`dims[0]` the row length), `data` its encoded bytes.
    pub fn tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        kind: QuantType,
        data: Vec<u8>,
    ) -> Result<(), WriteError> {
        let bad = |message: String| WriteError::Tensor {
            name: name.to_string(),
            message,
        };
        let row = *dims.first().ok_or_else(|| bad("no dimensions".into()))?;
        if dims.len() > 4 || row % kind.block_elements() as u64 != 0 {
            return Err(bad(format!("shape {dims:?} does not fit {kind:?} blocks")));
        }
        let elements: u64 = dims.iter().product();
        let expected = elements / kind.block_elements() as u64 * kind.block_bytes() as u64;
        if data.len() as u64 != expected {
            return Err(bad(format!("{} bytes for {expected}", data.len())));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(bad("added twice".into()));
        }
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            kind,
            data,
        });
        Ok(())
    }

    /// Writes the file to `path` (atomically: a temporary file beside it, then a rename).
    pub fn write(&self, path: &Path) -> Result<(), WriteError> {
        let io = |source| WriteError::Io {
            path: path.to_path_buf(),
            source,
        };
        let alignment = self
            .metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .filter(|a| a.is_power_of_two())
            .unwrap_or(DEFAULT_ALIGNMENT);
        let mut head = Vec::new();
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut head, key);
            head.extend_from_slice(&type_id(value).to_le_bytes());
            put_value(&mut head, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_string(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.kind.ggml_id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.data.len() as u64).next_multiple_of(alignment);
        }
        let tmp = path.with_extension("gguf.partial");
        let file = std::fs::File::create(&tmp).map_err(io)?;
        let mut out = BufWriter::new(file);
        let pad = |out: &mut BufWriter<std::fs::File>, len: u64| {
            let fill = len.next_multiple_of(alignment) - len;
            out.write_all(&vec![0u8; fill as usize])
        };
        let written = (|| {
            out.write_all(&head)?;
            pad(&mut out, head.len() as u64)?;
            for t in &self.tensors {
                out.write_all(&t.data)?;
                pad(&mut out, t.data.len() as u64)?;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()
        })();
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        Ok(())
    }
}

fn type_id(value: &Value) -> u32 {
    match value {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.push(*v as u8),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            // An empty array has no item to take a type from: call it u32s.
            out.extend_from_slice(&items.first().map_or(4, type_id).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Gguf;

    #[test]
    fn written_files_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let mut w = GgufWriter::new();
        w.metadata("general.architecture", Value::String("llama".into()))
            .unwrap();
        w.metadata("n", Value::U32(7)).unwrap();
        w.metadata(
            "list",
            Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
        )
        .unwrap();
        assert!(w
            .metadata("mixed", Value::Array(vec![Value::U8(1), Value::Bool(true)]))
            .is_err());
        let values: Vec<u8> = [1.0f32, -2.0, 0.5]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        w.tensor("a", &[3], QuantType::F32, values.clone()).unwrap();
        w.tensor("b", &[32, 2], QuantType::Q8_0, vec![0; 68])
            .unwrap();
        assert!(w.tensor("c", &[32], QuantType::Q8_0, vec![0; 33]).is_err());
        assert!(w.tensor("d", &[31], QuantType::Q8_0, vec![0; 34]).is_err());
        w.write(&path).unwrap();
        assert!(!path.with_extension("gguf.partial").exists());

        let g = Gguf::open(&path).unwrap();
        assert_eq!(g.architecture(), Some("llama"));
        assert_eq!(g.get("n"), Some(&Value::U32(7)));
        assert_eq!(
            g.get("list"),
            Some(&Value::Array(vec![
                Value::String("a".into()),
                Value::String("b".into())
            ]))
        );
        let a = g.tensor("a").unwrap();
        assert_eq!(g.data(a), values.as_slice());
        let b = g.tensor("b").unwrap();
        assert_eq!(
            (b.dims.clone(), b.kind, b.offset % 32),
            (vec![32, 2], QuantType::Q8_0, 0)
        );
    }
}
