//! The state writes of a batch of billing events, folded so that every row is written once.
//!
//! The worker applies a batch with one statement per table (an `unnest` upsert), and such a
//! statement may not touch the same row twice. So the writes of all the batch's events are
//! folded here first, one per row, in a way that ends in exactly the state that applying them
//! one after the other would leave:
//!
//! - object snapshots: the fields of the snapshot with the greatest [`OrderKey`] (the first of
//!   equal keys, as a later one only replaces on a strictly greater key), the first known
//!   account and customer links, the largest refunded amount;
//! - customers: deletion is sticky, contact details come from the snapshot with the greatest
//!   `(created, event id)` among those that carry any;
//! - tasks and outbox rows: once per provider, intent and source, with the first known account
//!   (and due date), the notice filled in from later events.
//!
//! Rule of thumb: a fold is only correct together with the store's statements, whose rules
//! ([`SnapRow::apply`] and friends, the model the tests check the fold against) it mirrors.

use std::collections::HashMap;

use crate::Provider;
use crate::billing::{Channel, CustomerSnap, Intent, ObjectKind, OrderKey, SideEffect, Snap};

/// An object snapshot to write: the snapshot, its order key, and the links known when its
/// event was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapWrite {
    /// The event's provider (rows are keyed by provider and object id).
    pub provider: Provider,
    /// The snapshot.
    pub snap: Snap,
    /// Its order key.
    pub key: OrderKey,
    /// The account its event was linked to.
    pub account: Option<i64>,
    /// The provider customer its event belongs to.
    pub customer: Option<String>,
}

/// What a batch writes to one provider customer's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerWrite {
    /// The event's provider.
    pub provider: Provider,
    /// `cus_…`.
    pub id: String,
    /// Whether any snapshot said it is deleted (deletion is never undone).
    pub deleted: bool,
    /// The contact details of the newest snapshot that carried any: its `(created, event id)`,
    /// email and name.
    pub contact: Option<Contact>,
}

/// Contact details with the key that decides which ones win.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// Provider `created` of the event.
    pub created: i64,
    /// The event id (ties).
    pub event_id: String,
    /// Email.
    pub email: Option<String>,
    /// Name.
    pub name: Option<String>,
}

/// A task or outbox row to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectWrite {
    /// The event's provider (rows are keyed by provider, intent and source).
    pub provider: Provider,
    /// The account, when known.
    pub account: Option<i64>,
    /// The task or message.
    pub effect: SideEffect,
}

/// A batch's writes, one per row.
#[derive(Debug, Default)]
pub struct Writes {
    snaps: Vec<SnapWrite>,
    snap_rows: HashMap<(Provider, ObjectKind, String), usize>,
    customers: Vec<CustomerWrite>,
    customer_rows: HashMap<(Provider, String), usize>,
    effects: Vec<EffectWrite>,
    effect_rows: HashMap<(Provider, Intent, String), usize>,
}

impl Writes {
    /// No writes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a snapshot write, folded into an earlier one of the same row.
    pub fn snap(&mut self, write: SnapWrite) {
        let row = (write.provider, write.snap.kind, write.snap.id.clone());
        match self.snap_rows.get(&row) {
            Some(&i) => self.snaps[i].fold(write),
            None => {
                self.snap_rows.insert(row, self.snaps.len());
                self.snaps.push(write);
            }
        }
    }

    /// Adds a customer snapshot of an event created at `created` with id `event_id`.
    pub fn customer(
        &mut self,
        provider: Provider,
        snap: &CustomerSnap,
        created: i64,
        event_id: &str,
    ) {
        let contact = (snap.email.is_some() || snap.name.is_some()).then(|| Contact {
            created,
            event_id: event_id.to_owned(),
            email: snap.email.clone(),
            name: snap.name.clone(),
        });
        let write = CustomerWrite {
            provider,
            id: snap.id.clone(),
            deleted: snap.deleted,
            contact,
        };
        let row = (provider, snap.id.clone());
        match self.customer_rows.get(&row) {
            Some(&i) => self.customers[i].fold(write),
            None => {
                self.customer_rows.insert(row, self.customers.len());
                self.customers.push(write);
            }
        }
    }

