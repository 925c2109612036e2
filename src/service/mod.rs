//! Use cases with no HTTP types: routing a model name to a provider, running a
//! chat call (plain or streamed) with metrics, and the process lifecycle flags.

pub mod chat;
pub mod lifecycle;
pub mod registry;

pub use chat::{Completed, Gateway, ServiceError, StartedStream};
pub use lifecycle::Lifecycle;
pub use registry::{ProviderEntry, ProviderState, Registry, Route};
