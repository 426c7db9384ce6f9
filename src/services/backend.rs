//! The token sources the engine thread can drive: the real GGUF model, or the stub.
//!
//! Both stand behind [`TokenModel`], the token loop's interface — prompt ids in, one id at a
//! time out through a callback that may stop it — so everything above it (template,
//! tokenizer, limits, reply parsing, queueing, cancellation, HTTP) is shared and the stub
//! exercises the same path as the real model.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use super::chat::ChatCodec;
use super::error::{thousands, ServiceError};
use super::kv_budget::{self, ContextRequest};
use super::stub::{StubConfig, StubModel};
use super::token_model::TokenModel;
use crate::inference::generate::{GenerationRequest, GenerationStats, TokenSink};
use crate::inference::prefix_cache::PrefixCache;
use crate::inference::sequence::{step, Sequence};
use crate::inference::{GgufFile, InferenceError};
use crate::smollm3::chat_template::ChatTemplate;
use crate::smollm3::prompt::{model_template, special_token_kwargs};
use crate::smollm3::LoadedModel;
use serde_json::Map;

/// The loaded token source; an enum rather than a trait object because [`TokenModel`]
/// names its sequence type.
pub enum TokenSource {
    Gguf(Box<GgufModel>),
    Stub(Box<StubModel>),
}

/// Which backend to start, and how.
#[derive(Debug, Clone)]
pub enum BackendSpec {
    /// A SmolLM-family GGUF file.
    Gguf {
        path: PathBuf,
        /// Stay on the CPU even when built with CUDA.
        force_cpu: bool,
        /// Name to answer `/v1/models` with; the file's name without `.gguf` when `None`.
        alias: Option<String>,
        /// `--ctx-size` and `--kv-budget`: how long each sequence's context may grow.
        context: ContextRequest,
    },
    /// The deterministic stand-in without weights.
    Stub(StubConfig),
}

/// What the API tells clients about the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The name clients pass as `model`.
    pub id: String,
    pub context_length: usize,
    /// Seconds since the Unix epoch when the model was loaded.
    pub created: u64,
    pub is_stub: bool,
    /// Where the model runs ("cpu", "cuda"; "none" for the stub).
    pub device: &'static str,
}

/// A backend, loaded: the token source (kept on the engine thread) and the text side
/// (shared with request handlers).
pub struct LoadedBackend {
    pub model: TokenSource,
    pub codec: ChatCodec,
    pub info: ModelInfo,
}

impl BackendSpec {
    /// Loads the backend for `sequences` generations at a time; runs on the engine thread,
    /// which then owns the weights.
    pub fn load(&self, sequences: usize) -> Result<LoadedBackend, ServiceError> {
        match self {
            Self::Gguf {
                path,
                force_cpu,
                alias,
                context,
            } => {
                let device = crate::inference::device::select(*force_cpu);
                let mut model = LoadedModel::load(path, &device).map_err(ServiceError::Load)?;
                let file = GgufFile::open(path).map_err(|e| ServiceError::Load(e.into()))?;
                let template = model_template(&file).map_err(ServiceError::Load)?;
                let template_defaults = special_token_kwargs(&file).map_err(ServiceError::Load)?;
                let plan = kv_budget::plan(
                    *context,
                    model.config.transformer.context_length,
                    model.transformer.kv_bytes_per_position() as u64,
                    sequences,
                    kv_budget::available_memory(),
                )?;
                if context.ctx_size.is_some_and(|c| c > plan.context) {
                    tracing::warn!(
                        "--ctx-size {} is over the {} positions the model was trained for; using {}",
                        context.ctx_size.unwrap_or_default(),
                        model.config.transformer.context_length,
                        plan.context
                    );
                }
                tracing::info!(
                    "context {} × {} sequences, KV cache {} up to {} (budget {}, kept turns up to {})",
                    thousands(plan.context),
                    plan.sequences,
                    model.transformer.cache_type().name(),
                    kv_budget::human(plan.active_bytes),
                    kv_budget::human(plan.budget),
                    kv_budget::human(plan.kept_bytes)
                );
                model.set_context_length(plan.context);
                let context_length = plan.context;
                let id = alias.clone().unwrap_or_else(|| {
                    path.file_name()
                        .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_string())
                        .unwrap_or_else(|| "model".into())
                });
                let codec = ChatCodec::new(
                    model.tokenizer.clone(),
                    template,
                    template_defaults,
                    context_length,
                );
                Ok(LoadedBackend {
                    model: TokenSource::Gguf(Box::new(GgufModel {
                        model,
                        prefixes: PrefixCache::new(plan.kept_bytes as usize),
                    })),
                    codec,
                    info: ModelInfo {
                        id,
                        context_length,
                        created: now(),
                        is_stub: false,
                        device: crate::inference::device::describe(&device),
                    },
                })
            }
            Self::Stub(config) => {
                let stub = StubModel::new(config.clone()).map_err(ServiceError::Load)?;
                let codec = ChatCodec::new(
                    stub.tokenizer().clone(),
                    ChatTemplate::builtin().map_err(ServiceError::Load)?,
                    Map::new(),
                    config.context_length,
                )
                .without_grammars();
                Ok(LoadedBackend {
                    info: ModelInfo {
                        id: super::stub::STUB_MODEL_ID.into(),
                        context_length: config.context_length,
                        created: now(),
                        is_stub: true,
                        device: "none",
                    },
                    model: TokenSource::Stub(Box::new(stub)),
                    codec,
                })
            }
        }
    }
}

