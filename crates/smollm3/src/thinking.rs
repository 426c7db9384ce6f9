//! Splitting SmolLM3's streamed output into reasoning and answer.
//!
//! In thinking mode SmolLM3 writes `<think>` first, its reasoning, `</think>`, then the
//! answer; a chat client wants the two apart, and wants them as they are generated. The
//! decoder hands over text a piece at a time, and a tag may arrive split across pieces
//! (`"<th"` then `"ink>"`), so [`ThinkingParser`] holds back just the end of the text that
//! could still turn out to be a tag and emits everything else at once.
//!
//! The rules: `<think>` opens reasoning only at the very start of the output (in
//! no-thinking mode the template has already written an empty think block into the prompt,
//! and the model's output is all answer); the first `</think>` closes it, after which every
//! byte is answer, tags included; an unclosed block is reasoning to the end. The tags
//! themselves are not emitted; all other text is, exactly once and in order (the newline
//! SmolLM3 puts after `</think>` is part of the answer, left for the caller to trim).

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// A run of generated text, sorted by where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThinkingEvent {
    /// Text inside `<think>…</think>`.
    Reasoning(String),
    /// Text outside it.
    Answer(String),
}

/// Where the parser stands in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing decided yet: the output may still begin with `<think>`.
    Start,
    /// Inside the think block.
    Reasoning,
    /// After it, or with no think block at all.
    Answer,
}

/// A streaming splitter of generated text into [`ThinkingEvent`]s; feed it every decoded
/// piece with [`push`](Self::push), then call [`finish`](Self::finish) once.
#[derive(Debug, Clone)]
pub struct ThinkingParser {
    phase: Phase,
    /// Text received but not yet emitted: at most a proper prefix of the tag awaited.
    held: String,
}

impl Default for ThinkingParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ThinkingParser {
    /// A parser for output that opens its reasoning with `<think>` itself, as SmolLM3's does.
    pub fn new() -> Self {
        Self {
            phase: Phase::Start,
            held: String::new(),
        }
    }

    /// A parser for output whose `<think>` was already written by the prompt, so it starts
    /// inside the reasoning (templates of some other models end the prompt that way).
    pub fn in_reasoning() -> Self {
        Self {
            phase: Phase::Reasoning,
            held: String::new(),
        }
    }

    /// A parser for output that goes on with an answer already begun (a continued turn), so
    /// all of it is answer, whatever it starts with.
    pub fn in_answer() -> Self {
        Self {
            phase: Phase::Answer,
            held: String::new(),
        }
    }

    /// Whether the output so far is inside the think block (open and not yet closed).
    pub fn is_reasoning(&self) -> bool {
        self.phase == Phase::Reasoning
    }

    /// After [`finish`](Self::finish): the output ended inside `<think>`, so all of it after
    /// the tag is reasoning and the model never answered.
    pub fn unterminated(&self) -> bool {
        self.phase == Phase::Reasoning
    }

    /// Takes the next decoded piece and returns what can now be told apart, with runs of
    /// the same kind merged and no empty events.
    pub fn push(&mut self, piece: &str) -> Vec<ThinkingEvent> {
        let mut events = Vec::new();
        self.held.push_str(piece);
        loop {
            match self.phase {
                Phase::Start => {
                    if let Some(rest) = self.held.strip_prefix(OPEN) {
                        self.held = rest.to_owned();
                        self.phase = Phase::Reasoning;
                    } else if OPEN.starts_with(self.held.as_str()) {
                        return events;
                    } else {
                        self.phase = Phase::Answer;
                    }
                }
                Phase::Reasoning => {
                    if let Some(at) = self.held.find(CLOSE) {
                        let rest = self.held.split_off(at + CLOSE.len());
                        self.held.truncate(at);
                        emit(
                            &mut events,
                            ThinkingEvent::Reasoning(std::mem::take(&mut self.held)),
                        );
                        self.held = rest;
                        self.phase = Phase::Answer;
                    } else {
                        let keep = partial_tag_len(&self.held, CLOSE);
                        let held = self.held.split_off(self.held.len() - keep);
                        emit(
                            &mut events,
                            ThinkingEvent::Reasoning(std::mem::replace(&mut self.held, held)),
                        );
                        return events;
                    }
                }
                Phase::Answer => {
                    emit(
                        &mut events,
                        ThinkingEvent::Answer(std::mem::take(&mut self.held)),
                    );
                    return events;
                }
            }
        }
    }

