//! Text to token ids and back: `tokenizer.json` through the `tokenizers` crate, chat templates from
//! `tokenizer_config.json` (or `chat_template.jinja`) through minijinja, stop tokens from the configs.

use crate::io::model_dir::read_json_object;
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// A model's tokenizer and chat template.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// Ids that end generation (config.json, generation_config.json, the eos token).
    stop_ids: Vec<u32>,
}

/// One chat message.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        detail: format!("tokenizer: {e}"),
    }
}

/// A special token given as a string or as `{"content": ...}`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        Some(x) => x.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        None => Vec::new(),
    }
}

impl TextTokenizer {
    /// Loads the tokenizer of a model directory; `config_eos` are config.json's `eos_token_id`s.
    pub fn load(dir: &Path, config_eos: &[u32]) -> Result<TextTokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                detail: "no tokenizer.json (only fast tokenizers are supported; \
                         `AutoTokenizer.from_pretrained(dir).save_pretrained(dir)` writes one)"
                    .into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| tok_err(&path, e))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Map<String, Value> = if cfg_path.is_file() {
            read_json_object(&cfg_path)?
        } else {
            Map::new()
        };
        let jinja = dir.join("chat_template.jinja");
        let chat_template = if jinja.is_file() {
            Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?)
        } else {
            match cfg.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: the "default" one.
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
                _ => None,
            }
        };
        let bos_token = token_string(cfg.get("bos_token"));
        let eos_token = token_string(cfg.get("eos_token"));
        let mut stop_ids = config_eos.to_vec();
        let gen_path = dir.join("generation_config.json");
        if gen_path.is_file() {
            stop_ids.extend(token_ids(read_json_object(&gen_path)?.get("eos_token_id")));
        }
        if let Some(id) = eos_token.as_deref().and_then(|t| inner.token_to_id(t)) {
            stop_ids.push(id);
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        Ok(TextTokenizer {
            inner,
            chat_template,
            bos_token,
            eos_token,
            stop_ids,
        })
    }

    /// Token ids of `text`, with the special tokens the tokenizer adds (e.g. BOS) when `special`.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| Error::invalid("tokenize", e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::invalid("detokenize", e.to_string()))
    }

    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// The prompt text for `messages` with the generation prompt appended (transformers'
    /// `apply_chat_template(..., add_generation_prompt=True, tokenize=False)`); tokenize it without
    /// adding special tokens: the template writes them.
    pub fn apply_chat_template(&self, messages: &[Message]) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            Error::invalid(
                "chat",
                "this tokenizer has no chat_template; prompt without --chat",
            )
        })?;
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        let err = |e: minijinja::Error| Error::invalid("chat template", e.to_string());
        env.add_template("chat", template).map_err(err)?;
        let ctx = minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => true,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        };
        env.get_template("chat")
            .map_err(err)?
            .render(ctx)
            .map_err(err)
    }
}

/// Turns a growing list of ids into text pieces as soon as they are whole characters.
pub struct TextStream {
    ids: Vec<u32>,
    emitted: usize,
}

impl Default for TextStream {
    fn default() -> Self {
        Self::new()
    }
}

impl TextStream {
    pub fn new() -> TextStream {
        TextStream {
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// Adds a token; returns the new text, if any is complete.
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = tok.decode(&self.ids)?;
        // An incomplete UTF-8 sequence decodes to U+FFFD: wait for the next token.
        if text.ends_with('\u{FFFD}')
            || text.len() <= self.emitted
            || !text.is_char_boundary(self.emitted)
        {
            return Ok(None);
        }
        let piece = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(Some(piece))
    }
}
