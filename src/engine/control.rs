//! Control vectors (steering) in llama.cpp's engine: the file read and checked against the
//! model before anything runs, then handed to llama.cpp's own call, `llama_set_adapter_cvec`,
//! on every context the engine decodes with — so `generate`, `eval` and `score --engine llama`
//! steer exactly as llama.cpp's `--control-vector` does.
//!
//! Why a raw pointer: llama-cpp-2 (0.1.160) keeps its context's `llama_context*` to itself and
//! has no control-vector call. Its `Debug` shows that pointer (and the model's); we read it
//! there and use it only after llama.cpp itself confirms it: the context's model must be the
//! model we loaded and its sizes the ones the safe API reports. Anything else is an error that
//! says so — never a guess. When the bindings grow an accessor, only [`raw_context`] changes.

use std::path::{Path, PathBuf};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_sys_2 as sys;

use super::EngineError;
use crate::gguf::{Gguf, Value};
use crate::model::steer::{self, ControlVector, Shape};

/// A control vector to steer with: the file, its scale (negative steers away) and, when given,
/// the only blocks it steers (0-based, inclusive, as `--control-layers`).
#[derive(Debug, Clone, PartialEq)]
pub struct ControlSetting {
    pub path: PathBuf,
    pub scale: f32,
    pub layers: Option<(usize, usize)>,
}

impl ControlSetting {
    /// `V.gguf[:SCALE]` and `--control-layers`.
    pub fn parse(arg: &str, layers: Option<(usize, usize)>) -> Self {
        let (path, scale) = steer::parse_scaled(arg);
        ControlSetting {
            path,
            scale,
            layers,
        }
    }

    /// A short name for reports: the file's stem and the scale (`refusal@0.5`).
    pub fn label(&self) -> String {
        let stem = self
            .path
            .file_stem()
            .map_or("steer".into(), |s| s.to_string_lossy().into_owned());
        let layers = self
            .layers
            .map(|(a, b)| format!(" blocks {a}-{b}"))
            .unwrap_or_default();
        format!("{stem}@{}{layers}", self.scale)
    }
}

/// Reads the vector for the model at `model_path` (only its metadata is read: the width and
/// block count llama.cpp will check), scaled and cut to its blocks. Every failure names the
/// vector's file.
pub fn read(setting: &ControlSetting, model_path: &Path) -> Result<ControlVector, EngineError> {
    let invalid = |message: String| EngineError::Model {
        path: setting.path.clone(),
        message,
    };
    if !setting.scale.is_finite() {
        return Err(invalid(
            "the control vector's scale must be a number".into(),
        ));
    }
    let gguf = Gguf::open(model_path).map_err(|e| EngineError::Model {
        path: model_path.to_path_buf(),
        message: e.to_string(),
    })?;
    let arch = gguf.architecture().unwrap_or("unknown").to_string();
    let number = |key: &str| -> Result<usize, EngineError> {
        gguf.get(&format!("{arch}.{key}"))
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| EngineError::Model {
                path: model_path.to_path_buf(),
                message: format!("no `{arch}.{key}`: cannot check a control vector against it"),
            })
    };
    let shape = Shape {
        embedding: number("embedding_length")?,
        layers: number("block_count")?,
        architecture: &arch,
    };
    let vector = steer::read_for(shape, &setting.path).map_err(|e| {
        let text = e.to_string();
        let prefix = format!("{}: ", setting.path.display());
        invalid(text.strip_prefix(&prefix).unwrap_or(&text).to_string())
    })?;
    let vector = vector.scaled(setting.scale);
    let vector = match setting.layers {
        Some((first, last)) => {
            if last >= shape.layers {
                return Err(invalid(format!(
                    "--control-layers {first}-{last}: the model has blocks 0-{}",
                    shape.layers - 1
                )));
            }
            vector.within(first, last)
        }
        None => vector,
    };
    if vector.layers().is_empty() {
        return Err(invalid(
            "no block of the vector lies within --control-layers".into(),
        ));
    }
    Ok(vector)
}

