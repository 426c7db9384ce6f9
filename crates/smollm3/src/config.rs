//! SmolLM3's configuration as its GGUF file states it, and the SmolLM2 (`llama`) variant
//! that the real small test model uses.
//!
//! Every dimension comes from `{arch}.*` metadata. The one fact no GGUF key carries is the
//! NoPE plan: llama.cpp's `smollm3` graph skips RoPE on every 4th layer (`(il + 1) % 4 == 0`)
//! with the step hard-coded, so we apply the same rule and say so in `inspect`.

use super::Smollm3Error;
use smolbot_inference::{GgufFile, InferenceError, RopeScaling, TransformerConfig};

/// SmolLM3 layers `3, 7, 11, …` use no positional encoding (llama.cpp: `n_no_rope_layer_step`).
pub const SMOLLM3_NOPE_STEP: usize = 4;

/// Tensors each decoder layer needs (norms, Q/K/V/O, gate/up/down): a file states no more
/// layers than its tensor count can hold.
const TENSORS_PER_LAYER: usize = 9;

/// Largest width, head count or vocabulary accepted from a file: far above any real model
/// (SmolLM3: FFN 11,008, vocabulary 128,256) and small enough that no shape product overflows.
const MAX_DIMENSION: usize = 1 << 22;

/// Longest context accepted from a file (16M positions; SmolLM3 states 65,536).
const MAX_CONTEXT: usize = 1 << 24;

/// Decoder families this build can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    SmolLm3,
    /// Plain Llama: SmolLM2 and friends.
    Llama,
}

impl Architecture {
    pub const SUPPORTED: &'static str = "smollm3, llama";

    pub fn name(self) -> &'static str {
        match self {
            Self::SmolLm3 => "smollm3",
            Self::Llama => "llama",
        }
    }
}

/// The model's configuration plus where it came from.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub name: Option<String>,
    pub transformer: TransformerConfig,
}

