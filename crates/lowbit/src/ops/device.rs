//! Ops on device tensors: each validates its operands once (shapes, dtypes, device) and hands an [`Op`]
//! descriptor to [`Device::run_op`], which applies the recovery policy. Quantized weights are uploaded once
//! ([`Device::upload_4bit`], [`Device::upload_ternary`]) and reused by every call.

use crate::capability::Op;
use crate::device_tensor::DeviceTensor;
use crate::format::BLOCKSIZES_4BIT;
use crate::format::activation::GeluKind;
use crate::format::rope::RopeLayout;
use crate::format::ternary::packed_rows;
use crate::ops::{Quantized4bit, TernaryWeight};
use crate::runtime::Device;
use crate::tensor::{DType, FloatVec, Tensor};
use crate::{Error, FourBitType, Result};

/// An NF4/FP4 linear weight `[rows, cols]` resident on one device: packed codes and float32 block scales
/// (double quantization expanded once, at upload).
#[derive(Clone, Debug)]
pub struct Weight4bit {
    pub(super) packed: DeviceTensor,
    pub(super) absmax: DeviceTensor,
    pub(super) quant_type: FourBitType,
    pub(super) blocksize: usize,
    pub(super) rows: usize,
    pub(super) cols: usize,
}

impl Weight4bit {
    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn quant_type(&self) -> FourBitType {
        self.quant_type
    }
    pub fn blocksize(&self) -> usize {
        self.blocksize
    }
}

/// A BitNet ternary weight in transformers' 2-bit packing, resident on one device.
#[derive(Clone, Debug)]
pub struct WeightTernary {
    packed: DeviceTensor,
    weight_scale: f32,
    rows: usize,
    cols: usize,
}

impl WeightTernary {
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
}

pub(super) fn float_dtype(op: &'static str, what: &str, t: &DeviceTensor) -> Result<DType> {
    if t.dtype().is_float() {
        Ok(t.dtype())
    } else {
        Err(Error::DType {
            op,
            got: format!("{} ({what})", t.dtype()),
            expected: "f32, f16, bf16",
        })
    }
}

fn same_shape(op: &'static str, a: &DeviceTensor, b: &DeviceTensor) -> Result<()> {
    if a.shape() == b.shape() && a.dtype() == b.dtype() {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!(
                "operands must have one shape and dtype, got {} {:?} and {} {:?}",
                a.dtype(),
                a.shape(),
                b.dtype(),
                b.shape()
            ),
        ))
    }
}

/// The last dimension of a tensor with at least one dimension.
fn last_dim(op: &'static str, what: &str, t: &DeviceTensor) -> Result<usize> {
    t.shape().last().copied().ok_or_else(|| {
        Error::shape(
            op,
            format!("{what} must have at least one dimension, got a scalar"),
        )
    })
}

fn check_bias(op: &'static str, bias: Option<&DeviceTensor>, n: usize) -> Result<()> {
    if let Some(b) = bias {
        float_dtype(op, "bias", b)?;
        if b.shape() != [n] {
            return Err(Error::shape(
                op,
                format!("bias must be [{n}], got {:?}", b.shape()),
            ));
        }
    }
    Ok(())
}

/// x `[.., cols]` of floats and an optional bias `[rows]` for a resident `[rows, cols]` weight.
pub(super) fn check_linear_input(
    op: &'static str,
    x: &DeviceTensor,
    rows: usize,
    cols: usize,
    bias: Option<&DeviceTensor>,
) -> Result<()> {
    float_dtype(op, "x", x)?;
    let k = last_dim(op, "x", x)?;
    if k != cols {
        return Err(Error::shape(
            op,
            format!("x has {k} features but the weight expects {cols}"),
        ));
    }
    check_bias(op, bias, rows)
}

