//! Every tier against the scalar reference, and the reference against candle's `QMatMul`.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use rand::{Rng, SeedableRng};

use super::blocks::{BlockQ8K, Q4K_BYTES, Q6K_BYTES, QK_K};
use super::*;

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Random blocks with every bit pattern of the quantized parts and sane f16 scales.
fn random_rows(quant: Quant, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut r = rng(seed);
    let bytes = quant.block_bytes();
    let mut data = vec![0u8; rows * cols / QK_K * bytes];
    r.fill(&mut data[..]);
    for block in data.chunks_exact_mut(bytes) {
        let mut put = |at: usize, v: f32| {
            block[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes())
        };
        match quant {
            Quant::Q4K => {
                put(0, r.random_range(0.0..0.02));
                put(2, r.random_range(0.0..0.02));
            }
            Quant::Q6K => put(208, r.random_range(-0.02..0.02)),
        }
    }
    data
}

fn random_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    (0..n).map(|_| r.random_range(-2.0f32..2.0)).collect()
}

/// `Σ |w_i · a_i|` of a row pair: the scale a float-order difference is relative to.
fn magnitude(m: &PackedMatrix, i: usize, a: &[BlockQ8K]) -> f32 {
    let mut w = vec![0f32; m.cols()];
    m.dequantize_row(i, &mut w);
    let a = a
        .iter()
        .flat_map(|b| b.qs.iter().map(move |&q| q as f32 * b.d));
    w.iter()
        .zip(a)
        .map(|(w, a)| (w * a).abs())
        .sum::<f32>()
        .max(1e-6)
}

/// The products of the file's rows `data` (as GGML stores them) with every activation row,
/// by the scalar yardstick written from GGML's block format.
fn reference(quant: Quant, data: &[u8], rows: usize, acts: &Activations) -> Vec<f32> {
    let row_bytes = data.len() / rows;
    let mut out = vec![0f32; acts.rows() * rows];
    for r in 0..acts.rows() {
        for i in 0..rows {
            let row = &data[i * row_bytes..(i + 1) * row_bytes];
            out[r * rows + i] = match quant {
                Quant::Q4K => scalar::q4k_dot(row, acts.row(r)),
                Quant::Q6K => scalar::q6k_dot(row, acts.row(r)),
            };
        }
    }
    out
}

fn supported_tiers() -> Vec<Tier> {
    Tier::ALL.into_iter().filter(|t| t.supported()).collect()
}

