//! HTTP routes, one module per resource.

pub mod auditlog;
pub mod health;
pub mod hooks;
pub mod preview;
