//! Perplexity of a token sequence, as transformers computes it: every token after the first is scored by
//! the logits of the token before it. A sequence longer than the context is scored in strided windows
//! (the "perplexity of fixed-length models" recipe): each window of `context` tokens starts `stride` after
//! the previous one and scores only the tokens no earlier window scored.

use super::llama::Model;
use crate::{Error, Result};

/// The result of [`perplexity`].
#[derive(Clone, Debug, PartialEq)]
pub struct PerplexityReport {
    pub tokens_scored: usize,
    /// The most likely next token at each scored position (`top1[i]` predicts the `i + 1`-th scored token's
    /// position), for top-1 agreement with another implementation.
    pub top1: Vec<u32>,
    /// Sum of negative log-likelihoods (nats).
    pub nll_sum: f64,
    pub windows: usize,
}

impl PerplexityReport {
    pub fn mean_nll(&self) -> f64 {
        self.nll_sum / self.tokens_scored.max(1) as f64
    }
    pub fn perplexity(&self) -> f64 {
        self.mean_nll().exp()
    }
}

/// `-log softmax(logits)[target]`, in f64.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln() - logits[target as usize] as f64
}

/// Scores `ids` in windows of `context` tokens advancing by `stride`.
pub fn perplexity(
    model: &Model,
    ids: &[u32],
    context: usize,
    stride: usize,
) -> Result<PerplexityReport> {
    if ids.len() < 2 {
        return Err(Error::invalid(
            "perplexity",
            format!("{} tokens: at least 2 are needed", ids.len()),
        ));
    }
    if context < 2 || context > model.max_context() || stride == 0 || stride > context {
        return Err(Error::invalid(
            "perplexity",
            format!(
                "context {context} must be in 2..={}, stride {stride} in 1..=context",
                model.max_context()
            ),
        ));
    }
    let vocab = model.config().vocab_size;
    let mut report = PerplexityReport {
        tokens_scored: 0,
        top1: Vec::new(),
        nll_sum: 0.0,
        windows: 0,
    };
    // One cache for every window, emptied before each (its buffers are reused).
    let mut cache = model.new_cache(context.min(ids.len()))?;
    let mut prev_end = 0;
    let mut begin = 0;
    while begin < ids.len() {
        let end = (begin + context).min(ids.len());
        let window = &ids[begin..end];
        cache.clear();
        let logits = model.forward(window, &mut cache)?;
        let values = logits.floats("perplexity")?.to_f32_vec();
        // Token j (absolute) is predicted by row j - 1 of this window.
        let first = (begin + 1).max(prev_end);
        for (j, &target) in ids.iter().enumerate().take(end).skip(first) {
            let row = j - 1 - begin;
            let row_logits = &values[row * vocab..(row + 1) * vocab];
            report.nll_sum += nll(row_logits, target);
            report.top1.push(super::sampling::argmax(row_logits));
            report.tokens_scored += 1;
        }
        report.windows += 1;
        prev_end = end;
        if end == ids.len() {
            break;
        }
        begin += stride;
    }
    Ok(report)
}
