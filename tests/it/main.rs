//! Every end-to-end test in one binary: the suite links the app (candle, axum, SQLite, …)
//! once instead of once per file, which was most of `cargo test`'s build time.
//!
//! The modules share one process and run on parallel threads, so a test must not change
//! process-wide state (environment variables, the working directory) and must name its
//! scratch files so no other module's can collide with them; children get their
//! environment through `Command` instead.

mod common;

mod agent_tools;
mod api_key;
mod batched_decode;
mod chat_template;
mod cli_chat;
mod cli_config;
mod cli_engine;
mod cli_smollm3;
mod completions_logprobs;
mod context_full;
mod cross_site;
mod engine_progress;
mod gguf_fuzz;
mod golden_nll;
mod host_check;
mod hub;
mod kv_budget;
mod openai_api;
mod openai_sse;
mod page_runs;
mod prefix_cache;
mod properties;
mod remote_engine;
mod request_limits;
mod sessions_api;
mod sessions_durability;
mod shared_database;
mod slow_clients;
mod tokenizer_golden;
mod web_page;