impl ModelConfig {
    pub fn from_gguf(file: &GgufFile) -> Result<Self, InferenceError> {
        let arch_name = file.get_str("general.architecture")?;
        let arch = match arch_name {
            "smollm3" => Architecture::SmolLm3,
            "llama" => Architecture::Llama,
            other => {
                return Err(InferenceError::UnsupportedArchitecture {
                    path: file.path().to_path_buf(),
                    arch: other.to_string(),
                    supported: Architecture::SUPPORTED.to_string(),
                })
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let bad = |k: &str, problem: String| InferenceError::BadKey {
            path: file.path().to_path_buf(),
            key: key(k),
            problem,
        };
        // Counts are checked against what the file can hold before anything is sized by them.
        let n_layer = file.get_usize(&key("block_count"))?;
        let tensors = file.tensor_count();
        if n_layer == 0 || n_layer > tensors / TENSORS_PER_LAYER {
            return Err(bad(
                "block_count",
                format!(
                    "says {n_layer} layers, but the file holds {tensors} tensors: room for at \
                     most {} layers of {TENSORS_PER_LAYER}",
                    tensors / TENSORS_PER_LAYER
                ),
            ));
        }
        let dimension = |k: &str, value: usize| -> Result<usize, InferenceError> {
            if value > MAX_DIMENSION {
                return Err(bad(
                    k,
                    format!("{value} is beyond the {MAX_DIMENSION} this server accepts"),
                ));
            }
            Ok(value)
        };
        let n_embd = dimension(
            "embedding_length",
            file.get_usize(&key("embedding_length"))?,
        )?;
        let n_head = dimension(
            "attention.head_count",
            file.get_usize(&key("attention.head_count"))?,
        )?;
        let n_head_kv = file
            .opt_usize(&key("attention.head_count_kv"))?
            .unwrap_or(n_head);
        let n_head_kv = dimension("attention.head_count_kv", n_head_kv)?;
        let head_dim = match file.opt_usize(&key("attention.key_length"))? {
            Some(d) => d,
            None if n_head > 0 => n_embd / n_head,
            None => 0,
        };
        let head_dim = dimension("attention.key_length", head_dim)?;
        let vocab_size = match file.opt_usize(&key("vocab_size"))? {
            Some(v) => v,
            None if file.has("tokenizer.ggml.tokens") => {
                file.get_array("tokenizer.ggml.tokens")?.len()
            }
            None => file
                .tensor_info("token_embd.weight")
                .map(|t| t.shape.dims()[0])
                .ok_or_else(|| InferenceError::MissingKey {
                    path: file.path().to_path_buf(),
                    key: key("vocab_size"),
                })?,
        };
        let vocab_size = dimension("vocab_size", vocab_size)?;
        let context_length = file.get_usize(&key("context_length"))?;
        if context_length == 0 || context_length > MAX_CONTEXT {
            return Err(bad(
                "context_length",
                format!("{context_length} is outside 1..={MAX_CONTEXT}"),
            ));
        }
        let rope_dim = file
            .opt_usize(&key("rope.dimension_count"))?
            .unwrap_or(head_dim);
        let rope_dim = dimension("rope.dimension_count", rope_dim)?;
        let rope_layers = (0..n_layer)
            .map(|i| match arch {
                Architecture::SmolLm3 => (i + 1) % SMOLLM3_NOPE_STEP != 0,
                Architecture::Llama => true,
            })
            .collect();
        let transformer = TransformerConfig {
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: dimension(
                "feed_forward_length",
                file.get_usize(&key("feed_forward_length"))?,
            )?,
            vocab_size,
            context_length,
            rms_eps: file.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: file.opt_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_dim,
            rope_scaling: rope_scaling(file, arch_name)?,
            rope_layers,
        };
        Ok(Self {
            arch,
            name: file.opt_str("general.name")?.map(str::to_string),
            transformer,
        })
    }
}

fn rope_scaling(file: &GgufFile, arch: &str) -> Result<RopeScaling, InferenceError> {
    let key = |k: &str| format!("{arch}.rope.scaling.{k}");
    let factor = match file.opt_f64(&key("factor"))? {
        Some(f) => Some(f),
        // Older converters wrote only the linear scale.
        None => file.opt_f64(&format!("{arch}.rope.scale_linear"))?,
    };
    let kind =
        file.opt_str(&key("type"))?
            .unwrap_or(if factor.is_some() { "linear" } else { "none" });
    let factor = factor.unwrap_or(1.0);
    let bad = |problem: String| InferenceError::BadKey {
        path: file.path().to_path_buf(),
        key: key("factor"),
        problem,
    };
    match kind {
        "none" => Ok(RopeScaling::None),
        _ if factor <= 0.0 => Err(bad(format!("must be > 0, found {factor}"))),
        "linear" if factor == 1.0 => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear { factor }),
        "yarn" => {
            let ext = file.opt_f64(&key("yarn_ext_factor"))?.unwrap_or(-1.0);
            Ok(RopeScaling::Yarn {
                factor,
                original_context: file.get_usize(&key("original_context_length"))?,
                beta_fast: file.opt_f64(&key("yarn_beta_fast"))?.unwrap_or(32.0),
                beta_slow: file.opt_f64(&key("yarn_beta_slow"))?.unwrap_or(1.0),
                // llama.cpp: a negative (unset) extrapolation factor means 1.0 under YaRN.
                ext_factor: if ext < 0.0 { 1.0 } else { ext },
                attn_factor: file.opt_f64(&key("yarn_attn_factor"))?.unwrap_or(1.0),
            })
        }
        other => Err(InferenceError::BadKey {
            path: file.path().to_path_buf(),
            key: key("type"),
            problem: format!("names unsupported scaling `{other}` (supported: none, linear, yarn)"),
        }),
    }
}

/// Context extension asked for at start-up rather than stated by the file (llama.cpp's
/// `--rope-scaling`, `--rope-scale`, `--yarn-orig-ctx`): SmolLM3's card extends its 64k
/// training context to 128k with `--rope-scaling yarn --rope-scale 2 --yarn-orig-ctx 65536`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RopeOverride {
    /// `none`, `linear` or `yarn`; unset keeps the file's scheme (linear if it has none).
    pub kind: Option<RopeKind>,
    /// How many times the context grows (llama.cpp's `--rope-scale`: frequencies ÷ this).
    pub scale: Option<f64>,
    /// The context the model was trained for; default: the file's context length.
    pub original_context: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeKind {
    None,
    Linear,
    Yarn,
}

impl RopeOverride {
    /// From `SMOLBOT_ROPE_SCALING`, `SMOLBOT_ROPE_SCALE` and `SMOLBOT_YARN_ORIG_CTX` (what the
    /// command-line flags set), so every command that loads a model honours them.
    pub fn from_env() -> Result<Self, Smollm3Error> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let bad =
            |name: &str, v: &str| Smollm3Error::RopeOverride(format!("{name}={v:?} is not valid"));
        let kind = match var("SMOLBOT_ROPE_SCALING").as_deref() {
            None => None,
            Some("none") => Some(RopeKind::None),
            Some("linear") => Some(RopeKind::Linear),
            Some("yarn") => Some(RopeKind::Yarn),
            Some(other) => return Err(bad("SMOLBOT_ROPE_SCALING", other)),
        };
        let scale = match var("SMOLBOT_ROPE_SCALE") {
            None => None,
            Some(v) => Some(
                v.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && *f >= 1.0 && *f <= 64.0)
                    .ok_or_else(|| bad("SMOLBOT_ROPE_SCALE (1 to 64)", &v))?,
            ),
        };
        let original_context = match var("SMOLBOT_YARN_ORIG_CTX") {
            None => None,
            Some(v) => Some(
                v.parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1 << 24).contains(n))
                    .ok_or_else(|| bad("SMOLBOT_YARN_ORIG_CTX", &v))?,
            ),
        };
        Ok(Self {
            kind,
            scale,
            original_context,
        })
    }

    /// Rewrites `cfg`'s RoPE scheme and context: a scale of `f` over an original context of
    /// `n` positions serves `f · n`.
    pub fn apply(&self, cfg: &mut TransformerConfig) -> Result<(), Smollm3Error> {
        if *self == Self::default() {
            return Ok(());
        }
        let file_kind = match cfg.rope_scaling {
            RopeScaling::None => None,
            RopeScaling::Linear { .. } => Some(RopeKind::Linear),
            RopeScaling::Yarn { .. } => Some(RopeKind::Yarn),
        };
        let kind = self.kind.or(file_kind).unwrap_or(RopeKind::Linear);
        let original = self.original_context.unwrap_or(match cfg.rope_scaling {
            RopeScaling::Yarn {
                original_context, ..
            } => original_context,
            _ => cfg.context_length,
        });
        let file_factor = match cfg.rope_scaling {
            RopeScaling::None => None,
            RopeScaling::Linear { factor } | RopeScaling::Yarn { factor, .. } => Some(factor),
        };
        let factor = self.scale.or(file_factor);
        cfg.rope_scaling = match (kind, factor) {
            (RopeKind::None, _) => RopeScaling::None,
            (_, None) => {
                return Err(Smollm3Error::RopeOverride(
                    "linear and yarn scaling need --rope-scale".into(),
                ))
            }
            (RopeKind::Linear, Some(factor)) => RopeScaling::Linear { factor },
            // llama.cpp's defaults for every YaRN setting a file would otherwise state.
            (RopeKind::Yarn, Some(factor)) => RopeScaling::Yarn {
                factor,
                original_context: original,
                beta_fast: 32.0,
                beta_slow: 1.0,
                ext_factor: 1.0,
                attn_factor: 1.0,
            },
        };
        if let Some(factor) = factor.filter(|_| kind != RopeKind::None) {
            cfg.context_length = (original as f64 * factor) as usize;
        }
        Ok(())
    }
}

