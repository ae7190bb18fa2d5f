//! Token generation: the prompt is prefilled in one batch, then one token per step through the KV cache.

use super::llama::{KvCache, Model};
use super::sampling::{Sampler, SamplingParams};
use crate::Result;
use std::time::{Duration, Instant};

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Ids that end generation (not yielded).
    pub stop_ids: Vec<u32>,
}

/// Time spent so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    pub prefill: Duration,
    pub generated: usize,
    /// Decode steps after the first token (the first comes from the prefill).
    pub decode_steps: usize,
    pub decode: Duration,
    /// The part of `decode` the host spent issuing the steps' ops (the rest is waiting for the device to
    /// finish them): near all of it means the host, not the device, bounds a token.
    pub decode_issue: Duration,
}

impl GenerateStats {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.decode_steps as f64 / self.decode.as_secs_f64().max(1e-9)
    }
    /// The fraction of decode time the host spent issuing ops.
    pub fn decode_issue_fraction(&self) -> f64 {
        self.decode_issue.as_secs_f64() / self.decode.as_secs_f64().max(1e-9)
    }
}

/// An iterator of generated token ids.
pub struct Generator<'m> {
    model: &'m Model,
    cache: KvCache,
    sampler: Sampler,
    opts: GenerateOptions,
    /// Prompt and generated ids (the repetition penalty looks at both).
    tokens: Vec<u32>,
    prompt_len: usize,
    /// The token to feed next (None before the prefill).
    next_input: Option<u32>,
    done: bool,
    stats: GenerateStats,
}

impl<'m> Generator<'m> {
    /// A generator for `prompt`; the cache holds the prompt and `max_new_tokens` (capped at the model's
    /// context).
    pub fn new(model: &'m Model, prompt: &[u32], opts: GenerateOptions) -> Result<Generator<'m>> {
        opts.sampling.validate()?;
        if prompt.is_empty() {
            return Err(crate::Error::invalid(
                "generate",
                "the prompt has no tokens",
            ));
        }
        if prompt.len() > model.max_context() {
            return Err(crate::Error::invalid(
                "generate",
                format!(
                    "the prompt has {} tokens, more than the context of {}",
                    prompt.len(),
                    model.max_context()
                ),
            ));
        }
        let capacity = (prompt.len() + opts.max_new_tokens).min(model.max_context());
        Ok(Generator {
            cache: model.new_cache(capacity)?,
            model,
            sampler: Sampler::new(opts.sampling),
            tokens: prompt.to_vec(),
            prompt_len: prompt.len(),
            opts,
            next_input: None,
            done: false,
            stats: GenerateStats {
                prompt_tokens: prompt.len(),
                ..Default::default()
            },
        })
    }

    pub fn stats(&self) -> GenerateStats {
        self.stats
    }

    /// Prompt and generated ids so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Positions in the KV cache.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    fn step(&mut self) -> Result<Option<u32>> {
        let generated = self.tokens.len() - self.prompt_len;
        if self.done || generated >= self.opts.max_new_tokens {
            return Ok(None);
        }
        let mut logits = match self.next_input {
            None => {
                let t = Instant::now();
                let l = self.model.forward_last(&self.tokens, &mut self.cache)?;
                self.stats.prefill = t.elapsed();
                l
            }
            Some(tok) => {
                if self.cache.len() >= self.cache.capacity() {
                    return Ok(None);
                }
                let t = Instant::now();
                let queued = self.model.queue_last(&[tok], &mut self.cache)?;
                self.stats.decode_issue += t.elapsed();
                let l = self.model.read_logits(&queued)?;
                self.stats.decode += t.elapsed();
                self.stats.decode_steps += 1;
                l
            }
        };
        let id = self.sampler.sample(&mut logits, &self.tokens);
        if self.opts.stop_ids.contains(&id) {
            self.done = true;
            return Ok(None);
        }
        self.tokens.push(id);
        self.next_input = Some(id);
        self.stats.generated += 1;
        Ok(Some(id))
    }
}

impl Iterator for Generator<'_> {
    type Item = Result<u32>;

    fn next(&mut self) -> Option<Result<u32>> {
        match self.step() {
            Ok(Some(id)) => Some(Ok(id)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
