//! Adapters out in PEFT's format, for the Hugging Face side: `adapter_model.safetensors` (f32
//! `lora_A`/`lora_B` under HF module names) and `adapter_config.json`.
//!
//! GGUF converters permute the rows of Llama q/k weights so llama.cpp's adjacent-pair RoPE gives
//! the original rotation (`convert_hf_to_gguf`'s `permute`: within each head, HF row
//! `half·d/2 + j` becomes GGUF row `2j + half`). An adapter trained on the GGUF rows has its
//! `lora_B` rows in that order too; written for HF it is put back (`lora_A` acts on the input side,
//! which is not permuted). Gemma's files keep HF's order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};

use super::lora::Lora;
use super::model::{Adapters, Model, RopeLayout, Target};

#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    #[error("{path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("no adapter to write")]
    Empty,
}

/// The HF module path of a projection.
pub fn module_name(layer: usize, target: Target) -> String {
    let module = match target {
        Target::Q => "self_attn.q_proj",
        Target::K => "self_attn.k_proj",
        Target::V => "self_attn.v_proj",
        Target::O => "self_attn.o_proj",
        Target::Gate => "mlp.gate_proj",
        Target::Up => "mlp.up_proj",
        Target::Down => "mlp.down_proj",
    };
    format!("base_model.model.model.layers.{layer}.{module}")
}

/// Rows of a q or k projection from GGUF order back to HF order (`heads` heads of `head_dim`).
pub fn unpermute_rows(rows: &[f32], row_len: usize, heads: usize, head_dim: usize) -> Vec<f32> {
    let mut out = vec![0.0; rows.len()];
    let half = head_dim / 2;
    for h in 0..heads {
        for j in 0..half {
            for side in 0..2 {
                let gguf = h * head_dim + 2 * j + side;
                let hf = h * head_dim + side * half + j;
                out[hf * row_len..(hf + 1) * row_len]
                    .copy_from_slice(&rows[gguf * row_len..(gguf + 1) * row_len]);
            }
        }
    }
    out
}

/// Writes `dir/adapter_model.safetensors` and `dir/adapter_config.json` (`dropout`: the
/// training dropout, recorded in the config).
pub fn write(
    model: &Model,
    adapters: &Adapters,
    dropout: f32,
    dir: &Path,
) -> Result<(), PeftError> {
    let fail = |path: &Path, e: &dyn std::fmt::Display| PeftError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let c = model.config();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut targets: Vec<Target> = Vec::new();
    let mut first: Option<&Lora> = None;
    for (l, slots) in adapters.layers.iter().enumerate() {
        for target in Target::ALL {
            let Some(lora) = slots[target as usize].as_ref() else {
                continue;
            };
            first.get_or_insert(lora);
            if !targets.contains(&target) {
                targets.push(target);
            }
            let heads = match target {
                Target::Q => Some(c.heads),
                Target::K => Some(c.kv_heads),
                _ => None,
            };
            let b = match (heads, c.rope_layout) {
                (Some(heads), RopeLayout::Adjacent) => {
                    unpermute_rows(&lora.b, lora.rank, heads, c.head_dim)
                }
                _ => lora.b.clone(),
            };
            let name = module_name(l, target);
            tensors.push((
                format!("{name}.lora_A.weight"),
                vec![lora.rank, lora.input],
                bytes(&lora.a),
            ));
            tensors.push((
                format!("{name}.lora_B.weight"),
                vec![lora.output, lora.rank],
                bytes(&b),
            ));
        }
    }
    let first = first.ok_or(PeftError::Empty)?;
    std::fs::create_dir_all(dir).map_err(|e| fail(dir, &e))?;
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| fail(dir, &format!("{e:?}")))
        })
        .collect::<Result<_, _>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let weights_path = dir.join("adapter_model.safetensors");
    let data = safetensors::tensor::serialize(views, &Some(metadata))
        .map_err(|e| fail(&weights_path, &format!("{e:?}")))?;
    crate::atomic::write(&weights_path, &data).map_err(|e| fail(&weights_path, &e))?;

    let base = ["general.basename", "general.name"]
        .iter()
        .find_map(|k| model.gguf().get(k).and_then(|v| v.as_str()))
        .map(str::to_string)
        .unwrap_or_else(|| model.path().display().to_string());
    let modules: Vec<String> = targets
        .iter()
        .map(|t| {
            let name = module_name(0, *t);
            name.rsplit('.').next().unwrap_or_default().to_string()
        })
        .collect();
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": first.rank,
        "lora_alpha": first.scale * first.rank as f32,
        "lora_dropout": dropout,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "modules_to_save": null,
        "rank_pattern": {},
        "alpha_pattern": {},
    });
    let config_path = dir.join("adapter_config.json");
    let text = serde_json::to_vec_pretty(&config).map_err(|e| fail(&config_path, &e))?;
    crate::atomic::write(&config_path, &text).map_err(|e| fail(&config_path, &e))?;
    Ok(())
}

fn bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `convert_hf_to_gguf`'s permute: reshape(heads, 2, d/2, ·).swapaxes(1, 2).
    fn permute(rows: &[f32], row_len: usize, heads: usize, head_dim: usize) -> Vec<f32> {
        let half = head_dim / 2;
        let mut out = vec![0.0; rows.len()];
        for h in 0..heads {
            for side in 0..2 {
                for j in 0..half {
                    let src = h * head_dim + side * half + j;
                    let dst = h * head_dim + j * 2 + side;
                    out[dst * row_len..(dst + 1) * row_len]
                        .copy_from_slice(&rows[src * row_len..(src + 1) * row_len]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_undoes_the_converters_permutation() {
        let (heads, head_dim, row_len) = (3, 8, 2);
        let hf: Vec<f32> = (0..heads * head_dim * row_len).map(|v| v as f32).collect();
        let gguf = permute(&hf, row_len, heads, head_dim);
        assert_ne!(gguf, hf);
        assert_eq!(unpermute_rows(&gguf, row_len, heads, head_dim), hf);
        // Row 1 of HF head 0 (first half, j = 1) sits at GGUF row 2.
        assert_eq!(gguf[2 * row_len], hf[row_len]);
    }
}
