//! AVX2+FMA micro-kernels for [`super::matmul`]: the same sums as its scalar loops, eight lanes
//! at a time, with several rows and tokens per register tile so each load feeds many FMAs.
//! Callers must have checked that the CPU has AVX2 and FMA.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::matmul::{Axpy, Dot, Out};

/// Tokens × weight rows in the main `dot_panel` tile: 12 accumulators, 3 weight vectors and one
/// token vector fill the 16 registers exactly (3 × 4 needed a 17th and spilled): 7 loads per 12 FMAs.
const DOT_TOKENS: usize = 4;
const DOT_ROWS: usize = 3;
/// Tokens in the main `axpy_panel` tile (each with two 8-lane column vectors).
const AXPY_TOKENS: usize = 4;

#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// `out[t][r] = x[t] · w[r]`, as `matmul::dot_panel`.
///
/// # Safety
/// AVX2 and FMA must be available, and `out`'s block this task's alone. (Bounds are checked
/// up front.)
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_panel(d: &Dot, tokens: usize, out: Out) {
    assert!(d.x.len() >= tokens * d.k && out.holds(tokens) && out.width >= d.n);
    assert!(d.n == 0 || d.w.len() >= (d.n - 1) * d.w_stride + d.k);
    let mut t = 0;
    while t < tokens {
        let tt = (tokens - t).min(DOT_TOKENS);
        let mut r = 0;
        while r < d.n {
            let rr = (d.n - r).min(DOT_ROWS);
            macro_rules! tiles {
                ($(($a:literal, $b:literal)),*) => {
                    match (tt, rr) {
                        $(($a, $b) => dot_tile::<$a, $b>(d, t, r, out),)*
                        _ => unreachable!(),
                    }
                };
            }
            tiles!(
                (1, 1),
                (1, 2),
                (1, 3),
                (2, 1),
                (2, 2),
                (2, 3),
                (3, 1),
                (3, 2),
                (3, 3),
                (4, 1),
                (4, 2),
                (4, 3)
            );
            r += rr;
        }
        t += tt;
    }
}

#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot_tile<const T: usize, const R: usize>(d: &Dot, t0: usize, r0: usize, out: Out) {
    let (k, ws) = (d.k, d.w_stride);
    let (xp, wp) = (d.x.as_ptr(), d.w.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); R]; T];
    let k8 = k / 8 * 8;
    let mut c = 0;
    while c < k8 {
        let mut wv = [_mm256_setzero_ps(); R];
        for (j, v) in wv.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(wp.add((r0 + j) * ws + c));
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let xv = _mm256_loadu_ps(xp.add((t0 + i) * k + c));
            for (a, v) in row.iter_mut().zip(&wv) {
                *a = _mm256_fmadd_ps(xv, *v, *a);
            }
        }
        c += 8;
    }
    for (i, row) in acc.iter().enumerate() {
        for (j, a) in row.iter().enumerate() {
            let mut s = hsum(*a);
            for c in k8..k {
                s += d.x[(t0 + i) * k + c] * d.w[(r0 + j) * ws + c];
            }
            *out.ptr(t0 + i, r0 + j) = s;
        }
    }
}

/// `out[t] += Σ_r dy[t][r0 + r] · w[r]`, as `matmul::axpy_panel`.
///
/// # Safety
/// AVX2 and FMA must be available, and `out`'s block this task's alone. (Bounds are checked
/// up front.)
#[target_feature(enable = "avx2,fma")]
pub unsafe fn axpy_panel(a: &Axpy, tokens: usize, out: Out) {
    assert!(tokens == 0 || a.dy.len() >= (tokens - 1) * a.dy_stride + a.r0 + a.n);
    assert!(a.n == 0 || a.w.len() >= (a.n - 1) * a.w_stride + a.width);
    assert!(out.holds(tokens) && out.width >= a.width);
    let width = a.width;
    let w16 = width / 16 * 16;
    let w8 = width / 8 * 8;
    let mut t = 0;
    while t < tokens {
        let tt = (tokens - t).min(AXPY_TOKENS);
        let mut c = 0;
        while c < w8 {
            let wide = c < w16;
            macro_rules! tiles {
                ($($t:literal),*) => {
                    match (tt, wide) {
                        $(($t, true) => axpy_tile::<$t, 2>(a, t, c, out),
                          ($t, false) => axpy_tile::<$t, 1>(a, t, c, out),)*
                        _ => unreachable!(),
                    }
                };
            }
            tiles!(1, 2, 3, 4);
            c += if wide { 16 } else { 8 };
        }
        for i in t..t + tt {
            for r in 0..a.n {
                let g = a.dy[i * a.dy_stride + a.r0 + r];
                for c in w8..width {
                    *out.ptr(i, c) += g * a.w[r * a.w_stride + c];
                }
            }
        }
        t += tt;
    }
}

#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn axpy_tile<const T: usize, const V: usize>(a: &Axpy, t0: usize, c: usize, out: Out) {
    let (wp, dp) = (a.w.as_ptr(), a.dy.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); V]; T];
    for (i, row) in acc.iter_mut().enumerate() {
        for (v, x) in row.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(out.ptr(t0 + i, c + 8 * v));
        }
    }
    for r in 0..a.n {
        let mut wv = [_mm256_setzero_ps(); V];
        for (v, x) in wv.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(wp.add(r * a.w_stride + c + 8 * v));
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let g = _mm256_set1_ps(*dp.add((t0 + i) * a.dy_stride + a.r0 + r));
            for (x, w) in row.iter_mut().zip(&wv) {
                *x = _mm256_fmadd_ps(g, *w, *x);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (v, x) in row.iter().enumerate() {
            _mm256_storeu_ps(out.ptr(t0 + i, c + 8 * v), *x);
        }
    }
}
