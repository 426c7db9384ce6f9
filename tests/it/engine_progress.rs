//! What a request hears before its first token: its place in line while another generates,
//! then how far its prompt is read.

use crate::common;

use smolbot::services::chat::{ChatMessage, ChatRequest, Role};
use smolbot::services::events::{GenerationEvent, Progress};
use smolbot::services::stub::StubConfig;
use smolbot::services::{BackendSpec, Engine, GenerationStream};

fn ask(engine: &Engine, text: &str) -> GenerationStream {
    let request = ChatRequest {
        messages: vec![ChatMessage::new(Role::User, text)],
        ..ChatRequest::default()
    };
    let chat = engine.codec().prepare(&request).expect("prepared");
    engine.submit(chat).expect("queued")
}

/// Events up to the first one that is not progress.
async fn progress_until_output(stream: &mut GenerationStream) -> Vec<Progress> {
    let mut seen = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            GenerationEvent::Progress(p) => seen.push(p),
            _ => break,
        }
    }
    seen
}

#[tokio::test]
async fn a_waiting_request_learns_its_place_then_its_prefill() {
    let engine = Engine::start(
        BackendSpec::Stub(StubConfig {
            tokens_per_second: 50.0,
            ..StubConfig::default()
        }),
        4,
    )
    .await
    .unwrap();
    let mut first = ask(&engine, "first");
    let first_progress = progress_until_output(&mut first).await;
    assert!(
        matches!(first_progress.last(), Some(Progress::Prefill { done, total, cached: 0 }) if done == total),
        "{first_progress:?}"
    );
    let mut second = ask(&engine, "second");
    let mut third = ask(&engine, "third");
    assert_eq!(engine.queue(), (2, 1));
    assert_eq!(
        second.next().await,
        Some(GenerationEvent::Progress(Progress::Queued { ahead: 1 }))
    );
    assert_eq!(
        third.next().await,
        Some(GenerationEvent::Progress(Progress::Queued { ahead: 2 }))
    );
    drop(first);
    let second_progress = progress_until_output(&mut second).await;
    assert!(
        matches!(second_progress.last(), Some(Progress::Prefill { .. })),
        "{second_progress:?}"
    );
    let third_progress = progress_until_output(&mut third).await;
    assert!(
        third_progress.contains(&Progress::Queued { ahead: 1 }),
        "moved up when the first left: {third_progress:?}"
    );
}

#[tokio::test]
async fn a_long_prompt_reports_each_prefill_step_on_the_real_engine() {
    let engine = common::gguf_engine(common::tiny_model()).await;
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(40);
    let mut stream = ask(&engine, &long);
    let progress = progress_until_output(&mut stream).await;
    let steps: Vec<(usize, usize)> = progress
        .iter()
        .filter_map(|p| match *p {
            Progress::Prefill { done, total, .. } => Some((done, total)),
            Progress::Queued { .. } => None,
        })
        .collect();
    let total = steps[0].1;
    assert!(
        total > 2 * smolbot::inference::generate::PREFILL_STEP,
        "{total}"
    );
    assert_eq!(steps[0].0, 0);
    assert_eq!(steps.last().unwrap().0, total);
    assert!(steps.windows(2).all(|w| w[0].0 < w[1].0), "{steps:?}");
}
