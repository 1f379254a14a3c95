//! Products of f32 activations with a weight matrix stored as GGUF blocks:
//! `y = x · Wᵀ` (the forward pass of a linear layer) and `dx = dy · W` (the backward pass through a
//! frozen weight). W is decoded a panel of rows at a time into a small f32 buffer — never as a
//! whole — and each panel meets every token in a register-blocked micro-kernel: AVX-512 or
//! AVX2+FMA where the CPU has it (chosen at run time), a plain scalar loop everywhere else.
//! Panels are spread over a thread pool; every output element is summed by one thread in a fixed
//! order, so results do not depend on the number of threads.

use rayon::prelude::*;

use super::{decode_row, QuantType};

/// Rows of W decoded together for `y = x · Wᵀ` by the scalar and AVX2 kernels (AVX-512 takes
/// `avx512::DOT_ROWS`): small enough that the panel stays in L2 next to the
/// activations, and a multiple of the AVX2 dot tile's 3 rows (16 left a slow 1-row tile in every
/// panel). Measured on the trainer's bench (2 cores): 24 gave 8% more training tokens/s than 16.
const PANEL_ROWS: usize = 24;

/// Rows of W decoded together for `dx = dy · W`, where a task decodes only its own columns of
/// each row: longer panels load and store each output tile fewer times. The sums do not depend
/// on it (each output element adds its rows' terms in order either way).
const DX_PANEL_ROWS: usize = 64;

/// The fewest tokens a task takes when a product's tokens are split between tasks.
const MIN_TASK_TOKENS: usize = 16;

/// Which micro-kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust, any CPU: the reference the fast paths are tested against.
    Scalar,
    /// x86-64 AVX2 with FMA (and F16C, which every AVX2 CPU has, for block scales).
    Avx2,
    /// x86-64 AVX-512F products (sixteen lanes), on the AVX2 panel decoders.
    Avx512,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        if Kernel::Avx512.available() {
            Kernel::Avx512
        } else if Kernel::Avx2.available() {
            Kernel::Avx2
        } else {
            Kernel::Scalar
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                Kernel::Avx2.available() && std::arch::is_x86_feature_detected!("avx512f")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 | Kernel::Avx512 => false,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MatmulError {
    #[error("{kind:?} matrix of {rows}×{cols}: {bytes} bytes given, {expected} needed")]
    Size {
        kind: QuantType,
        rows: usize,
        cols: usize,
        bytes: usize,
        expected: usize,
    },
    #[error("{kind:?} rows hold blocks of {block} weights; {cols} columns is not a multiple")]
    Columns {
        kind: QuantType,
        cols: usize,
        block: usize,
    },
    #[error("{what}: {got} values given, {expected} expected")]
    Operand {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("the {0:?} kernel does not run on this CPU")]
    Unavailable(Kernel),
    #[error("cannot start the compute threads: {0}")]
    Threads(String),
}

#[derive(Clone, Copy)]
enum Source<'a> {
    Blocks {
        kind: QuantType,
        bytes: &'a [u8],
        row_bytes: usize,
    },
    F32(&'a [f32]),
}

/// A `rows × cols` weight matrix, row-major: row `r` holds the `cols` weights that produce output
/// `r` (ggml's layout, `dims[0] = cols`).
#[derive(Clone, Copy)]
pub struct Matrix<'a> {
    rows: usize,
    cols: usize,
    source: Source<'a>,
}

impl<'a> Matrix<'a> {
    /// A matrix in GGUF blocks (any [`QuantType`], F32/F16/BF16 included).
    pub fn blocks(
        kind: QuantType,
        rows: usize,
        cols: usize,
        bytes: &'a [u8],
    ) -> Result<Self, MatmulError> {
        let block = kind.block_elements();
        if !cols.is_multiple_of(block) {
            return Err(MatmulError::Columns { kind, cols, block });
        }
        let row_bytes = kind.row_bytes(cols);
        let expected = row_bytes.saturating_mul(rows);
        if bytes.len() != expected {
            return Err(MatmulError::Size {
                kind,
                rows,
                cols,
                bytes: bytes.len(),
                expected,
            });
        }
        Ok(Matrix {
            rows,
            cols,
            source: Source::Blocks {
                kind,
                bytes,
                row_bytes,
            },
        })
    }

