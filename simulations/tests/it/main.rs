//! Integration tests of `gridshare-simulations` (one binary per crate).

// Tests unwrap and index freely: a panic is a test failure with its location.
#![allow(clippy::unwrap_used)]

mod grid_validation;
mod roi;
mod scenarios;
mod solar;
