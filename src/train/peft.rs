//! Adapters out in PEFT's format, for the Hugging Face side: `adapter_model.safetensors` (f32
//! `lora_A`/`lora_B` under HF module names), `adapter_config.json` and a `README.md` that says
//! which base model to load it on.
//!
//! Module names follow the class transformers builds for the checkpoint ([`HfLayout`]): a plain
//! causal LM keeps its decoder at `model.layers.N`, while Gemma 3 4B and larger load as
//! `Gemma3ForConditionalGeneration`, whose decoder sits at `model.language_model.layers.N` beside
//! a vision tower with q/k/v projections of its own — so there the keys say `language_model` and
//! `target_modules` is a regular expression that matches the language model only.
//!
//! GGUF converters permute the rows of Llama q/k weights so llama.cpp's adjacent-pair RoPE gives
//! the original rotation (`convert_hf_to_gguf`'s `permute`: within each head, HF row
//! `half·d/2 + j` becomes GGUF row `2j + half`). An adapter trained on the GGUF rows has its
//! `lora_B` rows in that order too; written for HF it is put back (`lora_A` acts on the input side,
//! which is not permuted). Gemma's files keep HF's order.
//!
//! Phi-3's q/k/v and gate/up are one module each in transformers (`qkv_proj`, `gate_up_proj`),
//! as in its GGUF: their adapters are written fused ([`crate::model::fused`]), with the fused
//! rank in `rank_pattern`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};

use crate::model::lora::Lora;
use crate::model::{Adapters, Architecture, Model, RopeLayout, Target};

#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    #[error("{path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("no adapter to write")]
    Empty,
}

/// Where transformers puts the decoder layers of the class it builds for a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfLayout {
    /// `*ForCausalLM`: `model.layers.N`.
    CausalLm,
    /// `Gemma3ForConditionalGeneration` (Gemma 3 4B, 12B, 27B and their fine-tunes):
    /// `model.language_model.layers.N`, beside `model.vision_tower`.
    Gemma3Multimodal,
}

/// Hidden sizes of the Gemma 3 checkpoints that ship with a vision tower (4B, 12B, 27B); 270M
/// (640) and 1B (1152) are text-only `Gemma3ForCausalLM`.
const GEMMA3_MULTIMODAL_WIDTHS: [usize; 3] = [2560, 3840, 5376];

impl HfLayout {
    /// The layout of `model`'s checkpoint. A GGUF holds only the language model, so Gemma 3's
    /// size tells: the multimodal checkpoints are the widths above, and only they scale RoPE
    /// (linear, factor 8, on their global layers).
    pub fn of(model: &Model) -> Self {
        let c = model.config();
        let multimodal = GEMMA3_MULTIMODAL_WIDTHS.contains(&c.embedding) || c.rope_scale != 1.0;
        if c.architecture == Architecture::Gemma3 && multimodal {
            HfLayout::Gemma3Multimodal
        } else {
            HfLayout::CausalLm
        }
    }

    /// The module path of the decoder layers, under the model's root.
    fn layers(self) -> &'static str {
        match self {
            HfLayout::CausalLm => "model.layers",
            HfLayout::Gemma3Multimodal => "model.language_model.layers",
        }
    }

    /// PEFT's `target_modules` for `targets`: module name suffixes for a plain decoder, and for a
    /// multimodal one a regular expression (PEFT matches a string with `re.fullmatch`) that
    /// names only the language model's projections, never the vision tower's.
    fn target_modules(self, names: &[&str]) -> serde_json::Value {
        match self {
            HfLayout::CausalLm => serde_json::json!(names),
            HfLayout::Gemma3Multimodal => serde_json::json!(format!(
                r"(.*\.)?language_model\.(model\.)?layers\.\d+\.(self_attn|mlp)\.({})",
                names.join("|")
            )),
        }
    }
}

/// A projection's (block, module) names in HF's decoder layer.
fn projection(target: Target) -> (&'static str, &'static str) {
    match target {
        Target::Q => ("self_attn", "q_proj"),
        Target::K => ("self_attn", "k_proj"),
        Target::V => ("self_attn", "v_proj"),
        Target::O => ("self_attn", "o_proj"),
        Target::Gate => ("mlp", "gate_proj"),
        Target::Up => ("mlp", "up_proj"),
        Target::Down => ("mlp", "down_proj"),
    }
}

