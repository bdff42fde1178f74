//! Market tests.