    /// Adds a task or outbox row of an event of `provider` for `account`.
    pub fn effect(&mut self, provider: Provider, account: Option<i64>, effect: SideEffect) {
        let row = (provider, effect.intent, effect.source_id.clone());
        match self.effect_rows.get(&row) {
            Some(&i) => {
                let earlier = &mut self.effects[i];
                earlier.account = earlier.account.or(account);
                earlier.effect.due_at = earlier.effect.due_at.or(effect.due_at);
                earlier.effect.notice.fill(&effect.notice);
            }
            None => {
                self.effect_rows.insert(row, self.effects.len());
                self.effects.push(EffectWrite {
                    provider,
                    account,
                    effect,
                });
            }
        }
    }

    /// The snapshot writes of `kind`, one per row.
    pub fn snaps(&self, kind: ObjectKind) -> impl Iterator<Item = &SnapWrite> {
        self.snaps.iter().filter(move |w| w.snap.kind == kind)
    }

    /// Every snapshot write, one per row.
    pub fn all_snaps(&self) -> &[SnapWrite] {
        &self.snaps
    }

    /// The customer writes, one per customer.
    pub fn customers(&self) -> &[CustomerWrite] {
        &self.customers
    }

    /// The task and outbox writes of `channel`, one per kind and source.
    pub fn effects(&self, channel: Channel) -> impl Iterator<Item = &EffectWrite> {
        self.effects
            .iter()
            .filter(move |w| w.effect.channel() == channel)
    }

    /// Whether nothing is to be written.
    pub fn is_empty(&self) -> bool {
        self.snaps.is_empty() && self.customers.is_empty() && self.effects.is_empty()
    }
}

impl SnapWrite {
    /// Folds `later` (applied after `self`) into `self`.
    fn fold(&mut self, later: SnapWrite) {
        let account = self.account.or(later.account);
        let customer = self.customer.take().or(later.customer.clone());
        let refunded = self.snap.refunded.max(later.snap.refunded);
        if later.key > self.key {
            *self = later;
        }
        self.account = account;
        self.customer = customer;
        self.snap.refunded = refunded;
    }
}

impl CustomerWrite {
    /// Folds `later` (applied after `self`) into `self`.
    fn fold(&mut self, later: CustomerWrite) {
        self.deleted |= later.deleted;
        match (&self.contact, later.contact) {
            (_, None) => {}
            (None, Some(c)) => self.contact = Some(c),
            (Some(mine), Some(c)) => {
                if (c.created, c.event_id.as_str()) > (mine.created, mine.event_id.as_str()) {
                    self.contact = Some(c);
                }
            }
        }
    }
}

/// A stored snapshot row as the store's upsert treats it: the model the fold is checked
/// against (the SQL in `paysync-store` follows the same rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapRow {
    /// The snapshot whose fields are stored (with `refunded` the stored refunded amount).
    pub snap: Snap,
    /// The key of the stored snapshot.
    pub key: OrderKey,
    /// Account link.
    pub account: Option<i64>,
    /// Customer link.
    pub customer: Option<String>,
}

impl SnapRow {
    /// The row after the upsert of `write` (`None`: no row yet).
    pub fn apply(row: Option<SnapRow>, write: &SnapWrite) -> SnapRow {
        let Some(mut row) = row else {
            return SnapRow {
                snap: write.snap.clone(),
                key: write.key.clone(),
                account: write.account,
                customer: write.customer.clone(),
            };
        };
        let refunded = row.snap.refunded.max(write.snap.refunded);
        if write.key > row.key {
            row.snap = write.snap.clone();
            row.key = write.key.clone();
        }
        row.snap.refunded = refunded;
        row.account = row.account.or(write.account);
        row.customer = row.customer.or(write.customer.clone());
        row
    }
}

/// A stored provider customer as the store's update treats it (the model of
/// [`CustomerWrite`]'s fold).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CustomerRow {
    /// Deleted.
    pub deleted: bool,
    /// `(created, event id)` of the stored contact details (`(0, "")` before any).
    pub key: (i64, String),
    /// Email.
    pub email: Option<String>,
    /// Name.
    pub name: Option<String>,
}

