//! How many positions each sequence's KV cache may hold, so that the caches of every sequence
//! running together, plus the kept caches the next turns of conversations reuse, fit in a
//! memory budget. SmolLM3 is trained for 64k positions: at f16 that is 4.8 GB per sequence, so
//! four chats at the model's full context would need 19 GB; the budget picks the context
//! instead (llama.cpp's `-c`, which defaults to the model's and lets the machine run out).

use crate::inference::prefix_cache::DEFAULT_BUDGET_BYTES;

/// Contexts are whole steps of the cache's growth, so a full cache holds exactly its share.
pub const CONTEXT_STEP: usize = 512;

/// Below this many positions per sequence a chat is not worth starting: an error instead.
pub const MIN_CONTEXT: usize = 1024;

/// Without `--kv-budget`: this share of the memory available after the weights are loaded.
const AVAILABLE_SHARE: f64 = 0.75;

/// Without `--kv-budget` and without `/proc/meminfo`: 4 GiB.
const FALLBACK_BUDGET: u64 = 4 << 30;

/// What the user asked for: `--ctx-size` (0 = the model's) and `--kv-budget` in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContextRequest {
    pub ctx_size: Option<usize>,
    pub kv_budget: Option<u64>,
}

/// The outcome, stated at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextPlan {
    /// Positions each sequence holds (prompt and answer).
    pub context: usize,
    pub sequences: usize,
    /// The most the running sequences' caches take together.
    pub active_bytes: u64,
    /// What the kept caches of finished turns may take.
    pub kept_bytes: u64,
    pub budget: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BudgetError {
    #[error(
        "--ctx-size {context} × {sequences} sequences needs {} of KV cache, over the budget of {} \
         (lower --ctx-size or --parallel, raise --kv-budget, or use --cache-type q8_0)",
        human(*needed),
        human(*budget)
    )]
    OverBudget {
        context: usize,
        sequences: usize,
        needed: u64,
        budget: u64,
    },
    #[error(
        "a KV budget of {} holds only {context} positions for each of {sequences} sequences \
         (at least {MIN_CONTEXT} are needed): raise --kv-budget or lower --parallel",
        human(*budget)
    )]
    TooSmall {
        context: usize,
        sequences: usize,
        budget: u64,
    },
}

