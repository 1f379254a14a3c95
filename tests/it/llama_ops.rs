//! llama.cpp's own graph, op by op, against the native ops (issue 4's model code checked where
//! the whole-forward comparison cannot look).
//!
//! llama.cpp runs a ≥ 200-token text through the default model (SmolLM2, Q4_1 + Q8_0) with an
//! eval callback that copies out every tensor of the first and the last layer and of the output
//! head. Each native op is then fed llama.cpp's *own inputs* and must give its outputs:
//!
//! - RMSNorm, RoPE, attention, SwiGLU: to f32 rounding (≤ 2e-6 relative);
//! - every quantized matmul (q, k, v, o, gate, up, down, the Q8_0 head): our kernels on
//!   llama.cpp's activations rounded to 8 bits as its AVX2 CPU path rounds them (blocks of 32,
//!   f16 scale; for Q4_1 weights the block sum `s` enters as f16) agree to ≤ 1e-5 relative —
//!   while on the exact f32 activations they differ by the rounding itself (≥ 100× more).
//!
//! That rounding is why the whole quantized forward cannot follow llama.cpp token for token:
//! it is discontinuous, so a difference of f32 rounding before it flips some 8-bit codes and
//! comes out ~20× larger, four times a layer. The second test measures that amplification on
//! llama.cpp's own activations.
//!
//! Run with figures: `cargo test --release --test it llama_ops:: -- --nocapture`.

use crate::common;

use std::ffi::{c_void, CStr, CString};
use std::path::Path;
use std::sync::Mutex;

use llama_cpp_sys_2 as sys;
use tenets::engine::{self, EngineConfig};
use tenets::gguf::Gguf;
use tenets::model::ops::{self, AttentionShape, RopeTable};
use tenets::model::Config;
use tenets::quant::float::{f16_to_f32, f32_to_f16};
use tenets::quant::matmul::{Compute, Kernel, Matrix};
use tenets::quant::QuantType;
use tenets::score::{self, ScoreInput};

const TOKENS: usize = 208;

/// The tests load models and take every core: one at a time.
static LOCK: Mutex<()> = Mutex::new(());

/// One tensor llama.cpp computed: its name, op and values (`ne[0]` contiguous).
struct Tensor {
    name: String,
    op: String,
    ne: [i64; 4],
    data: Vec<f32>,
}

/// What the eval callback keeps: the tensors of `layers`, the embeddings and the head.
struct Capture {
    layers: Vec<usize>,
    tensors: Vec<Tensor>,
}

impl Capture {
    fn wants(&self, name: &str) -> bool {
        if matches!(name, "embd" | "result_norm" | "result_output") {
            return true;
        }
        // Views and copies into the cache carry spaces ("Kcur-0 (view)"): skip them.
        match name.rsplit_once('-') {
            Some((stem, layer)) if !stem.contains(' ') && !layer.contains(' ') => layer
                .parse::<usize>()
                .is_ok_and(|l| self.layers.contains(&l)),
            _ => false,
        }
    }

    /// The tensor called `name` computed by `op` (the first, where a name is reused).
    fn get(&self, name: &str, op: &str) -> &Tensor {
        self.tensors
            .iter()
            .find(|t| t.name == name && t.op == op)
            .unwrap_or_else(|| panic!("llama.cpp computed no {name} by {op}"))
    }
}

