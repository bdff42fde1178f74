//! The on-chain cost of settling a simulated period.
//!
//! The engine nets each settled slot to one balance per account and sends one
//! `Settlement.settle` batch. Its gas, measured by the contracts' gas report
//! (`contracts/gas-report.md`, embedded EVM, whole transactions), grows with the accounts in the
//! batch: 72 467 gas for 3 accounts, 433 870 gas for 50. The line through those two points,
//! `gas = BATCH_BASE_GAS + PER_ACCOUNT_GAS × accounts`, is the model here; a test re-reads the
//! report and fails when the contracts' figures move away from it.

/// Gas of a batch apart from its accounts (intrinsic gas, calldata header, Merkle root, event).
pub const BATCH_BASE_GAS: u64 = 49_400;
/// Gas per account in a batch (one account word read and written, the allowance check, its
/// calldata).
pub const PER_ACCOUNT_GAS: u64 = 7_689;

/// Gas of one settlement batch moving money for `accounts` accounts (none: no batch).
#[must_use]
pub fn batch_gas(accounts: usize) -> u64 {
    if accounts == 0 {
        0
    } else {
        BATCH_BASE_GAS + PER_ACCOUNT_GAS * accounts as u64
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn reported(report: &str, row: &str) -> f64 {
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("| {row} |")))
            .unwrap();
        line.split('|').nth(2).unwrap().trim().parse().unwrap()
    }

    #[test]
    fn the_model_reproduces_the_contracts_gas_report() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../contracts/gas-report.md");
        let report = std::fs::read_to_string(path).unwrap();
        let fifty = reported(&report, "Settlement.settle, 50 households, 100 trades");
        let one = reported(&report, "Settlement.settle, 1 trade");
        for (accounts, gas) in [(50, fifty), (3, one)] {
            let model = batch_gas(accounts) as f64;
            assert!(
                (model - gas).abs() / gas < 0.01,
                "{accounts} accounts: model {model}, report {gas}"
            );
        }
        assert_eq!(batch_gas(0), 0);
    }
}
