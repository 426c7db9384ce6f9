//! `smolbot bench`: prompt-processing and generation speed plus peak memory, the numbers
//! the performance work is judged by (compare with llama.cpp in the same run:
//! `scripts/bench.sh`).

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use smolbot::inference::generate::{
    generate, generate_observed, GenerationRequest, GenerationStats, Sampled, TokenAction,
    TokenSink,
};
use smolbot::inference::prefix_cache::{PrefixCache, DEFAULT_BUDGET_BYTES};
use smolbot::inference::sampling::SamplingParams;
use smolbot::inference::sequence::{run_all, Sequence};
use smolbot::inference::SequenceCache;
use smolbot::smollm3::grammar::{Grammar, GrammarCompiler, GrammarSpec, GrammarState};
use smolbot::smollm3::LoadedModel;

use super::EngineArgs;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Prompt length in tokens (processed in one prefill).
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens generated after the prompt (end tokens do not stop the run).
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Also measure time to first token of a conversation's second turn after a history of
    /// this many tokens, with the kept KV cache and without (0 skips it).
    #[arg(long, default_value_t = 0)]
    history: usize,
    /// Also measure total generation throughput with this many sequences decoding together
    /// (batched), against one sequence alone in the same run (0 skips it).
    #[arg(long, default_value_t = 0)]
    parallel: usize,
    /// Also measure generation under this JSON schema (a file), against the unconstrained
    /// run: tok/s with the grammar's token mask applied every step, and the mask's time per
    /// token. Documents are generated back to back until `--gen-tokens`.
    #[arg(long, value_name = "FILE")]
    json_schema: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// New tokens of a turn in the time-to-first-token comparison: a short user message.
const TURN_TOKENS: usize = 64;

/// Times to first token, in seconds: a fresh short prompt, turn 2 reusing turn 1's cache,
/// and turn 2 run from scratch.
struct TurnTimes {
    fresh_short: f64,
    reused: f64,
    from_scratch: f64,
    cached_tokens: usize,
}

/// Seconds from the start of `prompt` to its first sampled token, and the run's stats.
fn first_token(
    model: &LoadedModel,
    cache: &mut SequenceCache,
    prompt: &[u32],
    max_tokens: usize,
) -> anyhow::Result<(f64, GenerationStats)> {
    let request = GenerationRequest {
        max_tokens,
        sampling: SamplingParams::greedy(),
        ..GenerationRequest::default()
    };
    let started = Instant::now();
    let mut first = None;
    let stats = generate(&model.transformer, cache, prompt, &request, |_| {
        first.get_or_insert_with(|| started.elapsed().as_secs_f64());
        ControlFlow::Continue(())
    })?;
    Ok((first.unwrap_or_default(), stats))
}

fn turn_times(model: &LoadedModel, prompt: &[u32], history: usize) -> anyhow::Result<TurnTimes> {
    let tokens = |n: usize, salt: usize| -> Vec<u32> {
        prompt.iter().cycle().skip(salt).take(n).copied().collect()
    };
    let (fresh_short, _) = first_token(
        model,
        &mut model.transformer.new_cache(),
        &tokens(TURN_TOKENS, 7),
        1,
    )?;
    let mut kept = PrefixCache::new(DEFAULT_BUDGET_BYTES);
    let turn_1 = tokens(history, 0);
    let mut cache = kept.take(&model.transformer, &turn_1)?;
    let (_, stats) = first_token(model, &mut cache, &turn_1, 32)?;
    let mut turn_2 = stats.tokens.clone();
    kept.put(stats.tokens, cache);
    turn_2.extend(tokens(TURN_TOKENS, 13));
    let mut cache = kept.take(&model.transformer, &turn_2)?;
    let (reused, stats) = first_token(model, &mut cache, &turn_2, 1)?;
    let (from_scratch, _) = first_token(model, &mut model.transformer.new_cache(), &turn_2, 1)?;
    Ok(TurnTimes {
        fresh_short,
        reused,
        from_scratch,
        cached_tokens: stats.cached_tokens,
    })
}