/// The eval callback: asked first whether a tensor is wanted, then called once it is computed.
unsafe extern "C" fn keep(t: *mut sys::ggml_tensor, ask: bool, user: *mut c_void) -> bool {
    // SAFETY: llama.cpp hands back the pointer given as cb_eval_user_data (a live `Capture`,
    // used by this thread only while `llama_decode` runs) and a valid tensor.
    let capture = unsafe { &mut *(user as *mut Capture) };
    let name = unsafe { CStr::from_ptr((*t).name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let wanted = capture.wants(&name);
    if ask {
        return wanted;
    }
    if !wanted {
        return true; // keep computing
    }
    unsafe {
        if (*t).type_ == sys::GGML_TYPE_F32 && sys::ggml_is_contiguous(t) {
            let mut data = vec![0f32; sys::ggml_nelements(t) as usize];
            sys::ggml_backend_tensor_get(t, data.as_mut_ptr().cast(), 0, sys::ggml_nbytes(t));
            let op = CStr::from_ptr(sys::ggml_op_desc(t))
                .to_string_lossy()
                .into_owned();
            capture.tensors.push(Tensor {
                name,
                op,
                ne: (*t).ne,
                data,
            });
        }
    }
    true
}

/// Runs `tokens` through llama.cpp in one batch (f32 KV cache, no flash attention: its most
/// exact graph, as `tenets score --engine llama` runs it) and keeps the tensors of `layers`.
fn llama_tensors(path: &Path, tokens: &[u32], layers: Vec<usize>, threads: usize) -> Capture {
    let mut capture = Capture {
        layers,
        tensors: Vec::new(),
    };
    let c_path = CString::new(path.to_str().unwrap()).unwrap();
    let n = tokens.len() as i32;
    // SAFETY: plain use of llama.cpp's C API; every pointer is checked before use and freed once.
    unsafe {
        sys::llama_backend_init();
        let model =
            sys::llama_model_load_from_file(c_path.as_ptr(), sys::llama_model_default_params());
        assert!(
            !model.is_null(),
            "llama.cpp could not load {}",
            path.display()
        );
        let mut params = sys::llama_context_default_params();
        params.n_ctx = 512;
        params.n_batch = 512;
        params.n_ubatch = 512;
        params.n_threads = threads as i32;
        params.n_threads_batch = threads as i32;
        params.type_k = sys::GGML_TYPE_F32;
        params.type_v = sys::GGML_TYPE_F32;
        params.flash_attn_type = sys::LLAMA_FLASH_ATTN_TYPE_DISABLED;
        params.cb_eval = Some(keep);
        params.cb_eval_user_data = (&mut capture as *mut Capture).cast();
        let ctx = sys::llama_init_from_model(model, params);
        assert!(!ctx.is_null(), "llama.cpp could not make a context");
        let batch = sys::llama_batch_init(n, 0, 1);
        for (i, &t) in tokens.iter().enumerate() {
            *batch.token.add(i) = t as i32;
            *batch.pos.add(i) = i as i32;
            *batch.n_seq_id.add(i) = 1;
            *(*batch.seq_id.add(i)) = 0;
            *batch.logits.add(i) = 1;
        }
        let mut batch = batch;
        batch.n_tokens = n;
        let rc = sys::llama_decode(ctx, batch);
        sys::llama_batch_free(batch);
        sys::llama_free(ctx);
        sys::llama_model_free(model);
        assert_eq!(rc, 0, "llama_decode failed");
    }
    capture
}

/// Mean |a − b| over mean |b|.
fn relative(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).abs()).sum();
    let scale: f64 = b.iter().map(|y| f64::from(*y).abs()).sum();
    diff / scale.max(f64::MIN_POSITIVE)
}

fn f16_round(v: f32) -> f32 {
    f16_to_f32(f32_to_f16(v))
}

/// One row of activations as llama.cpp's AVX2 CPU path quantizes it for a dot product with
/// Q8_0/Q8_1 blocks: per block of 32, `d = max|x| / 127`, codes `round_half_even(x · 127/max)`,
/// `d` stored as f16 — returned decoded (`fp16(d) · q`) — and, for Q8_1, the block's
/// `fp16(d · Σq)` beside `fp16(d) · Σq` (the Q4_1 dot adds `m · s` with the former).
struct Rounded {
    values: Vec<f32>,
    /// Per block: `fp16(d·Σq) − fp16(d)·Σq`.
    sum_error: Vec<f64>,
}

