//! The storage layer checks what it reads back (issue 12): a value the engine never writes — a
//! negative price or slot — is an error naming its column, never clipped to 0 or dropped
//! without a word. On SQLite and PostgreSQL.

use market_engine::store::{Role, Store, StoreError, TradingRule};

use crate::{databases, unique};

/// What `result` holds if it is the `Corrupt` error the checked reads give.
fn corrupt<T: std::fmt::Debug>(result: Result<T, StoreError>) -> String {
    match result {
        Err(StoreError::Corrupt(message)) => message,
        other => panic!("expected a corrupt value, got {other:?}"),
    }
}

#[tokio::test]
async fn a_negative_value_read_back_is_an_error_naming_its_column() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let store = Store::open(&url).await.unwrap();
        let account = store
            .create_account(&unique("household"), "x", Role::Household, 0)
            .await
            .unwrap();
        let meter = unique("m");
        store
            .register_meter(&meter, account, &unique("key"), "k", 0)
            .await
            .unwrap();
        let rule = TradingRule {
            meter_id: meter.clone(),
            account_id: account,
            sell_at_least: Some(5),
            buy_at_most: None,
            keep_battery_above_bp: None,
        };
        store.set_rule(&rule, 0).await.unwrap();
        assert_eq!(store.rules().await.unwrap(), vec![rule], "{url}");

        // Written behind the engine's back: it never stores a negative price or slot.
        sqlx::query("UPDATE trading_rules SET sell_at_least = -5 WHERE meter_id = $1")
            .bind(&meter)
            .execute(store.pool())
            .await
            .unwrap();
        let message = corrupt(store.rules().await);
        assert!(
            message.contains("trading_rules.sell_at_least -5"),
            "{url}: {message}"
        );

        sqlx::query("INSERT INTO slots (slot, status, clearing_price) VALUES (-3, 'closed', NULL)")
            .execute(store.pool())
            .await
            .unwrap();
        let message = corrupt(store.closed_slots().await);
        assert!(message.contains("slot -3"), "{url}: {message}");
        store.close().await;
    }
}

/// An account's role reads back as it was written (the column also refuses any other value;
/// the checked conversion of one that got in anyway is a unit test in `store/accounts.rs`).
#[tokio::test]
async fn a_role_reads_back_as_written() {
    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let store = Store::open(&url).await.unwrap();
        let name = unique("role");
        store
            .create_account(&name, "x", Role::Household, 0)
            .await
            .unwrap();
        let read = store.account_by_name(&name).await.unwrap().unwrap();
        assert_eq!(read.role, Role::Household, "{url}");
        assert!(store.set_role(&name, Role::Operator).await.unwrap());
        let read = store.account_by_name(&name).await.unwrap().unwrap();
        assert_eq!(read.role, Role::Operator, "{url}");
        store.close().await;
    }
}

/// Market settings stored by the engine before and after the stored form had versions open
/// the market with what they say; a row a newer engine wrote (a version this one does not
/// know) stops it with an error naming the version, instead of reading it wrongly.
#[tokio::test]
async fn stored_market_settings_of_every_version_open_the_market() {
    use market_engine::market::{Market, MarketConfig, MarketError};
    use market_engine::settings::{MechanismName, StoredSettingsError};

    let dir = tempfile::tempdir().unwrap();
    for url in databases(dir.path()).await {
        let store = Store::open(&url).await.unwrap();
        let default = MarketConfig::default();
        // As the engine wrote them: before versions (no seller-margin cap, no sharing keys),
        // and versioned before the sharing keys existed.
        let unversioned = r#"{"mechanism":"continuous","price_rule":"midpoint","k_basis_points":5000,"slot_length_s":900,"window_opens_before_s":86400,"gate_closure_before_s":300,"settlement_after_s":900,"retail_per_kwh":31000,"feed_in_per_kwh":8000,"grid_fee_per_kwh":1000}"#;
        let versioned = r#"{"version":"1","mechanism":"pay-as-offer","price_rule":"k-factor","k_basis_points":5000,"seller_max_margin_basis_points":500,"slot_length_s":900,"window_opens_before_s":86400,"gate_closure_before_s":300,"settlement_after_s":900,"retail_per_kwh":32000,"feed_in_per_kwh":8000,"grid_fee_per_kwh":1000}"#;
        store
            .save_market_settings(10, unversioned, 0)
            .await
            .unwrap();
        store.save_market_settings(20, versioned, 0).await.unwrap();
        let market =
            Market::open_with(default.clone(), default.community().unwrap(), store.clone())
                .await
                .unwrap();
        let settings = market.settings();
        assert_eq!(
            settings
                .iter()
                .map(|(from, c)| (*from, c.mechanism, c.retail_per_kwh))
                .collect::<Vec<_>>(),
            vec![
                (0, MechanismName::Call, 30_000),
                (10, MechanismName::Continuous, 31_000),
                (20, MechanismName::PayAsOffer, 32_000),
            ],
            "{url}"
        );

        let newer = versioned.replace(r#""version":"1""#, r#""version":"2""#);
        store.save_market_settings(30, &newer, 0).await.unwrap();
        let refused =
            Market::open_with(default.clone(), default.community().unwrap(), store.clone())
                .await
                .err()
                .expect("a row of an unknown version is refused");
        assert!(
            matches!(
                &refused,
                MarketError::StoredSettings(StoredSettingsError::UnknownVersion { version }) if version == "2"
            ),
            "{url}: {refused:?}"
        );
        assert!(
            refused.to_string().contains("version 2"),
            "{url}: {refused}"
        );
        store.close().await;
    }
}
