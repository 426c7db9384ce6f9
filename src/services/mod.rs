//! Shared services between the web layer and the engine: sessions, streaming fan-out, metrics.
//!
//! Empty until the services issue lands; the folder exists so the architecture stays visible.
