//! The business KPIs counted from rows inserted directly: each part of the statement counts
//! what its definition says (docs/kpis.md), in the window and only in it, and reads the
//! indexes of migration 13.

use std::time::Duration;

use paysync_domain::Provider;
use paysync_store::{BusinessKpis, CheckoutCounts, EntitlementCounts};
use paysync_testkit::TestDb;

const HOUR: Duration = Duration::from_secs(3600);

/// How long ago, as SQL: `in` is inside a one-hour window, `old` two hours back (outside it,
/// inside a three-hour one).
fn ago(when: &str) -> &'static str {
    match when {
        "in" => "now() - interval '10 minutes'",
        "old" => "now() - interval '2 hours'",
        _ => "null",
    }
}

/// A snapshot row of `table` with its status and when it settled.
fn snapshot(table: &str, provider: &str, id: &str, status: &str, settled: &str) -> String {
    format!(
        "insert into {table} (provider, id, status, key_terminal, key_created, key_rank, \
         key_event_id, settled_at) values ('{provider}', '{id}', '{status}', {terminal}, 1, 0, \
         'evt_{id}', {settled})",
        terminal = settled != "never",
        settled = ago(settled),
    )
}

/// A payment with its status, when it settled (succeeded) and when it was first seen failed.
fn payment(provider: &str, id: &str, status: &str, settled: &str, failed: &str) -> String {
    format!(
        "insert into payments (provider, id, status, key_terminal, key_created, key_rank, \
         key_event_id, settled_at, failed_at) values ('{provider}', '{id}', '{status}', \
         {terminal}, 1, 0, 'evt_{id}', {settled}, {failed})",
        terminal = status == "succeeded",
        settled = ago(settled),
        failed = ago(failed),
    )
}

fn dispute(provider: &str, id: &str, seen: &str) -> String {
    format!(
        "insert into disputes (provider, id, status, key_terminal, key_created, key_rank, \
         key_event_id, first_seen_at) values ('{provider}', '{id}', 'needs_response', false, 1, \
         0, 'evt_{id}', {seen})",
        seen = ago(seen),
    )
}

/// An application event of account `account`, number `seq`, with `data` as its body's data.
fn app_event(account: i64, seq: i64, kind: &str, data: &str, when: &str) -> String {
    format!(
        "insert into app_events (id, account_id, seq, type, body, created_at) values \
         ('evt_ps_{account}_{seq}', {account}, {seq}, '{kind}', \
          '{{\"id\":\"evt_ps_{account}_{seq}\",\"type\":\"{kind}\",\"data\":{data}}}', {when})",
        when = ago(when),
    )
}