    /// A matrix of plain f32 values (activations, LoRA factors), used in place.
    pub fn f32(rows: usize, cols: usize, values: &'a [f32]) -> Result<Self, MatmulError> {
        if values.len() != rows * cols {
            return Err(MatmulError::Size {
                kind: QuantType::F32,
                rows,
                cols,
                bytes: values.len() * 4,
                expected: rows * cols * 4,
            });
        }
        Ok(Matrix {
            rows,
            cols,
            source: Source::F32(values),
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn kind(&self) -> QuantType {
        match self.source {
            Source::Blocks { kind, .. } => kind,
            Source::F32(_) => QuantType::F32,
        }
    }

    /// Weights per block along a row: column ranges handed to threads start on these.
    fn block(&self) -> usize {
        match self.source {
            Source::Blocks { kind, .. } => kind.block_elements(),
            Source::F32(_) => 1,
        }
    }

    /// Rows `r0..r1`, columns `c0..c1` (`c0`, `c1` on block boundaries or at `cols`) as f32:
    /// returns the values and the stride between rows. Decodes into `scratch` when needed.
    fn panel<'s>(
        &'s self,
        rows: std::ops::Range<usize>,
        c0: usize,
        c1: usize,
        scratch: &'s mut Vec<f32>,
        kernel: Kernel,
    ) -> (&'s [f32], usize) {
        match self.source {
            Source::F32(values) => {
                let start = rows.start * self.cols + c0;
                let end = (rows.end - 1) * self.cols + c1;
                (&values[start..end], self.cols)
            }
            Source::Blocks {
                kind,
                bytes,
                row_bytes,
            } => {
                let width = c1 - c0;
                let (b0, b1) = (kind.row_bytes(c0), kind.row_bytes(c1));
                let len = rows.len() * width;
                // Every value is overwritten: grow the buffer, never clear it again.
                if scratch.len() < len {
                    scratch.resize(len, 0.0);
                }
                // Both SIMD kernels imply AVX2 and F16C (`Kernel::available`).
                let avx2 = kernel != Kernel::Scalar;
                for (r, out) in rows.zip(scratch[..len].chunks_exact_mut(width)) {
                    let row = &bytes[r * row_bytes..(r + 1) * row_bytes];
                    // Sizes were checked when the matrix was made.
                    decode_row(kind, &row[b0..b1], out, avx2);
                }
                (&scratch[..len], width)
            }
        }
    }
}

/// A compute thread's buffers for decoded and rearranged panels, kept between products: a task
/// takes them and puts them back, so they grow to the largest panel once instead of being
/// allocated and cleared for every piece of work rayon hands out.
#[derive(Default)]
struct Buffers {
    panel: Vec<f32>,
    packed: Vec<f32>,
}

thread_local! {
    static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::default();
}

/// Kernels and the threads they run on.
pub struct Compute {
    kernel: Kernel,
    pool: rayon::ThreadPool,
}

impl std::fmt::Debug for Compute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compute")
            .field("kernel", &self.kernel)
            .field("threads", &self.threads())
            .finish()
    }
}

impl Compute {
    /// `threads` compute threads (never more than free cores: the work is pure arithmetic).
    pub fn new(threads: usize, kernel: Kernel) -> Result<Self, MatmulError> {
        if !kernel.available() {
            return Err(MatmulError::Unavailable(kernel));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("tenets-compute-{i}"))
            .build()
            .map_err(|e| MatmulError::Threads(e.to_string()))?;
        Ok(Compute { kernel, pool })
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs `f` on the compute threads (for work beside the matmuls, such as attention heads).
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// `y = x · Wᵀ`: `x` is `tokens × W.cols`, `y` is `tokens × W.rows`, both row-major.
    pub fn matmul_t(&self, x: &[f32], w: &Matrix, y: &mut [f32]) -> Result<(), MatmulError> {
        let tokens = check_operand("x", x.len(), w.cols)?;
        check_len("y", y.len(), tokens * w.rows)?;
        let kernel = self.kernel;
        let k = w.cols;
        let panel_rows = match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => super::avx512::DOT_ROWS,
            _ => PANEL_ROWS,
        };
        let panels = w.rows.div_ceil(panel_rows);
        let tasks = self.tasks(panels, tokens);
        let out = Out::new(y, w.rows);
        self.pool.install(|| {
            tasks.into_par_iter().for_each(|(p, t)| {
                let mut buffers = BUFFERS.with_borrow_mut(std::mem::take);
                let Buffers {
                    panel: scratch,
                    packed,
                } = &mut buffers;
                let rows = p * panel_rows..((p + 1) * panel_rows).min(w.rows);
                let n = rows.len();
                let (panel, stride) = w.panel(rows.clone(), 0, k, scratch, kernel);
                let dot = Dot {
                    x: &x[t.start * k..t.end * k],
                    k,
                    w: panel,
                    w_stride: stride,
                    n,
                };
                // This task alone writes rows `t`, columns `rows` of `y`.
                dot_panel(
                    kernel,
                    &dot,
                    t.len(),
                    out.at(t.start, rows.start, n),
                    packed,
                );
                BUFFERS.set(buffers);
            })
        });
        Ok(())
    }