fn round_like_llama_cpp(x: &[f32]) -> Rounded {
    let mut values = Vec::with_capacity(x.len());
    let mut sum_error = Vec::with_capacity(x.len() / 32);
    for block in x.chunks_exact(32) {
        let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = max / 127.0;
        let id = if max != 0.0 { 127.0 / max } else { 0.0 };
        let dh = f16_round(d);
        let mut sum = 0i32;
        for &v in block {
            let q = (v * id).round_ties_even();
            sum += q as i32;
            values.push(dh * q);
        }
        let s = f16_round(d * sum as f32);
        sum_error.push(f64::from(s) - f64::from(dh) * f64::from(sum));
    }
    Rounded { values, sum_error }
}

/// `y = x · Wᵀ` for `tokens` rows of `x`, on llama.cpp's rounded activations (`rounded`) or the
/// exact ones.
fn matmul(compute: &Compute, g: &Gguf, name: &str, x: &[f32], rounded: bool) -> Vec<f32> {
    let t = g.tensor(name).unwrap();
    let (cols, rows) = (t.dims[0] as usize, t.dims[1] as usize);
    let w = Matrix::blocks(t.kind, rows, cols, g.data(t)).unwrap();
    let tokens = x.len() / cols;
    let mut y = vec![0.0; tokens * rows];
    if !rounded {
        compute.matmul_t(x, &w, &mut y).unwrap();
        return y;
    }
    let parts: Vec<Rounded> = x.chunks_exact(cols).map(round_like_llama_cpp).collect();
    let xr: Vec<f32> = parts
        .iter()
        .flat_map(|p| p.values.iter().copied())
        .collect();
    compute.matmul_t(&xr, &w, &mut y).unwrap();
    match t.kind {
        QuantType::Q8_0 => {}
        QuantType::Q4_1 => {
            // Σ_b m[r][b] · (fp16(d·Σq) − fp16(d)·Σq): the block minimum meets the f16 sum.
            let data = g.data(t);
            let row_bytes = t.kind.row_bytes(cols);
            for r in 0..rows {
                let row = &data[r * row_bytes..(r + 1) * row_bytes];
                let mins: Vec<f64> = row
                    .chunks_exact(20)
                    .map(|b| f64::from(f16_to_f32(u16::from_le_bytes([b[2], b[3]]))))
                    .collect();
                for (tok, p) in parts.iter().enumerate() {
                    let fix: f64 = mins.iter().zip(&p.sum_error).map(|(m, e)| m * e).sum();
                    y[tok * rows + r] = (f64::from(y[tok * rows + r]) + fix) as f32;
                }
            }
        }
        other => panic!("{name}: {other:?} is not covered by this test"),
    }
    y
}