impl CustomerRow {
    /// The row after the update with `write`.
    pub fn apply(mut self, write: &CustomerWrite) -> CustomerRow {
        self.deleted |= write.deleted;
        if let Some(c) = &write.contact
            && (c.created, c.event_id.as_str()) > (self.key.0, self.key.1.as_str())
        {
            self.key = (c.created, c.event_id.clone());
            self.email = c.email.clone();
            self.name = c.name.clone();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn snap(kind: ObjectKind, id: &str, status: &str, amount: i64, refunded: i64) -> Snap {
        Snap {
            kind,
            id: id.into(),
            status: status.into(),
            amount,
            currency: "usd".into(),
            parent: None,
            detail: None,
            at: None,
            refunded,
        }
    }

    fn write(snap: Snap, created: i64, event: &str, account: Option<i64>) -> SnapWrite {
        let key = crate::billing::order_key(&snap, created, event);
        SnapWrite {
            provider: Provider::Stripe,
            snap,
            key,
            account,
            customer: account.map(|a| format!("cus_{a}")),
        }
    }

    /// The rows after applying `writes` one by one, from `start`.
    fn one_by_one(
        start: &HashMap<(ObjectKind, String), SnapRow>,
        writes: &[SnapWrite],
    ) -> HashMap<(ObjectKind, String), SnapRow> {
        let mut rows = start.clone();
        for w in writes {
            let k = (w.snap.kind, w.snap.id.clone());
            let row = SnapRow::apply(rows.remove(&k), w);
            rows.insert(k, row);
        }
        rows
    }

    fn folded(
        start: &HashMap<(ObjectKind, String), SnapRow>,
        writes: &[SnapWrite],
    ) -> HashMap<(ObjectKind, String), SnapRow> {
        let mut batch = Writes::new();
        for w in writes {
            batch.snap(w.clone());
        }
        let ids: Vec<_> = batch
            .all_snaps()
            .iter()
            .map(|w| (w.snap.kind, w.snap.id.clone()))
            .collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "one write per row");
        one_by_one(start, batch.all_snaps())
    }

    #[test]
    fn a_later_payment_status_and_the_largest_refund_win_in_one_write() {
        let writes = [
            write(
                snap(ObjectKind::Payment, "pi_1", "pending", 500, 0),
                10,
                "evt_a",
                None,
            ),
            write(
                snap(ObjectKind::Payment, "pi_1", "succeeded", 500, 200),
                11,
                "evt_b",
                Some(7),
            ),
            write(
                snap(ObjectKind::Payment, "pi_1", "failed", 500, 100),
                12,
                "evt_c",
                Some(8),
            ),
        ];
        let mut batch = Writes::new();
        for w in &writes {
            batch.snap(w.clone());
        }
        let [only] = batch.all_snaps() else {
            panic!("one row")
        };
        assert_eq!(
            only.snap.status, "succeeded",
            "terminal beats the later failure"
        );
        assert_eq!(only.snap.refunded, 200);
        assert_eq!(only.account, Some(7), "the first known account");
        assert_eq!(only.key.event_id, "evt_b");
    }

    #[test]
    fn customer_contact_comes_from_the_newest_snapshot_that_has_one_and_deletion_sticks() {
        let mut batch = Writes::new();
        let named = |email: Option<&str>, deleted| CustomerSnap {
            id: "cus_1".into(),
            email: email.map(str::to_owned),
            name: None,
            deleted,
        };
        batch.customer(
            Provider::Stripe,
            &named(Some("new@example.com"), false),
            20,
            "evt_2",
        );
        batch.customer(
            Provider::Stripe,
            &named(Some("old@example.com"), false),
            10,
            "evt_1",
        );
        batch.customer(Provider::Stripe, &named(None, true), 30, "evt_3");
        let [c] = batch.customers() else {
            panic!("one row")
        };
        assert!(c.deleted);
        let contact = c.contact.as_ref().expect("contact kept");
        assert_eq!(contact.email.as_deref(), Some("new@example.com"));
        assert_eq!((contact.created, contact.event_id.as_str()), (20, "evt_2"));
    }

    #[test]
    fn an_effect_keeps_the_first_known_account_and_due_date() {
        let mut batch = Writes::new();
        let task = |due| SideEffect {
            intent: Intent::DisputeResponse,
            source_id: "dp_1".into(),
            due_at: due,
            notice: Default::default(),
        };
        batch.effect(Provider::Stripe, None, task(None));
        batch.effect(Provider::Stripe, Some(3), task(Some(99)));
        batch.effect(Provider::Stripe, Some(4), task(Some(100)));
        let all: Vec<_> = batch.effects(Channel::Task).collect();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].account, all[0].effect.due_at), (Some(3), Some(99)));
        assert_eq!(batch.effects(Channel::Outbox).count(), 0);
    }

    #[test]
    fn a_message_gathers_its_notice_from_every_event_about_it() {
        use crate::intent::Notice;
        let mut batch = Writes::new();
        let receipt = |notice| SideEffect {
            intent: Intent::ReceiptEmail,
            source_id: "pi_1".into(),
            due_at: None,
            notice,
        };
        batch.effect(
            Provider::Stripe,
            Some(1),
            receipt(Notice {
                amount: Some(500),
                ..Notice::default()
            }),
        );
        batch.effect(
            Provider::Stripe,
            Some(1),
            receipt(Notice {
                amount: Some(1),
                email: Some("a@example.com".into()),
                ..Notice::default()
            }),
        );
        let [w] = batch.effects(Channel::Outbox).collect::<Vec<_>>()[..] else {
            panic!("one row")
        };
        assert_eq!(w.effect.notice.amount, Some(500));
        assert_eq!(w.effect.notice.email.as_deref(), Some("a@example.com"));
    }

    fn any_write() -> impl Strategy<Value = SnapWrite> {
        let kinds = prop_oneof![Just(ObjectKind::Payment), Just(ObjectKind::Subscription)];
        (
            kinds,
            0..3usize,
            0..4usize,
            0..3i64,
            0..4usize,
            0..3i64,
            prop::option::of(1..4i64),
        )
            .prop_map(|(kind, id, status, created, event, refunded, account)| {
                let statuses: &[&str] = match kind {
                    ObjectKind::Payment => &["pending", "failed", "succeeded", "pending"],
                    _ => &["trialing", "active", "past_due", "canceled"],
                };
                write(
                    snap(
                        kind,
                        &format!("o{id}"),
                        statuses[status],
                        100,
                        refunded * 50,
                    ),
                    created,
                    &format!("evt_{event}"),
                    account,
                )
            })
    }

    fn any_customer_snap() -> impl Strategy<Value = (CustomerSnap, i64, String)> {
        (
            0..2usize,
            prop::option::of(0..3usize),
            any::<bool>(),
            0..3i64,
            0..4usize,
        )
            .prop_map(|(id, email, deleted, created, event)| {
                let snap = CustomerSnap {
                    id: format!("cus_{id}"),
                    email: email.map(|e| format!("e{e}@example.com")),
                    name: None,
                    deleted,
                };
                (snap, created, format!("evt_{event}"))
            })
    }

    proptest! {
        /// Customer writes folded and applied once per customer leave what applying each
        /// snapshot in turn leaves.
        #[test]
        fn folding_customers_equals_applying_one_by_one(
            snaps in prop::collection::vec(any_customer_snap(), 0..10),
        ) {
            let mut rows: HashMap<String, CustomerRow> = HashMap::new();
            let mut batch = Writes::new();
            for (snap, created, event) in &snaps {
                let mut single = Writes::new();
                single.customer(Provider::Stripe, snap, *created, event);
                let row = rows.remove(&snap.id).unwrap_or_default();
                rows.insert(snap.id.clone(), row.apply(&single.customers()[0]));
                batch.customer(Provider::Stripe, snap, *created, event);
            }
            let mut folded: HashMap<String, CustomerRow> = HashMap::new();
            for w in batch.customers() {
                prop_assert!(!folded.contains_key(&w.id), "one write per customer");
                folded.insert(w.id.clone(), CustomerRow::default().apply(w));
            }
            prop_assert_eq!(folded, rows);
        }

        /// Folding a batch and writing each row once leaves what writing every snapshot one
        /// after the other leaves, from any stored state.
        #[test]
        fn folding_equals_applying_one_by_one(
            before in prop::collection::vec(any_write(), 0..6),
            batch in prop::collection::vec(any_write(), 0..12),
        ) {
            let start = one_by_one(&HashMap::new(), &before);
            prop_assert_eq!(folded(&start, &batch), one_by_one(&start, &batch));
        }
    }
}