    /// `dx = dy · W`: `dy` is `tokens × W.rows`, `dx` is `tokens × W.cols` (overwritten).
    pub fn matmul_dx(&self, dy: &[f32], w: &Matrix, dx: &mut [f32]) -> Result<(), MatmulError> {
        dx.fill(0.0);
        self.matmul_dx_add(dy, w, dx)
    }

    /// `dx += dy · W`: [`Compute::matmul_dx`] summed into what `dx` holds (a gradient with
    /// several sources takes them all without a temporary each).
    pub fn matmul_dx_add(&self, dy: &[f32], w: &Matrix, dx: &mut [f32]) -> Result<(), MatmulError> {
        let tokens = check_operand("dy", dy.len(), w.rows)?;
        check_len("dx", dx.len(), tokens * w.cols)?;
        let kernel = self.kernel;
        // Columns are split on block boundaries; each thread decodes only its part of each row.
        let block = w.block();
        let blocks = w.cols / block;
        let per_task = (blocks.div_ceil(self.threads() * 4)).max(64usize.div_ceil(block));
        let spans: Vec<(usize, usize)> = (0..blocks)
            .step_by(per_task)
            .map(|b| (b * block, ((b + per_task) * block).min(w.cols)))
            .collect();
        let tasks = self.tasks(spans.len(), tokens);
        let out = Out::new(dx, w.cols);
        self.pool.install(|| {
            tasks.into_par_iter().for_each(|(s, t)| {
                let mut buffers = BUFFERS.with_borrow_mut(std::mem::take);
                let scratch = &mut buffers.panel;
                let (c0, c1) = spans[s];
                let width = c1 - c0;
                let dy = &dy[t.start * w.rows..t.end * w.rows];
                for r0 in (0..w.rows).step_by(DX_PANEL_ROWS) {
                    let rows = r0..(r0 + DX_PANEL_ROWS).min(w.rows);
                    let n = rows.len();
                    let (panel, stride) = w.panel(rows, c0, c1, scratch, kernel);
                    let axpy = Axpy {
                        dy,
                        dy_stride: w.rows,
                        r0,
                        n,
                        w: panel,
                        w_stride: stride,
                        width,
                    };
                    // This task alone reads and writes rows `t`, columns `c0..c1` of `dx`.
                    axpy_panel(kernel, &axpy, t.len(), out.at(t.start, c0, width));
                }
                BUFFERS.set(buffers);
            })
        });
        Ok(())
    }

    /// The tasks of a product with `parts` column parts over `tokens` rows: each part whole,
    /// or, when there are too few parts to keep every thread busy (a LoRA factor's 8 rows), each
    /// part over a range of tokens. Every output element still has one task and one order of
    /// summation, whatever the split.
    fn tasks(&self, parts: usize, tokens: usize) -> Vec<(usize, std::ops::Range<usize>)> {
        let wanted = self.threads() * 4;
        let pieces = if parts >= wanted {
            1
        } else {
            wanted.div_ceil(parts.max(1))
        };
        let chunk = tokens.div_ceil(pieces).max(MIN_TASK_TOKENS);
        (0..parts)
            .flat_map(|p| {
                (0..tokens)
                    .step_by(chunk)
                    .map(move |t| (p, t..(t + chunk).min(tokens)))
            })
            .collect()
    }
}

/// Columns `col..col + width` of a row-major output with rows of `stride` floats, from one row
/// on: what one task of a product writes. The tasks of one product hold views of the same
/// output, each of its own block of rows and columns, so no element is touched by two tasks; the
/// output stays borrowed mutably by the product until every task has finished (`install`
/// returns after them).
#[derive(Clone, Copy)]
pub(super) struct Out {
    ptr: *mut f32,
    len: usize,
    stride: usize,
    col: usize,
    pub(super) width: usize,
}

