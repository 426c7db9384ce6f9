//! Loading a SmolLM-family GGUF file into everything generation needs: configuration,
//! tokenizer and weights, each validated with the file named in any error.

use std::path::Path;

use candle_core::Device;

use super::config::{ModelConfig, RopeOverride};
use super::error::Smollm3Error;
use super::tokenizer::GgufTokenizer;
use smolbot_inference::{CacheType, GgufFile, Transformer};

/// A model ready to generate.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub tokenizer: GgufTokenizer,
    pub transformer: Transformer,
}

impl LoadedModel {
    /// Caps the context of every sequence at `positions`, in the config callers read and in
    /// the forward pass that enforces it.
    pub fn set_context_length(&mut self, positions: usize) {
        self.config.transformer.context_length = positions;
        self.transformer.set_context_length(positions);
    }

    pub fn load(path: &Path, device: &Device) -> Result<Self, Smollm3Error> {
        let file = GgufFile::open(path)?;
        let mut config = ModelConfig::from_gguf(&file)?;
        RopeOverride::from_env()?.apply(&mut config.transformer)?;
        let tokenizer = GgufTokenizer::from_gguf(&file)?;
        let transformer = Transformer::load(&file, config.transformer.clone(), device)?
            .with_cache_type(CacheType::from_env()?);
        Ok(Self {
            config,
            tokenizer,
            transformer,
        })
    }
}