/// The PEFT key prefix of a projection (`base_model.model.` + the module path).
pub fn module_name(layout: HfLayout, layer: usize, target: Target) -> String {
    let (block, module) = projection(target);
    format!(
        "base_model.model.{}.{layer}.{block}.{module}",
        layout.layers()
    )
}

/// The Hugging Face repository a GGUF was converted from, where the file names it: the
/// converter's `general.source.huggingface.repository`, or a `general.source.url` on the Hub.
/// (`general.base_model.*` names the model this one was fine-tuned *from*: not the one to load.)
pub fn source_repository(gguf: &crate::gguf::Gguf) -> Option<String> {
    let text = |key: &str| gguf.get(key).and_then(|v| v.as_str()).map(str::trim);
    if let Some(repo) = text("general.source.huggingface.repository").filter(|r| is_repo_id(r)) {
        return Some(repo.to_string());
    }
    let url = text("general.source.url")?;
    let path = url
        .strip_prefix("https://huggingface.co/")
        .or_else(|| url.strip_prefix("http://huggingface.co/"))?;
    let repo: Vec<&str> = path.split('/').take(2).collect();
    let repo = repo.join("/");
    is_repo_id(&repo).then_some(repo)
}

/// `owner/name`, as the Hub spells repository ids.
fn is_repo_id(text: &str) -> bool {
    let ok = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    matches!(text.split_once('/'), Some((owner, name)) if ok(owner) && ok(name))
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
    write_with_head(model, adapters, None, dropout, dir)
}

/// [`write`] for a reward model: the adapters plus its scalar head as the `score` module
/// (`task_type: SEQ_CLS`, `modules_to_save: ["score"]`), the shape TRL's `RewardTrainer` saves
/// and `AutoModelForSequenceClassification` with `num_labels=1` loads.
pub fn write_reward(
    model: &Model,
    adapters: &Adapters,
    head: &super::reward::ScalarHead,
    dropout: f32,
    dir: &Path,
) -> Result<(), PeftError> {
    write_with_head(model, adapters, Some(head), dropout, dir)
}

