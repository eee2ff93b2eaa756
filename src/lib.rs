//! fanout: an HTTP gateway that fans each request out to an unreliable
//! upstream and answers within the caller's timeout.
//!
//! Data flows one way: [`server`] accepts and parses, [`api`] routes and
//! maps results to responses, [`fanout`] races the attempts under a deadline,
//! and [`upstream`] makes each attempt.

#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod fanout;
pub mod healthcheck;
pub mod log;
pub mod observe;
mod read;
pub mod runtime;
pub mod server;
pub mod simulator;
pub mod upstream;
