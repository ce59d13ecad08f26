//! A string that must never be printed: the Openlayer API key. The type lives in
//! `trace-model`, shared with the gateway; this path stays for existing callers.

pub use trace_model::secret::Secret;