// SAFETY: tasks write disjoint blocks through their views (see `Out`), never the same element.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    fn new(values: &mut [f32], stride: usize) -> Self {
        Out {
            ptr: values.as_mut_ptr(),
            len: values.len(),
            stride,
            col: 0,
            width: stride,
        }
    }

    /// The view of columns `col..col + width` from row `row` on.
    fn at(&self, row: usize, col: usize, width: usize) -> Out {
        assert!(col + width <= self.stride && row * self.stride <= self.len);
        Out {
            // SAFETY: inside the output (asserted).
            ptr: unsafe { self.ptr.add(row * self.stride) },
            len: self.len - row * self.stride,
            col,
            width,
            ..*self
        }
    }

    /// Whether rows `0..tokens` of this view lie inside the output.
    pub(super) fn holds(&self, tokens: usize) -> bool {
        tokens == 0 || (tokens - 1) * self.stride + self.col + self.width <= self.len
    }

    /// Element (`t`, `c`) of this view.
    ///
    /// # Safety
    /// `t` below a row count checked with [`Out::holds`], `c < width`, and no other task
    /// touching the element (the view's block is its task's alone).
    #[inline(always)]
    pub(super) unsafe fn ptr(&self, t: usize, c: usize) -> *mut f32 {
        debug_assert!(c < self.width && t * self.stride + self.col + c < self.len);
        self.ptr.add(t * self.stride + self.col + c)
    }
}

/// The transpose of a `rows × cols` row-major matrix.
pub fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = x[r * cols + c];
        }
    }
    out
}

fn check_operand(what: &'static str, len: usize, width: usize) -> Result<usize, MatmulError> {
    if width == 0 || !len.is_multiple_of(width) {
        return Err(MatmulError::Operand {
            what,
            got: len,
            expected: len.div_ceil(width.max(1)) * width,
        });
    }
    Ok(len / width)
}

fn check_len(what: &'static str, got: usize, expected: usize) -> Result<(), MatmulError> {
    if got != expected {
        return Err(MatmulError::Operand {
            what,
            got,
            expected,
        });
    }
    Ok(())
}

/// One `dot_panel` call: `tokens` rows of `x` (length `k`) against `n` rows of `w`.
pub(super) struct Dot<'a> {
    pub x: &'a [f32],
    pub k: usize,
    pub w: &'a [f32],
    pub w_stride: usize,
    pub n: usize,
}

/// One `axpy_panel` call: panel rows `r0..r0 + n` of W (`w`, `width` columns each) weighted by
/// the matching columns of `dy` (rows of `dy_stride`).
pub(super) struct Axpy<'a> {
    pub dy: &'a [f32],
    pub dy_stride: usize,
    pub r0: usize,
    pub n: usize,
    pub w: &'a [f32],
    pub w_stride: usize,
    pub width: usize,
}

/// `out[t][r] = x[t] · w[r]`; `packed` is scratch for kernels that rearrange the panel.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn dot_panel(kernel: Kernel, d: &Dot, tokens: usize, out: Out, packed: &mut Vec<f32>) {
    assert!(out.holds(tokens) && out.width == d.n);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Compute::new` only accepts the AVX2 kernel when the CPU has AVX2 and FMA.
        Kernel::Avx2 => unsafe { super::avx2::dot_panel(d, tokens, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Compute::new` only accepts the AVX-512 kernel when the CPU has AVX-512F.
        Kernel::Avx512 => unsafe { super::avx512::dot_panel(d, tokens, out, packed) },
        _ => {
            for t in 0..tokens {
                let xt = &d.x[t * d.k..(t + 1) * d.k];
                for r in 0..d.n {
                    let wr = &d.w[r * d.w_stride..r * d.w_stride + d.k];
                    // SAFETY: rows checked above, `r < n == width`, columns this task's own.
                    unsafe { *out.ptr(t, r) = xt.iter().zip(wr).map(|(a, b)| a * b).sum() };
                }
            }
        }
    }
}