pub(super) fn operands<'a>(
    first: &'a [&'a DeviceTensor],
    bias: Option<&'a DeviceTensor>,
) -> Vec<&'a DeviceTensor> {
    let mut v = first.to_vec();
    v.extend(bias);
    v
}

impl Device {
    /// Uploads an NF4/FP4 linear weight `[rows, cols]` once; its double-quantized scales are expanded here.
    pub fn upload_4bit(&self, w: &Quantized4bit) -> Result<Weight4bit> {
        const OP: &str = "upload_4bit";
        w.state.validate(w.packed.len())?;
        let (rows, cols) = w.linear_dims(OP)?;
        if !BLOCKSIZES_4BIT.contains(&w.state.blocksize) {
            return Err(Error::BlockSize {
                op: OP,
                got: w.state.blocksize,
                allowed: BLOCKSIZES_4BIT,
            });
        }
        let absmax = w.state.absmax.to_f32();
        let packed = Tensor::vector(w.packed.clone());
        Ok(Weight4bit {
            packed: self.to_device(&packed)?,
            absmax: self.to_device(&Tensor::f32(vec![absmax.len()], absmax.into_owned())?)?,
            quant_type: w.state.quant_type,
            blocksize: w.state.blocksize,
            rows,
            cols,
        })
    }

    /// Uploads a ternary weight once.
    pub fn upload_ternary(&self, w: &TernaryWeight) -> Result<WeightTernary> {
        const OP: &str = "upload_ternary";
        let expected = packed_rows(w.rows)
            .checked_mul(w.cols)
            .ok_or_else(|| Error::shape(OP, format!("{} x {} overflows", w.rows, w.cols)))?;
        if w.packed.len() != expected {
            return Err(Error::Length {
                op: OP,
                what: "packed weight",
                got: w.packed.len(),
                expected,
            });
        }
        let packed = Tensor::new(vec![packed_rows(w.rows), w.cols], w.packed.clone())?;
        Ok(WeightTernary {
            packed: self.to_device(&packed)?,
            weight_scale: w.weight_scale,
            rows: w.rows,
            cols: w.cols,
        })
    }

    /// `y = x @ w^T + bias` for x `[..., k]`, w `[n, k]` on this device; output in x's dtype.
    pub fn linear(
        &self,
        x: &DeviceTensor,
        w: &DeviceTensor,
        bias: Option<&DeviceTensor>,
    ) -> Result<DeviceTensor> {
        const OP: &str = "linear";
        float_dtype(OP, "x", x)?;
        float_dtype(OP, "w", w)?;
        let k = last_dim(OP, "x", x)?;
        let n = match w.shape() {
            [n, kw] if *kw == k => *n,
            s => {
                return Err(Error::shape(
                    OP,
                    format!("w must be [n, {k}] for x with {k} features, got {s:?}"),
                ));
            }
        };
        check_bias(OP, bias, n)?;
        self.run_op(
            &Op::Linear {
                bias: bias.is_some(),
            },
            &operands(&[x, w], bias),
        )
    }

    /// The fused NF4/FP4 linear layer on a resident weight: GEMV for one row, GEMM for more.
    pub fn linear_4bit(
        &self,
        x: &DeviceTensor,
        w: &Weight4bit,
        bias: Option<&DeviceTensor>,
    ) -> Result<DeviceTensor> {
        const OP: &str = "linear_4bit";
        check_linear_input(OP, x, w.rows, w.cols, bias)?;
        self.run_op(
            &Op::Linear4bit {
                quant_type: w.quant_type,
                blocksize: w.blocksize,
                rows: w.rows,
                cols: w.cols,
                bias: bias.is_some(),
            },
            &operands(&[x, &w.packed, &w.absmax], bias),
        )
    }