/// Bytes as GB with one decimal (MB below 1 GB), as the start-up line shows them.
pub fn human(bytes: u64) -> String {
    if bytes >= 1_000_000_000 {
        format!("{:.1} GB", bytes as f64 / 1e9)
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}

/// Plans the context for `sequences` caches of `per_position` bytes each, for a model trained
/// for `model_context` positions, with `available` bytes of free memory (if known).
pub fn plan(
    request: ContextRequest,
    model_context: usize,
    per_position: u64,
    sequences: usize,
    available: Option<u64>,
) -> Result<ContextPlan, BudgetError> {
    let sequences = sequences.max(1);
    let budget = request.kv_budget.unwrap_or_else(|| {
        available.map_or(FALLBACK_BUDGET, |a| (a as f64 * AVAILABLE_SHARE) as u64)
    });
    let bytes_for = |context: usize| context as u64 * per_position * sequences as u64;
    let context = match request.ctx_size {
        Some(asked) => {
            let context = if asked == 0 {
                model_context
            } else {
                asked.min(model_context)
            };
            let needed = bytes_for(context);
            if needed > budget {
                return Err(BudgetError::OverBudget {
                    context,
                    sequences,
                    needed,
                    budget,
                });
            }
            context
        }
        None => {
            // A quarter of the budget (at most the prefix cache's usual 1 GiB) stays for the
            // kept caches that make a conversation's next turn start without re-reading it.
            let kept = (budget / 4).min(DEFAULT_BUDGET_BYTES as u64);
            let fits = ((budget - kept) / (per_position * sequences as u64).max(1)) as usize;
            let fits = fits / CONTEXT_STEP * CONTEXT_STEP;
            if fits < MIN_CONTEXT.min(model_context) {
                return Err(BudgetError::TooSmall {
                    context: fits,
                    sequences,
                    budget,
                });
            }
            fits.min(model_context)
        }
    };
    let active_bytes = bytes_for(context);
    Ok(ContextPlan {
        context,
        sequences,
        active_bytes,
        kept_bytes: (budget - active_bytes).min(DEFAULT_BUDGET_BYTES as u64),
        budget,
    })
}

/// `MemAvailable` from `/proc/meminfo`, in bytes (Linux only; `None` elsewhere).
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A size as `--kv-budget` takes it: bytes, or a number with K, M, G (or KB, MB, GB, KiB,
/// MiB, GiB; all powers of 1024, as memory is sized), e.g. `3G` or `512MiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size: use bytes or e.g. 3G, 512M"))?;
    let scale: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}: use K, M or G"
            ))
        }
    };
    let bytes = number * scale as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is not a usable size"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM3-3B's f16 cache: 36 layers × K and V × 4 KV heads × 128 values × 2 bytes.
    const SMOLLM3_F16: u64 = 36 * 2 * 4 * 128 * 2;

    #[test]
    fn the_default_context_fills_three_quarters_of_the_budget_in_whole_steps() {
        let request = ContextRequest {
            ctx_size: None,
            kv_budget: Some(4 << 30),
        };
        let plan = plan(request, 65_536, SMOLLM3_F16, 4, None).unwrap();
        assert_eq!(plan.context, 10_752);
        assert_eq!(plan.context % CONTEXT_STEP, 0);
        assert!(plan.active_bytes + plan.kept_bytes <= plan.budget);
        assert_eq!(plan.kept_bytes, 1 << 30);
    }

    #[test]
    fn a_roomy_budget_gives_the_models_context() {
        let request = ContextRequest {
            ctx_size: None,
            kv_budget: Some(100 << 30),
        };
        let plan = plan(request, 65_536, SMOLLM3_F16, 4, None).unwrap();
        assert_eq!(plan.context, 65_536);
    }

    #[test]
    fn without_a_budget_three_quarters_of_available_memory_is_used() {
        let plan = plan(
            ContextRequest::default(),
            65_536,
            SMOLLM3_F16,
            1,
            Some(8 << 30),
        )
        .unwrap();
        assert_eq!(plan.budget, 6 << 30);
        assert_eq!(plan.context, 65_536);
        let plan = plan_for(1 << 30);
        assert_eq!(plan.budget, 805_306_368);
    }

    fn plan_for(available: u64) -> ContextPlan {
        plan(ContextRequest::default(), 4096, 1024, 1, Some(available)).unwrap()
    }

    #[test]
    fn an_explicit_context_over_the_budget_is_refused_with_the_numbers() {
        let request = ContextRequest {
            ctx_size: Some(65_536),
            kv_budget: Some(8 << 30),
        };
        let err = plan(request, 65_536, SMOLLM3_F16, 4, None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("65536 × 4 sequences needs 19.3 GB"), "{text}");
        assert!(text.contains("budget of 8.6 GB"), "{text}");
    }

    #[test]
    fn an_explicit_context_is_capped_at_the_models_and_zero_means_the_models() {
        let big = Some(100 << 30);
        for (asked, want) in [
            (Some(200_000), 65_536),
            (Some(0), 65_536),
            (Some(3000), 3000),
        ] {
            let request = ContextRequest {
                ctx_size: asked,
                kv_budget: big,
            };
            assert_eq!(
                plan(request, 65_536, SMOLLM3_F16, 2, None).unwrap().context,
                want
            );
        }
    }

    #[test]
    fn a_budget_too_small_for_a_useful_context_is_an_error() {
        let request = ContextRequest {
            ctx_size: None,
            kv_budget: Some(100 << 20),
        };
        let err = plan(request, 65_536, SMOLLM3_F16, 4, None).unwrap_err();
        assert!(
            matches!(err, BudgetError::TooSmall { context: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("3G").unwrap(), 3 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5gb").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3X").is_err());
        assert!(parse_size("0").is_err());
    }
}