#[cfg(test)]
mod rope_override_tests {
    use super::*;

    fn cfg(context_length: usize) -> TransformerConfig {
        TransformerConfig {
            n_layer: 1,
            n_embd: 64,
            n_head: 1,
            n_head_kv: 1,
            head_dim: 64,
            n_ff: 64,
            vocab_size: 8,
            context_length,
            rms_eps: 1e-5,
            rope_theta: 10000.0,
            rope_dim: 64,
            rope_scaling: RopeScaling::None,
            rope_layers: vec![true],
        }
    }

    #[test]
    fn yarn_from_the_command_line_doubles_smollm3s_context() {
        let mut c = cfg(65_536);
        let over = RopeOverride {
            kind: Some(RopeKind::Yarn),
            scale: Some(2.0),
            original_context: Some(65_536),
        };
        over.apply(&mut c).unwrap();
        assert_eq!(c.context_length, 131_072);
        assert!(matches!(
            c.rope_scaling,
            RopeScaling::Yarn { factor, original_context: 65_536, ext_factor, .. }
                if factor == 2.0 && ext_factor == 1.0
        ));
    }

    #[test]
    fn no_override_changes_nothing_and_scaling_without_a_factor_is_an_error() {
        let mut c = cfg(4096);
        let before = c.clone();
        RopeOverride::default().apply(&mut c).unwrap();
        assert_eq!(c, before);
        let yarn = RopeOverride {
            kind: Some(RopeKind::Yarn),
            ..Default::default()
        };
        assert!(yarn
            .apply(&mut c)
            .unwrap_err()
            .to_string()
            .contains("--rope-scale"));
    }
}