    /// BitNet b1.58's linear layer on a resident ternary weight; output in x's dtype.
    pub fn linear_ternary(
        &self,
        x: &DeviceTensor,
        w: &WeightTernary,
        bias: Option<&DeviceTensor>,
    ) -> Result<DeviceTensor> {
        const OP: &str = "linear_ternary";
        check_linear_input(OP, x, w.rows, w.cols, bias)?;
        self.run_op(
            &Op::LinearTernary {
                weight_scale: w.weight_scale,
                rows: w.rows,
                cols: w.cols,
                bias: bias.is_some(),
            },
            &operands(&[x, &w.packed], bias),
        )
    }

    /// RMSNorm over the last dimension of a device tensor; `weight` is `[cols]`.
    pub fn rms_norm_on(
        &self,
        x: &DeviceTensor,
        weight: &DeviceTensor,
        eps: f32,
    ) -> Result<DeviceTensor> {
        const OP: &str = "rms_norm";
        float_dtype(OP, "x", x)?;
        float_dtype(OP, "weight", weight)?;
        let cols = last_dim(OP, "x", x)?;
        if weight.shape() != [cols] {
            return Err(Error::shape(
                OP,
                format!("weight must be [{cols}], got {:?}", weight.shape()),
            ));
        }
        if !eps.is_finite() || eps < 0.0 {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: format!("eps must be finite and >= 0, got {eps}"),
            });
        }
        self.run_op(&Op::RmsNorm { eps }, &[x, weight])
    }

    /// Softmax over the last dimension of a device tensor.
    pub fn softmax_on(&self, x: &DeviceTensor) -> Result<DeviceTensor> {
        const OP: &str = "softmax";
        float_dtype(OP, "x", x)?;
        last_dim(OP, "x", x)?;
        self.run_op(&Op::Softmax, &[x])
    }

    /// `a + b` (residual connections).
    pub fn add(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor> {
        float_dtype("add", "a", a)?;
        same_shape("add", a, b)?;
        self.run_op(&Op::Add, &[a, b])
    }

    /// `silu(gate) * up` (Llama's MLP).
    pub fn silu_mul(&self, gate: &DeviceTensor, up: &DeviceTensor) -> Result<DeviceTensor> {
        float_dtype("silu_mul", "gate", gate)?;
        same_shape("silu_mul", gate, up)?;
        self.run_op(&Op::SiluMul, &[gate, up])
    }

    /// `relu(gate)^2 * up` (BitNet's MLP).
    pub fn relu2_mul(&self, gate: &DeviceTensor, up: &DeviceTensor) -> Result<DeviceTensor> {
        float_dtype("relu2_mul", "gate", gate)?;
        same_shape("relu2_mul", gate, up)?;
        self.run_op(&Op::Relu2Mul, &[gate, up])
    }

    /// GELU (tanh approximation or the erf form).
    pub fn gelu(&self, x: &DeviceTensor, kind: GeluKind) -> Result<DeviceTensor> {
        float_dtype("gelu", "x", x)?;
        self.run_op(&Op::Gelu { kind }, &[x])
    }

    /// Columns `start .. start + len` of every row of `x [.., cols]`, as `[.., len]` (a copy; on a device that
    /// can, a single row is a view of x's memory, which no op writes after it is made).
    pub fn narrow(&self, x: &DeviceTensor, start: usize, len: usize) -> Result<DeviceTensor> {
        const OP: &str = "narrow";
        float_dtype(OP, "x", x)?;
        let cols = last_dim(OP, "x", x)?;
        if len == 0 || start.checked_add(len).is_none_or(|end| end > cols) {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: format!(
                    "columns {start}..{start}+{len} are not a non-empty window of {cols}"
                ),
            });
        }
        self.run_op(&Op::Narrow { start, len }, &[x])
    }

    /// Converts a float tensor to `to` on the device (exact widening, round-to-nearest-even narrowing).
    pub fn cast(&self, x: &DeviceTensor, to: DType) -> Result<DeviceTensor> {
        float_dtype("cast", "x", x)?;
        if !to.is_float() {
            return Err(Error::DType {
                op: "cast",
                got: to.to_string(),
                expected: "f32, f16, bf16",
            });
        }
        self.run_op(&Op::Cast { to }, &[x])
    }

    /// Rows of `table [vocab, dim]` for each token id (`ids` from the host: they are checked against `vocab`).
    pub fn embedding(&self, table: &DeviceTensor, ids: &[u32]) -> Result<DeviceTensor> {
        const OP: &str = "embedding";
        float_dtype(OP, "table", table)?;
        let vocab = match table.shape() {
            [v, _] => *v,
            s => {
                return Err(Error::shape(
                    OP,
                    format!("table must be [vocab, dim], got {s:?}"),
                ));
            }
        };
        if let Some(bad) = ids
            .iter()
            .find(|&&i| i as usize >= vocab || i > i32::MAX as u32)
        {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: format!("token id {bad} is outside the vocabulary of {vocab}"),
            });
        }
        let ids = Tensor::vector(ids.iter().map(|&i| i as i32).collect::<Vec<i32>>());
        let ids = self.to_device(&ids)?;
        self.run_op(&Op::Embedding, &[table, &ids])
    }

    /// Rotary position embedding of `x [tokens, heads, head_dim]` at positions `pos_start..`, with `cos` and
    /// `sin` tables `[positions, rotary_dim / 2]` (f32) on this device.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        x: &DeviceTensor,
        cos: &DeviceTensor,
        sin: &DeviceTensor,
        pos_start: usize,
        rotary_dim: usize,
        layout: RopeLayout,
    ) -> Result<DeviceTensor> {
        const OP: &str = "rope";
        float_dtype(OP, "x", x)?;
        let (tokens, heads, head_dim) = match x.shape() {
            [t, h, d] => (*t, *h, *d),
            s => {
                return Err(Error::shape(
                    OP,
                    format!("x must be [tokens, heads, head_dim], got {s:?}"),
                ));
            }
        };
        if rotary_dim == 0 || !rotary_dim.is_multiple_of(2) || rotary_dim > head_dim {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: format!("rotary_dim must be even and in 2..={head_dim}, got {rotary_dim}"),
            });
        }
        for (what, t) in [("cos", cos), ("sin", sin)] {
            let ok = t.dtype() == DType::F32
                && matches!(t.shape(), [p, h] if *h == rotary_dim / 2 && *p >= pos_start + tokens);
            if !ok {
                return Err(Error::shape(
                    OP,
                    format!(
                        "{what} must be f32 [>= {}, {}] (positions, rotary_dim / 2), got {} {:?}",
                        pos_start + tokens,
                        rotary_dim / 2,
                        t.dtype(),
                        t.shape()
                    ),
                ));
            }
        }
        self.run_op(
            &Op::Rope {
                heads,
                head_dim,
                rotary_dim,
                pos_start,
                layout,
            },
            &[x, cos, sin],
        )
    }

    /// Causal attention of `q [nq, n_heads, head_dim]` over the first `kv_len` rows of the caches
    /// `[capacity, n_kv_heads, head_dim]`; query `i` is at position `kv_len - nq + i`. Scale `1/sqrt(d)`
    /// unless given.
    pub fn attention(
        &self,
        q: &DeviceTensor,
        k_cache: &DeviceTensor,
        v_cache: &DeviceTensor,
        kv_len: usize,
        scale: Option<f32>,
    ) -> Result<DeviceTensor> {
        const OP: &str = "attention";
        float_dtype(OP, "q", q)?;
        let (nq, n_heads, head_dim) = match q.shape() {
            [a, b, c] => (*a, *b, *c),
            s => {
                return Err(Error::shape(
                    OP,
                    format!("q must be [tokens, heads, head_dim], got {s:?}"),
                ));
            }
        };
        same_shape(OP, k_cache, v_cache)?;
        let (capacity, n_kv_heads) = match k_cache.shape() {
            [c, h, d] if *d == head_dim => (*c, *h),
            s => {
                return Err(Error::shape(
                    OP,
                    format!("caches must be [capacity, kv_heads, {head_dim}], got {s:?}"),
                ));
            }
        };
        if k_cache.dtype() != q.dtype() {
            return Err(Error::DType {
                op: OP,
                got: format!("q {} with caches {}", q.dtype(), k_cache.dtype()),
                expected: "caches of q's dtype",
            });
        }
        if n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
            return Err(Error::shape(
                OP,
                format!("{n_heads} query heads cannot share {n_kv_heads} KV heads evenly"),
            ));
        }
        if kv_len < nq || kv_len > capacity || kv_len == 0 {
            return Err(Error::InvalidArgument {
                op: OP,
                detail: format!(
                    "kv_len {kv_len} must cover the {nq} new queries and fit the cache of {capacity} rows"
                ),
            });
        }
        let scale = scale.unwrap_or(1.0 / (head_dim as f32).sqrt());
        self.run_op(
            &Op::Attention {
                n_heads,
                n_kv_heads,
                head_dim,
                kv_len,
                pos_start: kv_len - nq,
                scale,
            },
            &[q, k_cache, v_cache],
        )
    }

    /// Writes `src [n, ...]` into rows `row..row + n` of `dst` in place (KV cache append).
    pub fn copy_rows(&self, dst: &DeviceTensor, row: usize, src: &DeviceTensor) -> Result<()> {
        check_copy_rows(dst, row, src)?;
        self.write_rows(dst, row, src)
    }

    /// [`copy_rows`](Self::copy_rows) of `k` into `k_cache` and `v` into `v_cache` at the same rows: a
    /// KV cache append, one launch where the backend can.
    pub fn copy_kv_rows(
        &self,
        k_cache: &DeviceTensor,
        v_cache: &DeviceTensor,
        row: usize,
        k: &DeviceTensor,
        v: &DeviceTensor,
    ) -> Result<()> {
        check_copy_rows(k_cache, row, k)?;
        check_copy_rows(v_cache, row, v)?;
        let shared =
            |a: &DeviceTensor, b: &DeviceTensor| std::sync::Arc::ptr_eq(a.storage(), b.storage());
        if shared(k_cache, v_cache) || shared(k_cache, v) || shared(v_cache, k) {
            return Err(Error::InvalidArgument {
                op: "copy_rows",
                detail:
                    "the key and value caches share storage with each other or the other's rows"
                        .into(),
            });
        }
        self.write_rows_pair([k_cache, v_cache], row, [k, v])
    }
}

