//! The business KPIs: what happened to checkouts, payments, refunds, disputes and customers in
//! a recent window, counted from the billing state and the application events, not from
//! requests (definitions in `docs/kpis.md`).
//!
//! Rule of thumb: one statement, every part through a partial or composite index of migration
//! 13 (`settled_at`, `failed_at`, `first_seen_at`, `app_events (type, created_at)`), so the
//! monitor can run it for two windows every pass it refreshes them.

use std::time::Duration;

use paysync_domain::Provider;

use crate::{Store, StoreError};

/// The KPIs of one window, in one statement. Each part reads one index of migration 13:
/// - `checkout`: checkout sessions whose terminal status was first written in the window, by
///   status (`paid`, `expired`, `failed`);
/// - `payment_*`: per provider, payments that succeeded in the window (`settled_at`, the first
///   write of `succeeded`, the only terminal payment status), that were first seen failed in
///   the window (`failed_at`), and that succeeded in the window after a failure (recovered);
/// - `refund`, `dispute`: per provider, refunds that succeeded and disputes first seen;
/// - `new`, `churned`, `entitlement`: the application events of the window: deal stages that
///   became `closed_won`, entitlements that became `denied` from `granted` or `grace`, and
///   every entitlement change by its new value.
pub const BUSINESS_KPIS: &str = "\
    select 'checkout'::text, status, count(*) from checkout_sessions \
     where settled_at >= now() - $1::float8 * interval '1 second' \
       and status in ('paid', 'expired', 'failed') \
     group by status \
    union all \
    select v.part, p.provider, v.n from ( \
        select provider, \
               count(*) filter (where status = 'succeeded' \
                   and settled_at >= now() - $1::float8 * interval '1 second') as succeeded, \
               count(*) filter (where failed_at >= now() - $1::float8 * interval '1 second') as failed, \
               count(*) filter (where status = 'succeeded' and failed_at is not null \
                   and settled_at >= now() - $1::float8 * interval '1 second') as recovered \
          from payments \
         where settled_at >= now() - $1::float8 * interval '1 second' \
            or failed_at >= now() - $1::float8 * interval '1 second' \
         group by provider) p \
    cross join lateral (values ('payment_succeeded', p.succeeded), ('payment_failed', p.failed), \
                               ('payment_recovered', p.recovered)) as v(part, n) \
    union all \
    select 'refund', provider, count(*) from refunds \
     where settled_at >= now() - $1::float8 * interval '1 second' and status = 'succeeded' \
     group by provider \
    union all \
    select 'dispute', provider, count(*) from disputes \
     where first_seen_at >= now() - $1::float8 * interval '1 second' \
     group by provider \
    union all \
    select v.part, v.label, count(*) from ( \
        select type, body::jsonb -> 'data' as d from app_events \
         where type in ('account.deal_stage_changed', 'account.entitlement_changed') \
           and created_at >= now() - $1::float8 * interval '1 second') e \
    cross join lateral (values \
        ('new', '', e.type = 'account.deal_stage_changed' and e.d ->> 'deal_stage' = 'closed_won'), \
        ('churned', '', e.type = 'account.entitlement_changed' and e.d ->> 'entitlement' = 'denied' \
                        and e.d ->> 'previous' in ('granted', 'grace')), \
        ('entitlement', coalesce(e.d ->> 'entitlement', ''), e.type = 'account.entitlement_changed') \
    ) as v(part, label, hit) \
     where v.hit \
     group by v.part, v.label";

/// Checkout sessions that ended in the window, by how.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckoutCounts {
    /// Status `paid`.
    pub completed: i64,
    /// Status `expired`.
    pub expired: i64,
    /// Status `failed` (an asynchronous payment that failed).
    pub failed: i64,
}

impl CheckoutCounts {
    /// completed / (completed + expired + failed); `None` when no checkout ended.
    pub fn completion_rate(&self) -> Option<f64> {
        ratio(self.completed, self.completed + self.expired + self.failed)
    }
}

/// One provider's payments, refunds and disputes in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderKpis {
    /// The provider.
    pub provider: Provider,
    /// Payments that succeeded (first written `succeeded`) in the window.
    pub payments_succeeded: i64,
    /// Payments first seen failed in the window, whatever happened to them afterwards.
    pub payments_failed: i64,
    /// Payments that succeeded in the window after having been seen failed (at any time).
    pub payments_recovered: i64,
    /// Refunds that succeeded in the window.
    pub refunds: i64,
    /// Disputes first seen in the window.
    pub disputes: i64,
}

impl ProviderKpis {
    fn zero(provider: Provider) -> Self {
        Self {
            provider,
            payments_succeeded: 0,
            payments_failed: 0,
            payments_recovered: 0,
            refunds: 0,
            disputes: 0,
        }
    }

    /// The dunning recovery rate: recovered / failed in the window; `None` when nothing
    /// failed. A recovery in the window may belong to a failure before it, so the rate can
    /// exceed 1.
    pub fn recovery_rate(&self) -> Option<f64> {
        ratio(self.payments_recovered, self.payments_failed)
    }

    /// Whether anything at all was counted for the provider.
    pub fn any(&self) -> bool {
        self.payments_succeeded
            + self.payments_failed
            + self.payments_recovered
            + self.refunds
            + self.disputes
            > 0
    }
}

/// Entitlement changes by the entitlement they changed to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntitlementCounts {
    /// To `granted`.
    pub granted: i64,
    /// To `grace`.
    pub grace: i64,
    /// To `denied`.
    pub denied: i64,
}

