//! Adapters in and out as GGUF LoRA files, the format llama.cpp loads (`--lora`,
//! `llama_adapter_lora_init`): `general.type = adapter`, `adapter.type = lora`,
//! `adapter.lora.alpha`, the base model's `general.architecture`, and for each adapted weight
//! `blk.N.<tensor>.weight.lora_a` (ggml shape `[in, rank]`) and `.lora_b` (`[rank, out]`) in f32.
//! llama.cpp scales the update by `alpha / rank`, as tenets does. A weight the file fuses
//! (Phi-3's `attn_qkv`, `ffn_up`) carries one LoRA made of its parts' adapters
//! ([`super::fused`]), as llama.cpp finds only the fused tensor in the base.

use std::path::{Path, PathBuf};

use super::lora::Lora;
use super::{fused, Adapters, Model, Target};
use crate::gguf::writer::{GgufWriter, WriteError};
use crate::gguf::{Gguf, GgufError, Value};
use crate::quant::{dequantize_row, QuantType};

/// The metadata key of a reward model's file (an adapter with a scalar head on top, see
/// `train::reward`): it names the head's tensor. llama.cpp refuses the file as an adapter (the
/// head is a tensor it does not know), and a reward model's adapters alone are no policy, so
/// every reader of adapters for generation or training refuses it by this key, saying what
/// it is.
pub const REWARD_HEAD_KEY: &str = "tenets.reward.head";

