//! Layer 1: HTTP (Axum routes, SSE streaming, MiniJinja pages).
//!
//! Empty until the web issue lands; the folder exists so the architecture stays visible.
