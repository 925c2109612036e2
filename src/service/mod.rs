//! Use cases with no HTTP types: routing a request to a provider chain, the
//! fallback runner, chat (plain or streamed), agent conversations, and the
//! process lifecycle flags.

pub mod agents;
pub mod chat;
pub mod fallback;
pub mod lifecycle;
pub mod masking;
pub mod registry;

pub use agents::{Answer, Ask};
pub use chat::{Completed, Gateway, GatewayParts, ServiceError, StartedStream, Target};
pub use fallback::{Attempt, Failure, Outcome};
pub use lifecycle::Lifecycle;
pub use registry::{ProviderEntry, ProviderState, Registry, Route};
