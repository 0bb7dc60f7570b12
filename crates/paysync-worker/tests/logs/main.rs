//! The log-capture test, in a process of its own. tracing caches each call site's interest
//! globally; with other tests on other threads of the same binary hitting the worker's call
//! sites while no subscriber is installed, a thread-local capture subscriber could be told
//! "never" for them (seen as a flaky timeout in the full suite). Here nothing else runs.
#![allow(clippy::unwrap_used, missing_docs, dead_code)]

#[path = "../it/helpers.rs"]
mod helpers;
mod logs;
#[path = "../it/stack.rs"]
mod stack;