/// What refusing a reward model as an adapter says.
pub const REWARD_MODEL_NOT_ADAPTER: &str = "a reward model (LoRA adapters with a scalar head): it \
     scores answers with `tenets reward score --rm`, and is not an adapter to generate or train \
     with";

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Read(#[from] GgufError),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The base tensor an adapter on `target` modifies.
pub fn tensor_name(layer: usize, target: Target) -> String {
    let base = match target {
        Target::Q => "attn_q",
        Target::K => "attn_k",
        Target::V => "attn_v",
        Target::O => "attn_output",
        Target::Gate => "ffn_gate",
        Target::Up => "ffn_up",
        Target::Down => "ffn_down",
    };
    format!("blk.{layer}.{base}.weight")
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes `adapters` (made for `model`) as a GGUF LoRA adapter.
pub fn write(model: &Model, adapters: &Adapters, path: &Path) -> Result<(), AdapterError> {
    writer(model, adapters, path)?.write(path)?;
    Ok(())
}

/// The GGUF of [`write`], not yet written: a file that is an adapter and more (a reward
/// model's head) adds its own metadata and tensors first. `path` is for messages.
pub fn writer(model: &Model, adapters: &Adapters, path: &Path) -> Result<GgufWriter, AdapterError> {
    let invalid = |message: String| AdapterError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let all: Vec<&Lora> = adapters.layers.iter().flatten().flatten().collect();
    let first = all
        .first()
        .ok_or_else(|| invalid("no adapter to write".into()))?;
    // One `adapter.lora.alpha` for the file; llama.cpp divides it by each tensor's own rank.
    let alpha_of = |l: &Lora| l.scale * l.rank as f32;
    if all
        .iter()
        .any(|l| (alpha_of(l) - alpha_of(first)).abs() > 1e-6 * alpha_of(first).abs())
    {
        return Err(invalid("every adapter in one file must share alpha".into()));
    }
    let arch = model.config().architecture.name();
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", Value::String(arch.into()))?;
    w.metadata("general.type", Value::String("adapter".into()))?;
    w.metadata("adapter.type", Value::String("lora".into()))?;
    w.metadata(
        "adapter.lora.alpha",
        Value::F32(first.scale * first.rank as f32),
    )?;
    w.metadata("general.name", Value::String("tenets LoRA adapter".into()))?;
    let fused_weights = model.fused_weights();
    let mut put = |name: &str, lora: &Lora| -> Result<(), AdapterError> {
        let (input, rank, output) = (lora.input as u64, lora.rank as u64, lora.output as u64);
        let a = f32_bytes(&lora.a);
        w.tensor(&format!("{name}.lora_a"), &[input, rank], QuantType::F32, a)?;
        let b = f32_bytes(&lora.b);
        w.tensor(
            &format!("{name}.lora_b"),
            &[rank, output],
            QuantType::F32,
            b,
        )?;
        Ok(())
    };
    for (l, slots) in adapters.layers.iter().enumerate() {
        for f in &fused_weights {
            if let Some(lora) = f.lora(model, l, slots) {
                put(&format!("blk.{l}.{}.weight", f.tensor), &lora)?;
            }
        }
        for target in Target::ALL {
            if fused_weights.iter().any(|f| f.holds(target)) {
                continue;
            }
            if let Some(lora) = &slots[target as usize] {
                put(&tensor_name(l, target), lora)?;
            }
        }
    }
    Ok(w)
}

/// Reads a GGUF LoRA adapter written for `model` (by tenets or by llama.cpp's converter).
pub fn read(model: &Model, path: &Path) -> Result<Adapters, AdapterError> {
    read_from(model, &Gguf::open(path)?, path, &[])
}

/// [`read`] from an opened file `g` (at `path`, for messages) that may also hold the tensors
/// named in `also` (a reward model's head): any other tensor that is not a factor is an error.
pub fn read_from(
    model: &Model,
    g: &Gguf,
    path: &Path,
    also: &[&str],
) -> Result<Adapters, AdapterError> {
    let invalid = |message: String| AdapterError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    if also.is_empty() && g.get(REWARD_HEAD_KEY).is_some() {
        return Err(invalid(REWARD_MODEL_NOT_ADAPTER.into()));
    }
    if g.get("general.type").and_then(Value::as_str) != Some("adapter")
        || g.get("adapter.type").and_then(Value::as_str) != Some("lora")
    {
        return Err(invalid(
            "not a LoRA adapter (general.type / adapter.type)".into(),
        ));
    }
    let alpha = g
        .get("adapter.lora.alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| invalid("`adapter.lora.alpha` is missing".into()))? as f32;
    let read = |name: &str| -> Result<(Vec<u64>, Vec<f32>), AdapterError> {
        let t = g
            .tensor(name)
            .ok_or_else(|| invalid(format!("tensor `{name}` is missing")))?;
        let mut out = vec![0.0; t.elements() as usize];
        dequantize_row(t.kind, g.data(t), &mut out)
            .map_err(|e| invalid(format!("tensor `{name}`: {e}")))?;
        Ok((t.dims.clone(), out))
    };
    let mut adapters = Adapters {
        layers: (0..model.config().layers)
            .map(|_| Default::default())
            .collect(),
        dropout: None,
    };
    // The LoRA on `name` (a weight of `output` rows of `input`), where the file has one.
    let lora_on = |name: &str, input: usize, output: usize| -> Result<Option<Lora>, AdapterError> {
        if g.tensor(&format!("{name}.lora_a")).is_none() {
            return Ok(None);
        }
        let (a_dims, a) = read(&format!("{name}.lora_a"))?;
        let (b_dims, b) = read(&format!("{name}.lora_b"))?;
        let rank = a_dims.get(1).copied().unwrap_or(0) as usize;
        if a_dims != [input as u64, rank as u64]
            || b_dims != [rank as u64, output as u64]
            || rank == 0
        {
            return Err(invalid(format!(
                "`{name}`: lora_a {a_dims:?} and lora_b {b_dims:?} do not fit a {output}×{input} weight"
            )));
        }
        Ok(Some(Lora {
            rank,
            input,
            output,
            scale: alpha / rank as f32,
            a,
            b,
        }))
    };
    let fused_weights = model.fused_weights();
    // Every tensor of the file must be a factor this model's adapters read: one on another
    // weight (the embedding, a fused part written apart) would otherwise be dropped silently.
    let mut known = std::collections::HashSet::new();
    for l in 0..model.config().layers {
        known.extend(
            fused_weights
                .iter()
                .map(|f| format!("blk.{l}.{}.weight", f.tensor)),
        );
        known.extend(
            Target::ALL
                .into_iter()
                .filter(|&t| !fused_weights.iter().any(|f| f.holds(t)))
                .map(|t| tensor_name(l, t)),
        );
    }
    let adapted = |name: &str| {
        let base = name
            .strip_suffix(".lora_a")
            .or(name.strip_suffix(".lora_b"));
        base.is_some_and(|b| known.contains(b)) || also.contains(&name)
    };
    if let Some(t) = g.tensors.iter().find(|t| !adapted(&t.name)) {
        return Err(invalid(format!(
            "tensor `{}` is not a LoRA factor of a weight this {} model's adapters sit on \
             (q, k, v, o, gate, up, down of each layer{})",
            t.name,
            model.config().architecture.name(),
            if fused_weights.is_empty() {
                ""
            } else {
                ", as its fused attn_qkv / ffn_up"
            }
        )));
    }
    let mut found = 0;
    for (l, slots) in adapters.layers.iter_mut().enumerate() {
        for f in &fused_weights {
            let shapes: Vec<(usize, usize)> = f
                .parts
                .iter()
                .map(|&t| model.projection_shape(l, t))
                .collect();
            let rows: Vec<usize> = shapes.iter().map(|s| s.1).collect();
            let name = format!("blk.{l}.{}.weight", f.tensor);
            if let Some(lora) = lora_on(&name, shapes[0].0, rows.iter().sum())? {
                for (&t, part) in f.parts.iter().zip(fused::split(&lora, &rows)) {
                    slots[t as usize] = Some(part);
                }
                found += 1;
            }
        }
        for target in Target::ALL {
            if fused_weights.iter().any(|f| f.holds(target)) {
                continue;
            }
            let (input, output) = model.projection_shape(l, target);
            if let Some(lora) = lora_on(&tensor_name(l, target), input, output)? {
                slots[target as usize] = Some(lora);
                found += 1;
            }
        }
    }
    if found == 0 {
        return Err(invalid("no `blk.N.*.lora_a` tensors for this model".into()));
    }
    Ok(adapters)
}
