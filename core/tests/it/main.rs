//! Integration tests of `gridshare-core` (one binary per crate).

// Tests unwrap and index freely: a panic is a test failure with its location.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

mod market;
mod reading;
