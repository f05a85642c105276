//! Integration tests: the real app on port 0, a fresh SQLite file each, real HTTP.

mod auditlog;
mod backfill;
mod cbc;
mod conformance;
mod errors;
mod events;
mod export;
mod forward;
mod forward_ld;
mod forward_syslog;
mod helpers;
mod instances;
mod ld_client;
mod search_diff;
mod skips;
mod store;
mod templates;
mod tfc;
mod tls;
mod ui;
mod ui_browser;
mod webhook;

#[path = "../support/fake_cbc.rs"]
mod fake_cbc;
#[path = "../support/fake_ld.rs"]
mod fake_ld;
#[path = "../support/fake_receivers.rs"]
mod fake_receivers;
#[path = "../support/fake_tfc.rs"]
mod fake_tfc;
#[path = "../support/pg.rs"]
mod pg;
