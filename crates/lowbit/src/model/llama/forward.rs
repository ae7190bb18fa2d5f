//! The decoder's forward pass over device ops: embeddings, then per layer norm, Q/K/V with RoPE, the KV
//! cache append, attention, the output projection and the MLP with their residual connections, then the
//! final norm. A child of `llama`, so it reads the model's private layers.

use super::{KvCache, Layer, Model};
use crate::device_tensor::DeviceTensor;
use crate::format::rope::RopeLayout;
use crate::model::config::Activation;
use crate::runtime::Device;
use crate::{Error, Result};

impl Model {
    /// The final hidden states (after the last norm) of `tokens`, appended to `cache`.
    pub(super) fn hidden(&self, tokens: &[u32], cache: &mut KvCache) -> Result<DeviceTensor> {
        let c = &self.config;
        let n = tokens.len();
        if n == 0 {
            return Err(Error::invalid("forward", "no tokens"));
        }
        self.check_fits(n, cache)?;
        let dev = &self.dev;
        let pos = cache.len;
        let mut x = dev.embedding(&self.embed, tokens)?;
        if x.dtype() != self.act {
            // The table's rows in the activations' dtype (exact when that is f32).
            x = dev.cast(&x, self.act)?;
        }
        for (i, l) in self.layers.iter().enumerate() {
            let h = dev.rms_norm_on(&x, &l.input_norm, c.rms_norm_eps)?;
            let (q, k, v) = self.rotated_qkv(l, dev, &h, n, pos)?;
            dev.copy_kv_rows(&cache.k[i], &cache.v[i], pos, &k, &v)?;
            let a = dev.attention(&q, &cache.k[i], &cache.v[i], pos + n, None)?;
            let mut a = a.reshape(vec![n, c.q_dim()])?;
            if let Some(sn) = &l.attn_sub_norm {
                a = dev.rms_norm_on(&a, sn, c.rms_norm_eps)?;
            }
            x = l.o.forward_residual(dev, &a, &x)?;
            let h = dev.rms_norm_on(&x, &l.post_norm, c.rms_norm_eps)?;
            let [g, u]: [DeviceTensor; 2] = l
                .gate_up
                .forward(dev, &h)?
                .try_into()
                .map_err(|_| Error::invalid("forward", "gate and up projections"))?;
            let mut m = match c.activation {
                Activation::Silu => dev.silu_mul(&g, &u)?,
                Activation::Relu2 => dev.relu2_mul(&g, &u)?,
            };
            if let Some(sn) = &l.ffn_sub_norm {
                m = dev.rms_norm_on(&m, sn, c.rms_norm_eps)?;
            }
            x = l.down.forward_residual(dev, &m, &x)?;
        }
        cache.len = pos + n;
        dev.rms_norm_on(&x, &self.norm, c.rms_norm_eps)
    }

    /// Q and K (rotated for positions `pos..pos + n`) and V of `h [n, hidden]`, each `[n, heads, head_dim]`.
    /// One token through a fused projection without Q/K norms rotates Q and K in one RoPE call over their
    /// joint window (the same bits as two calls; on a backend whose one-row windows are views, one kernel
    /// fewer per layer); otherwise each part is rotated on its own.
    fn rotated_qkv(
        &self,
        l: &Layer,
        dev: &Device,
        h: &DeviceTensor,
        n: usize,
        pos: usize,
    ) -> Result<(DeviceTensor, DeviceTensor, DeviceTensor)> {
        let c = &self.config;
        let (hd, nh, nkv) = (c.head_dim, c.num_heads, c.num_kv_heads);
        let layout = RopeLayout::Halves;
        let rope = |t: &DeviceTensor| dev.rope(t, &self.cos, &self.sin, pos, hd, layout);
        let no_qk_norm = l.q_norm.is_none() && l.k_norm.is_none();
        if n == 1
            && no_qk_norm
            && let Some(parts) = l.qkv.forward_joined(dev, h, 2)
        {
            let [qk, v]: [DeviceTensor; 2] = parts?
                .try_into()
                .map_err(|_| Error::invalid("forward", "Q+K and V projections"))?;
            let qk =
                rope(&qk.reshape(vec![1, nh + nkv, hd])?)?.reshape(vec![1, (nh + nkv) * hd])?;
            let q = dev.narrow(&qk, 0, nh * hd)?.reshape(vec![1, nh, hd])?;
            let k = dev
                .narrow(&qk, nh * hd, nkv * hd)?
                .reshape(vec![1, nkv, hd])?;
            return Ok((q, k, v.reshape(vec![1, nkv, hd])?));
        }
        let [q, k, v]: [DeviceTensor; 3] = l
            .qkv
            .forward(dev, h)?
            .try_into()
            .map_err(|_| Error::invalid("forward", "Q, K and V projections"))?;
        let mut q = q.reshape(vec![n, nh, hd])?;
        let mut k = k.reshape(vec![n, nkv, hd])?;
        let v = v.reshape(vec![n, nkv, hd])?;
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            q = dev.rms_norm_on(&q, qn, c.rms_norm_eps)?;
            k = dev.rms_norm_on(&k, kn, c.rms_norm_eps)?;
        }
        Ok((rope(&q)?, rope(&k)?, v))
    }
}
