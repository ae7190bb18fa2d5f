//! Linear layers that read the same input (Q, K and V; gate and up): separate, or fused into one weight
//! whose output is split into the parts' column windows. Fused, a decode step runs one larger product
//! instead of two or three small ones (fewer launches on a GPU, fewer parallel regions and one activation
//! quantization on the CPU); each output row is the same dot product either way, so the logits are the same
//! bits.

use crate::Result;
use crate::device_tensor::DeviceTensor;
use crate::nn::linear::Linear;
use crate::runtime::Device;

pub(super) enum Projections {
    /// One layer per part, with its module name relative to the decoder layer.
    Separate(Vec<(&'static str, Linear)>),
    /// One layer whose output rows are the parts' rows in order (`sizes` of them each).
    Fused {
        linear: Box<Linear>,
        sizes: Vec<usize>,
    },
}

impl Projections {
    /// Each part's output for `x [n, in]`, `[n, out_i]`.
    pub fn forward(&self, dev: &Device, x: &DeviceTensor) -> Result<Vec<DeviceTensor>> {
        match self {
            Projections::Separate(parts) => parts.iter().map(|(_, l)| l.forward(dev, x)).collect(),
            Projections::Fused { linear, sizes } => windows(dev, &linear.forward(dev, x)?, sizes),
        }
    }

    /// A fused layer's output for `x` in windows: the first `join` parts as one window, then each other
    /// part alone; `None` for separate layers (their parts live in separate tensors).
    pub fn forward_joined(
        &self,
        dev: &Device,
        x: &DeviceTensor,
        join: usize,
    ) -> Option<Result<Vec<DeviceTensor>>> {
        let Projections::Fused { linear, sizes } = self else {
            return None;
        };
        let joined: usize = sizes.iter().take(join).sum();
        let lens: Vec<usize> = std::iter::once(joined)
            .chain(sizes.iter().skip(join).copied())
            .collect();
        Some(linear.forward(dev, x).and_then(|y| windows(dev, &y, &lens)))
    }

    /// The layers with their module names (a fused layer is named after no module: adapters never
    /// target it, since a group an unmerged adapter adapts is loaded separate).
    pub fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        match self {
            Projections::Separate(parts) => parts.iter_mut().map(|(n, l)| (*n, l)).collect(),
            Projections::Fused { linear, .. } => vec![("(fused)", &mut **linear)],
        }
    }

    pub fn linears(&self) -> Vec<&Linear> {
        match self {
            Projections::Separate(parts) => parts.iter().map(|(_, l)| l).collect(),
            Projections::Fused { linear, .. } => vec![&**linear],
        }
    }

    pub fn is_fused(&self) -> bool {
        matches!(self, Projections::Fused { .. })
    }
}

/// Consecutive column windows of `y`, `lens` columns each, from column 0 on.
fn windows(dev: &Device, y: &DeviceTensor, lens: &[usize]) -> Result<Vec<DeviceTensor>> {
    let mut start = 0;
    lens.iter()
        .map(|&len| {
            let part = dev.narrow(y, start, len);
            start += len;
            part
        })
        .collect()
}