/// Prompt length of each sequence in the parallel measurement: short, so decoding dominates.
const PARALLEL_PROMPT_TOKENS: usize = 32;

/// Generated tokens per second over all sequences: `n` sequences started together, each
/// with its own short prompt and `gen_tokens` to write, timed from start to the last token.
fn throughput(
    model: &LoadedModel,
    prompt: &[u32],
    n: usize,
    gen_tokens: usize,
) -> anyhow::Result<f64> {
    let transformer = &model.transformer;
    let request = GenerationRequest {
        max_tokens: gen_tokens,
        sampling: SamplingParams::greedy(),
        ..GenerationRequest::default()
    };
    let started = Instant::now();
    let mut seqs = (0..n)
        .map(|i| {
            let own: Vec<u32> = prompt
                .iter()
                .cycle()
                .skip(i * 11)
                .take(PARALLEL_PROMPT_TOKENS)
                .copied()
                .collect();
            Sequence::new(transformer, transformer.new_cache(), &own, &request)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut sinks: Vec<Discard> = (0..n).map(|_| Discard).collect();
    run_all(transformer, &mut seqs, &mut sinks)?;
    let generated: usize = seqs
        .into_iter()
        .map(|s| s.finish().0.generated_tokens)
        .sum();
    Ok(generated as f64 / started.elapsed().as_secs_f64())
}

/// A sink that takes every token.
struct Discard;

impl TokenSink for Discard {
    fn token(&mut self, _: Sampled) -> TokenAction {
        TokenAction::Continue
    }
}

/// Mean time of one mask, in microseconds.
fn mask_us(sink: &Constrained) -> f64 {
    sink.mask_time.as_secs_f64() * 1e6 / sink.masks.max(1) as f64
}

/// A sink that masks every step with a grammar and starts it again after each document.
struct Constrained {
    grammar: Grammar,
    state: GrammarState,
    end_tokens: Vec<u32>,
    documents: usize,
    masks: usize,
    mask_time: Duration,
    failure: Option<String>,
}

impl Constrained {
    fn restart(&mut self) {
        let (n, t) = self.state.mask_stats();
        self.masks += n;
        self.mask_time += t;
        self.state = self.grammar.start();
    }
}

impl TokenSink for Constrained {
    fn constrain(&mut self, logits: &mut [f32]) -> ControlFlow<()> {
        match self.state.mask(logits) {
            Ok(()) => ControlFlow::Continue(()),
            Err(err) => {
                self.failure = Some(err.to_string());
                ControlFlow::Break(())
            }
        }
    }

    fn token(&mut self, token: Sampled) -> TokenAction {
        if self.end_tokens.contains(&token.id) {
            self.documents += 1;
            self.restart();
            return TokenAction::Continue;
        }
        match self.state.advance(token.id) {
            Ok(()) => TokenAction::Continue,
            Err(err) => {
                self.failure = Some(err.to_string());
                TokenAction::Stop
            }
        }
    }
}

/// Generation under a JSON schema: the compiler's build time (s), the run's stats, and the
/// sink with the documents written and the masks' count and time.
fn constrained(
    model: &LoadedModel,
    prompt: &[u32],
    request: &GenerationRequest,
    schema_path: &std::path::Path,
) -> anyhow::Result<(f64, GenerationStats, Constrained)> {
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(schema_path)?)?;
    let started = Instant::now();
    let compiler = GrammarCompiler::new(&model.tokenizer)?;
    let build_s = started.elapsed().as_secs_f64();
    let grammar = compiler.compile(&GrammarSpec::JsonSchema(schema))?;
    let mut sink = Constrained {
        state: grammar.start(),
        grammar,
        end_tokens: model.tokenizer.end_of_generation().to_vec(),
        documents: 0,
        masks: 0,
        mask_time: Duration::ZERO,
        failure: None,
    };
    let mut cache = model.transformer.new_cache();
    let stats = generate_observed(&model.transformer, &mut cache, prompt, request, &mut sink)?;
    if let Some(failure) = sink.failure.take() {
        anyhow::bail!("the constrained run left its grammar: {failure}");
    }
    sink.restart();
    Ok((build_s, stats, sink))
}

/// Bytes streamed in the read-bandwidth probe: well past any cache.
const BANDWIDTH_PROBE_BYTES: usize = 1 << 30;

/// The machine's streaming read bandwidth in GB/s with the kernels' threads (best of 3):
/// the ceiling decode speed is judged against, since decode reads every weight once.
fn read_bandwidth_gbs() -> f64 {
    let words = vec![1u64; BANDWIDTH_PROBE_BYTES / 8];
    let pool = smolbot::inference::kernels::pool::global();
    let threads = pool.threads();
    let mut best = 0f64;
    for _ in 0..3 {
        let sums: Vec<std::sync::atomic::AtomicU64> =
            (0..threads).map(|_| Default::default()).collect();
        let started = Instant::now();
        pool.run(|t| {
            let part = &words[words.len() * t / threads..words.len() * (t + 1) / threads];
            let sum = part.iter().fold(0u64, |a, &w| a.wrapping_add(w));
            sums[t].store(sum, std::sync::atomic::Ordering::Relaxed);
        });
        let secs = started.elapsed().as_secs_f64();
        let total: u64 = sums
            .iter()
            .map(|s| s.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        assert_eq!(total as usize, words.len(), "the probe read every word");
        best = best.max(BANDWIDTH_PROBE_BYTES as f64 / secs / 1e9);
    }
    best
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let device = args.engine.device();
    let started = Instant::now();
    let model = LoadedModel::load(&args.engine.model, &device)?;
    let load_s = started.elapsed().as_secs_f64();
    let load_rss_mb = smolbot::inference::device::peak_rss_bytes().map(|b| b as f64 / 1e6);
    let vocab = model.config.transformer.vocab_size as u64;
    // A fixed pseudo-random prompt over the ordinary part of the vocabulary.
    let prompt: Vec<u32> = (0..args.prompt_tokens as u64)
        .map(|i| ((i * 7919 + 13) % (vocab * 3 / 4)) as u32)
        .collect();
    let request = GenerationRequest {
        max_tokens: args.gen_tokens,
        sampling: SamplingParams::greedy(),
        stop_tokens: Vec::new(),
        ..GenerationRequest::default()
    };
    let mut cache = model.transformer.new_cache();
    let stats = generate(&model.transformer, &mut cache, &prompt, &request, |_| {
        ControlFlow::Continue(())
    })?;
    let schema_run = args
        .json_schema
        .as_deref()
        .map(|path| constrained(&model, &prompt, &request, path))
        .transpose()?;
    let turns = (args.history > 0)
        .then(|| turn_times(&model, &prompt, args.history))
        .transpose()?;
    let parallel = (args.parallel > 0)
        .then(|| -> anyhow::Result<(f64, f64)> {
            let one = throughput(&model, &prompt, 1, args.gen_tokens)?;
            let many = throughput(&model, &prompt, args.parallel, args.gen_tokens)?;
            Ok((one, many))
        })
        .transpose()?;
    let rss_mb = smolbot::inference::device::peak_rss_bytes().map(|b| b as f64 / 1e6);
    let file_mb = std::fs::metadata(&args.engine.model)?.len() as f64 / 1e6;
    let threads = candle_core::utils::get_num_threads();
    let kernels = model.transformer.kernels();
    let cache_type = model.transformer.cache_type().name();
    let weight_mb = model.transformer.packed_bytes() as f64 / 1e6;
    // Measured last, so the probe's gigabyte does not count in the peaks above.
    let bandwidth = read_bandwidth_gbs();
    let cpu = smolbot::inference::device::cpu_model().unwrap_or_default();
    let flags = smolbot::inference::device::simd_flags();
    // Decode reads every weight once per token: the share of the machine's read bandwidth
    // it reaches (known only for our packed kernels, whose bytes we count).
    let read_share =
        (weight_mb > 0.0).then(|| weight_mb / 1e3 * stats.generation_tok_per_s() / bandwidth);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "engine": "smolbot",
                "cpu": cpu,
                "cpu_flags": flags,
                "kernels": kernels,
                "cache_type": cache_type,
                "threads": threads,
                "load_s": load_s,
                "load_peak_rss_mb": load_rss_mb,
                "weights_read_per_token_mb": weight_mb,
                "read_bandwidth_gb_s": bandwidth,
                "decode_share_of_bandwidth": read_share,
                "prompt_tokens": stats.prompt_tokens,
                "prompt_tok_s": stats.prompt_tok_per_s(),
                "gen_tokens": stats.generated_tokens,
                "gen_tok_s": stats.generation_tok_per_s(),
                "peak_rss_mb": rss_mb,
                "file_mb": file_mb,
                "turn2": turns.as_ref().map(|t| serde_json::json!({
                    "history_tokens": args.history,
                    "new_tokens": TURN_TOKENS,
                    "cached_tokens": t.cached_tokens,
                    "ttft_fresh_short_s": t.fresh_short,
                    "ttft_reused_s": t.reused,
                    "ttft_from_scratch_s": t.from_scratch,
                })),
                "json_schema": schema_run.as_ref().map(|(build_s, s, sink)| serde_json::json!({
                    "trie_build_s": build_s,
                    "gen_tokens": s.generated_tokens,
                    "gen_tok_s": s.generation_tok_per_s(),
                    "ratio": s.generation_tok_per_s() / stats.generation_tok_per_s(),
                    "documents": sink.documents,
                    "mask_us_per_token": mask_us(sink),
                })),
                "parallel": parallel.map(|(one, many)| serde_json::json!({
                    "sequences": args.parallel,
                    "prompt_tokens_each": PARALLEL_PROMPT_TOKENS,
                    "one_tok_s": one,
                    "together_tok_s": many,
                    "ratio": many / one,
                })),
            })
        );
    } else {
        println!("cpu:         {cpu} ({})", flags.join(" "));
        println!("kernels:     {kernels}, {threads} threads, KV cache {cache_type}");
        println!("load:        {load_s:.2} s");
        println!(
            "prompt:      {} tokens, {:.1} tok/s",
            stats.prompt_tokens,
            stats.prompt_tok_per_s()
        );
        println!(
            "generation:  {} tokens, {:.2} tok/s",
            stats.generated_tokens,
            stats.generation_tok_per_s()
        );
        if let Some(mb) = rss_mb {
            println!("peak RSS:    {mb:.0} MB (file {file_mb:.0} MB)");
        }
        println!("read bandwidth: {bandwidth:.1} GB/s");
        if let Some(share) = read_share {
            println!(
                "decode reads {weight_mb:.0} MB per token: {:.0}% of the read bandwidth",
                share * 100.0
            );
        }
        if let Some(t) = turns {
            println!(
                "time to first token: fresh {TURN_TOKENS}-token prompt {:.3} s; turn 2 after \
                 {} history tokens: {:.3} s reusing {} cached tokens ({:.2}× the fresh prompt), \
                 {:.3} s from scratch",
                t.fresh_short,
                args.history,
                t.reused,
                t.cached_tokens,
                t.reused / t.fresh_short,
                t.from_scratch
            );
        }
        if let Some((build_s, s, sink)) = &schema_run {
            println!(
                "json schema: {} tokens, {:.2} tok/s ({:.3}× unconstrained), {} documents; \
                 mask {:.0} µs per token; token trie built in {build_s:.2} s",
                s.generated_tokens,
                s.generation_tok_per_s(),
                s.generation_tok_per_s() / stats.generation_tok_per_s(),
                sink.documents,
                mask_us(sink)
            );
        }
        if let Some((one, many)) = parallel {
            println!(
                "parallel:    {} sequences together {many:.2} tok/s in all, one alone \
                 {one:.2} tok/s ({:.2}×)",
                args.parallel,
                many / one
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
