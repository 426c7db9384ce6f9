//! The answer in flight: `GET /chat/stream/{id}` streams a run's log as SSE events of HTML
//! fragments (the [`AnswerWriter`] turns run events into them, and resumes after the
//! browser's `Last-Event-ID`), and `POST /chat/stop/{id}` stops the run. Kept apart from the
//! routes that start answers: these only read (or stop) a run that is already going.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use futures_util::FutureExt;
use minijinja::value::Serde;
use minijinja::{context, Value};

use super::meter::{current as current_meter, Meter};
use super::templates::render;
use super::{from_page, PageError, PageState};
use crate::services::events::{Completion, GenerationEvent, Progress};
use crate::services::runs::{Entry, Run, RunError, RunEvent, Thought};
use crate::services::sessions::{MessageStats, MessageStatus};
use crate::services::tools::is_builtin;
use crate::web::markdown::render_markdown;
use crate::web::transcripts::{continues, end_note, stats_line, EndNote, Ending, ThinkingView};

/// How long Stop waits for the run to save its partial answer before it answers, so the
/// page can send the next message at once; saving takes milliseconds.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Run log entries taken before one Markdown render: a slow client (or one replaying a long
/// answer) gets fewer, larger updates instead of a growing backlog.
const MAX_EVENTS_PER_UPDATE: usize = 64;

