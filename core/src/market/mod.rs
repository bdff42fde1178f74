//! Delivery slots, order books, double auctions, grid fees, delivery and netting.
