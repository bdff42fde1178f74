//! A slot's settlement batch — net deltas per account — and the Merkle tree that commits to
//! the slot's trades and readings. Pure data and hashing; nothing here talks to a chain.
//!
//! Encoding (what `Settlement.settle` reads): one 32-byte word per account, the address in the
//! high 160 bits and the signed amount as a two's-complement `int96` in the low 96 bits,
//! accounts strictly ascending. The tree is OpenZeppelin's `MerkleProof` tree: pairs hashed
//! with keccak256 in sorted order, leaves double-hashed so a leaf is never an inner node.

use alloy::primitives::{Address, B256, U256, keccak256};
use alloy::sol_types::SolValue;
use std::collections::BTreeMap;

/// Largest magnitude of one delta: the contract reads it as an `int96`.
pub const MAX_DELTA: i128 = (1i128 << 95) - 1;

/// Why a batch cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The deltas do not sum to zero: money would be created or destroyed.
    #[error("batch {batch_id} does not balance: deltas sum to {sum}")]
    NotBalanced {
        /// The batch.
        batch_id: u64,
        /// The sum of its deltas.
        sum: i128,
    },
    /// A net delta does not fit the contract's `int96`.
    #[error("delta {amount} of account {account} exceeds the int96 range of a batch entry")]
    DeltaOutOfRange {
        /// The account.
        account: Address,
        /// Its net delta.
        amount: i128,
    },
    /// The batch commits to no trades or readings (zero root).
    #[error("batch {0} has an empty Merkle root")]
    EmptyRoot(u64),
}

/// The net change of one account's balance in a slot, in the payment token's smallest unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetDelta {
    /// Participant or fee recipient.
    pub account: Address,
    /// Positive: credited; negative: debited.
    pub amount: i128,
}

impl NetDelta {
    /// The packed word `Settlement.settle` reads: address ‖ int96.
    pub fn packed(&self) -> B256 {
        let mut word = [0u8; 32];
        word[..20].copy_from_slice(self.account.as_slice());
        // Two's complement truncated to 96 bits; the range was checked when the batch was built.
        word[20..].copy_from_slice(&self.amount.to_be_bytes()[4..]);
        B256::from(word)
    }

    /// Reads a packed word back (the inverse of [`NetDelta::packed`]).
    pub fn from_packed(word: B256) -> Self {
        let account = Address::from_slice(&word[..20]);
        let fill = if word[20] & 0x80 != 0 { 0xff } else { 0 };
        let mut bytes = [fill; 16];
        bytes[4..].copy_from_slice(&word[20..]);
        Self {
            account,
            amount: i128::from_be_bytes(bytes),
        }
    }
}

/// One slot's settlement: what goes on chain in one `settle` transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementBatch {
    /// Unique per settlement contract; a settled id is rejected, so retries are safe.
    pub id: u64,
    /// Merkle root of the slot's trades and readings.
    pub root: B256,
    /// Net deltas, one per account, ascending by address, none zero, summing to zero.
    pub deltas: Vec<NetDelta>,
}

impl SettlementBatch {
    /// Nets `transfers` per account (an account may appear many times), drops accounts whose
    /// net is zero, sorts by address and checks that the batch balances.
    pub fn new(
        id: u64,
        root: B256,
        transfers: impl IntoIterator<Item = NetDelta>,
    ) -> Result<Self, BatchError> {
        if root == B256::ZERO {
            return Err(BatchError::EmptyRoot(id));
        }
        let mut net: BTreeMap<Address, i128> = BTreeMap::new();
        for t in transfers {
            let entry = net.entry(t.account).or_default();
            *entry = entry
                .checked_add(t.amount)
                .ok_or(BatchError::DeltaOutOfRange {
                    account: t.account,
                    amount: t.amount,
                })?;
        }
        let mut sum: i128 = 0;
        let mut deltas = Vec::with_capacity(net.len());
        for (account, amount) in net {
            if amount == 0 {
                continue;
            }
            if !(-MAX_DELTA..=MAX_DELTA).contains(&amount) {
                return Err(BatchError::DeltaOutOfRange { account, amount });
            }
            // |amount| < 2^95 per entry, so the sum of any realistic batch fits i128.
            sum = sum.saturating_add(amount);
            deltas.push(NetDelta { account, amount });
        }
        if sum != 0 {
            return Err(BatchError::NotBalanced { batch_id: id, sum });
        }
        Ok(Self { id, root, deltas })
    }

    /// The calldata words of the batch.
    pub fn packed_deltas(&self) -> Vec<B256> {
        self.deltas.iter().map(NetDelta::packed).collect()
    }
}

/// One local sale of a settled slot, credited to the seller meter's rewards by
/// `Settlement.settleWithSales` (meter ids as `MeterStaking` knows them:
/// [`crate::staking::text_id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SaleCredit {
    /// The selling meter.
    pub seller: B256,
    /// The buying meter.
    pub buyer: B256,
    /// Energy sold, Wh.
    pub energy_wh: u64,
}

/// The local sales a batch credits, with the start of the slot they were delivered in.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotSales {
    /// Start of the delivery slot, ms since the epoch.
    pub delivered_at_ms: u64,
    /// The sales; empty: the batch is sent with plain `settle`.
    pub sales: Vec<SaleCredit>,
}

