//! The integration suite: one binary; every test spawns a real server on
//! 127.0.0.1:0 over a fresh data directory and talks to it over HTTP, as a
//! client written from API.md would.

#![allow(clippy::unwrap_used)]

mod helpers;

mod api_errors;
mod archive;
mod auth;
mod cache;
mod cancellation;
mod concurrency;
mod connection_cap;
mod connections;
mod console;
mod content;
mod credentials;
mod deploy;
mod directory;
mod isolation;
mod keys;
mod learning;
mod lifecycle;
mod limits;
mod openapi;
mod provisioning;
mod resolution;
mod roles;
mod sign_in;