#[test]
fn every_tier_equals_the_scalar_reference_on_edge_shapes() {
    for quant in [Quant::Q4K, Quant::Q6K] {
        for (rows, cols, act_rows) in [
            (1, 256, 1),
            (13, 512, 3),
            (7, 768, 5),
            (17, 256, 9),
            (3, 2816, 4),
            (4, 512, 15),
        ] {
            let seed = (rows * cols + act_rows) as u64;
            let data = random_rows(quant, rows, cols, seed);
            let acts =
                Activations::quantize(&random_f32(act_rows * cols, seed + 1), act_rows, cols);
            for tier in supported_tiers() {
                let m = PackedMatrix::new(quant, rows, cols, data.clone(), tier).unwrap();
                let want = reference(quant, &data, rows, &acts);
                let got = matmul(&[&m], &acts);
                for r in 0..act_rows {
                    for i in 0..rows {
                        let (g, w) = (got[r * rows + i], want[r * rows + i]);
                        let tol = 1e-5 * magnitude(&m, i, acts.row(r));
                        assert!(
                            (g - w).abs() <= tol,
                            "{quant:?} {tier:?} {rows}x{cols} act {r} row {i}: {g} vs {w} (tol {tol})"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn scalar_reference_equals_the_dequantized_dot_product() {
    for quant in [Quant::Q4K, Quant::Q6K] {
        let data = random_rows(quant, 4, 512, 7);
        let m = PackedMatrix::new(quant, 4, 512, data.clone(), Tier::Scalar).unwrap();
        let acts = Activations::quantize(&random_f32(2 * 512, 8), 2, 512);
        let got = reference(quant, &data, 4, &acts);
        for r in 0..2 {
            let a: Vec<f32> = acts
                .row(r)
                .iter()
                .flat_map(|b| b.qs.iter().map(move |&q| q as f32 * b.d))
                .collect();
            for i in 0..4 {
                let mut w = vec![0f32; 512];
                m.dequantize_row(i, &mut w);
                let exact: f64 = w.iter().zip(&a).map(|(w, a)| *w as f64 * *a as f64).sum();
                let tol = 1e-5 * magnitude(&m, i, acts.row(r)) as f64;
                assert!(
                    (got[r * 4 + i] as f64 - exact).abs() <= tol,
                    "{quant:?}: {} vs {exact}",
                    got[r * 4 + i]
                );
            }
        }
    }
}

/// A random `(rows, cols)` matrix quantized by candle to each type our kernels read: its
/// bytes and candle's `QMatMul` of the activation rows `x` with it.
fn candle_products(
    rows: usize,
    cols: usize,
    x: &[f32],
    seed: u64,
) -> Vec<(Quant, Vec<u8>, Vec<f32>)> {
    let weights =
        Tensor::from_vec(random_f32(rows * cols, seed), (rows, cols), &Device::Cpu).unwrap();
    let input = Tensor::from_vec(x.to_vec(), (x.len() / cols, cols), &Device::Cpu).unwrap();
    [(GgmlDType::Q4K, Quant::Q4K), (GgmlDType::Q6K, Quant::Q6K)]
        .into_iter()
        .map(|(dtype, quant)| {
            let q = QTensor::quantize(&weights, dtype).unwrap();
            let bytes = q.data().unwrap().to_vec();
            let product = QMatMul::from_qtensor(q).unwrap().forward(&input).unwrap();
            (
                quant,
                bytes,
                product.flatten_all().unwrap().to_vec1().unwrap(),
            )
        })
        .collect()
}

#[test]
fn packed_matmul_matches_candle_qmatmul() {
    let (rows, cols) = (24, 768);
    let x = random_f32(5 * cols, 4);
    for (quant, bytes, theirs) in candle_products(rows, cols, &x, 3) {
        for tier in supported_tiers() {
            let m = PackedMatrix::new(quant, rows, cols, bytes.clone(), tier).unwrap();
            let ours = matmul(&[&m], &Activations::quantize(&x, 5, cols));
            for (a, b) in ours.iter().zip(&theirs) {
                assert!(
                    (a - b).abs() <= 2e-3 * (1.0 + b.abs()),
                    "{quant:?} {tier:?}: {a} vs candle {b}"
                );
            }
        }
    }
}

#[test]
fn joint_matmul_and_swiglu_equal_their_parts() {
    let cols = 512;
    for tier in supported_tiers() {
        let a = PackedMatrix::new(
            Quant::Q4K,
            9,
            cols,
            random_rows(Quant::Q4K, 9, cols, 11),
            tier,
        )
        .unwrap();
        let b = PackedMatrix::new(
            Quant::Q6K,
            5,
            cols,
            random_rows(Quant::Q6K, 5, cols, 12),
            tier,
        )
        .unwrap();
        let c = PackedMatrix::new(
            Quant::Q4K,
            5,
            cols,
            random_rows(Quant::Q4K, 5, cols, 13),
            tier,
        )
        .unwrap();
        let acts = Activations::quantize(&random_f32(3 * cols, 14), 3, cols);
        let joint = matmul(&[&a, &b], &acts);
        let (ra, rb) = (matmul(&[&a], &acts), matmul(&[&b], &acts));
        for r in 0..3 {
            assert_eq!(&joint[r * 14..r * 14 + 9], &ra[r * 9..r * 9 + 9]);
            assert_eq!(&joint[r * 14 + 9..r * 14 + 14], &rb[r * 5..r * 5 + 5]);
        }
        let fused = swiglu(&b, &c, &acts);
        let rc = matmul(&[&c], &acts);
        for (k, v) in fused.iter().enumerate() {
            let g = rb[k];
            let want = g / (1.0 + (-g).exp()) * rc[k];
            assert!(
                (v - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{v} vs {want}"
            );
        }
    }
}

#[test]
fn dequantized_rows_match_candle() {
    let (rows, cols) = (3, 512);
    let weights =
        Tensor::from_vec(random_f32(rows * cols, 21), (rows, cols), &Device::Cpu).unwrap();
    for (dtype, quant) in [(GgmlDType::Q4K, Quant::Q4K), (GgmlDType::Q6K, Quant::Q6K)] {
        let q = QTensor::quantize(&weights, dtype).unwrap();
        let theirs: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let m =
            PackedMatrix::new(quant, rows, cols, q.data().unwrap().to_vec(), Tier::Scalar).unwrap();
        let mut ours = vec![0f32; rows * cols];
        for (i, row) in ours.chunks_exact_mut(cols).enumerate() {
            m.dequantize_row(i, row);
        }
        assert_eq!(ours, theirs, "{quant:?}");
    }
}

#[test]
fn q8k_rounds_like_llama_cpp_and_sums_its_groups() {
    let mut x = vec![0f32; QK_K];
    x[0] = -127.0;
    x[1] = 0.5;
    x[2] = 1.5;
    x[3] = 2.5;
    x[4] = -0.5;
    x[5] = -1.5;
    x[6] = 126.49;
    let mut b = [BlockQ8K::default()];
    blocks::quantize_q8k(&x, &mut b);
    assert_eq!(b[0].d, 1.0);
    // iscale = -127 / max = 1: the values are rounded as they are.
    assert_eq!(
        &b[0].qs[..7],
        &[-127, 0, 2, 2, 0, -2, 126],
        "ties go to even"
    );
    assert_eq!(b[0].bsums[0], -127 + 4 - 2 + 126);
    assert_eq!(Q4K_BYTES + Q6K_BYTES, 354);
}

#[test]
fn a_matrix_whose_bytes_do_not_fit_its_shape_is_refused() {
    assert!(PackedMatrix::new(Quant::Q4K, 2, 256, vec![0; 144], Tier::Scalar).is_none());
    assert!(PackedMatrix::new(Quant::Q4K, 1, 300, vec![0; 144], Tier::Scalar).is_none());
}

#[test]
fn kernel_names_parse_and_unknown_ones_are_refused() {
    assert_eq!(Kernels::parse("candle"), Ok(Kernels::Candle));
    assert_eq!(Kernels::parse("scalar"), Ok(Kernels::Own(Tier::Scalar)));
    assert!(Kernels::parse("avx9")
        .unwrap_err()
        .contains("unknown kernels"));
}

#[test]
fn one_row_equals_candles_vec_dot_to_float_rounding() {
    // candle's single-row path is llama.cpp's `vec_dot` (integer scales, Q8_K input): ours
    // must agree to float rounding, not just to quantization noise.
    let (rows, cols) = (16, 1024);
    let x = random_f32(cols, 32);
    let acts = Activations::quantize(&x, 1, cols);
    for (quant, bytes, theirs) in candle_products(rows, cols, &x, 31) {
        for tier in supported_tiers() {
            let m = PackedMatrix::new(quant, rows, cols, bytes.clone(), tier).unwrap();
            let ours = matmul(&[&m], &acts);
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                let tol = 1e-5 * magnitude(&m, i, acts.row(0));
                assert!(
                    (a - b).abs() <= tol,
                    "{quant:?} {tier:?} row {i}: {a} vs candle {b}"
                );
            }
        }
    }
}

#[test]
fn attention_equals_candles_ops_over_a_cache_view_for_every_tier_and_cache_type() {
    use super::attention::Attention;
    use super::blocks::q8_0_blocks;
    use crate::CacheType;
    let dev = &Device::Cpu;
    // (query heads, KV heads, head dim, cache capacity, cached positions, new rows)
    let shapes = [
        (16, 4, 128, 40, 33, 1),
        (16, 4, 128, 64, 40, 21),
        (9, 3, 64, 8, 1, 1),
        (4, 4, 32, 20, 20, 20),
        (4, 2, 24, 50, 37, 9),
        // Query vectors in lanes (AVX-512, 16–64 per block): several key tiles, head dims
        // in one and in two column slices, odd vector counts and partial lane groups.
        (8, 2, 64, 300, 290, 150),
        (32, 4, 256, 90, 80, 11),
        (6, 2, 48, 80, 71, 7),
        // Past one key tile (64 keys in unit tests): decode far in, a row whose last tile
        // holds a single key, and blocks whose rows end in different tiles.
        (16, 4, 128, 200, 200, 1),
        (4, 2, 32, 130, 129, 1),
        (4, 2, 32, 200, 193, 70),
    ];
    for (n_head, n_kv, hd, cap, len, t) in shapes {
        let tensor = |n: usize, dims: (usize, usize, usize, usize), seed| {
            Tensor::from_vec(random_f32(n, seed), dims, dev).unwrap()
        };
        let q = tensor(n_head * t * hd, (1, n_head, t, hd), 51);
        let k = tensor(n_kv * cap * hd, (1, n_kv, cap, hd), 52);
        let v = tensor(n_kv * cap * hd, (1, n_kv, cap, hd), 53);
        let scale = 1.0 / (hd as f64).sqrt();
        for cache in [CacheType::F32, CacheType::F16, CacheType::Q8_0] {
            if cache == CacheType::Q8_0 && hd % 32 != 0 {
                continue;
            }
            let (k, v) = (cache.store(&k).unwrap(), cache.store(&v).unwrap());
            let (k, v) = (k.narrow(2, 0, len).unwrap(), v.narrow(2, 0, len).unwrap());
            // The reference reads the very values the cache holds.
            let as_f32 = |x: &Tensor| match cache {
                CacheType::Q8_0 => {
                    let bytes: Vec<u8> = x.flatten_all().unwrap().to_vec1().unwrap();
                    let values: Vec<f32> = q8_0_blocks(&bytes)
                        .iter()
                        .flat_map(|b| b.qs.map(|q| b.scale() * f32::from(q)))
                        .collect();
                    Tensor::from_vec(values, (1, n_kv, len, hd), dev).unwrap()
                }
                _ => x.to_dtype(DType::F32).unwrap(),
            };
            let (kf, vf) = (as_f32(&k), as_f32(&v));
            let n_rep = n_head / n_kv;
            let grouped = q.reshape((1, n_kv, n_rep * t, hd)).unwrap();
            let scores = (grouped.matmul(&kf.t().unwrap()).unwrap() * scale).unwrap();
            let offset = len - t;
            let mask: Vec<f32> = (0..n_rep * t * len)
                .map(|at| {
                    let (i, j) = ((at / len) % t, at % len);
                    if j > offset + i {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            let mask = Tensor::from_vec(mask, (1, 1, n_rep * t, len), dev).unwrap();
            let probs =
                candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask).unwrap()).unwrap();
            let want: Vec<f32> = probs
                .matmul(&vf)
                .unwrap()
                .reshape((1, n_head, t, hd))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for tier in Tier::ALL.into_iter().filter(|t| t.supported()) {
                let op = Attention {
                    n_head,
                    n_kv,
                    head_dim: hd,
                    scale: scale as f32,
                    tier,
                };
                let got = q.apply_op3_no_bwd(&k, &v, &op).unwrap();
                assert_eq!(got.dims(), &[1, t, n_head * hd]);
                let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
                for (a, b) in got.iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{tier:?} {cache:?} {n_head}/{n_kv} heads, {t} rows after {offset}: \
                         {a} vs {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn q8_0_cache_blocks_are_ggmls() {
    // The cache's Q8_0 blocks must be byte for byte what GGML (through candle) writes, so a
    // q8_0 cache holds what llama.cpp's would.
    let mut x = random_f32(32 * 40, 61);
    x[32..64].fill(0.0);
    let mut ours = Vec::new();
    super::blocks::quantize_q8_0(&x, &mut ours);
    let tensor = Tensor::from_vec(x.clone(), (40, 32), &Device::Cpu).unwrap();
    let theirs = QTensor::quantize(&tensor, GgmlDType::Q8_0).unwrap();
    assert_eq!(ours, theirs.data().unwrap().to_vec());
    let back: Vec<f32> = super::blocks::q8_0_blocks(&ours)
        .iter()
        .flat_map(|b| b.qs.map(|q| b.scale() * f32::from(q)))
        .collect();
    for (got, want) in back.chunks(32).zip(x.chunks(32)) {
        // Half a step of the block's scale, plus the scale's own f16 rounding.
        let amax = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() <= amax / 254.0 + amax * 1e-3, "{a} vs {b}");
        }
    }
}

#[test]
fn silu_on_every_tier_equals_the_formula_even_far_out() {
    let mut xs = random_f32(203, 71);
    xs.extend([
        0.0, -0.0, 1e-30, -1e-30, 20.0, -20.0, 88.0, -88.0, 100.0, -100.0, 1e30, -1e30,
    ]);
    let want: Vec<f32> = xs
        .iter()
        .map(|&x| (x as f64 / (1.0 + (-x as f64).exp())) as f32)
        .collect();
    for tier in supported_tiers() {
        let mut got = xs.clone();
        super::attention::silu(tier, &mut got);
        for ((g, w), x) in got.iter().zip(&want).zip(&xs) {
            assert!(
                (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
                "{tier:?} silu({x}) = {g}, want {w}"
            );
        }
    }
}

#[test]
fn every_group_of_a_job_is_claimed_once_whatever_the_threads_race() {
    let groups = [1, 8, 9, 17, 0, 128];
    for threads in 1..=4 {
        let chunks = Chunks::new(groups);
        let seen: Vec<Vec<std::sync::atomic::AtomicUsize>> = groups
            .iter()
            .map(|&n| (0..n).map(|_| Default::default()).collect())
            .collect();
        std::thread::scope(|s| {
            for t in 0..threads {
                let (chunks, seen) = (&chunks, &seen);
                s.spawn(move || {
                    chunks.drain(t, threads, |m, range| {
                        assert!(range.len() <= CHUNK && !range.is_empty());
                        for g in range {
                            seen[m][g].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    })
                });
            }
        });
        for (m, counts) in seen.iter().enumerate() {
            for (g, c) in counts.iter().enumerate() {
                assert_eq!(
                    c.load(std::sync::atomic::Ordering::Relaxed),
                    1,
                    "{threads} threads, matrix {m} group {g}"
                );
            }
        }
    }
}
