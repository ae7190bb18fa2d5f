//! `lowbit perplexity MODEL TEXT_FILE`: the model's perplexity on a text, as transformers computes it (every
//! token after the first; strided windows when the text is longer than the context).

use super::CliResult;
use super::generate::ModelArgs;
use crate::{Global, outln, output};
use lowbit::model::TextTokenizer;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A UTF-8 text file.
    pub text: PathBuf,
    /// Tokens per window (default: the loaded context).
    #[arg(long)]
    pub context: Option<usize>,
    /// Tokens between window starts (default: half the window).
    #[arg(long)]
    pub stride: Option<usize>,
}

pub fn run(args: Args, global: &Global) -> CliResult {
    let text = std::fs::read_to_string(&args.text).map_err(|e| {
        format!(
            "{}: {e} (a UTF-8 text file is expected)",
            args.text.display()
        )
    })?;
    let (model, load_s) = args.model.load(global)?;
    let tok = TextTokenizer::load(&args.model.model, &model.config().eos_token_ids)?;
    let ids = tok.encode(&text, true)?;
    let context = args
        .context
        .unwrap_or(model.max_context())
        .min(model.max_context());
    let stride = args.stride.unwrap_or(context.div_ceil(2).max(1));
    let t = Instant::now();
    let r = lowbit::model::perplexity::perplexity(&model, &ids, context, stride)?;
    let secs = t.elapsed().as_secs_f64();
    if global.json {
        output::print_json(&serde_json::json!({
            "perplexity": r.perplexity(), "mean_nll": r.mean_nll(), "tokens": ids.len(),
            "tokens_scored": r.tokens_scored, "windows": r.windows, "context": context, "stride": stride,
            "device": model.device().id(), "load_s": load_s, "seconds": secs, "top1": r.top1,
        }))?;
        return Ok(());
    }
    outln!(
        "perplexity {:.4} (mean NLL {:.4} nats) over {} scored tokens of {}, {} window(s) of {} (stride {}), \
         on {} in {:.2} s",
        r.perplexity(),
        r.mean_nll(),
        r.tokens_scored,
        ids.len(),
        r.windows,
        context,
        stride,
        model.device().id(),
        secs
    );
    Ok(())
}
