//! `--engine openai`: the model runs on other servers that speak OpenAI's API (vLLM, TGI,
//! llama.cpp's server, other smolbots), and this one keeps the rest — template, limits,
//! reply parsing, conversations, pages.
//!
//! Each request's prompt is rendered and checked here exactly as for the local model, sent
//! as text to the remote's `/v1/completions` with `stream: true`, and the streamed text goes
//! through the same [`ReplyParser`] as local tokens do, so reasoning, tool calls and stop
//! strings are read by smolbot whatever the remote is. Requests go to the server with the
//! fewest in flight ([`balancer`]); one that fails before its first text is sent to another
//! one, and a server that keeps failing is shut off for a while by its circuit breaker.

pub mod balancer;
mod chat_fallback;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use self::balancer::{Balancer, BreakerPolicy, Outcome};
use super::chat::{ChatCodec, ChatRequest, PreparedChat};
use super::error::ServiceError;
use super::events::{
    Completion, FinishReason, GenerationEvent, Progress, ReplyOptions, ReplyParser, Timings, Usage,
};
use super::metrics::{GenerationRecord, Metrics};

/// How long a remote may take to start its answer, or to send its next piece, by default:
/// longer than any prompt takes to read on a GPU server, short enough that a hung server
/// is left for another within a couple of minutes.
pub const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(120);

/// How often each remote's health is checked by default.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// Longest a health check may take: a server that cannot answer `/health` in this long is
/// in no state to take requests.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes of a remote's error body kept for the message.
const ERROR_BODY_LIMIT: usize = 500;

/// Where the remotes are and how to treat them.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Base URLs (`http://host:8000`, with or without a trailing `/v1`).
    pub urls: Vec<String>,
    /// Sent as `Authorization: Bearer KEY` to every remote.
    pub api_key: Option<String>,
    /// The `model` to ask for; the first remote's `/v1/models` entry when `None`.
    pub model: Option<String>,
    /// [`DEFAULT_REMOTE_TIMEOUT`].
    pub timeout: Duration,
    /// [`DEFAULT_HEALTH_INTERVAL`].
    pub health_interval: Duration,
    pub breaker: BreakerPolicy,
}

impl RemoteConfig {
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            api_key: None,
            model: None,
            timeout: DEFAULT_REMOTE_TIMEOUT,
            health_interval: DEFAULT_HEALTH_INTERVAL,
            breaker: BreakerPolicy::default(),
        }
    }
}

/// One remote's state, for `/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteStatus {
    pub url: String,
    pub healthy: bool,
    /// `closed`, `open` or `half-open`.
    pub breaker: &'static str,
    pub in_flight: usize,
    pub requests: u64,
    pub failures: u64,
}

/// The remotes, their health and the HTTP client that reaches them.
pub struct RemotePool {
    urls: Vec<String>,
    api_key: Option<String>,
    model: Option<String>,
    timeout: Duration,
    client: reqwest::Client,
    balancer: Mutex<Balancer>,
    /// Per remote: it answered 404 or 405 to `/v1/completions`, so chats go to its
    /// `/v1/chat/completions` ([`chat_fallback`]).
    chat_only: Vec<AtomicBool>,
}

/// `http://host:8000/v1/` → `http://host:8000`.
pub fn base_url(url: &str) -> String {
    let trimmed = url.trim().trim_end_matches('/');
    trimmed.strip_suffix("/v1").unwrap_or(trimmed).to_owned()
}