fn write_with_head(
    model: &Model,
    adapters: &Adapters,
    head: Option<&super::reward::ScalarHead>,
    dropout: f32,
    dir: &Path,
) -> Result<(), PeftError> {
    let fail = |path: &Path, e: &dyn std::fmt::Display| PeftError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let c = model.config();
    let layout = HfLayout::of(model);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    // Module names adapted (`q_proj`, or Phi-3's `qkv_proj`), and each one's rank.
    let mut modules: Vec<(&'static str, usize)> = Vec::new();
    let mut first: Option<Lora> = None;
    let mut push = |name: String, module: &'static str, lora: &Lora, b: &[f32]| {
        first.get_or_insert_with(|| lora.clone());
        if !modules.iter().any(|(m, _)| *m == module) {
            modules.push((module, lora.rank));
        }
        tensors.push((
            format!("{name}.lora_A.weight"),
            vec![lora.rank, lora.input],
            bytes(&lora.a),
        ));
        tensors.push((
            format!("{name}.lora_B.weight"),
            vec![lora.output, lora.rank],
            bytes(b),
        ));
    };
    let fused_weights = model.fused_weights();
    for (l, slots) in adapters.layers.iter().enumerate() {
        // Phi-3's fused weights: one LoRA per fused module (the NeoX families' rows are never
        // permuted, so nothing to put back).
        for f in &fused_weights {
            if let Some(lora) = f.lora(model, l, slots) {
                let name = format!(
                    "base_model.model.{}.{l}.{}.{}",
                    layout.layers(),
                    f.hf_block,
                    f.hf_module
                );
                push(name, f.hf_module, &lora, &lora.b);
            }
        }
        for target in Target::ALL {
            if fused_weights.iter().any(|f| f.holds(target)) {
                continue;
            }
            let Some(lora) = slots[target as usize].as_ref() else {
                continue;
            };
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
            push(
                module_name(layout, l, target),
                projection(target).1,
                lora,
                &b,
            );
        }
    }
    let first = first.ok_or(PeftError::Empty)?;
    if let Some(head) = head {
        // PEFT saves a module-to-save under its plain name (`…score.weight`, `[1, hidden]`).
        tensors.push((
            "base_model.model.score.weight".into(),
            vec![1, head.weight.len()],
            bytes(&head.weight),
        ));
    }
    // `r` is the adapters' own rank; a fused module holds its parts' ranks summed, and says so
    // in `rank_pattern` (alpha is one for all: the fused B carries each part's scale).
    let r = modules
        .iter()
        .map(|(_, rank)| *rank)
        .min()
        .unwrap_or(first.rank);
    let rank_pattern: serde_json::Map<String, serde_json::Value> = modules
        .iter()
        .filter(|(_, rank)| *rank != r)
        .map(|(m, rank)| (m.to_string(), serde_json::json!(rank)))
        .collect();
    let names: Vec<&str> = modules.iter().map(|(m, _)| *m).collect();
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

    // Without a repository id the base cannot be named for `AutoPeftModelForCausalLM`: null,
    // and the README says to load the base explicitly.
    let base = source_repository(model.gguf());
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": if head.is_some() { "SEQ_CLS" } else { "CAUSAL_LM" },
        "base_model_name_or_path": base,
        "r": r,
        "lora_alpha": first.scale * first.rank as f32,
        "lora_dropout": dropout,
        "target_modules": layout.target_modules(&names),
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "modules_to_save": head.map(|_| ["score"]),
        "rank_pattern": rank_pattern,
        "alpha_pattern": {},
    });
    let readme_path = dir.join("README.md");
    let readme = readme(model, layout, base.as_deref());
    crate::atomic::write(&readme_path, readme.as_bytes()).map_err(|e| fail(&readme_path, &e))?;
    let config_path = dir.join("adapter_config.json");
    let text = serde_json::to_vec_pretty(&config).map_err(|e| fail(&config_path, &e))?;
    crate::atomic::write(&config_path, &text).map_err(|e| fail(&config_path, &e))?;
    Ok(())
}

/// The adapter folder's model card: the base to load it on and the module layout assumed.
fn readme(model: &Model, layout: HfLayout, base: Option<&str>) -> String {
    let name = ["general.name", "general.basename"]
        .iter()
        .find_map(|k| model.gguf().get(k).and_then(|v| v.as_str()))
        .unwrap_or("the base model");
    let file = model
        .path()
        .file_name()
        .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
    let class = match layout {
        HfLayout::CausalLm => "AutoModelForCausalLM",
        HfLayout::Gemma3Multimodal => "Gemma3ForConditionalGeneration",
    };
    let load = match base {
        Some(repo) => format!(
            "The base is `{repo}` (`base_model_name_or_path`), so PEFT can load it alone:\n\n\
             ```python\nfrom peft import AutoPeftModelForCausalLM\n\
             model = AutoPeftModelForCausalLM.from_pretrained(\"path/to/this/folder\")\n```\n"
        ),
        None => format!(
            "The GGUF file ({file}, \"{name}\") does not name the Hugging Face repository it was \
             converted from, so `base_model_name_or_path` is empty and the base must be given \
             explicitly — the checkpoint the GGUF was made from:\n\n\
             ```python\nfrom transformers import {class}\nfrom peft import PeftModel\n\
             base = {class}.from_pretrained(\"<owner>/<model>\")\n\
             model = PeftModel.from_pretrained(base, \"path/to/this/folder\")\n```\n"
        ),
    };
    let modules = match layout {
        HfLayout::CausalLm => "`model.layers.N` (a causal LM)".to_string(),
        HfLayout::Gemma3Multimodal => "`model.language_model.layers.N`, as transformers builds \
            Gemma 3 4B and larger (`Gemma3ForConditionalGeneration`); `target_modules` is a \
            regular expression that leaves the vision tower alone"
            .to_string(),
    };
    format!(
        "---\nlibrary_name: peft\n---\n\n# LoRA adapter trained by tenets\n\n\
         Trained on the quantized GGUF `{file}` (\"{name}\"). Its keys address the decoder at \
         {modules}.\n\n{load}"
    )
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