fn vector(g: &Gguf, name: &str) -> Vec<f32> {
    let t = g.tensor(name).unwrap();
    assert_eq!(t.kind, QuantType::F32);
    g.data(t)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn tokens(path: &Path) -> Vec<u32> {
    let llama = engine::load_model(&EngineConfig::new(path)).unwrap();
    let text =
        std::fs::read_to_string(common::repo("tests/fixtures/texts/printing-press.txt")).unwrap();
    let mut all = score::tokenize(&llama, &ScoreInput::Text(text)).unwrap();
    assert!(all.len() >= TOKENS);
    all.truncate(TOKENS);
    all
}

struct Setup {
    gguf: Gguf,
    config: Config,
    compute: Compute,
    capture: Capture,
    last: usize,
}

fn setup() -> Setup {
    let path = common::model();
    let gguf = Gguf::open(&path).unwrap();
    let config = Config::from_gguf(&gguf).unwrap();
    let last = config.layers - 1;
    let threads = tenets::settings::default_threads();
    let capture = llama_tensors(&path, &tokens(&path), vec![0, last - 1, last], threads);
    let compute = Compute::new(threads, Kernel::detect()).unwrap();
    Setup {
        gguf,
        config,
        compute,
        capture,
        last,
    }
}

#[test]
fn each_llama_cpp_op_is_reproduced_from_its_own_inputs() {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup();
    let (c, cap, g) = (&s.config, &s.capture, &s.gguf);
    let (heads, kv_heads, hd) = (c.heads, c.kv_heads, c.head_dim);
    let table = RopeTable::new(TOKENS, c.rope_dims, c.rope_base, c.rope_scale);
    for layer in [0, s.last] {
        let input = if layer == 0 {
            cap.get("embd", "GET_ROWS")
        } else {
            cap.get(&format!("l_out-{}", layer - 1), "ADD")
        };
        assert_eq!(input.ne[..2], [c.embedding as i64, TOKENS as i64]);
        let t = |name: &str, op: &str| &cap.get(&format!("{name}-{layer}"), op).data;
        let w = |name: &str| format!("blk.{layer}.{name}.weight");
        let mut checks: Vec<(String, f64, f64)> = Vec::new();
        let mut op = |what: &str, ours: Vec<f32>, theirs: &[f32], bound: f64| {
            let r = relative(&ours, theirs);
            println!("layer {layer:2} {what:34} relative {r:.2e}");
            checks.push((what.to_string(), r, bound));
        };

        // Norms, RoPE, attention, SwiGLU: llama.cpp's inputs in, its outputs out.
        let mut h = vec![0.0; input.data.len()];
        ops::rms_norm(&input.data, &vector(g, &w("attn_norm")), c.norm_eps, &mut h);
        op(
            "attn_norm (RMSNorm · weight)",
            h,
            t("attn_norm", "MUL"),
            2e-6,
        );
        let mut q = t("Qcur", "MUL_MAT").clone();
        ops::rope(&mut q, heads, hd, &table, c.rope_layout);
        op("RoPE of q", q, t("Qcur", "ROPE"), 2e-6);
        let mut k = t("Kcur", "MUL_MAT").clone();
        ops::rope(&mut k, kv_heads, hd, &table, c.rope_layout);
        op("RoPE of k", k, t("Kcur", "ROPE"), 2e-6);
        let shape = AttentionShape {
            tokens: TOKENS,
            heads,
            kv_heads,
            head_dim: hd,
            scale: c.attention_scale,
            softcap: c.attention_softcap,
            window: c.window_of(layer),
            branch: None,
        };
        let att = ops::attention(
            &s.compute,
            t("Qcur", "ROPE"),
            t("Kcur", "ROPE"),
            t("Vcur", "MUL_MAT"),
            shape,
        )
        .unwrap();
        op(
            "attention (q·k, softmax, ·v)",
            att,
            t("kqv_out", "CONT"),
            2e-6,
        );
        let mut h2 = vec![0.0; input.data.len()];
        ops::rms_norm(
            t("ffn_inp", "ADD"),
            &vector(g, &w("ffn_norm")),
            c.norm_eps,
            &mut h2,
        );
        op(
            "ffn_norm (RMSNorm · weight)",
            h2,
            t("ffn_norm", "MUL"),
            2e-6,
        );
        let mut act = vec![0.0; t("ffn_gate", "MUL_MAT").len()];
        ops::glu(
            &s.compute,
            t("ffn_gate", "MUL_MAT"),
            t("ffn_up", "MUL_MAT"),
            c.activation,
            &mut act,
        );
        op("SwiGLU", act, t("ffn_swiglu", "SWIGLU"), 2e-6);

        // Quantized matmuls: with llama.cpp's 8-bit activations, then with the exact ones.
        for (weight, x, y) in [
            ("attn_q", ("attn_norm", "MUL"), ("Qcur", "MUL_MAT")),
            ("attn_k", ("attn_norm", "MUL"), ("Kcur", "MUL_MAT")),
            ("attn_v", ("attn_norm", "MUL"), ("Vcur", "MUL_MAT")),
            ("attn_output", ("kqv_out", "CONT"), ("attn_out", "MUL_MAT")),
            ("ffn_gate", ("ffn_norm", "MUL"), ("ffn_gate", "MUL_MAT")),
            ("ffn_up", ("ffn_norm", "MUL"), ("ffn_up", "MUL_MAT")),
            ("ffn_down", ("ffn_swiglu", "SWIGLU"), ("ffn_out", "MUL_MAT")),
        ] {
            let (x, y) = (t(x.0, x.1), t(y.0, y.1));
            let rounded = relative(&matmul(&s.compute, g, &w(weight), x, true), y);
            let exact = relative(&matmul(&s.compute, g, &w(weight), x, false), y);
            println!(
                "layer {layer:2} {weight:12} 8-bit activations {rounded:.2e}, exact activations {exact:.2e}"
            );
            assert!(rounded <= 1e-5, "layer {layer} {weight}: {rounded:.2e}");
            assert!(
                exact >= 100.0 * rounded,
                "layer {layer} {weight}: the rounding should explain the difference ({exact:.2e} vs {rounded:.2e})"
            );
        }
        for (what, r, bound) in checks {
            assert!(r <= bound, "layer {layer} {what}: {r:.2e} > {bound:.0e}");
        }
    }

    // The output head (tied Q8_0 embeddings) on the final norm.
    let x = &cap.get("result_norm", "MUL").data;
    let y = &cap.get("result_output", "MUL_MAT").data;
    let head = if g.tensor("output.weight").is_some() {
        "output.weight"
    } else {
        "token_embd.weight"
    };
    let rounded = relative(&matmul(&s.compute, g, head, x, true), y);
    let exact = relative(&matmul(&s.compute, g, head, x, false), y);
    println!("head {head} 8-bit activations {rounded:.2e}, exact activations {exact:.2e}");
    assert!(rounded <= 1e-5 && exact >= 100.0 * rounded);
}

/// Why the whole forward is compared with llama.cpp at the level of its own rounding noise: the
/// 8-bit rounding is discontinuous, so a tiny difference in its input (the size two f32
/// implementations of a layer leave, 1e-6) flips some codes and moves the output far more than
/// the same difference moves an exact product; differences grow layer by layer that way, until
/// two forwards that differ only in the order of their f32 sums are as far apart as llama.cpp's
/// quantized run is from an exact one.
#[test]
fn eight_bit_rounding_amplifies_small_differences() {
    use rand::{Rng, SeedableRng};
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for (input, weight) in [
        ("attn_norm", "attn_q"),
        ("kqv_out", "attn_output"),
        ("ffn_norm", "ffn_up"),
        ("ffn_swiglu", "ffn_down"),
    ] {
        let layer = s.last - 1;
        let op = match input {
            "kqv_out" => "CONT",
            "ffn_swiglu" => "SWIGLU",
            _ => "MUL",
        };
        let x = &s.capture.get(&format!("{input}-{layer}"), op).data;
        let nudged: Vec<f32> = x
            .iter()
            .map(|&v| v * (1.0 + if rng.gen::<bool>() { 1e-6 } else { -1e-6 }))
            .collect();
        let name = format!("blk.{layer}.{weight}.weight");
        let exact_change = relative(
            &matmul(&s.compute, &s.gguf, &name, &nudged, false),
            &matmul(&s.compute, &s.gguf, &name, x, false),
        );
        let rounded_change = relative(
            &matmul(&s.compute, &s.gguf, &name, &nudged, true),
            &matmul(&s.compute, &s.gguf, &name, x, true),
        );
        let flipped = round_like_llama_cpp(x)
            .values
            .iter()
            .zip(&round_like_llama_cpp(&nudged).values)
            .filter(|(a, b)| a != b)
            .count();
        println!(
            "layer {layer} {weight:12} input ±1e-6: exact product moves {exact_change:.1e}, \
             8-bit product {rounded_change:.1e} ({:.0}×; {flipped} of {} codes flipped)",
            rounded_change / exact_change,
            x.len()
        );
        assert!(flipped > 0, "{weight}: no code flipped");
        assert!(
            rounded_change >= 10.0 * exact_change,
            "{weight}: the rounding should amplify ({rounded_change:.1e} vs {exact_change:.1e})"
        );
    }
}