impl RemotePool {
    /// Checks every remote once, finds the model name if none was given, and starts the
    /// background health checks (which end when the pool is dropped).
    pub async fn start(config: RemoteConfig) -> Result<Arc<Self>, ServiceError> {
        let urls: Vec<String> = config.urls.iter().map(|u| base_url(u)).collect();
        if urls.is_empty() {
            return Err(ServiceError::InvalidParameter {
                field: "engine-url",
                problem: "must name at least one server with --engine openai".into(),
            });
        }
        if let Some(bad) = urls
            .iter()
            .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return Err(ServiceError::InvalidParameter {
                field: "engine-url",
                problem: format!("`{bad}` is not an http:// or https:// URL"),
            });
        }
        let client = reqwest::Client::builder()
            .connect_timeout(config.timeout.min(HEALTH_TIMEOUT))
            .build()
            .map_err(|err| ServiceError::Generation(format!("cannot start HTTP client: {err}")))?;
        let mut pool = Self {
            balancer: Mutex::new(Balancer::new(&urls, config.breaker)),
            chat_only: urls.iter().map(|_| AtomicBool::new(false)).collect(),
            urls,
            api_key: config.api_key.filter(|k| !k.is_empty()),
            model: config.model.filter(|m| !m.is_empty()),
            timeout: config.timeout,
            client,
        };
        pool.check_health().await;
        if pool.model.is_none() {
            pool.model = pool.discover_model().await;
        }
        match &pool.model {
            Some(model) => tracing::info!("remote engine: asking for model `{model}`"),
            None => tracing::warn!("remote engine: no remote listed a model; sending none"),
        }
        let pool = Arc::new(pool);
        tokio::spawn(health_loop(Arc::downgrade(&pool), config.health_interval));
        Ok(pool)
    }

    fn balancer(&self) -> MutexGuard<'_, Balancer> {
        self.balancer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every remote's health, breaker and counts.
    pub fn statuses(&self) -> Vec<RemoteStatus> {
        self.balancer()
            .remotes()
            .iter()
            .map(|r| RemoteStatus {
                url: r.url.clone(),
                healthy: r.healthy,
                breaker: r.breaker.name(),
                in_flight: r.outstanding,
                requests: r.requests,
                failures: r.failures,
            })
            .collect()
    }

    /// Requests in flight on all remotes.
    pub fn in_flight(&self) -> usize {
        self.balancer()
            .remotes()
            .iter()
            .map(|r| r.outstanding)
            .sum()
    }

    fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        let builder = self.client.request(method, url);
        match &self.api_key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }

    /// Asks every remote's `/health` (or `/v1/models` where there is none) at once.
    async fn check_health(&self) {
        let checks = self.urls.iter().map(|url| self.probe(url));
        let results = futures_util::future::join_all(checks).await;
        let mut balancer = self.balancer();
        for (index, result) in results.into_iter().enumerate() {
            let healthy = result.is_ok();
            let was = balancer.remotes()[index].healthy;
            if was != healthy {
                match &result {
                    Ok(()) => tracing::info!("remote {} is up", self.urls[index]),
                    Err(err) => tracing::warn!("remote {} is down: {err}", self.urls[index]),
                }
            }
            balancer.set_health(index, healthy, result.err());
        }
    }

    async fn probe(&self, url: &str) -> Result<(), String> {
        let get = |path: &str| {
            self.request(reqwest::Method::GET, format!("{url}{path}"))
                .timeout(HEALTH_TIMEOUT)
                .send()
        };
        let response = get("/health").await.map_err(describe)?;
        let status = if response.status() == reqwest::StatusCode::NOT_FOUND {
            get("/v1/models").await.map_err(describe)?.status()
        } else {
            response.status()
        };
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("health check answered {status}"))
        }
    }

    /// The first model a healthy remote lists.
    async fn discover_model(&self) -> Option<String> {
        for url in &self.urls {
            let response = self
                .request(reqwest::Method::GET, format!("{url}/v1/models"))
                .timeout(HEALTH_TIMEOUT)
                .send()
                .await;
            let Ok(response) = response else { continue };
            let Ok(text) = response.text().await else {
                continue;
            };
            let Ok(body) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if let Some(id) = body["data"][0]["id"].as_str() {
                return Some(id.to_owned());
            }
        }
        None
    }

    /// Starts `chat` on a remote, its events going to `events`; refuses at once with
    /// [`ServiceError::RemoteUnavailable`] when no remote can take it, and with a 400 for
    /// what a remote cannot do for smolbot. `request` is the chat `chat` was prepared from
    /// (`None` for a text completion), for remotes that take chat messages only.
    pub fn start_generation(
        self: &Arc<Self>,
        codec: Arc<ChatCodec>,
        metrics: Arc<Metrics>,
        chat: PreparedChat,
        request: Option<ChatRequest>,
        events: mpsc::UnboundedSender<GenerationEvent>,
    ) -> Result<(), ServiceError> {
        refuse_unsupported(&chat)?;
        {
            let balancer = self.balancer();
            let now = Instant::now();
            if !balancer.any_available(now) {
                return Err(ServiceError::RemoteUnavailable {
                    reason: balancer.why_unavailable(now),
                });
            }
        }
        let pool = Arc::clone(self);
        tokio::spawn(async move { pool.generate(&codec, &metrics, chat, request, events).await });
        Ok(())
    }

    /// Runs one request to its end, failing over while nothing was streamed yet.
    async fn generate(
        &self,
        codec: &ChatCodec,
        metrics: &Metrics,
        chat: PreparedChat,
        request: Option<ChatRequest>,
        events: mpsc::UnboundedSender<GenerationEvent>,
    ) {
        let failed = |message: String| {
            tracing::error!("generation failed: {message}");
            metrics.record(GenerationRecord {
                failed: true,
                ..GenerationRecord::default()
            });
            let _ = events.send(GenerationEvent::Failed(message));
        };
        let body = match self.body(codec, &chat) {
            Ok(body) => body,
            Err(err) => return failed(err.to_string()),
        };
        let chat_body = request.as_ref().map(|request| {
            let mut body = chat_fallback::body(request, chat.dropped);
            self.add_sampling(&mut body, &chat);
            body
        });
        let mut reading = Reading::new(codec, &chat, &events);
        if let Err(message) = reading.read_prefix(&chat) {
            return failed(message);
        }
        let mut tried = Vec::new();
        loop {
            let picked = self.balancer().pick(Instant::now(), &tried);
            let Some(index) = picked else {
                let reason = self.balancer().why_unavailable(Instant::now());
                return failed(ServiceError::RemoteUnavailable { reason }.to_string());
            };
            tried.push(index);
            let url = &self.urls[index];
            let attempt = if self.chat_only[index].load(Ordering::Relaxed) {
                match &chat_body {
                    Some(chat_body) => {
                        reading.use_chat(&chat);
                        self.attempt(url, "/v1/chat/completions", chat_body, &mut reading)
                            .await
                    }
                    None => Attempt::Refused(
                        "it has no /v1/completions, which text completions need".into(),
                    ),
                }
            } else {
                self.attempt(url, "/v1/completions", &body, &mut reading)
                    .await
            };
            let (outcome, error) = match &attempt {
                Attempt::Failed { error, .. } => (Outcome::Failed, Some(error.clone())),
                _ => (Outcome::Answered, None),
            };
            self.balancer()
                .release(index, outcome, error, Instant::now());
            match attempt {
                Attempt::NoCompletions => {
                    tracing::info!(
                        "remote {url} has no /v1/completions; sending it chat completions"
                    );
                    self.chat_only[index].store(true, Ordering::Relaxed);
                    tried.pop();
                }
                Attempt::Finished => break,
                Attempt::ClientLeft => return,
                Attempt::Refused(message) => {
                    return failed(format!("the inference server {url} refused it: {message}"))
                }
                Attempt::Output(message) => return failed(message),
                Attempt::Failed { error, down } => {
                    if down {
                        self.balancer()
                            .set_health(index, false, Some(error.clone()));
                    }
                    if reading.streamed() {
                        return failed(format!(
                            "the inference server {url} broke off the answer: {error}"
                        ));
                    }
                    tracing::warn!(
                        "remote {url} failed before answering ({error}); trying another"
                    );
                }
            }
        }
        match reading.finish(chat.prompt.len()) {
            Ok((completion, record)) => {
                metrics.record(record);
                let _ = events.send(GenerationEvent::Done(completion));
            }
            Err(message) => failed(message),
        }
    }

    /// The `/v1/completions` body: the rendered prompt as text, with smolbot's sampling.
    fn body(&self, codec: &ChatCodec, chat: &PreparedChat) -> Result<Value, ServiceError> {
        let tokenizer = codec.tokenizer();
        let mut ids = chat.prompt.as_slice();
        // The remote adds its own beginning-of-text token, as it does to every prompt.
        if tokenizer.add_bos && tokenizer.bos.is_some() && ids.first() == tokenizer.bos.as_ref() {
            ids = &ids[1..];
        }
        let prompt = tokenizer.decode(ids).map_err(ServiceError::Tokenize)?;
        let mut body = json!({
            "prompt": prompt,
            // vLLM and TGI drop special tokens from the text by default; `<think>` and
            // `<tool_call>` are what smolbot reads the reply by.
            "skip_special_tokens": false,
        });
        self.add_sampling(&mut body, chat);
        Ok(body)
    }

    /// What both endpoints take: limits, sampling, streaming.
    fn add_sampling(&self, body: &mut Value, chat: &PreparedChat) {
        let g = &chat.generation;
        let s = &g.sampling;
        let common = json!({
            "max_tokens": g.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
            "seed": s.seed & (i64::MAX as u64),
            "stream": true,
            "stream_options": { "include_usage": true },
            // llama.cpp's server (and smolbot's) report the prompt's progress with this.
            "return_progress": true,
        });
        if let (Value::Object(body), Value::Object(common)) = (&mut *body, common) {
            body.extend(common);
        }
        if let Some(model) = &self.model {
            body["model"] = json!(model);
        }
        if s.top_k > 0 {
            body["top_k"] = json!(s.top_k);
        }
        if s.min_p > 0.0 {
            body["min_p"] = json!(s.min_p);
        }
        if s.repeat_penalty != 1.0 {
            body["repeat_penalty"] = json!(s.repeat_penalty);
            body["repetition_penalty"] = json!(s.repeat_penalty);
        }
        if !chat.reply.stop.is_empty() {
            body["stop"] = json!(chat.reply.stop);
        }
    }

    /// One try on the remote at `url`'s `path`.
    async fn attempt(
        &self,
        url: &str,
        path: &str,
        body: &Value,
        reading: &mut Reading<'_>,
    ) -> Attempt {
        let send = self
            .request(reqwest::Method::POST, format!("{url}{path}"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send();
        let response = tokio::select! {
            response = tokio::time::timeout(self.timeout, send) => response,
            () = reading.events.closed() => return Attempt::ClientLeft,
        };
        let mut response = match response {
            Err(_) => {
                return Attempt::failed(format!(
                    "no answer within {} s",
                    self.timeout.as_secs_f64()
                ))
            }
            Ok(Err(err)) => {
                return Attempt::Failed {
                    down: err.is_connect(),
                    error: describe(err),
                }
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let missing = [
            reqwest::StatusCode::NOT_FOUND,
            reqwest::StatusCode::METHOD_NOT_ALLOWED,
        ];
        if path == "/v1/completions" && missing.contains(&status) {
            return Attempt::NoCompletions;
        }
        if !status.is_success() {
            let text = tokio::time::timeout(HEALTH_TIMEOUT, response.text())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let message = error_message(&text);
            let retry = status.is_server_error()
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                || status == reqwest::StatusCode::REQUEST_TIMEOUT;
            return if retry {
                Attempt::failed(format!("answered {status}: {message}"))
            } else {
                Attempt::Refused(format!("{status}: {message}"))
            };
        }
        let mut buffer = Vec::new();
        loop {
            let chunk = tokio::select! {
                chunk = tokio::time::timeout(self.timeout, response.chunk()) => chunk,
                () = reading.events.closed() => return Attempt::ClientLeft,
            };
            match chunk {
                Err(_) => {
                    return Attempt::failed(format!(
                        "sent nothing for {} s",
                        self.timeout.as_secs_f64()
                    ))
                }
                Ok(Err(err)) => return Attempt::failed(describe(err)),
                // Some servers close the stream after the finishing chunk, without [DONE].
                Ok(Ok(None)) if reading.finish_reason.is_some() => return Attempt::Finished,
                Ok(Ok(None)) => return Attempt::failed("the stream ended before [DONE]".into()),
                Ok(Ok(Some(bytes))) => buffer.extend_from_slice(&bytes),
            }
            while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let Some(data) = line.trim_end().strip_prefix("data:") else {
                    continue;
                };
                if let Some(done) = reading.data(data.trim()) {
                    return done;
                }
            }
        }
    }
}

/// How one try on a remote ended.
enum Attempt {
    /// The remote has no `/v1/completions`: try its chat completions.
    NoCompletions,
    /// `[DONE]`, or the answer hit a stop string.
    Finished,
    /// The client went away; the remote's stream is dropped, which stops it.
    ClientLeft,
    /// The remote refused the request itself (a 4xx): another one would too.
    Refused(String),
    /// The streamed text was malformed (a broken tool call).
    Output(String),
    /// The remote failed; `down` when it could not be reached at all.
    Failed { error: String, down: bool },
}

impl Attempt {
    fn failed(error: String) -> Self {
        Self::Failed { error, down: false }
    }
}

/// Where a request's reading of the remote's stream stands; kept across a failover, which
/// happens only while no text came.
struct Reading<'a> {
    codec: &'a ChatCodec,
    parser: ReplyParser<'a>,
    events: &'a mpsc::UnboundedSender<GenerationEvent>,
    text: String,
    finish_reason: Option<String>,
    usage: Option<(usize, usize)>,
    started: Instant,
    first_text: Option<Duration>,
    /// Reading chat completion deltas: the tool calls streamed so far.
    calls: Option<chat_fallback::CallPieces>,
}

impl<'a> Reading<'a> {
    fn new(
        codec: &'a ChatCodec,
        chat: &PreparedChat,
        events: &'a mpsc::UnboundedSender<GenerationEvent>,
    ) -> Self {
        Self {
            codec,
            parser: ReplyParser::new(codec.tokenizer(), &chat.reply),
            events,
            text: String::new(),
            finish_reason: None,
            usage: None,
            started: Instant::now(),
            first_text: None,
            calls: None,
        }
    }

    /// Reads chat completion deltas from now on: the remote renders the prompt, so the
    /// opening smolbot would have written itself is not part of the answer (nothing was
    /// streamed yet, so the parser can start over).
    fn use_chat(&mut self, chat: &PreparedChat) {
        if self.calls.is_some() {
            return;
        }
        let options = ReplyOptions {
            prefix: Vec::new(),
            ..chat.reply.clone()
        };
        self.parser = ReplyParser::new(self.codec.tokenizer(), &options);
        self.calls = Some(chat_fallback::CallPieces::default());
    }

    /// Reads the server-written opening of the answer (a forced `<tool_call>`).
    fn read_prefix(&mut self, chat: &PreparedChat) -> Result<(), String> {
        for &id in &chat.reply.prefix {
            let new = self.parser.push(id).map_err(|e| output_error(&e))?;
            self.send(new);
        }
        Ok(())
    }

    fn send(&self, new: Vec<GenerationEvent>) {
        for event in new {
            let _ = self.events.send(event);
        }
    }

    /// Whether any of the answer's text came (after which a failover would repeat it).
    fn streamed(&self) -> bool {
        self.first_text.is_some()
    }

    /// Reads one `data:` payload; `Some` when the stream is over for this try.
    fn data(&mut self, data: &str) -> Option<Attempt> {
        if data == "[DONE]" {
            return Some(Attempt::Finished);
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return Some(Attempt::failed(format!(
                "sent a chunk that is not JSON: {}",
                clip(data)
            )));
        };
        if let Some(error) = chunk.get("error") {
            return Some(Attempt::failed(format!(
                "reported an error: {}",
                error_message(&error.to_string())
            )));
        }
        if let Some(progress) = progress_of(&chunk) {
            if !self.streamed() {
                let _ = self.events.send(GenerationEvent::Progress(progress));
            }
        }
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            let count = |key: &str| usage[key].as_u64().map(|n| n as usize);
            if let (Some(prompt), Some(completion)) =
                (count("prompt_tokens"), count("completion_tokens"))
            {
                self.usage = Some((prompt, completion));
            }
        }
        let choice = &chunk["choices"][0];
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(reason.to_owned());
        }
        let delta = &choice["delta"];
        if let Some(calls) = &mut self.calls {
            calls.push(&delta["tool_calls"]);
            let reasoning = delta["reasoning_content"]
                .as_str()
                .or_else(|| delta["reasoning"].as_str())
                .unwrap_or_default();
            if !reasoning.is_empty() {
                self.first_text
                    .get_or_insert_with(|| self.started.elapsed());
                self.text.push_str(reasoning);
                let _ = self
                    .events
                    .send(GenerationEvent::Reasoning(reasoning.to_owned()));
            }
            if delta["tool_calls"].is_array() {
                self.first_text
                    .get_or_insert_with(|| self.started.elapsed());
            }
        }
        let text = choice["text"]
            .as_str()
            .or_else(|| delta["content"].as_str())
            .unwrap_or_default();
        if text.is_empty() {
            return None;
        }
        self.first_text
            .get_or_insert_with(|| self.started.elapsed());
        self.text.push_str(text);
        match self.parser.push_text(text) {
            Ok(new) => self.send(new),
            Err(err) => return Some(Attempt::Output(output_error(&err))),
        }
        self.parser.stopped().then_some(Attempt::Finished)
    }

    /// The last events and the closing summary.
    fn finish(self, prompt_tokens: usize) -> Result<(Completion, GenerationRecord), String> {
        let elapsed = self.started.elapsed();
        let mut tool_calls = self.parser.tool_calls();
        let stopped = self.parser.stopped();
        let mut last = self.parser.finish().map_err(|e| output_error(&e))?;
        if let Some(calls) = self.calls {
            last.extend(calls.finish()?.into_iter().map(GenerationEvent::ToolCall));
        }
        for event in last {
            tool_calls += usize::from(matches!(event, GenerationEvent::ToolCall(_)));
            let _ = self.events.send(event);
        }
        let (prompt_tokens, completion_tokens) = self.usage.unwrap_or_else(|| {
            let generated = self
                .codec
                .tokenize(&self.text, false, true)
                .map_or(0, |ids| ids.len());
            (prompt_tokens, generated)
        });
        let finish_reason = match self.finish_reason.as_deref() {
            Some("length") if !stopped => FinishReason::Length,
            _ if tool_calls > 0 => FinishReason::ToolCalls,
            _ => FinishReason::Stop,
        };
        let prompt_time = self.first_text.unwrap_or(elapsed);
        let completion = Completion {
            finish_reason,
            usage: Usage {
                prompt_tokens,
                completion_tokens,
                reasoning_tokens: None,
            },
            timings: Timings {
                prompt_tokens,
                cached_tokens: 0,
                prompt_time,
                predicted_tokens: completion_tokens,
                predicted_time: elapsed.saturating_sub(prompt_time),
            },
            logprobs: None,
        };
        let record = GenerationRecord {
            prompt_tokens,
            cached_tokens: 0,
            generated_tokens: completion_tokens,
            time_to_first_token: self.first_text,
            generation_time: elapsed,
            failed: false,
        };
        Ok((completion, record))
    }
}

