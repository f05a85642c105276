//! HTTP routes, one module per resource.

pub mod auditlog;
pub mod destinations;
pub mod events;
pub mod export;
pub mod health;
pub mod hooks;
pub mod preview;
pub mod queue;
