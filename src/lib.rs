//! Squad: an LLM gateway putting Groq, Cerebras, Gemini, OpenRouter, DeepSeek
//! and any OpenAI-compatible server behind one OpenAI-compatible HTTP API.
//!
//! Layout (dependencies point down this list, never up):
//! - `api`: the only axum-facing code: routes, wire DTOs, extractors, errors, middleware.
//! - `service`: use cases with no HTTP types: routing, chat, lifecycle.
//! - `providers`: the `Provider` trait, `ProviderError`, and the adapters
//!   (`openai_compat`, `gemini`), each as {mod, wire, convert, stream}.
//! - `security`: PII detection and redaction (linear time, no backtracking).
//! - `store`: SQLite or PostgreSQL: audit rows (journal + batched writer), API keys, usage.
//! - `telemetry`: logging set-up and every metric name.
//! - `config`: typed, layered, validated configuration.
//! - `domain`: plain data: requests, messages, responses, chunks, usage.
//! - `mock`: the simulated upstream (`squad mock-upstream`, `--demo`).
//! - `app`: the composition root, the only place naming concrete adapters.
//! - `server`: `run(listener, …, shutdown)` with readiness drain and grace period;
//!   HTTP/1.1 limits (head size, head read time) and optional TLS.
//! - `runtime`: the serving cores, one single-threaded runtime per thread.
//! - `tls`: the rustls server config from `server.tls` (PEM files).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod agents;
pub mod api;
pub mod app;
pub mod config;
pub mod conversations;
pub mod domain;
pub mod limits;
pub mod mock;
pub mod providers;
pub mod resilience;
pub mod runtime;
pub mod security;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod tls;