/// What a remote tells of the request before its first token: llama.cpp's `prompt_progress`,
/// smolbot's `queued`.
fn progress_of(chunk: &Value) -> Option<Progress> {
    let count = |v: &Value| v.as_u64().map(|n| n as usize);
    if let Some(ahead) = count(&chunk["queued"]["ahead"]) {
        return Some(Progress::Queued { ahead });
    }
    let p = &chunk["prompt_progress"];
    Some(Progress::Prefill {
        done: count(&p["processed"])?,
        total: count(&p["total"])?,
        cached: count(&p["cache"]).unwrap_or(0),
    })
}

/// What a remote cannot do for smolbot, refused before anything is sent.
fn refuse_unsupported(chat: &PreparedChat) -> Result<(), ServiceError> {
    if chat.generation.logprobs.is_some() || chat.generation.prompt_logprobs.is_some() {
        return Err(ServiceError::InvalidParameter {
            field: "logprobs",
            problem: "is not available: the model runs on a remote inference server \
                      (--engine openai), whose scores smolbot does not relay"
                .into(),
        });
    }
    if chat.constraint.is_some() {
        return Err(ServiceError::InvalidParameter {
            field: "response_format",
            problem: "cannot be enforced: the model runs on a remote inference server \
                      (--engine openai), and smolbot constrains output only where it samples \
                      the tokens itself"
                .into(),
        });
    }
    Ok(())
}

