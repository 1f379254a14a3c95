//! A safety classifier with no training of the model: a linear probe on the default model's
//! hidden states, fitted on `safety-train`'s tagged prompts (harmful vs benign look-alikes) and
//! measured by AUROC on the held-out evaluation sets, and with each topic left out of the fit in
//! turn (how it may do on topics it never saw). The measurement behind `tenets::guard::probe`.
//!
//! `cargo run --release --example probe [-- MODEL.gguf]` (default: the default model).

use std::collections::BTreeSet;
use std::path::Path;

use tenets::chat::Message;
use tenets::engine::{self, EngineConfig};
use tenets::guard::probe::{auroc, FitSettings, Probe};
use tenets::model::Model;
use tenets::quant::matmul::{Compute, Kernel};
use tenets::score::{self, ScoreInput};

/// A prompt's features (the mean final hidden state over its chat-framed tokens), its kind and
/// its topic.
struct Example {
    features: Vec<f32>,
    harmful: bool,
    topic: String,
}

fn main() -> anyhow::Result<()> {
    let model_path = std::env::args()
        .nth(1)
        .map(Into::into)
        .unwrap_or_else(tenets::home::default_model_path);
    let threads = tenets::settings::default_threads();
    let config = EngineConfig {
        threads,
        ..EngineConfig::new(&model_path)
    };
    let llama = engine::load_model(&config)?;
    let model = Model::open(&model_path)?;
    let compute = Compute::new(threads, Kernel::detect())?;
    let e = model.config().embedding;
    let read = |set: &str| -> anyhow::Result<Vec<Example>> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("prompts/sets/{set}.jsonl"));
        let mut out = Vec::new();
        for line in std::fs::read_to_string(path)?
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            let row: serde_json::Value = serde_json::from_str(line)?;
            let text = row["prompt"].as_str().unwrap_or_default().to_string();
            let chat = ScoreInput::Chat(vec![Message {
                role: "user".into(),
                content: text,
            }]);
            let tokens = score::tokenize(&llama, &chat)?;
            let hidden = model.hidden(&compute, &tokens)?;
            let mut features = vec![0.0f32; e];
            for row in hidden.chunks_exact(e) {
                features
                    .iter_mut()
                    .zip(row)
                    .for_each(|(f, v)| *f += v / tokens.len() as f32);
            }
            out.push(Example {
                features,
                harmful: row["kind"] == "harmful",
                topic: row["topic"].as_str().unwrap_or_default().to_string(),
            });
        }
        Ok(out)
    };
    let train = read("safety-train")?;
    let mut held_out = read("eval-harmful")?;
    held_out.extend(read("eval-benign")?);

    let fit = |examples: &[&Example]| {
        let x: Vec<Vec<f32>> = examples.iter().map(|e| e.features.clone()).collect();
        let y: Vec<bool> = examples.iter().map(|e| e.harmful).collect();
        Probe::fit(&x, &y, FitSettings::default())
    };
    let scored = |probe: &Probe, examples: &[&Example]| -> Vec<(f64, bool)> {
        examples
            .iter()
            .map(|e| (probe.logit(&e.features), e.harmful))
            .collect()
    };
    let accuracy = |s: &[(f64, bool)]| {
        s.iter().filter(|(v, y)| (*v > 0.0) == *y).count() as f64 / s.len() as f64
    };

    let probe = fit(&train.iter().collect::<Vec<_>>())?;
    let s = scored(&probe, &held_out.iter().collect::<Vec<_>>());
    println!(
        "fitted on safety-train ({} prompts); held-out sets ({}): AUROC {:.3}, accuracy {:.3}",
        train.len(),
        s.len(),
        auroc(&s).unwrap_or(f64::NAN),
        accuracy(&s)
    );

    let all: Vec<&Example> = train.iter().chain(&held_out).collect();
    let topics: BTreeSet<&str> = all.iter().map(|e| e.topic.as_str()).collect();
    let mut pooled = Vec::new();
    for topic in topics {
        let (out, kept): (Vec<&Example>, Vec<&Example>) =
            all.iter().partition(|e| e.topic == topic);
        let s = scored(&fit(&kept)?, &out);
        let kind = if out[0].harmful { "harmful" } else { "benign" };
        println!(
            "  topic left out: {topic:?} ({} {kind}): accuracy {:.2}",
            s.len(),
            accuracy(&s)
        );
        pooled.extend(s);
    }
    println!(
        "each topic left out of the fit in turn: AUROC {:.3}, accuracy {:.3}",
        auroc(&pooled).unwrap_or(f64::NAN),
        accuracy(&pooled)
    );
    Ok(())
}