impl BackendSpec {
    /// The text side alone — template, tokenizer, context size — for an engine whose
    /// weights run elsewhere (`--engine openai`). A GGUF file is only mapped and its metadata
    /// read: no tensor is loaded, so a web node needs the file but not the memory for it.
    pub fn load_text_side(&self) -> Result<(ChatCodec, ModelInfo), ServiceError> {
        match self {
            Self::Gguf {
                path,
                alias,
                context,
                ..
            } => {
                let file = GgufFile::open(path).map_err(|e| ServiceError::Load(e.into()))?;
                let config = crate::smollm3::ModelConfig::from_gguf(&file)
                    .map_err(|e| ServiceError::Load(e.into()))?;
                let tokenizer =
                    crate::smollm3::GgufTokenizer::from_gguf(&file).map_err(ServiceError::Load)?;
                let template = model_template(&file).map_err(ServiceError::Load)?;
                let template_defaults = special_token_kwargs(&file).map_err(ServiceError::Load)?;
                let trained = config.transformer.context_length;
                let context_length = context
                    .ctx_size
                    .filter(|&n| n > 0)
                    .map_or(trained, |n| n.min(trained));
                let id = alias.clone().unwrap_or_else(|| {
                    path.file_name()
                        .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_string())
                        .unwrap_or_else(|| "model".into())
                });
                let codec = ChatCodec::new(tokenizer, template, template_defaults, context_length);
                Ok((
                    codec,
                    ModelInfo {
                        id,
                        context_length,
                        created: now(),
                        is_stub: false,
                        device: "remote",
                    },
                ))
            }
            Self::Stub(_) => {
                let LoadedBackend {
                    codec, mut info, ..
                } = self.load(1)?;
                info.device = "remote";
                Ok((codec, info))
            }
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The real model and the KV caches of its recent generations, which the next turn of the
/// same conversation reuses.
pub struct GgufModel {
    model: LoadedModel,
    prefixes: PrefixCache,
}

impl TokenModel for GgufModel {
    type Sequence = Sequence;

    fn begin(
        &mut self,
        prompt: &[u32],
        request: &GenerationRequest,
    ) -> Result<Sequence, ServiceError> {
        let transformer = &self.model.transformer;
        // Scoring a prompt needs every position's logits, so it runs from scratch.
        let reuse = request.prompt_logprobs.is_none();
        let cache = if reuse {
            self.prefixes
                .take(transformer, prompt)
                .map_err(generation_error)?
        } else {
            transformer.new_cache()
        };
        Sequence::new(transformer, cache, prompt, request).map_err(generation_error)
    }

    fn step(
        &mut self,
        running: &mut [(&mut Sequence, &mut dyn TokenSink)],
    ) -> Result<(), ServiceError> {
        step(&self.model.transformer, running).map_err(generation_error)
    }

    fn is_finished(&self, seq: &Sequence) -> bool {
        seq.is_finished()
    }

    fn finish(&mut self, seq: Sequence) -> GenerationStats {
        // A scored prompt's cache was started empty on purpose; the others are kept.
        let reuse = !seq.scores_prompt();
        let (stats, cache) = seq.finish();
        if reuse {
            self.prefixes.put(stats.tokens.clone(), cache);
        }
        stats
    }

    fn kept_cache_bytes(&self) -> usize {
        self.prefixes.bytes()
    }
}

fn generation_error(err: InferenceError) -> ServiceError {
    ServiceError::Generation(err.to_string())
}