/// How long a browser waits before it reconnects a dropped stream, sent as the SSE `retry`
/// field (browsers default to about 3 s): the reconnect carries `Last-Event-ID`, so the
/// page gets the rest of the answer without repeats. `chat.js` gives up after a few tries.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// `POST /chat/stop/{id}`: stops the run and answers once its partial answer is saved and
/// the conversation is free. Stopping a run that just finished is no error: the user
/// wanted it over, and it is.
pub(super) async fn stop(
    State(state): State<PageState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, PageError> {
    from_page(&headers)?;
    let run = state.runs().get(&id).map_err(PageError::from_run)?;
    match run.stop() {
        Ok(()) | Err(RunError::Finished(_)) => {}
        Err(other) => return Err(PageError::from_run(other)),
    }
    if tokio::time::timeout(STOP_WAIT, run.finished())
        .await
        .is_err()
    {
        tracing::warn!("answer {id} did not finish within {STOP_WAIT:?} of its stop");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The entry id the browser saw last (`Last-Event-ID` on a reconnect); 0 for a new stream.
fn last_event_id(headers: &HeaderMap) -> u64 {
    headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

/// `GET /chat/stream/{id}`: the run's answer as SSE events of HTML, from its start or after
/// the browser's `Last-Event-ID`. Leaving cancels nothing; the run goes on without readers.
pub(super) async fn stream(
    State(state): State<PageState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, PageError> {
    let run = state.runs().get(&id).map_err(PageError::from_run)?;
    let writer = AnswerWriter::new(state.clone(), &run, last_event_id(&headers));
    let subscription = run.subscribe(0);
    let conversation = run.conversation().to_owned();
    let events = stream::unfold(Some((subscription, writer)), move |current| {
        let conversation = conversation.clone();
        async move {
            let (mut subscription, mut writer) = current?;
            let mut batch = vec![subscription.next().await?];
            while batch.len() < MAX_EVENTS_PER_UPDATE {
                match subscription.next().now_or_never() {
                    Some(Some(entry)) => batch.push(entry),
                    _ => break,
                }
            }
            // The answer is saved before its end is logged: the meter measures the next prompt.
            if batch.iter().any(|entry| ends_answer(&entry.event)) {
                writer.meter = current_meter(&writer.state, &conversation).await;
            }
            let (events, over) = writer.batch(batch);
            Some((events, (!over).then_some((subscription, writer))))
        }
    })
    .flat_map(|events| stream::iter(events.into_iter().map(Ok::<Event, Infallible>)));
    // A block with only `retry` sets the reconnect delay and is no event.
    let retry = stream::once(async { Ok(Event::default().retry(RECONNECT_DELAY)) });
    Ok(Sse::new(retry.chain(events)).keep_alive(KeepAlive::default()))
}

/// Turns a run's log into SSE events of HTML. Every stream replays the log from its start
/// into a fresh writer, so an answer joined midway renders whole; entries up to the
/// browser's `Last-Event-ID` update the writer but are not sent again.
///
/// The answer's Markdown is sent as it changes, not whole each time (a 650-character answer
/// cost 145 KB of updates that way): blocks that can no longer change (before the last
/// blank line outside a code fence, see [`settle_point`]) are rendered once and appended
/// (`answer-settled`), and only the block still being written is rendered again and
/// replaced (`answer-tail`). Pieces rendered apart can differ from the whole in small ways
/// (a list interrupted by a blank line), so the answer's end sends it whole (`answer`).
///
/// Each entry's last event carries the entry's id; the answer's updates, made once per batch
/// of text, carry the id of the newest text they hold. Which blocks are settled follows from
/// the text alone, so a writer replaying up to the browser's `Last-Event-ID` knows what the
/// browser has. Events without an id (a progress line cleared, a tail after settled blocks,
/// the whole answer at its end) are safe to repeat after a reconnect.
///
/// Each model round (one, or one per round of built-in tool calls) opens a Thinking block
/// when its reasoning starts and closes it with the run's [`Thought`], the numbers stored
/// with the round; the line at the end sums the rounds' stored stats. A reload renders the
/// same numbers through the same templates ([`crate::web::transcripts::views`]).
struct AnswerWriter {
    state: PageState,
    /// The client already has every entry up to this id.
    after: u64,
    /// The waiting line (`exchange.html`'s, then queue or prefill notices) is on the page,
    /// to be cleared by the first token.
    progress_shown: bool,
    /// The reasoning of the round being written.
    reasoning: String,
    /// The round's Thinking block is open on the page and takes its reasoning.
    reasoning_open: bool,
    /// Some round reasoned.
    reasoned: bool,
    /// The stored stats of the rounds written so far.
    rounds: Vec<MessageStats>,
    /// The round being written has text (a later round's text starts a new paragraph).
    round_text: bool,
    content: String,
    /// Bytes of `content` the browser has as settled blocks.
    settled: usize,
    /// The newest text entry not yet rendered into an answer update.
    unrendered: Option<u64>,
    /// The run executes built-in tool calls, so their cards say nothing of "not run".
    runs_tools: bool,
    /// The answer called a tool.
    called: bool,
    /// The context meter once the answer is saved, for its last line.
    meter: Option<Meter>,
}

impl AnswerWriter {
    fn new(state: PageState, run: &Run, after: u64) -> Self {
        Self {
            state,
            after,
            progress_shown: true,
            reasoning: String::new(),
            reasoning_open: false,
            reasoned: false,
            rounds: Vec::new(),
            round_text: false,
            content: String::new(),
            settled: 0,
            unrendered: None,
            runs_tools: run.runs_tools(),
            called: false,
            meter: None,
        }
    }

    /// The SSE events for a batch of log entries, and whether the log is over.
    fn batch(&mut self, entries: Vec<Arc<Entry>>) -> (Vec<Event>, bool) {
        let mut out = Vec::new();
        let mut over = false;
        for entry in entries {
            let text = matches!(
                entry.event,
                RunEvent::Generation(GenerationEvent::Content(_))
            );
            if entry.id > self.after && self.unrendered.is_some_and(|id| id <= self.after) {
                // The browser's state at its `Last-Event-ID`, taken in without sending.
                self.render_answer(&mut out);
            }
            if !text {
                self.render_answer(&mut out);
                if ends_answer(&entry.event) && entry.id > self.after {
                    self.render_whole(&mut out);
                }
            }
            let mut group = Vec::new();
            over |= self.entry(&entry, &mut group);
            if entry.id <= self.after {
                continue;
            }
            if !text {
                if let Some(last) = group.pop() {
                    group.push(last.id(entry.id.to_string()));
                }
            }
            out.extend(group);
        }
        self.render_answer(&mut out);
        (out, over)
    }

    /// The answer's update, when text came since the last one: the blocks settled since,
    /// then the block being written. Up to the browser's `Last-Event-ID` only the writer's
    /// state moves.
    fn render_answer(&mut self, out: &mut Vec<Event>) {
        let Some(id) = self.unrendered.take() else {
            return;
        };
        let cut = settle_point(&self.content).max(self.settled);
        if id > self.after {
            let tail = sse("answer-tail", render_markdown(&self.content[cut..]));
            if cut > self.settled {
                // The id goes on the append, the one event not safe to repeat; a tail
                // replaces what was there, so a reconnect may send it again.
                let settled = render_markdown(&self.content[self.settled..cut]);
                out.push(sse("answer-settled", settled).id(id.to_string()));
                out.push(tail);
            } else {
                out.push(tail.id(id.to_string()));
            }
        }
        self.settled = cut;
    }

    /// The whole answer, rendered at once, replacing its pieces.
    fn render_whole(&mut self, out: &mut Vec<Event>) {
        if !self.content.is_empty() {
            out.push(sse("answer", render_markdown(&self.content)));
        }
    }

    /// Takes one entry into the writer's state and adds its events; true when it is the
    /// log's last.
    fn entry(&mut self, entry: &Entry, out: &mut Vec<Event>) -> bool {
        let event = match &entry.event {
            RunEvent::Saved(_) => return true,
            RunEvent::Generation(GenerationEvent::Progress(progress)) => {
                out.push(sse("progress", progress_html(*progress)));
                self.progress_shown = true;
                return false;
            }
            RunEvent::Stopped => {
                self.clear_progress(out);
                let note = self.note(MessageStatus::Stopped, None);
                out.push(self.done(note));
                return false;
            }
            RunEvent::Thought(thought) => {
                self.close_thinking(*thought, out);
                return false;
            }
            RunEvent::Round(stats) => {
                self.rounds.push(*stats);
                self.reasoning.clear();
                self.reasoning_open = false;
                self.round_text = false;
                return false;
            }
            RunEvent::ToolResult(result) => {
                out.push(self.fragment(
                    "tool",
                    "tool_result.html",
                    context! {
                        name => result.name.as_str(),
                        content => result.content.as_str(),
                        is_error => result.is_error,
                    },
                ));
                return false;
            }
            RunEvent::Generation(event) => event,
        };
        self.clear_progress(out);
        match event {
            GenerationEvent::Reasoning(text) => {
                self.reasoning.push_str(text);
                if self.reasoning_open {
                    out.push(sse("reasoning", escape_span(text)));
                } else if !self.reasoning.trim().is_empty() {
                    // The round's reasoning starts (the pieces before were only spaces).
                    self.reasoning_open = true;
                    self.reasoned = true;
                    out.push(self.fragment(
                        "step",
                        "thinking_live.html",
                        context! { first => escape_span(&self.reasoning) },
                    ));
                }
            }
            GenerationEvent::Content(text) => {
                if !self.round_text && !self.content.is_empty() {
                    self.content.push_str("\n\n");
                }
                self.round_text = true;
                self.content.push_str(text);
                self.unrendered = Some(entry.id);
            }
            GenerationEvent::ToolCall(call) => {
                self.called = true;
                let arguments = serde_json::to_string_pretty(&call.arguments)
                    .unwrap_or_else(|_| call.arguments.to_string());
                out.push(self.fragment(
                    "tool",
                    "tool_call.html",
                    context! {
                        name => call.name.as_str(),
                        arguments => arguments,
                        ran => self.runs_tools && is_builtin(&call.name),
                    },
                ));
            }
            GenerationEvent::Done(done) => {
                let note = self.note(MessageStatus::Complete, Some(done));
                out.push(self.done(note));
            }
            GenerationEvent::Failed(message) => {
                out.push(self.fragment("failed", "failed.html", context! { message => message }));
                let note = self.note(MessageStatus::Failed, None);
                out.push(self.done(note));
            }
            GenerationEvent::Progress(_) => {}
        }
        false
    }

    fn clear_progress(&mut self, out: &mut Vec<Event>) {
        if std::mem::take(&mut self.progress_shown) {
            out.push(sse("progress", "<span></span>".to_owned()));
        }
    }

    /// Collapses the round's Thinking block into its finished form, with the numbers the
    /// run stored (appended instead, should the block not be open).
    fn close_thinking(&mut self, thought: Thought, out: &mut Vec<Event>) {
        let Some(view) = ThinkingView::new(&self.reasoning, Some(thought.ms), Some(thought.tokens))
        else {
            return;
        };
        let event = if std::mem::take(&mut self.reasoning_open) {
            "thinking"
        } else {
            "step"
        };
        out.push(self.fragment(event, "thinking.html", context! { t => Serde(&view) }));
    }

    /// The label for an answer that ends as `status` (with `done`, when the model finished),
    /// worded as a reload words it.
    fn note(&self, status: MessageStatus, done: Option<&Completion>) -> Option<EndNote> {
        end_note(Ending {
            status,
            finish_reason: done.map(|done| done.finish_reason.as_str()),
            context_full: done.is_some_and(|done| {
                done.usage.prompt_tokens + done.usage.completion_tokens
                    >= self.state.context_length()
            }),
            empty: self.content.trim().is_empty() && !self.called,
            reasoned: self.reasoned,
        })
    }

    /// The line that ends the answer, with the context meter as it now stands (out of band).
    fn done(&self, note: Option<EndNote>) -> Event {
        let stats = stats_line(&self.rounds);
        let meter = self.meter.as_ref();
        let written = !(self.content.trim().is_empty() && self.reasoning.trim().is_empty());
        let continuable =
            note.as_ref().is_some_and(|note| continues(note.kind)) && written && !self.called;
        let html = render(
            "done.html",
            context! { note => Serde(note), stats => stats, markdown => self.content.trim(), continuable => continuable },
        )
        .and_then(|mut html| {
            if let Some(meter) = meter {
                html.push_str(&render(
                    "meter.html",
                    context! { meter => Serde(&meter), oob => true },
                )?);
            }
            Ok(html)
        });
        sse("done", self.html_or_note("done.html", html))
    }

    /// An SSE event carrying a rendered template.
    fn fragment(&self, event: &str, template: &str, ctx: Value) -> Event {
        sse(event, self.html_or_note(template, render(template, ctx)))
    }

    /// A template failure becomes a visible note rather than a missing piece.
    fn html_or_note(&self, template: &str, html: Result<String, minijinja::Error>) -> String {
        html.unwrap_or_else(|err| {
            tracing::error!("page template {template} failed: {err:#}");
            "<p class=\"failure-text\">This part of the answer could not be shown.</p>".into()
        })
    }
}

/// Whether `event` ends the answer (it is over, stopped or failed), so it is sent whole.
fn ends_answer(event: &RunEvent) -> bool {
    matches!(
        event,
        RunEvent::Stopped
            | RunEvent::Generation(GenerationEvent::Done(_) | GenerationEvent::Failed(_))
    )
}

/// Where Markdown `text` may be cut so that what comes before renders alike whatever is
/// written after it: just after its last blank line outside a fenced code block (0 if none).
/// A block ends at a blank line; a fence does not, so one left open keeps the rest in play.
fn settle_point(text: &str) -> usize {
    let mut fence: Option<(u8, usize)> = None;
    let mut cut = 0;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if !line.ends_with('\n') {
            break;
        }
        at += line.len();
        let trimmed = line.trim_start_matches(' ');
        if line.len() - trimmed.len() < 4 {
            let marker = trimmed.bytes().next().filter(|b| *b == b'`' || *b == b'~');
            if let Some(marker) = marker {
                let run = trimmed.bytes().take_while(|b| *b == marker).count();
                match fence {
                    None if run >= 3 => fence = Some((marker, run)),
                    Some((open, len))
                        if open == marker && run >= len && trimmed[run..].trim().is_empty() =>
                    {
                        fence = None;
                    }
                    _ => {}
                }
            }
        }
        if fence.is_none() && line.trim().is_empty() {
            cut = at;
        }
    }
    cut
}

/// Where a waiting answer stands, for its status line.
fn progress_html(progress: Progress) -> String {
    let n = |v: usize| crate::services::error::thousands(v);
    match progress {
        Progress::Queued { ahead } => format!(
            "<span>Waiting for the model: {ahead} request{} ahead</span>",
            if ahead == 1 { "" } else { "s" }
        ),
        Progress::Prefill {
            done,
            total,
            cached,
        } => format!(
            "<span>Reading the prompt: {} / {} tokens{}</span>",
            n(done),
            n(total),
            if cached > 0 {
                format!(", {} reused", n(cached))
            } else {
                String::new()
            }
        ),
    }
}

fn sse(event: &str, html: String) -> Event {
    Event::default().event(event).data(html)
}

/// A reasoning delta as an escaped `<span>`, so whitespace-only pieces survive the swap.
fn escape_span(text: &str) -> String {
    format!("<span>{}</span>", crate::web::markdown::escape(text))
}

#[cfg(test)]
mod tests {
    use super::{escape_span, settle_point};

    #[test]
    fn settled_blocks_end_at_a_blank_line_outside_fences() {
        assert_eq!(settle_point("one line"), 0);
        assert_eq!(settle_point("para\n\nnext"), "para\n\n".len());
        let fenced = "intro\n\n```rust\nlet a = 1;\n\nlet b = 2;\n";
        assert_eq!(settle_point(fenced), "intro\n\n".len(), "open fence");
        let closed = "```\nx\n\n```\n\nafter";
        assert_eq!(settle_point(closed), closed.len() - "after".len());
        assert_eq!(
            settle_point("~~~~\n```\n\n"),
            0,
            "a shorter other fence closes nothing"
        );
        assert_eq!(settle_point("a\n\n    ```\n\nb"), "a\n\n    ```\n\n".len());
    }

    #[test]
    fn reasoning_pieces_are_escaped() {
        assert_eq!(
            escape_span("<b>&\"'"),
            "<span>&lt;b&gt;&amp;&quot;&#39;</span>"
        );
        assert_eq!(escape_span(" "), "<span> </span>");
    }
}
