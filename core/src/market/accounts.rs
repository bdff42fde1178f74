//! Per-account sums over one slot, read back in ascending account order: what settlement nets
//! and delivery compares, once per slot for every account in the community.
//!
//! Design: the engine and the simulator number accounts densely from zero, so the account id
//! itself indexes a vector — no tree node per account and slot, which in a year of slots of a
//! thousand households was most of the settlement's time. An id far beyond the number of
//! entries (a sparse numbering) moves everything into a `BTreeMap`, so memory stays bounded
//! by the input whatever the ids; either way the sums and their order are the same.

use super::order::AccountId;
use std::collections::BTreeMap;

/// Sums of `T` per account.
#[derive(Debug)]
pub(crate) struct PerAccount<T> {
    /// Largest id (exclusive) kept in `dense`.
    limit: usize,
    /// Indexed by account id; `None`: the account has no entry.
    dense: Vec<Option<T>>,
    /// Used instead of `dense` once an id reached `limit`.
    sparse: Option<BTreeMap<AccountId, T>>,
    /// Accounts with an entry.
    len: usize,
}

impl<T: Default> PerAccount<T> {
    /// A table for about `entries` additions.
    pub(crate) fn new(entries: usize) -> Self {
        let limit = entries.saturating_mul(2).saturating_add(1024);
        Self {
            limit,
            // Dense ids reach about the number of entries (a little beyond it where ids
            // start above zero or some accounts are absent): room for them from the start,
            // so the table is not copied while it grows.
            dense: Vec::with_capacity(entries.saturating_add(entries / 8 + 64).min(limit)),
            sparse: None,
            len: 0,
        }
    }

    /// Accounts with an entry.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// `account`'s entry, created (at `T::default()`) if it has none.
    #[inline]
    pub(crate) fn entry(&mut self, account: AccountId) -> &mut T {
        let i = account.0 as usize;
        if self.sparse.is_none() && i < self.dense.len() {
            let at = &mut self.dense[i];
            if at.is_none() {
                self.len += 1;
            }
            return at.get_or_insert_with(T::default);
        }
        self.entry_beyond(account)
    }

    /// [`Self::entry`] for an id beyond the dense table so far, or once the table is sparse.
    #[cold]
    #[inline(never)]
    fn entry_beyond(&mut self, account: AccountId) -> &mut T {
        let i = account.0 as usize;
        if self.sparse.is_none() {
            if i < self.limit {
                if i >= self.dense.len() {
                    // Grow by doubling, so that ids met in ascending order take this path
                    // a logarithmic number of times, not once each; within the room reserved
                    // at the start, so that doubling never copies a table that had room.
                    let doubled = (self.dense.len() * 2).min(self.dense.capacity().max(i + 1));
                    let to = (i + 1).max(doubled).min(self.limit);
                    self.dense.resize_with(to, || None);
                }
                let at = &mut self.dense[i];
                if at.is_none() {
                    self.len += 1;
                }
                return at.get_or_insert_with(T::default);
            }
            let moved = std::mem::take(&mut self.dense)
                .into_iter()
                .enumerate()
                .filter_map(|(k, v)| Some((dense_id(k), v?)))
                .collect();
            self.sparse = Some(moved);
        }
        let sparse = self.sparse.get_or_insert_with(BTreeMap::new);
        if !sparse.contains_key(&account) {
            self.len += 1;
        }
        sparse.entry(account).or_default()
    }

    /// Every account with an entry and its sum, in ascending account order.
    pub(crate) fn into_sorted(self) -> impl Iterator<Item = (AccountId, T)> {
        let dense = self
            .dense
            .into_iter()
            .enumerate()
            .filter_map(|(k, v)| Some((dense_id(k), v?)));
        dense.chain(self.sparse.into_iter().flatten())
    }
}

/// The account of a dense position (positions come from `u32` ids, so they fit).
fn dense_id(k: usize) -> AccountId {
    AccountId(u32::try_from(k).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_and_sparse_ids_sum_alike_in_account_order() {
        let adds = [(5u32, 1i64), (2, 3), (5, 4), (0, -1), (3, 0)];
        let mut small = PerAccount::<i64>::new(adds.len());
        for &(a, v) in &adds {
            *small.entry(AccountId(a)) += v;
        }
        assert_eq!(small.len(), 4);
        let small: Vec<_> = small.into_sorted().collect();
        assert_eq!(
            small,
            [
                (AccountId(0), -1),
                (AccountId(2), 3),
                (AccountId(3), 0),
                (AccountId(5), 5)
            ]
        );
        // A huge id midway moves what was summed so far into the tree.
        let mut mixed = PerAccount::<i64>::new(adds.len());
        for &(a, v) in adds.iter().take(3) {
            *mixed.entry(AccountId(a)) += v;
        }
        *mixed.entry(AccountId(u32::MAX)) += 7;
        for &(a, v) in adds.iter().skip(3) {
            *mixed.entry(AccountId(a)) += v;
        }
        assert_eq!(mixed.len(), 5);
        let mixed: Vec<_> = mixed.into_sorted().collect();
        let mut expected = small.clone();
        expected.push((AccountId(u32::MAX), 7));
        assert_eq!(mixed, expected);
    }
}
