//! Several sequences decoding together give each the tokens it gets alone: the batched
//! forward pass against the solo one, whole greedy generations on the real SmolLM2 (alone
//! and through the engine), and a long prompt that does not stall the others.

use crate::common;

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::Device;
use common::*;
use smolbot::inference::generate::{
    generate_with, GenerationRequest, PrefillProgress, Sampled, TokenAction, TokenSink,
    PREFILL_STEP,
};
use smolbot::inference::sampling::SamplingParams;
use smolbot::inference::sequence::{run_all, step, Sequence};
use smolbot::inference::Transformer;
use smolbot::services::chat::{ChatMessage, ChatRequest, Role, Sampling, TokenLimit};
use smolbot::services::events::{FinishReason, GenerationEvent};
use smolbot::services::{BackendSpec, Engine, EngineLimits, GenerationStream};
use smolbot::smollm3::LoadedModel;

/// Keeps the sampled ids.
#[derive(Default)]
struct Ids(Vec<u32>);

impl TokenSink for Ids {
    fn token(&mut self, token: Sampled) -> TokenAction {
        self.0.push(token.id);
        TokenAction::Continue
    }
}

fn greedy(max_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        max_tokens,
        sampling: SamplingParams::greedy(),
        ..GenerationRequest::default()
    }
}

fn solo(model: &Transformer, prompt: &[u32], request: &GenerationRequest) -> Vec<u32> {
    let mut cache = model.new_cache();
    let mut ids = Vec::new();
    generate_with(model, &mut cache, prompt, request, |id| {
        ids.push(id);
        TokenAction::Continue
    })
    .unwrap();
    ids
}

/// Runs the prompts as one batch of sequences until all are finished.
fn together(model: &Transformer, jobs: &[(Vec<u32>, GenerationRequest)]) -> Vec<(Vec<u32>, usize)> {
    let mut seqs: Vec<Sequence> = jobs
        .iter()
        .map(|(prompt, request)| Sequence::new(model, model.new_cache(), prompt, request).unwrap())
        .collect();
    let mut sinks: Vec<Ids> = jobs.iter().map(|_| Ids::default()).collect();
    run_all(model, &mut seqs, &mut sinks).unwrap();
    seqs.into_iter()
        .zip(sinks)
        .map(|(seq, ids)| {
            let (stats, cache) = seq.finish();
            assert_eq!(
                stats.tokens.len(),
                cache.len(),
                "the cache holds what was fed"
            );
            (ids.0, stats.generated_tokens)
        })
        .collect()
}

#[test]
fn a_batched_step_gives_each_row_the_solo_logits() {
    let model = LoadedModel::load(tiny_model(), &Device::Cpu).unwrap();
    let t = &model.transformer;
    let prompts: [Vec<u32>; 3] = [(5..9).collect(), (40..61).collect(), vec![7]];
    let next = [11u32, 12, 13];
    let mut solo_rows = Vec::new();
    for (prompt, &id) in prompts.iter().zip(&next) {
        let mut cache = t.new_cache();
        t.forward(prompt, &mut cache, false).unwrap();
        let row: Vec<f32> = t
            .forward(&[id], &mut cache, false)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        solo_rows.push(row);
    }
    let mut caches: Vec<_> = prompts
        .iter()
        .map(|prompt| {
            let mut cache = t.new_cache();
            t.forward(prompt, &mut cache, false).unwrap();
            cache
        })
        .collect();
    let mut refs: Vec<_> = caches.iter_mut().collect();
    let rows: Vec<Vec<f32>> = t
        .forward_batch(&next, &mut refs)
        .unwrap()
        .to_vec2()
        .unwrap();
    assert_eq!(rows.len(), 3);
    for (i, (batched, alone)) in rows.iter().zip(&solo_rows).enumerate() {
        let worst = batched
            .iter()
            .zip(alone)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "row {i} differs from its solo run by {worst}");
    }
    for (cache, prompt) in caches.iter().zip(&prompts) {
        assert_eq!(cache.len(), prompt.len() + 1);
    }
    let mut mismatched = [&mut caches[0]];
    assert!(
        t.forward_batch(&next, &mut mismatched).is_err(),
        "one token per cache"
    );
}

#[test]
fn four_greedy_generations_together_match_each_run_alone_on_smollm2() {
    let model = LoadedModel::load(&smollm2_model(), &Device::Cpu).unwrap();
    let t = &model.transformer;
    let encode = |text: &str| model.tokenizer.encode(text, false).unwrap();
    let jobs = vec![
        (encode("The capital of France is"), greedy(12)),
        (
            encode("Once upon a time, in a small village by the sea,"),
            greedy(20),
        ),
        (encode("1, 2, 3, 4,"), greedy(6)),
        (encode("Water boils at"), greedy(16)),
    ];
    let batched = together(t, &jobs);
    for ((prompt, request), (ids, generated)) in jobs.iter().zip(&batched) {
        let alone = solo(t, prompt, request);
        assert_eq!(
            ids, &alone,
            "prompt {prompt:?}: batched tokens equal solo tokens"
        );
        assert_eq!(*generated, alone.len());
        assert_eq!(
            alone.len(),
            request.max_tokens,
            "no early end token in these prompts"
        );
    }
}

/// Records what a sequence saw, in the order of the rounds.
#[derive(Default)]
struct Watch {
    prefilled: Vec<usize>,
    tokens: usize,
}

impl TokenSink for Watch {
    fn prefilled(&mut self, progress: PrefillProgress) -> ControlFlow<()> {
        self.prefilled.push(progress.done);
        ControlFlow::Continue(())
    }