/// The business KPIs of one window ending now ([`Store::business_kpis`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BusinessKpis {
    /// The window's length.
    pub window: Duration,
    /// Checkout sessions that ended in the window.
    pub checkouts: CheckoutCounts,
    /// One entry per provider, in [`Provider::ALL`]'s order, zeros included.
    pub providers: Vec<ProviderKpis>,
    /// Accounts whose deal stage became `closed_won`.
    pub new_customers: i64,
    /// Accounts whose entitlement became `denied` from `granted` or `grace`.
    pub churned_customers: i64,
    /// Every `account.entitlement_changed` event, by its new entitlement.
    pub entitlement_changes: EntitlementCounts,
}

impl BusinessKpis {
    /// The counts of `provider`.
    pub fn provider(&self, provider: Provider) -> ProviderKpis {
        self.providers
            .iter()
            .find(|p| p.provider == provider)
            .copied()
            .unwrap_or_else(|| ProviderKpis::zero(provider))
    }

    fn empty(window: Duration) -> Self {
        Self {
            window,
            checkouts: CheckoutCounts::default(),
            providers: Provider::ALL.into_iter().map(ProviderKpis::zero).collect(),
            new_customers: 0,
            churned_customers: 0,
            entitlement_changes: EntitlementCounts::default(),
        }
    }

    /// Adds one row of [`BUSINESS_KPIS`]; rows of an unknown part, status or provider are
    /// left out.
    fn add(&mut self, part: &str, label: &str, n: i64) {
        match (part, label) {
            ("checkout", "paid") => self.checkouts.completed += n,
            ("checkout", "expired") => self.checkouts.expired += n,
            ("checkout", "failed") => self.checkouts.failed += n,
            ("new", _) => self.new_customers += n,
            ("churned", _) => self.churned_customers += n,
            ("entitlement", "granted") => self.entitlement_changes.granted += n,
            ("entitlement", "grace") => self.entitlement_changes.grace += n,
            ("entitlement", "denied") => self.entitlement_changes.denied += n,
            _ => {
                let Ok(provider) = label.parse::<Provider>() else {
                    return;
                };
                let Some(p) = self.providers.iter_mut().find(|p| p.provider == provider) else {
                    return;
                };
                match part {
                    "payment_succeeded" => p.payments_succeeded += n,
                    "payment_failed" => p.payments_failed += n,
                    "payment_recovered" => p.payments_recovered += n,
                    "refund" => p.refunds += n,
                    "dispute" => p.disputes += n,
                    _ => {}
                }
            }
        }
    }
}

fn ratio(part: i64, whole: i64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

impl Store {
    /// The business KPIs of the `window` ending now (the database's `now()`), in one
    /// statement.
    pub async fn business_kpis(&self, window: Duration) -> Result<BusinessKpis, StoreError> {
        let conn = self.conn().await?;
        let stmt = conn
            .0
            .prepare_cached(BUSINESS_KPIS)
            .await
            .map_err(StoreError::db("prepare business kpis"))?;
        let rows = conn
            .0
            .query(&stmt, &[&window.as_secs_f64()])
            .await
            .map_err(StoreError::db("count business kpis"))?;
        let mut kpis = BusinessKpis::empty(window);
        for r in &rows {
            let part: String = r.get(0);
            let label: String = r.get(1);
            kpis.add(&part, &label, r.get(2));
        }
        Ok(kpis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_land_in_their_fields_and_unknown_ones_are_left_out() {
        let mut k = BusinessKpis::empty(Duration::from_secs(60));
        for (part, label, n) in [
            ("checkout", "paid", 7),
            ("checkout", "expired", 3),
            ("checkout", "failed", 1),
            ("checkout", "open", 100),
            ("payment_succeeded", "stripe", 9),
            ("payment_failed", "stripe", 5),
            ("payment_recovered", "stripe", 2),
            ("refund", "square", 4),
            ("dispute", "paypal", 1),
            ("refund", "nowhere", 50),
            ("new", "", 2),
            ("churned", "", 1),
            ("entitlement", "granted", 3),
            ("entitlement", "grace", 1),
            ("entitlement", "denied", 2),
            ("entitlement", "", 8),
        ] {
            k.add(part, label, n);
        }
        assert_eq!(
            k.checkouts,
            CheckoutCounts {
                completed: 7,
                expired: 3,
                failed: 1
            }
        );
        let stripe = k.provider(Provider::Stripe);
        assert_eq!(
            (
                stripe.payments_succeeded,
                stripe.payments_failed,
                stripe.payments_recovered
            ),
            (9, 5, 2)
        );
        assert_eq!(k.provider(Provider::Square).refunds, 4);
        assert_eq!(k.provider(Provider::Paypal).disputes, 1);
        assert!(!k.provider(Provider::AuthorizeNet).any());
        assert_eq!(k.providers.len(), Provider::ALL.len());
        assert_eq!((k.new_customers, k.churned_customers), (2, 1));
        assert_eq!(
            k.entitlement_changes,
            EntitlementCounts {
                granted: 3,
                grace: 1,
                denied: 2
            }
        );
        assert_eq!(k.checkouts.completion_rate(), Some(7.0 / 11.0));
        assert_eq!(stripe.recovery_rate(), Some(0.4));
        assert_eq!(k.provider(Provider::Square).recovery_rate(), None);
        assert_eq!(CheckoutCounts::default().completion_rate(), None);
    }
}