/// Steers every sequence `ctx` decodes from now on with `vector` (llama.cpp keeps its own
/// copy), through llama.cpp's `llama_set_adapter_cvec`.
pub fn apply(
    ctx: &LlamaContext<'_>,
    model: &LlamaModel,
    vector: &ControlVector,
) -> Result<(), EngineError> {
    let embedding = usize::try_from(model.n_embd()).unwrap_or(0);
    let Some((data, first, last)) = vector.llama_layout(embedding) else {
        return Err(EngineError::Context(
            "the control vector steers no block".into(),
        ));
    };
    if last >= model.n_layer() as usize {
        return Err(EngineError::Context(format!(
            "the control vector steers block {last}; the model has {} blocks",
            model.n_layer()
        )));
    }
    let raw = raw_context(ctx, model)?;
    // SAFETY: `raw` is the live context `ctx` wraps (checked by llama.cpp in `raw_context`);
    // llama.cpp copies `data` into tensors of its own before returning.
    let rc = unsafe {
        sys::llama_set_adapter_cvec(
            raw,
            data.as_ptr(),
            data.len(),
            model.n_embd(),
            first as i32,
            last as i32,
        )
    };
    if rc != 0 {
        return Err(EngineError::Context(format!(
            "llama.cpp refused the control vector (llama_set_adapter_cvec returned {rc})"
        )));
    }
    Ok(())
}

/// The `llama_context*` inside `ctx`, confirmed by llama.cpp: its model is `model`'s pointer
/// and its context and batch sizes are those `ctx` reports.
fn raw_context(
    ctx: &LlamaContext<'_>,
    model: &LlamaModel,
) -> Result<*mut sys::llama_context, EngineError> {
    let unreachable = || {
        EngineError::Context(
            "this build's llama.cpp bindings do not show their context, so a control vector \
             cannot be applied through llama.cpp (the native engine applies one: `tenets score \
             --engine native`)"
                .into(),
        )
    };
    let context = shown_address(&format!("{ctx:?}"), "context").ok_or_else(unreachable)?;
    let expected_model = shown_address(&format!("{model:?}"), "model").ok_or_else(unreachable)?;
    let raw = context as *mut sys::llama_context;
    // SAFETY: `raw` is the address `ctx` holds (its Debug prints its one pointer field); the
    // calls only read the context.
    let (model_of_context, n_ctx, n_batch) = unsafe {
        (
            sys::llama_get_model(raw) as usize,
            sys::llama_n_ctx(raw),
            sys::llama_n_batch(raw),
        )
    };
    if model_of_context != expected_model || n_ctx != ctx.n_ctx() || n_batch != ctx.n_batch() {
        return Err(unreachable());
    }
    Ok(raw)
}

/// The hexadecimal address a `Debug` rendering shows after `field: 0x`.
fn shown_address(shown: &str, field: &str) -> Option<usize> {
    let rest = shown.split(&format!("{field}: 0x")).nth(1)?;
    let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    usize::from_str_radix(&hex, 16).ok().filter(|&a| a != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_only_from_the_named_field() {
        assert_eq!(
            shown_address("LlamaContext { context: 0x5f3a10 }", "context"),
            Some(0x5f3a10)
        );
        assert_eq!(shown_address("LlamaModel { model: 0x0 }", "model"), None);
        assert_eq!(shown_address("LlamaContext { ctx: 0x10 }", "context"), None);
        assert_eq!(shown_address("context: 0xzz", "context"), None);
    }

    #[test]
    fn labels_name_the_file_scale_and_blocks() {
        let s = ControlSetting::parse("out/refusal.gguf:-0.5", Some((2, 9)));
        assert_eq!(s.path, PathBuf::from("out/refusal.gguf"));
        assert_eq!(s.scale, -0.5);
        assert_eq!(s.label(), "refusal@-0.5 blocks 2-9");
        assert_eq!(ControlSetting::parse("v.gguf", None).label(), "v@1");
    }
}
