//! A GGUF reader: header, metadata of every type, tensor infos and the aligned data section of a
//! memory-mapped model file, for the native forward and trainer ([`writer`] writes them).
//!
//! Every length and offset read from the file is checked against the bytes that are really there
//! before it is used, so a truncated, corrupt or hostile file gives a [`GgufError`] naming what
//! and where — never a panic, an out-of-bounds read or a huge allocation.

pub mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::quant::QuantType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Dimensions a tensor may have (ggml's GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;
/// Nesting allowed for arrays of arrays.
const MAX_DEPTH: usize = 4;
/// Metadata values a file may hold in all (array items included). A parsed value takes about
/// 32 bytes of memory, so the budget bounds what a file can make the reader hold at 512 MiB;
/// the largest real tokenizers (262 144 tokens with their scores, types and merges) hold under
/// 1.5 million.
const MAX_METADATA_VALUES: u64 = 1 << 24;
/// The fewest bytes a tensor info takes in the file: name length, dimension count, one
/// dimension, type and offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;
/// The fewest bytes a metadata entry takes: key length, value type and a one-byte value.
const MIN_METADATA_ENTRY_BYTES: u64 = 8 + 4 + 1;

/// The fewest bytes one value of GGUF metadata type `kind` takes in the file (0 for a type
/// that does not exist: it is refused when read).
fn min_value_bytes(kind: u32) -> u64 {
    match kind {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        // A string's length; an array's item type and count.
        8 => 8,
        9 => 4 + 8,
        10..=12 => 8,
        _ => 1,
    }
}

/// The capacity to reserve for `count` items a file announces, each at least `item_bytes` long,
/// with `left` bytes of the file still unread: an error when they cannot fit (a count is only
/// ever believed as far as the bytes behind it go).
fn capacity_for(count: u64, item_bytes: u64, left: u64) -> Result<usize, String> {
    match count.checked_mul(item_bytes) {
        Some(needed) if needed <= left => Ok(count as usize),
        _ => Err(format!(
            "{count} items of at least {item_bytes} bytes each cannot fit in the {left} bytes left"
        )),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file (bad magic bytes)")]
    NotGguf { path: PathBuf },
    #[error("{path}: GGUF version {version} is not supported (only 2 and 3)")]
    Version { path: PathBuf, version: u32 },
    #[error("{path}: corrupt or truncated at byte {offset}: {message}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        message: String,
    },
    #[error("{path}: tensor `{name}`: {message}")]
    Tensor {
        path: PathBuf,
        name: String,
        message: String,
    },
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, when it is one of the integer types and non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(u64::from(v)),
            Value::U16(v) => Some(u64::from(v)),
            Value::U32(v) => Some(u64::from(v)),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(f64::from(v)),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Where a tensor's data lies and how it is encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (contiguous), then rows, ...
    pub dims: Vec<u64>,
    pub kind: QuantType,
    /// Byte offset of the data from the start of the file.
    pub offset: u64,
    /// Byte length of the data.
    pub size: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// An open GGUF file.
pub struct Gguf {
    path: PathBuf,
    map: Mmap,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Offset of the data section.
    pub data_offset: u64,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked cursor over the file's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// Metadata values still allowed (see [`MAX_METADATA_VALUES`]).
    values_left: u64,
}

impl<'a> Reader<'a> {
    fn left(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    /// Reserves `count` values of the metadata budget.
    fn spend_values(&mut self, count: u64) -> Result<(), GgufError> {
        match self.values_left.checked_sub(count) {
            Some(rest) => {
                self.values_left = rest;
                Ok(())
            }
            None => Err(self.corrupt(format!(
                "metadata holds more than {MAX_METADATA_VALUES} values"
            ))),
        }
    }

    fn corrupt(&self, message: impl Into<String>) -> GgufError {
        GgufError::Corrupt {
            path: self.path.to_path_buf(),
            offset: self.pos as u64,
            message: message.into(),
        }
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(self.corrupt(format!("{what} needs {n} bytes, {left} left")));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let at = self.pos;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| GgufError::Corrupt {
            path: self.path.to_path_buf(),
            offset: at as u64,
            message: format!("{what} is not valid UTF-8"),
        })
    }

    fn value(&mut self, kind: u32, depth: usize) -> Result<Value, GgufError> {
        Ok(match kind {
            0 => Value::U8(self.array::<1>("u8")?[0]),
            1 => Value::I8(self.array::<1>("i8")?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array("u16")?)),
            3 => Value::I16(i16::from_le_bytes(self.array("i16")?)),
            4 => Value::U32(self.u32("u32")?),
            5 => Value::I32(i32::from_le_bytes(self.array("i32")?)),
            6 => Value::F32(f32::from_le_bytes(self.array("f32")?)),
            7 => match self.array::<1>("bool")?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.corrupt(format!("bool value {b}"))),
            },
            8 => Value::String(self.string("string")?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(self.corrupt("arrays nested too deeply"));
                }
                let item = self.u32("array type")?;
                let count = self.u64("array length")?;
                // A count the bytes left cannot hold is a lie, and must not become an
                // allocation; nor may the file's values in all outgrow the budget.
                let capacity = capacity_for(count, min_value_bytes(item), self.left())
                    .map_err(|m| self.corrupt(format!("array: {m}")))?;
                self.spend_values(count)?;
                let mut items = Vec::with_capacity(capacity);
                for _ in 0..count {
                    items.push(self.value(item, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64("u64")?),
            11 => Value::I64(i64::from_le_bytes(self.array("i64")?)),
            12 => Value::F64(f64::from_le_bytes(self.array("f64")?)),
            other => return Err(self.corrupt(format!("unknown metadata type {other}"))),
        })
    }
}

impl Gguf {
    /// Opens and parses a GGUF file (the tensor data stays mapped, not read).
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        if file.metadata().map_err(io)?.is_dir() {
            return Err(GgufError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "it is a folder, not a GGUF file",
                ),
            });
        }
        // SAFETY: the map is read-only and private to this process; a file changed underneath a
        // running process is outside what any reader can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, map)
    }

    fn parse(path: &Path, map: Mmap) -> Result<Self, GgufError> {
        let mut r = Reader {
            bytes: &map,
            pos: 0,
            path,
            values_left: MAX_METADATA_VALUES,
        };
        if map.len() < 4 || &map[..4] != MAGIC {
            return Err(GgufError::NotGguf {
                path: path.to_path_buf(),
            });
        }
        r.pos = 4;
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version {
                path: path.to_path_buf(),
                version,
            });
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        let left = r.left();
        let tensor_capacity = n_tensors
            .checked_mul(MIN_TENSOR_INFO_BYTES)
            .zip(n_kv.checked_mul(MIN_METADATA_ENTRY_BYTES))
            .and_then(|(t, m)| t.checked_add(m))
            .filter(|&needed| needed <= left)
            .map(|_| n_tensors as usize)
            .ok_or_else(|| {
                r.corrupt(format!(
                    "{n_tensors} tensors and {n_kv} metadata entries cannot fit in {left} bytes"
                ))
            })?;
        r.spend_values(n_kv)?;

        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let kind = r.u32("metadata type")?;
            let value = r.value(kind, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(r.corrupt(format!("metadata key `{key}` appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(r.corrupt(format!("general.alignment {v:?} is not a power of two")))
                }
            },
        };

        let mut raw = Vec::with_capacity(
            capacity_for(n_tensors, MIN_TENSOR_INFO_BYTES, r.left())
                .map_err(|m| r.corrupt(format!("tensor table: {m}")))?
                .min(tensor_capacity),
        );
        for _ in 0..n_tensors {
            let name = r.string("tensor name")?;
            let n_dims = r.u32("tensor dimensions")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(r.corrupt(format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64("tensor dimension")?);
            }
            let kind = r.u32("tensor type")?;
            let offset = r.u64("tensor offset")?;
            raw.push((name, dims, kind, offset));
        }
        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;

        let mut tensors = Vec::with_capacity(raw.len());
        let file_len = map.len() as u64;
        for (name, dims, kind, offset) in raw {
            let fail = |message: String| GgufError::Tensor {
                path: path.to_path_buf(),
                name: name.clone(),
                message,
            };
            let kind = QuantType::from_ggml(kind)
                .ok_or_else(|| fail(format!("ggml type {kind} is not supported")))?;
            let elements = dims
                .iter()
                .try_fold(1u64, |acc, d| acc.checked_mul(*d))
                .ok_or_else(|| fail(format!("dimensions {dims:?} overflow")))?;
            if dims[0] % kind.block_elements() as u64 != 0 {
                return Err(fail(format!(
                    "row length {} is not a multiple of the {kind:?} block ({})",
                    dims[0],
                    kind.block_elements()
                )));
            }
            let size = elements / kind.block_elements() as u64 * kind.block_bytes() as u64;
            if offset % alignment != 0 {
                return Err(fail(format!(
                    "offset {offset} is not aligned to {alignment}"
                )));
            }
            let start = data_offset
                .checked_add(offset)
                .ok_or_else(|| fail("offset overflows".into()))?;
            let end = start
                .checked_add(size)
                .ok_or_else(|| fail("size overflows".into()))?;
            if end > file_len {
                return Err(fail(format!(
                    "data [{start}, {end}) lies past the end of the file ({file_len} bytes): truncated?"
                )));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                kind,
                offset: start,
                size,
            });
        }
        Ok(Gguf {
            path: path.to_path_buf(),
            map,
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// `general.architecture` (for example "llama" or "gemma3").
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of a tensor (checked against the file when it was opened).
    pub fn data(&self, tensor: &TensorInfo) -> &[u8] {
        let start = tensor.offset as usize;
        let end = start.saturating_add(tensor.size as usize);
        self.map.get(start..end).unwrap_or(&[])
    }
}