    fn token(&mut self, _: Sampled) -> TokenAction {
        self.tokens += 1;
        TokenAction::Continue
    }
}

#[test]
fn a_long_prompt_is_read_a_step_per_round_while_the_others_keep_writing() {
    let model = LoadedModel::load(tiny_model(), &Device::Cpu).unwrap();
    let t = &model.transformer;
    let short: Vec<u32> = (20..30).collect();
    let long: Vec<u32> = (0..3 * PREFILL_STEP as u32 + 5)
        .map(|i| 100 + i % 50)
        .collect();
    let mut writer = Sequence::new(t, t.new_cache(), &short, &greedy(50)).unwrap();
    let mut writer_sink = Watch::default();
    while writer_sink.tokens == 0 {
        step(
            t,
            &mut [(&mut writer, &mut writer_sink as &mut dyn TokenSink)],
        )
        .unwrap();
    }
    let mut reader = Sequence::new(t, t.new_cache(), &long, &greedy(5)).unwrap();
    let mut reader_sink = Watch::default();
    let mut tokens_per_round = Vec::new();
    while reader.is_prefilling() {
        let before = writer_sink.tokens;
        step(
            t,
            &mut [
                (&mut writer, &mut writer_sink as &mut dyn TokenSink),
                (&mut reader, &mut reader_sink as &mut dyn TokenSink),
            ],
        )
        .unwrap();
        tokens_per_round.push(writer_sink.tokens - before);
    }
    assert_eq!(
        reader_sink.prefilled,
        vec![0, 128, 256, 384, 389],
        "the long prompt is read one step per round"
    );
    assert_eq!(
        tokens_per_round,
        vec![1; 4],
        "the writer got a token every round"
    );
}

#[tokio::test]
async fn four_chats_sent_at_once_run_together_and_answer_as_each_alone_on_smollm2() {
    let questions = [
        "What is the capital of France?",
        "Name a primary colour.",
        "What is 2 + 2?",
        "Say hello in Spanish.",
    ];
    let spec = BackendSpec::Gguf {
        path: smollm2_model(),
        force_cpu: true,
        alias: None,
        context: Default::default(),
    };
    let limits = |parallel| EngineLimits {
        queue_capacity: 8,
        parallel,
        ..EngineLimits::default()
    };
    let together = Engine::start_with(spec.clone(), limits(4)).await.unwrap();
    let mut streams: Vec<_> = questions.iter().map(|q| ask(&together, q)).collect();
    let collected = futures_util::future::join_all(streams.iter_mut().map(collect)).await;
    let first_token = collected.iter().map(|c| c.first_token).max().unwrap();
    let first_done = collected.iter().map(|c| c.done).min().unwrap();
    assert!(
        first_token < first_done,
        "every chat wrote before any finished: they ran together"
    );

    let alone = Engine::start_with(spec, limits(1)).await.unwrap();
    for (question, batched) in questions.iter().zip(&collected) {
        let single = collect(&mut ask(&alone, question)).await;
        // Ten tokens and cut by the limit, or fewer and ended by the model: never neither.
        assert!(single.completion_tokens > 0, "{question}: no token");
        assert_eq!(
            single.finish_reason == FinishReason::Length,
            single.completion_tokens == 10,
            "{question}: {} tokens, finish {:?}",
            single.completion_tokens,
            single.finish_reason
        );
        assert_eq!(batched.completion_tokens, single.completion_tokens);
        assert_eq!(
            batched.ids, single.ids,
            "{question}: the same tokens together and alone"
        );
        assert_eq!(batched.ids.len(), single.completion_tokens);
        assert_eq!(batched.finish_reason, single.finish_reason);
        assert_eq!(
            batched.text, single.text,
            "{question}: same answer together and alone"
        );
    }
    let answers: std::collections::HashSet<&str> =
        collected.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(
        answers.len(),
        questions.len(),
        "each chat answered its own question: {answers:?}"
    );
}

fn ask(engine: &Engine, text: &str) -> GenerationStream {
    let request = ChatRequest {
        messages: vec![ChatMessage::new(Role::User, text)],
        max_tokens: Some(TokenLimit {
            field: "max_tokens",
            value: 10,
        }),
        sampling: Sampling::greedy(),
        // Logprobs carry each generated token's id, so answers compare token for token.
        logprobs: Some(0),
        ..ChatRequest::default()
    };
    let chat = engine.codec().prepare(&request).expect("prepared");
    engine.submit(chat).expect("queued")
}

/// A chat's answer text and token ids, how it ended, and when its first token and its end
/// arrived.
struct Collected {
    text: String,
    ids: Vec<u32>,
    completion_tokens: usize,
    finish_reason: FinishReason,
    first_token: Instant,
    done: Instant,
}

async fn collect(stream: &mut GenerationStream) -> Collected {
    let mut text = String::new();
    let mut first_token = None;
    let completion = loop {
        match stream.next().await.expect("the stream ends with Done") {
            GenerationEvent::Content(piece) | GenerationEvent::Reasoning(piece) => {
                first_token.get_or_insert_with(Instant::now);
                text.push_str(&piece);
            }
            GenerationEvent::Done(completion) => break completion,
            GenerationEvent::Failed(err) => panic!("generation failed: {err}"),
            _ => {}
        }
    };
    let ids = completion
        .logprobs
        .as_ref()
        .expect("logprobs were asked for")
        .generated
        .iter()
        .map(|token| token.id)
        .collect();
    Collected {
        text,
        ids,
        completion_tokens: completion.usage.completion_tokens,
        finish_reason: completion.finish_reason,
        first_token: first_token.expect("some text"),
        done: Instant::now(),
    }
}
