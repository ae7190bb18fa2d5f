//! Choosing the next token from logits, in the order transformers' `generate` applies its processors:
//! repetition penalty, then temperature, top-k and top-p, then a draw (or the argmax when greedy).

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// Sampling settings; `temperature == 0` is greedy decoding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1: all).
    pub top_p: f32,
    /// CTRL's penalty on tokens already in the sequence (1: none).
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// A typed error for settings outside their ranges.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |what: &str, v: f32| {
            Err(crate::Error::invalid(
                "sampling",
                format!("{what} {v} is out of range"),
            ))
        };
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature (>= 0)", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p (in (0, 1])", self.top_p);
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("repetition_penalty (> 0)", self.repetition_penalty);
        }
        Ok(())
    }
}

/// A seeded sampler.
pub struct Sampler {
    params: SamplingParams,
    rng: Xoshiro256PlusPlus,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        Sampler {
            params,
            rng: Xoshiro256PlusPlus::seed_from_u64(params.seed),
        }
    }

    /// The next token for `logits` (modified in place) given the sequence so far.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = self.params;
        if p.repetition_penalty != 1.0 {
            apply_repetition_penalty(logits, history, p.repetition_penalty);
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        for l in logits.iter_mut() {
            *l /= p.temperature;
        }
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        // Most likely first; ties keep the lower id first (stable sort).
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        if p.top_k > 0 && p.top_k < order.len() {
            order.truncate(p.top_k);
        }
        let max = logits[order[0] as usize];
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&i| ((logits[i as usize] - max) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        if p.top_p < 1.0 {
            // transformers removes tokens whose ascending cumulative probability is <= 1 - top_p: keep the
            // most likely tokens until the kept mass reaches top_p, at least one.
            let mut kept = 0.0;
            let mut n = 0;
            for &q in &probs {
                n += 1;
                kept += q;
                if kept >= p.top_p as f64 {
                    break;
                }
            }
            order.truncate(n);
            probs.truncate(n);
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|x| *x /= total);
        }
        let mut u: f64 = self.rng.random();
        for (i, q) in order.iter().zip(&probs) {
            if u < *q {
                return *i;
            }
            u -= q;
        }
        *order.last().expect("at least one token is kept")
    }
}

/// CTRL's repetition penalty as transformers applies it: each token already seen has its logit divided by
/// the penalty if positive, multiplied if negative.
pub fn apply_repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32) {
    let mut seen = std::collections::HashSet::new();
    for &t in history {
        if let Some(l) = logits.get_mut(t as usize)
            && seen.insert(t)
        {
            *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
        }
    }
}

/// The first index of the largest logit (torch's argmax picks the first on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_the_first_argmax() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&mut [0.0, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let mut l = [2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, [1.0, -4.0, 1.0]);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = [0.5f32, 2.0, 1.9, -3.0];
        for params in [
            SamplingParams {
                temperature: 1.0,
                top_k: 1,
                ..Default::default()
            },
            SamplingParams {
                temperature: 1.0,
                top_p: 1e-6,
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(params);
            for _ in 0..20 {
                assert_eq!(s.sample(&mut logits.clone(), &[]), 1);
            }
        }
    }

    #[test]
    fn sampling_follows_the_distribution_and_the_seed() {
        let params = SamplingParams {
            temperature: 1.0,
            seed: 7,
            ..Default::default()
        };
        let logits = [0.0f32, (3.0f32).ln()]; // probabilities 1/4, 3/4
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams { seed, ..params });
            (0..4000)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7), "same seed, same tokens");
        let ones = a.iter().filter(|&&t| t == 1).count() as f64 / a.len() as f64;
        assert!((ones - 0.75).abs() < 0.03, "P(1) = {ones}");
        // top_p = 0.5 keeps only the 3/4 token.
        let mut s = Sampler::new(SamplingParams {
            top_p: 0.5,
            ..params
        });
        assert!((0..200).all(|_| s.sample(&mut logits.clone(), &[]) == 1));
    }
}