fn output_error(err: &crate::smollm3::Smollm3Error) -> String {
    format!("the model's output could not be used: {err}")
}

/// A reqwest error in words, without the URL it already names twice.
fn describe(err: reqwest::Error) -> String {
    let kind = if err.is_connect() {
        "cannot connect"
    } else if err.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(&err);
    let mut detail = String::new();
    while let Some(inner) = source {
        detail = inner.to_string();
        source = inner.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

/// The message of an OpenAI-style error body, or the body itself, clipped.
fn error_message(text: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(text).ok();
    let message = parsed.as_ref().and_then(|v| {
        v["error"]["message"]
            .as_str()
            .or_else(|| v["message"].as_str())
            .or_else(|| v["error"].as_str())
            .map(str::to_owned)
    });
    clip(&message.unwrap_or_else(|| text.trim().to_owned()))
}

fn clip(text: &str) -> String {
    if text.len() <= ERROR_BODY_LIMIT {
        return text.to_owned();
    }
    let mut end = ERROR_BODY_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Checks every remote each `interval` until the pool is gone.
async fn health_loop(pool: Weak<RemotePool>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(pool) = pool.upgrade() else { return };
        pool.check_health().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_drop_the_api_suffix() {
        assert_eq!(base_url("http://h:8000/v1/"), "http://h:8000");
        assert_eq!(base_url("http://h:8000"), "http://h:8000");
        assert_eq!(base_url(" https://h/x/v1 "), "https://h/x");
    }

    #[test]
    fn reads_progress_from_llama_cpp_and_smolbot_chunks() {
        let llama = json!({"prompt_progress": {"total": 10, "cache": 2, "processed": 6}});
        assert_eq!(
            progress_of(&llama),
            Some(Progress::Prefill {
                done: 6,
                total: 10,
                cached: 2
            })
        );
        let smolbot = json!({"queued": {"ahead": 3}, "choices": []});
        assert_eq!(progress_of(&smolbot), Some(Progress::Queued { ahead: 3 }));
        assert_eq!(progress_of(&json!({"choices": [{"text": "x"}]})), None);
    }

    #[test]
    fn error_messages_come_from_openai_bodies_or_the_text() {
        assert_eq!(
            error_message(r#"{"error": {"message": "too long", "type": "x"}}"#),
            "too long"
        );
        assert_eq!(error_message(r#"{"message": "busy"}"#), "busy");
        assert_eq!(error_message("  plain  "), "plain");
        assert!(error_message(&"é".repeat(400)).ends_with('…'));
    }
}