    /// Ends the output: whatever was held back (the start of a tag that never completed)
    /// is text after all, emitted as the kind it stood in.
    pub fn finish(&mut self) -> Vec<ThinkingEvent> {
        let held = std::mem::take(&mut self.held);
        let mut events = Vec::new();
        match self.phase {
            Phase::Reasoning => emit(&mut events, ThinkingEvent::Reasoning(held)),
            Phase::Start | Phase::Answer => {
                self.phase = Phase::Answer;
                emit(&mut events, ThinkingEvent::Answer(held));
            }
        }
        events
    }
}

/// Splits a complete output into its reasoning (`None` when there was no think block) and
/// its answer.
pub fn split_thinking(output: &str) -> (Option<String>, String) {
    let mut parser = ThinkingParser::new();
    let mut events = parser.push(output);
    events.extend(parser.finish());
    let mut reasoning = None;
    let mut answer = String::new();
    for event in events {
        match event {
            ThinkingEvent::Reasoning(text) => {
                reasoning.get_or_insert_with(String::new).push_str(&text)
            }
            ThinkingEvent::Answer(text) => answer.push_str(&text),
        }
    }
    if reasoning.is_none() && output.starts_with(OPEN) {
        reasoning = Some(String::new());
    }
    (reasoning, answer)
}

/// Appends `event` unless empty, merging it into the last event when of the same kind.
fn emit(events: &mut Vec<ThinkingEvent>, event: ThinkingEvent) {
    match (events.last_mut(), event) {
        (_, ThinkingEvent::Reasoning(text) | ThinkingEvent::Answer(text)) if text.is_empty() => {}
        (Some(ThinkingEvent::Reasoning(last)), ThinkingEvent::Reasoning(text)) => {
            last.push_str(&text)
        }
        (Some(ThinkingEvent::Answer(last)), ThinkingEvent::Answer(text)) => last.push_str(&text),
        (_, event) => events.push(event),
    }
}