/// `out[t] += Σ_r dy[t][r0 + r] · w[r]` over the panel's rows.
fn axpy_panel(kernel: Kernel, a: &Axpy, tokens: usize, out: Out) {
    assert!(out.holds(tokens) && out.width == a.width);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `dot_panel`.
        Kernel::Avx2 => unsafe { super::avx2::axpy_panel(a, tokens, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `dot_panel`.
        Kernel::Avx512 => unsafe { super::avx512::axpy_panel(a, tokens, out) },
        _ => {
            for t in 0..tokens {
                for r in 0..a.n {
                    let g = a.dy[t * a.dy_stride + a.r0 + r];
                    let wr = &a.w[r * a.w_stride..r * a.w_stride + a.width];
                    for (c, w) in wr.iter().enumerate() {
                        // SAFETY: as above.
                        unsafe { *out.ptr(t, c) += g * w };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::random_blocks;
    use rand::{Rng, SeedableRng};

    fn activations(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
    }

    /// The matrix decoded whole, in f64: the plain definition the kernels must match.
    fn dense(w: &Matrix) -> Vec<f64> {
        let mut scratch = Vec::new();
        let (v, stride) = w.panel(0..w.rows, 0, w.cols, &mut scratch, Kernel::Scalar);
        (0..w.rows)
            .flat_map(|r| {
                v[r * stride..r * stride + w.cols]
                    .iter()
                    .map(|&x| f64::from(x))
            })
            .collect()
    }

    /// The plain sums in f64, and the sums of the terms' magnitudes (for tolerances):
    /// `y = x·Wᵀ` (`transposed`, `a` is `tokens × cols`) or `dx = dy·W` (`a` is `tokens × rows`).
    fn reference(
        a: &[f32],
        wd: &[f64],
        tokens: usize,
        rows: usize,
        cols: usize,
        transposed: bool,
    ) -> (Vec<f64>, Vec<f64>) {
        let (inner, outer) = if transposed {
            (cols, rows)
        } else {
            (rows, cols)
        };
        let (mut want, mut scale) = (vec![0.0; tokens * outer], vec![0.0; tokens * outer]);
        for t in 0..tokens {
            for o in 0..outer {
                for i in 0..inner {
                    let w = if transposed {
                        wd[o * cols + i]
                    } else {
                        wd[i * cols + o]
                    };
                    let p = f64::from(a[t * inner + i]) * w;
                    want[t * outer + o] += p;
                    scale[t * outer + o] += p.abs();
                }
            }
        }
        (want, scale)
    }

    fn close(got: &[f32], want: &[f64], scale: &[f64]) {
        for (i, ((g, w), s)) in got.iter().zip(want).zip(scale).enumerate() {
            let tol = 1e-5 * s + 1e-6;
            assert!(
                (f64::from(*g) - w).abs() <= tol,
                "element {i}: {g} vs {w} (tolerance {tol})"
            );
        }
    }

    /// Every kernel, every block type, row lengths that are and are not multiples of the SIMD
    /// width, token and row counts that leave partial register tiles: against f64 sums.
    #[test]
    fn kernels_match_the_definition() {
        let kernels: Vec<Kernel> = [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512]
            .into_iter()
            .filter(|k| k.available())
            .collect();
        for kind in QuantType::ALL {
            let block = kind.block_elements();
            let widths: Vec<usize> = if block == 1 {
                vec![1, 7, 8, 9, 37, 100]
            } else {
                vec![block, 3 * block]
            };
            for (case, &cols) in widths.iter().enumerate() {
                for (rows, tokens) in [(1, 1), (5, 3), (37, 7), (18, 13)] {
                    let seed = case as u64 * 1000 + rows as u64;
                    let bytes = random_blocks(kind, rows * cols, seed);
                    let w = Matrix::blocks(kind, rows, cols, &bytes).unwrap();
                    let wd = dense(&w);
                    let x = activations(tokens * cols, seed + 1);
                    let dy = activations(tokens * rows, seed + 2);
                    let (want_y, scale_y) = reference(&x, &wd, tokens, rows, cols, true);
                    let (want_dx, scale_dx) = reference(&dy, &wd, tokens, rows, cols, false);
                    for &kernel in &kernels {
                        for threads in [1, 2] {
                            let compute = Compute::new(threads, kernel).unwrap();
                            let mut y = vec![f32::NAN; tokens * rows];
                            compute.matmul_t(&x, &w, &mut y).unwrap();
                            close(&y, &want_y, &scale_y);
                            let mut dx = vec![f32::NAN; tokens * cols];
                            compute.matmul_dx(&dy, &w, &mut dx).unwrap();
                            close(&dx, &want_dx, &scale_dx);
                        }
                    }
                }
            }
        }
    }

    /// A product with fewer column parts than threads splits its tokens between tasks (a LoRA
    /// factor's few rows); `matmul_dx_add` sums into what the output held.
    #[test]
    fn split_tokens_and_summing_into_the_output_match_the_definition() {
        let (rows, cols, tokens) = (5, 64, 50);
        let bytes = random_blocks(QuantType::Q8_0, rows * cols, 4);
        let w = Matrix::blocks(QuantType::Q8_0, rows, cols, &bytes).unwrap();
        let wd = dense(&w);
        let x = activations(tokens * cols, 5);
        let dy = activations(tokens * rows, 6);
        let start = activations(tokens * cols, 7);
        let (want_y, scale_y) = reference(&x, &wd, tokens, rows, cols, true);
        let (want_dx, scale_dx) = reference(&dy, &wd, tokens, rows, cols, false);
        let want_sum: Vec<f64> = want_dx
            .iter()
            .zip(&start)
            .map(|(w, s)| w + f64::from(*s))
            .collect();
        let scale_sum: Vec<f64> = scale_dx
            .iter()
            .zip(&start)
            .map(|(w, s)| w + f64::from(s.abs()))
            .collect();
        for kernel in [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512] {
            if !kernel.available() {
                continue;
            }
            let compute = Compute::new(2, kernel).unwrap();
            assert!(compute.tasks(1, tokens).len() > 1, "the tokens are split");
            let mut y = vec![f32::NAN; tokens * rows];
            compute.matmul_t(&x, &w, &mut y).unwrap();
            close(&y, &want_y, &scale_y);
            let mut dx = start.clone();
            compute.matmul_dx_add(&dy, &w, &mut dx).unwrap();
            close(&dx, &want_sum, &scale_sum);
        }
    }

    #[test]
    fn results_do_not_depend_on_threads() {
        let bytes = random_blocks(QuantType::Q4K, 70 * 512, 9);
        let w = Matrix::blocks(QuantType::Q4K, 70, 512, &bytes).unwrap();
        let x = activations(11 * 512, 3);
        let kernel = Kernel::detect();
        let mut ys = Vec::new();
        for threads in [1, 2, 3] {
            let mut y = vec![0.0; 11 * 70];
            Compute::new(threads, kernel)
                .unwrap()
                .matmul_t(&x, &w, &mut y)
                .unwrap();
            ys.push(y);
        }
        assert_eq!(ys[0], ys[1]);
        assert_eq!(ys[0], ys[2]);
    }

    /// Tokens split between tasks at different places for different thread counts (200 tokens in
    /// chunks of 50, 25, 17: tile boundaries move): every kernel gives the same bits each time.
    #[test]
    fn split_points_do_not_change_results() {
        let (rows, tokens) = (5, 200);
        let quantized = random_blocks(QuantType::Q5_0, rows * 96, 8);
        let dense = activations(rows * 37, 11);
        let matrices = [
            Matrix::blocks(QuantType::Q5_0, rows, 96, &quantized).unwrap(),
            Matrix::f32(rows, 37, &dense).unwrap(),
        ];
        for w in &matrices {
            let x = activations(tokens * w.cols, 9);
            let dy = activations(tokens * rows, 10);
            for kernel in [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512] {
                if !kernel.available() {
                    continue;
                }
                let mut runs = Vec::new();
                for threads in [1, 2, 3] {
                    let compute = Compute::new(threads, kernel).unwrap();
                    let mut y = vec![0.0; tokens * rows];
                    compute.matmul_t(&x, w, &mut y).unwrap();
                    let mut dx = vec![0.0; tokens * w.cols];
                    compute.matmul_dx(&dy, w, &mut dx).unwrap();
                    runs.push((y, dx));
                }
                assert!(runs.iter().all(|r| *r == runs[0]), "{kernel:?}");
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let bytes = vec![0u8; 34 * 2];
        assert!(Matrix::blocks(QuantType::Q8_0, 2, 32, &bytes).is_ok());
        assert!(Matrix::blocks(QuantType::Q8_0, 3, 32, &bytes).is_err());
        assert!(Matrix::blocks(QuantType::Q8_0, 1, 48, &bytes).is_err());
        let w = Matrix::blocks(QuantType::Q8_0, 2, 32, &bytes).unwrap();
        let compute = Compute::new(1, Kernel::Scalar).unwrap();
        let mut y = vec![0.0; 2];
        assert!(compute.matmul_t(&[0.0; 31], &w, &mut y).is_err());
        assert!(compute.matmul_t(&[0.0; 32], &w, &mut [0.0; 3]).is_err());
        assert!(compute.matmul_dx(&[0.0; 3], &w, &mut [0.0; 32]).is_err());
    }
}