#[tokio::test]
async fn every_kpi_counts_its_rows_in_the_window_and_none_outside_it() {
    let db = TestDb::new();
    let store = db.store().await.unwrap();

    // Nothing yet: every count is zero, every provider is listed.
    let empty = store.business_kpis(HOUR).await.unwrap();
    assert_eq!(empty.checkouts, CheckoutCounts::default());
    assert_eq!(
        empty
            .providers
            .iter()
            .map(|p| p.provider)
            .collect::<Vec<_>>(),
        Provider::ALL.to_vec()
    );
    assert!(empty.providers.iter().all(|p| !p.any()));
    assert_eq!((empty.new_customers, empty.churned_customers), (0, 0));
    assert_eq!(empty.entitlement_changes, EntitlementCounts::default());

    let client = db.client().await.unwrap();
    let mut statements = vec![
        // Checkouts: 2 completed, 1 expired, 1 failed in the window; an open one never
        // settled; one completed and one expired two hours ago.
        snapshot("checkout_sessions", "stripe", "cs_paid_1", "paid", "in"),
        snapshot("checkout_sessions", "stripe", "cs_paid_2", "paid", "in"),
        snapshot("checkout_sessions", "stripe", "cs_exp_1", "expired", "in"),
        snapshot("checkout_sessions", "square", "cs_fail_1", "failed", "in"),
        snapshot("checkout_sessions", "stripe", "cs_open", "open", "never"),
        snapshot("checkout_sessions", "stripe", "cs_paid_old", "paid", "old"),
        snapshot(
            "checkout_sessions",
            "stripe",
            "cs_exp_old",
            "expired",
            "old",
        ),
        // Stripe payments.
        payment("stripe", "pi_ok", "succeeded", "in", "never"),
        // Failed and recovered in the window.
        payment("stripe", "pi_rec", "succeeded", "in", "in"),
        // Recovered in the window from a failure before it.
        payment("stripe", "pi_rec_oldfail", "succeeded", "in", "old"),
        payment("stripe", "pi_fail", "failed", "never", "in"),
        // A failure seen in the window of a payment that succeeded before it (its success
        // arrived first): failed, not recovered in this window.
        payment("stripe", "pi_rec_old", "succeeded", "old", "in"),
        payment("stripe", "pi_fail_old", "failed", "never", "old"),
        payment("stripe", "pi_ok_old", "succeeded", "old", "never"),
        payment("stripe", "pi_pending", "pending", "never", "never"),
        payment("square", "sq_ok", "succeeded", "in", "never"),
        // Refunds: succeeded ones count, failed ones do not.
        snapshot("refunds", "stripe", "re_1", "succeeded", "in"),
        snapshot("refunds", "stripe", "re_failed", "failed", "in"),
        snapshot("refunds", "stripe", "re_old", "succeeded", "old"),
        snapshot("refunds", "paypal", "re_pp", "succeeded", "in"),
        dispute("stripe", "dp_1", "in"),
        dispute("stripe", "dp_old", "old"),
        dispute("authorizenet", "dp_anet", "in"),
    ];
    for _ in 0..4 {
        statements.push("insert into accounts default values".into());
    }
    statements.extend([
        // New customers: deal stages that became closed_won.
        app_event(
            1,
            1,
            "account.deal_stage_changed",
            r#"{"deal_stage":"closed_won","previous":"opportunity"}"#,
            "in",
        ),
        app_event(
            2,
            1,
            "account.deal_stage_changed",
            r#"{"deal_stage":"closed_won","previous":"opportunity"}"#,
            "old",
        ),
        app_event(
            3,
            1,
            "account.deal_stage_changed",
            r#"{"deal_stage":"closed_lost","previous":"opportunity"}"#,
            "in",
        ),
        // Entitlements.
        app_event(
            1,
            2,
            "account.entitlement_changed",
            r#"{"entitlement":"granted","previous":"denied"}"#,
            "in",
        ),
        // Churned from granted and from grace.
        app_event(
            1,
            3,
            "account.entitlement_changed",
            r#"{"entitlement":"denied","previous":"granted"}"#,
            "in",
        ),
        app_event(
            2,
            2,
            "account.entitlement_changed",
            r#"{"entitlement":"denied","previous":"grace"}"#,
            "in",
        ),
        app_event(
            3,
            2,
            "account.entitlement_changed",
            r#"{"entitlement":"grace","previous":"granted"}"#,
            "in",
        ),
        // A plan change that keeps the entitlement: an entitlement change, not a churn.
        app_event(
            4,
            1,
            "account.entitlement_changed",
            r#"{"entitlement":"granted","previous":"granted","plan":"b","previous_plan":"a"}"#,
            "in",
        ),
        app_event(
            4,
            2,
            "account.entitlement_changed",
            r#"{"entitlement":"denied","previous":"granted"}"#,
            "old",
        ),
        // Other types are not customer KPIs.
        app_event(4, 3, "account.created", r#"{"customers":[]}"#, "in"),
        app_event(
            4,
            4,
            "payment.succeeded",
            r#"{"payment":{"provider":"stripe","id":"pi_ok"},"recovered":false}"#,
            "in",
        ),
    ]);
    for sql in &statements {
        client
            .execute(sql.as_str(), &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    let k: BusinessKpis = store.business_kpis(HOUR).await.unwrap();
    assert_eq!(k.window, HOUR);
    assert_eq!(
        k.checkouts,
        CheckoutCounts {
            completed: 2,
            expired: 1,
            failed: 1
        }
    );
    assert_eq!(k.checkouts.completion_rate(), Some(0.5));
    let stripe = k.provider(Provider::Stripe);
    assert_eq!(
        (
            stripe.payments_succeeded,
            stripe.payments_failed,
            stripe.payments_recovered,
            stripe.refunds,
            stripe.disputes
        ),
        (3, 3, 2, 1, 1),
        "{stripe:?}"
    );
    let square = k.provider(Provider::Square);
    assert_eq!(
        (
            square.payments_succeeded,
            square.payments_failed,
            square.refunds
        ),
        (1, 0, 0)
    );
    assert_eq!(k.provider(Provider::Paypal).refunds, 1);
    assert_eq!(k.provider(Provider::AuthorizeNet).disputes, 1);
    assert_eq!(k.provider(Provider::AuthorizeNet).payments_succeeded, 0);
    assert_eq!((k.new_customers, k.churned_customers), (1, 2));
    assert_eq!(
        k.entitlement_changes,
        EntitlementCounts {
            granted: 2,
            grace: 1,
            denied: 2
        }
    );

    // Three hours reach the rows of two hours ago.
    let wide = store.business_kpis(3 * HOUR).await.unwrap();
    assert_eq!(
        wide.checkouts,
        CheckoutCounts {
            completed: 3,
            expired: 2,
            failed: 1
        }
    );
    let stripe = wide.provider(Provider::Stripe);
    assert_eq!(
        (
            stripe.payments_succeeded,
            stripe.payments_failed,
            stripe.payments_recovered,
            stripe.refunds,
            stripe.disputes
        ),
        // pi_rec_old now counts as recovered: its failure and its success are both in the
        // window (the failure seen after the success, as order-independent state allows).
        (5, 5, 3, 2, 2),
        "{stripe:?}"
    );
    assert_eq!((wide.new_customers, wide.churned_customers), (2, 3));
    assert_eq!(wide.entitlement_changes.denied, 3);

    // A window that ends before everything: nothing.
    let short = store.business_kpis(Duration::from_secs(60)).await.unwrap();
    assert_eq!(short.checkouts, CheckoutCounts::default());
    assert!(short.providers.iter().all(|p| !p.any()));
    assert_eq!((short.new_customers, short.churned_customers), (0, 0));
}

#[tokio::test]
async fn the_kpis_read_the_indexes_of_migration_13() {
    let db = TestDb::new();
    db.store().await.unwrap();
    // Sequential scans priced out so a usable index shows: without one, a part would scan
    // its whole table.
    let client = db.client().await.unwrap();
    client
        .batch_execute("set enable_seqscan = off")
        .await
        .unwrap();
    let plan: Vec<String> = client
        .query(
            &format!("explain {}", paysync_store::statements::BUSINESS_KPIS),
            &[&86_400.0_f64],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    for index in [
        "checkout_sessions_settled_idx",
        "payments_settled_idx",
        "payments_failed_idx",
        "refunds_settled_idx",
        "disputes_first_seen_idx",
        "app_events_type_created_idx",
    ] {
        assert!(plan.contains(index), "{index} in\n{plan}");
    }
    assert!(!plan.contains("Seq Scan"), "{plan}");
}