/// Length of the longest end of `text` that is a proper start of `tag` — the bytes that
/// must wait for the next piece. Tags are ASCII, so the cut falls on a char boundary.
pub(crate) fn partial_tag_len(text: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&len| text.ends_with(&tag[..len]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasoning(text: &str) -> ThinkingEvent {
        ThinkingEvent::Reasoning(text.into())
    }

    fn answer(text: &str) -> ThinkingEvent {
        ThinkingEvent::Answer(text.into())
    }

    /// Feeds `pieces` one by one and returns every event, merged.
    fn run(pieces: &[&str]) -> Vec<ThinkingEvent> {
        let mut parser = ThinkingParser::new();
        let mut events = Vec::new();
        for piece in pieces {
            for event in parser.push(piece) {
                emit(&mut events, event);
            }
        }
        for event in parser.finish() {
            emit(&mut events, event);
        }
        events
    }

    #[test]
    fn whole_output_with_think_block() {
        assert_eq!(
            run(&["<think>\nLet me add.\n</think>\n2 + 2 = 4"]),
            vec![reasoning("\nLet me add.\n"), answer("\n2 + 2 = 4")]
        );
    }

    #[test]
    fn output_without_think_block_is_all_answer() {
        assert_eq!(run(&["Hello", " there"]), vec![answer("Hello there")]);
        assert_eq!(
            run(&["Hi <think>not a tag</think>"]),
            vec![answer("Hi <think>not a tag</think>")]
        );
        assert_eq!(run(&["<thought>"]), vec![answer("<thought>")]);
    }

    #[test]
    fn tags_split_across_pieces() {
        assert_eq!(
            run(&["<th", "ink>", "hmm</", "thi", "nk>", "ok"]),
            vec![reasoning("hmm"), answer("ok")]
        );
    }

    #[test]
    fn events_come_as_soon_as_they_are_certain() {
        let mut parser = ThinkingParser::new();
        assert_eq!(parser.push("<th"), vec![]);
        assert_eq!(parser.push("ink>a"), vec![reasoning("a")]);
        assert!(parser.is_reasoning());
        assert_eq!(parser.push("b <"), vec![reasoning("b ")]);
        assert_eq!(parser.push("x"), vec![reasoning("<x")]);
        assert_eq!(parser.push("</think"), vec![]);
        assert_eq!(parser.push(">\nAnswer"), vec![answer("\nAnswer")]);
        assert!(!parser.is_reasoning());
        assert_eq!(parser.push(" <"), vec![answer(" <")]);
        assert_eq!(parser.finish(), vec![]);
    }

    #[test]
    fn unclosed_think_block_is_reasoning_to_the_end() {
        let mut parser = ThinkingParser::new();
        assert_eq!(
            parser.push("<think>still going </thi"),
            vec![reasoning("still going ")]
        );
        assert_eq!(parser.finish(), vec![reasoning("</thi")]);
        assert!(parser.unterminated());
        let mut closed = ThinkingParser::new();
        closed.push("<think>a</think>b");
        closed.finish();
        assert!(!closed.unterminated());
        assert_eq!(
            split_thinking("<think>a"),
            (Some("a".into()), String::new())
        );
    }

    #[test]
    fn unfinished_open_tag_at_the_end_is_answer() {
        assert_eq!(run(&["<thi"]), vec![answer("<thi")]);
        assert_eq!(run(&[]), vec![]);
    }

    #[test]
    fn parser_that_starts_in_reasoning() {
        let mut parser = ThinkingParser::in_reasoning();
        let mut events = parser.push("plan</think>done");
        events.extend(parser.finish());
        assert_eq!(events, vec![reasoning("plan"), answer("done")]);
    }

    #[test]
    fn only_the_first_close_tag_counts() {
        assert_eq!(
            run(&["<think>a</think>b</think><think>c"]),
            vec![reasoning("a"), answer("b</think><think>c")]
        );
    }

    #[test]
    fn char_by_char_equals_whole() {
        let outputs = [
            "<think>\nLet me think about 日本 👋 carefully.\n</think>\nAnswer: <b>42</b> </thin",
            "<think></think>",
            "<think><think></thinking></think>x",
            "Plain answer with < and </think> and <think>",
            "<think>never closed <",
            "<thin",
            "<",
            "",
        ];
        for output in outputs {
            let whole = run(&[output]);
            let chars: Vec<String> = output.chars().map(String::from).collect();
            let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
            assert_eq!(run(&pieces), whole, "output {output:?}");
        }
    }

    #[test]
    fn nothing_dropped_or_duplicated() {
        let output = "<think>a<b</think</think>c<</think>d";
        let events = run(&["<think>a<", "b</th", "ink</th", "ink>c<", "</think>d"]);
        assert_eq!(events, vec![reasoning("a<b</think"), answer("c<</think>d")]);
        assert_eq!(events, run(&[output]));
    }

    #[test]
    fn split_thinking_of_complete_outputs() {
        assert_eq!(
            split_thinking("<think>r</think>\na"),
            (Some("r".into()), "\na".into())
        );
        assert_eq!(
            split_thinking("<think></think>a"),
            (Some(String::new()), "a".into())
        );
        assert_eq!(split_thinking("just text"), (None, "just text".into()));
    }

    #[test]
    fn partial_tag_len_finds_the_longest_proper_prefix() {
        assert_eq!(partial_tag_len("abc</thi", CLOSE), 5);
        assert_eq!(partial_tag_len("abc<", CLOSE), 1);
        assert_eq!(partial_tag_len("abc", CLOSE), 0);
        assert_eq!(partial_tag_len("</think>", CLOSE), 0);
        assert_eq!(partial_tag_len("日本<", CLOSE), 1);
    }
}
