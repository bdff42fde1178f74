//! Integration tests of the Gridshare contracts. Every behaviour test runs twice, on the
//! embedded `revm` chain and on anvil (`--hardfork osaka`), through the same code.

mod deploy_cli;
mod gas;
mod harness;
mod operator_bounds;
mod readings;
mod settlement;
mod staking;
