//! Integration tests of `gridshare-core` (one binary per crate).

mod market;
mod reading;
