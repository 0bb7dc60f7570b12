//! Tests of the testkit's own harnesses (the headless browser).
#![allow(clippy::unwrap_used, missing_docs)]

mod browser;
