//! `simulate`: run grid simulations from scenario files.

fn main() -> anyhow::Result<()> {
    Ok(())
}