/// `dst` can take `src`'s rows from `row` on: same dtype and row length, inside `dst`, not its own storage.
fn check_copy_rows(dst: &DeviceTensor, row: usize, src: &DeviceTensor) -> Result<()> {
    const OP: &str = "copy_rows";
    let (rows, row_len) = dst.rows_cols_first();
    let (n, src_len) = src.rows_cols_first();
    if dst.dtype() != src.dtype()
        || row_len != src_len
        || row.checked_add(n).is_none_or(|e| e > rows)
    {
        return Err(Error::shape(
            OP,
            format!(
                "cannot write {} {:?} at row {row} of {} {:?}",
                src.dtype(),
                src.shape(),
                dst.dtype(),
                dst.shape()
            ),
        ));
    }
    if std::sync::Arc::ptr_eq(dst.storage(), src.storage()) {
        return Err(Error::InvalidArgument {
            op: OP,
            detail: "source and destination share storage".into(),
        });
    }
    Ok(())
}

/// A host float tensor filled from f32 values in `dtype` (tests, examples); a typed error unless `values`
/// holds exactly the shape's element count.
pub fn host_floats(shape: Vec<usize>, values: Vec<f32>, dtype: DType) -> Result<Tensor> {
    Tensor::from_floats(shape, FloatVec::from_f32(values, dtype))
}