/// What a leaf of a slot's Merkle tree commits to; mirrors `Settlement.tradeLeaf` and
/// `Settlement.readingLeaf`, and what `Settlement.verifyTrade` / `verifyReading` rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TradeLeaf {
    /// A matched trade: the buyer paid `amount` for `energy_wh`, fees included (the engine's
    /// `buyer_pays`; the seller received it less the trade's fees).
    Trade {
        /// Batch (slot) the trade settles in.
        batch_id: u64,
        /// Paying account.
        buyer: Address,
        /// Delivering account.
        seller: Address,
        /// Energy traded, Wh.
        energy_wh: u64,
        /// What the buyer paid, fees included, payment-token units.
        amount: U256,
    },
    /// A signed reading the slot's delivery check relied on.
    Reading {
        /// Batch (slot).
        batch_id: u64,
        /// SHA-256 of the reading's encoding (222 bytes, or 241 with the power flow).
        digest: B256,
    },
}

impl TradeLeaf {
    /// The leaf hash: `keccak256(keccak256(abi.encode(kind, ...)))`.
    pub fn hash(&self) -> B256 {
        // A uint8 ABI-encodes as one 32-byte word, like a uint256 of the same value.
        let inner = match *self {
            Self::Trade {
                batch_id,
                buyer,
                seller,
                energy_wh,
                amount,
            } => (U256::from(1u8), batch_id, buyer, seller, energy_wh, amount).abi_encode_params(),
            Self::Reading { batch_id, digest } => {
                (U256::from(2u8), batch_id, digest).abi_encode_params()
            }
        };
        keccak256(keccak256(inner))
    }
}

/// A Merkle tree over leaf hashes, verifiable with OpenZeppelin's `MerkleProof`: each pair is
/// hashed in sorted order and a node without a sibling moves up unchanged.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    levels: Vec<Vec<B256>>,
}

impl MerkleTree {
    /// Builds the tree; `None` for no leaves (a batch needs a non-zero root).
    pub fn new(leaves: Vec<B256>) -> Option<Self> {
        if leaves.is_empty() {
            return None;
        }
        let mut levels = vec![leaves];
        while let Some(level) = levels.last().filter(|l| l.len() > 1) {
            let next = level
                .chunks(2)
                .map(|pair| match pair {
                    [a, b] => hash_pair(*a, *b),
                    [a] => *a,
                    _ => unreachable!("chunks(2) yields one or two nodes"),
                })
                .collect();
            levels.push(next);
        }
        Some(Self { levels })
    }

    /// The root.
    pub fn root(&self) -> B256 {
        self.levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or_default()
    }

    /// The proof of leaf `index`, or `None` if there is no such leaf.
    pub fn proof(&self, mut index: usize) -> Option<Vec<B256>> {
        if index >= self.levels.first()?.len() {
            return None;
        }
        let mut proof = Vec::new();
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(sibling) = level.get(index ^ 1) {
                proof.push(*sibling);
            }
            index /= 2;
        }
        Some(proof)
    }

    /// Checks a proof the way `MerkleProof.verify` does.
    pub fn verify(root: B256, leaf: B256, proof: &[B256]) -> bool {
        proof
            .iter()
            .fold(leaf, |node, sibling| hash_pair(node, *sibling))
            == root
    }
}

fn hash_pair(a: B256, b: B256) -> B256 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(lo.as_slice());
    buf[32..].copy_from_slice(hi.as_slice());
    keccak256(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(n: u8) -> Address {
        Address::repeat_byte(n)
    }

    #[test]
    fn nets_sorts_and_drops_zero_accounts() {
        let batch = SettlementBatch::new(
            7,
            B256::repeat_byte(1),
            [
                NetDelta {
                    account: addr(3),
                    amount: -5,
                },
                NetDelta {
                    account: addr(1),
                    amount: 5,
                },
                NetDelta {
                    account: addr(3),
                    amount: 5,
                },
                NetDelta {
                    account: addr(2),
                    amount: -5,
                },
            ],
        )
        .unwrap();
        assert_eq!(
            batch.deltas,
            vec![
                NetDelta {
                    account: addr(1),
                    amount: 5
                },
                NetDelta {
                    account: addr(2),
                    amount: -5
                }
            ]
        );
    }

    #[test]
    fn rejects_unbalanced_batch() {
        let err = SettlementBatch::new(
            1,
            B256::repeat_byte(1),
            [NetDelta {
                account: addr(1),
                amount: 3,
            }],
        )
        .unwrap_err();
        assert_eq!(
            err,
            BatchError::NotBalanced {
                batch_id: 1,
                sum: 3
            }
        );
    }

    proptest! {
        #[test]
        fn packing_round_trips(account in any::<[u8; 20]>(), amount in -MAX_DELTA..=MAX_DELTA) {
            let delta = NetDelta { account: Address::from(account), amount };
            prop_assert_eq!(NetDelta::from_packed(delta.packed()), delta);
        }

        #[test]
        fn every_leaf_proves_against_the_root(seeds in prop::collection::vec(any::<[u8; 32]>(), 1..40)) {
            let leaves: Vec<B256> = seeds.into_iter().map(B256::from).collect();
            let tree = MerkleTree::new(leaves.clone()).unwrap();
            for (i, leaf) in leaves.iter().enumerate() {
                let proof = tree.proof(i).unwrap();
                prop_assert!(MerkleTree::verify(tree.root(), *leaf, &proof));
                prop_assert!(!MerkleTree::verify(tree.root(), B256::repeat_byte(0xee), &proof) || leaves.contains(&B256::repeat_byte(0xee)));
            }
        }
    }
}
