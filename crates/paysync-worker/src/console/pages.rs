//! The console's pages and form posts. Reads go through the store's console queries; every
//! action goes through [`Ops`](crate::ops::Ops) with [`ACTOR`] as the actor, and a bulk action
//! first shows a preview of how many it touches, then acts on the confirmed form.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use bytes::Bytes;
use minijinja::{Value, context};
use paysync_domain::Provider;
use paysync_domain::billing::account_view;
use paysync_domain::money::format_amount;
use paysync_store::{BusinessKpis, DeadLetterFilter, DeliveryFilter, EventSearch};
use prometheus::core::Collector;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{ACTOR, Console, Fields, Operator, PAGE};
use crate::ops::outbox::{DeliverySelection, DeliveryView, DestinationView, ForcedBreaker};
use crate::ops::{
    ActionView, EventView, GroupView, LetterView, OpsError, ReplaySelection, Selection, ts,
};

/// The overview counts events committed in this window.
const RATE_WINDOW_SECS: i64 = 300;

/// A query parameter that is absent or blank means "no filter".
fn given(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn refused(message: impl Into<String>) -> OpsError {
    OpsError::Refused(message.into())
}

/// An RFC 3339 time from a form or a query (`datetime-local` values are read as UTC).
fn parse_time(name: &str, raw: Option<String>) -> Result<Option<OffsetDateTime>, OpsError> {
    let Some(raw) = raw else { return Ok(None) };
    if let Ok(t) = OffsetDateTime::parse(&raw, &Rfc3339) {
        return Ok(Some(t));
    }
    for suffix in [":00Z", "Z"] {
        if let Ok(t) = OffsetDateTime::parse(&format!("{raw}{suffix}"), &Rfc3339) {
            return Ok(Some(t));
        }
    }
    Err(refused(format!(
        "{name}: {raw:?} is not a time; use RFC 3339, e.g. 2026-12-05T10:00:00Z"
    )))
}

fn provider(raw: &str) -> Result<Provider, OpsError> {
    raw.parse().map_err(|e| refused(format!("{e}")))
}

// ---- overview ----------------------------------------------------------------------------

pub(crate) async fn overview(State(c): State<Console>, op: Operator) -> Response {
    let store = c.ops().store();
    let [(_, day), (_, week)] = crate::metrics::BUSINESS_WINDOWS;
    let (rates, groups, destinations, checkpoints, day, week) = tokio::join!(
        store.event_rates(RATE_WINDOW_SECS),
        c.ops().groups(),
        c.ops().outbox_destinations(),
        store.reconcile_checkpoints(),
        store.business_kpis(day),
        store.business_kpis(week),
    );
    let mut problems: Vec<String> = Vec::new();
    let mut unreadable: Vec<String> = Vec::new();
    let business = match (day, week) {
        (Ok(day), Ok(week)) => business_rows(&day, &week),
        (Err(e), _) | (_, Err(e)) => {
            unreadable.push(format!("business KPIs: {e}"));
            Vec::new()
        }
    };
    let rates: Vec<Value> = match rates {
        Ok(rows) => rows
            .iter()
            .map(|r| {
                context! {
                    provider => r.provider, outcome => r.outcome, count => r.count,
                    per_second => format!("{:.2}", r.count as f64 / RATE_WINDOW_SECS as f64),
                    lag_p50 => format!("{:.2}", r.lag_p50_s),
                    lag_max => format!("{:.2}", r.lag_max_s),
                }
            })
            .collect(),
        Err(e) => {
            unreadable.push(format!("event log: {e}"));
            Vec::new()
        }
    };
    let groups: Vec<GroupView> = groups.unwrap_or_else(|e| {
        unreadable.push(format!("dead letters: {e}"));
        Vec::new()
    });
    let open: i64 = groups.iter().map(|g| g.count).sum();
    if open > 0 {
        problems.push(format!(
            "{open} open dead letters in {} groups",
            groups.len()
        ));
    }
    let destinations: Vec<DestinationView> = destinations.unwrap_or_else(|e| {
        unreadable.push(format!("outbox: {e}"));
        Vec::new()
    });
    let now = OffsetDateTime::now_utc();
    for d in &destinations {
        if d.breaker_state != "closed" || d.forced == "open" {
            problems.push(format!(
                "{}: breaker {} (forced {})",
                d.name, d.breaker_state, d.forced
            ));
        }
        if let Some(reason) = &d.disabled_reason {
            problems.push(format!("{}: disabled ({reason})", d.name));
        }
        if d.dead > 0 {
            problems.push(format!("{}: {} dead deliveries", d.name, d.dead));
        }
    }
    let destinations: Vec<Value> = destinations
        .iter()
        .map(|d| {
            let paused = d
                .paused_until
                .as_deref()
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
                .is_some_and(|t| t > now);
            context! { paused, ..Value::from_serialize(d) }
        })
        .collect();
    let checkpoints = checkpoints.unwrap_or_else(|e| {
        unreadable.push(format!("reconciliation: {e}"));
        Vec::new()
    });
    let readable: Vec<&'static str> =
        c.0.parts
            .reconcile
            .sources
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|s| s.provider().as_str())
            .collect();
    let queues = queue_depths(&c);
    if let Some((_, n)) = queues.iter().find(|(q, n)| q.starts_with("dead") && *n > 0) {
        problems.push(format!("{n} messages wait in the dead-letter queue"));
    }
    c.page(
        &op,
        "overview.html",
        context! {
            title => "Overview", nav => "overview",
            refresh => 15,
            window_minutes => RATE_WINDOW_SECS / 60,
            rates, business, groups => groups.iter().take(10).collect::<Vec<_>>(), open,
            destinations, checkpoints, readable, queues, problems, unreadable,
            in_flight => c.0.parts.metrics.in_flight.get(),
        },
    )
}

/// The rows of the overview's business table: each measure of `docs/kpis.md` over the last
/// 24 h and the last 7 d, from the same store read as the `paysync_business_*` gauges. The
/// payment rows are per provider, for the providers with anything counted in either window
/// (all providers together, all zeros, when none has).
fn business_rows(day: &BusinessKpis, week: &BusinessKpis) -> Vec<Value> {
    fn rate(r: Option<f64>) -> String {
        r.map_or_else(|| "–".to_owned(), |r| format!("{:.1} %", r * 100.0))
    }
    /// The counts of `provider`, or of every provider together.
    fn of(k: &BusinessKpis, provider: Option<Provider>) -> [i64; 5] {
        k.providers
            .iter()
            .filter(|p| provider.is_none_or(|wanted| p.provider == wanted))
            .fold([0; 5], |t, p| {
                [
                    t[0] + p.payments_succeeded,
                    t[1] + p.payments_failed,
                    t[2] + p.payments_recovered,
                    t[3] + p.refunds,
                    t[4] + p.disputes,
                ]
            })
    }
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let (cd, cw) = (&day.checkouts, &week.checkouts);
    for (measure, d, w) in [
        ("Checkouts completed", cd.completed, cw.completed),
        ("Checkouts expired", cd.expired, cw.expired),
        ("Checkouts failed", cd.failed, cw.failed),
    ] {
        rows.push((measure.into(), d.to_string(), w.to_string()));
    }
    rows.push((
        "Checkout completion rate".into(),
        rate(cd.completion_rate()),
        rate(cw.completion_rate()),
    ));
    let active: Vec<Option<Provider>> = Provider::ALL
        .into_iter()
        .filter(|p| day.provider(*p).any() || week.provider(*p).any())
        .map(Some)
        .collect();
    let shown = if active.is_empty() {
        vec![None]
    } else {
        active
    };
    for provider in shown {
        let name = provider.map_or("all providers", Provider::as_str);
        let (d, w) = (of(day, provider), of(week, provider));
        for (i, measure) in [
            "Payments succeeded",
            "Payments failed",
            "Payments recovered",
        ]
        .into_iter()
        .enumerate()
        {
            rows.push((
                format!("{measure} ({name})"),
                d[i].to_string(),
                w[i].to_string(),
            ));
        }
        let recovery = |c: [i64; 5]| rate((c[1] > 0).then(|| c[2] as f64 / c[1] as f64));
        rows.push((
            format!("Dunning recovery rate ({name})"),
            recovery(d),
            recovery(w),
        ));
        rows.push((
            format!("Refunds ({name})"),
            d[3].to_string(),
            w[3].to_string(),
        ));
        rows.push((
            format!("Disputes ({name})"),
            d[4].to_string(),
            w[4].to_string(),
        ));
    }
    let (ed, ew) = (&day.entitlement_changes, &week.entitlement_changes);
    for (measure, d, w) in [
        ("New customers", day.new_customers, week.new_customers),
        (
            "Churned customers",
            day.churned_customers,
            week.churned_customers,
        ),
        ("Entitlement changes to granted", ed.granted, ew.granted),
        ("Entitlement changes to grace", ed.grace, ew.grace),
        ("Entitlement changes to denied", ed.denied, ew.denied),
    ] {
        rows.push((measure.into(), d.to_string(), w.to_string()));
    }
    rows.into_iter()
        .map(|(measure, day, week)| context! { measure, day, week })
        .collect()
}

/// The queue depths the worker's monitor last read (`paysync_queue_messages`): the work queue,
/// the dead-letter queue, and the retry delay levels summed into one line.
fn queue_depths(c: &Console) -> Vec<(String, i64)> {
    let mut work = None;
    let mut dead = None;
    let mut delayed = None;
    for family in c.0.parts.metrics.queue_messages.collect() {
        for m in family.get_metric() {
            let Some(queue) = m.get_label().first().map(|l| l.value()) else {
                continue;
            };
            let n = m.get_gauge().get_value() as i64;
            match queue {
                "work" => work = Some(n),
                "dead" => dead = Some(n),
                q if q.starts_with("delay.") => *delayed.get_or_insert(0) += n,
                _ => {}
            }
        }
    }
    [
        ("work", work),
        ("waiting to retry (delay levels)", delayed),
        ("dead letters (before storing)", dead),
    ]
    .into_iter()
    .filter_map(|(name, n)| Some((name.to_owned(), n?)))
    .collect()
}

// ---- dead letters ------------------------------------------------------------------------

pub(crate) async fn dlq(State(c): State<Console>, op: Operator) -> Response {
    match c.ops().groups().await {
        Ok(groups) => c.page(
            &op,
            "dlq.html",
            context! { title => "Dead letters", nav => "dlq", groups },
        ),
        Err(e) => c.failed(&op, &e),
    }
}

#[derive(Deserialize)]
pub(crate) struct LettersQuery {
    group: Option<String>,
    state: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    after: Option<i64>,
}

pub(crate) async fn letters(
    State(c): State<Console>,
    op: Operator,
    Query(q): Query<LettersQuery>,
) -> Response {
    let state = given(&q.state).unwrap_or_else(|| "open".into());
    if !["open", "retried", "archived"].contains(&state.as_str()) {
        return c.failed(&op, &refused("state is one of open, retried, archived"));
    }
    let filter = DeadLetterFilter {
        group: given(&q.group),
        event_type: given(&q.event_type),
        since: None,
        state: Some(state.clone()),
        limit: PAGE,
    };
    let page = match c
        .ops()
        .store()
        .dead_letter_page(&filter, q.after, PAGE)
        .await
    {
        Ok(p) => p,
        Err(e) => return c.failed(&op, &e.into()),
    };
    let group = match &filter.group {
        Some(g) => match c.ops().group(g).await {
            Ok(group) => group,
            Err(e) => return c.failed(&op, &e),
        },
        None => None,
    };
    let letters: Vec<LetterView> = page.rows.iter().map(LetterView::summary).collect();
    c.page(
        &op,
        "letters.html",
        context! {
            title => "Dead letters", nav => "dlq", letters, group,
            fingerprint => filter.group, state, event_type => filter.event_type,
            next => page.next, first => q.after.is_none(),
        },
    )
}

pub(crate) async fn letter(
    State(c): State<Console>,
    op: Operator,
    Path(id): Path<i64>,
) -> Response {
    match c.ops().show(id).await {
        Ok(Some(letter)) => {
            let body = letter
                .body
                .as_ref()
                .filter(|b| !b.is_null())
                .and_then(|b| serde_json::to_string_pretty(b).ok());
            let headers = letter
                .headers
                .as_ref()
                .and_then(|h| serde_json::to_string_pretty(h).ok());
            c.page(
                &op,
                "letter.html",
                context! { title => format!("Dead letter {id}"), nav => "dlq", letter, body, headers },
            )
        }
        Ok(None) => c.failed(&op, &OpsError::NotFound(format!("no dead letter {id}"))),
        Err(e) => c.failed(&op, &e),
    }
}

/// The dead letters a form means: the ticked ids, the whole group, or every open letter.
fn letter_selection(form: &Fields) -> Result<(Selection, String), OpsError> {
    match form.get("scope") {
        Some("ids") => {
            let ids: Vec<i64> = form
                .all("id")
                .map(|v| {
                    v.parse()
                        .map_err(|_| refused(format!("{v:?} is not a dead letter id")))
                })
                .collect::<Result<_, _>>()?;
            if ids.is_empty() {
                return Err(refused("tick at least one dead letter"));
            }
            let what = format!("{} selected", ids.len());
            Ok((Selection::Ids(ids), what))
        }
        Some("group") => {
            let g = form.get("group").ok_or_else(|| refused("no group given"))?;
            Ok((Selection::Group(g.to_owned()), format!("group {g}")))
        }
        Some("all") => Ok((Selection::All, "every open dead letter".into())),
        _ => Err(refused(
            "say which dead letters: the ticked ones, a group or all",
        )),
    }
}

/// The fields a preview's confirm form repeats.
fn carried(form: &Fields, names: &[&str]) -> Vec<(String, String)> {
    form.0
        .iter()
        .filter(|(k, _)| names.contains(&k.as_str()))
        .cloned()
        .collect()
}

pub(crate) async fn dlq_retry(State(c): State<Console>, op: Operator, body: Bytes) -> Response {
    dlq_action(c, op, body, true).await
}

pub(crate) async fn dlq_archive(State(c): State<Console>, op: Operator, body: Bytes) -> Response {
    dlq_action(c, op, body, false).await
}

async fn dlq_action(c: Console, op: Operator, body: Bytes, retry: bool) -> Response {
    let form = match c.form(&op, &body) {
        Ok(f) => f,
        Err(refusal) => return *refusal,
    };
    let (selection, what) = match letter_selection(&form) {
        Ok(s) => s,
        Err(e) => return c.failed(&op, &e),
    };
    let back = match &selection {
        Selection::Group(g) => format!("/console/dlq/letters?group={}", super::url_encode(g)),
        _ => "/console/dlq".to_owned(),
    };
    let verb = if retry { "Retry" } else { "Archive" };
    if form.get("confirm") != Some("yes") {
        let count = match c.ops().count_open(&selection).await {
            Ok(n) => n,
            Err(e) => return c.failed(&op, &e),
        };
        let explain = if retry {
            "Each goes back to the work queue with a fresh attempt budget and is marked retried once \
             the broker confirmed it. Fix the cause first, or they fail again."
        } else {
            "They are kept, hidden from the open view; the purge deletes archived letters later."
        };
        return c.page(
            &op,
            "preview.html",
            context! {
                title => format!("{verb} dead letters"), nav => "dlq",
                action => if retry { "/console/dlq/retry" } else { "/console/dlq/archive" },
                verb, count, noun => "open dead letter", what, explain, back,
                fields => carried(&form, &["scope", "id", "group"]),
            },
        );
    }
    if retry {
        match c.ops().retry(&selection, false, ACTOR, &|_, _| {}).await {
            Ok(r) => c.done(
                &op,
                format!(
                    "Retried {} of {} dead letters ({what}).",
                    r.retried, r.selected
                ),
                &back,
            ),
            Err(e) => c.failed(&op, &e),
        }
    } else {
        match c.ops().archive(&selection, ACTOR).await {
            Ok(r) => c.done(
                &op,
                format!(
                    "Archived {} of {} dead letters ({what}).",
                    r.archived, r.selected
                ),
                &back,
            ),
            Err(e) => c.failed(&op, &e),
        }
    }
}

// ---- events ------------------------------------------------------------------------------

#[derive(Deserialize, serde::Serialize, Default)]
pub(crate) struct EventsQuery {
    provider: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    id: Option<String>,
    account: Option<String>,
    since: Option<String>,
    until: Option<String>,
    before: Option<i64>,
}

fn event_search(q: &EventsQuery) -> Result<EventSearch, OpsError> {
    let provider = given(&q.provider)
        .map(|p| provider(&p).map(|p| p.as_str().to_owned()))
        .transpose()?;
    let account_id = given(&q.account)
        .map(|a| {
            a.parse::<i64>()
                .map_err(|_| refused(format!("account: {a:?} is not an account id")))
        })
        .transpose()?;
    Ok(EventSearch {
        provider,
        event_type: given(&q.event_type),
        event_id: given(&q.id),
        account_id,
        since: parse_time("since", given(&q.since))?,
        until: parse_time("until", given(&q.until))?,
    })
}

pub(crate) async fn events(
    State(c): State<Console>,
    op: Operator,
    Query(q): Query<EventsQuery>,
) -> Response {
    let search = match event_search(&q) {
        Ok(s) => s,
        Err(e) => return c.failed(&op, &e),
    };
    let page = match c.ops().store().search_events(&search, q.before, PAGE).await {
        Ok(p) => p,
        Err(e) => return c.failed(&op, &e.into()),
    };
    let events: Vec<EventView> = page.rows.iter().map(EventView::from).collect();
    // A bulk replay is by provider, type and time, the selection the CLI and API offer.
    let bulk = search.provider.is_some() && search.event_type.is_some() && search.since.is_some();
    let next = page.next.map(|before| {
        let mut query = json!(q);
        query["before"] = json!(before);
        serde_urlencoded_query(&query)
    });
    c.page(
        &op,
        "events.html",
        context! {
            title => "Events", nav => "events", events, q, next, bulk,
            providers => Provider::ALL.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        },
    )
}

/// A query string of the non-empty string and number fields of `v`.
fn serde_urlencoded_query(v: &serde_json::Value) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    if let Some(map) = v.as_object() {
        for (k, v) in map {
            match v {
                serde_json::Value::String(t) if !t.trim().is_empty() => {
                    s.append_pair(k, t);
                }
                serde_json::Value::Number(n) => {
                    s.append_pair(k, &n.to_string());
                }
                _ => {}
            }
        }
    }
    s.finish()
}

pub(crate) async fn event(
    State(c): State<Console>,
    op: Operator,
    Path((provider_name, id)): Path<(String, String)>,
) -> Response {
    let p = match provider(&provider_name) {
        Ok(p) => p,
        Err(e) => return c.failed(&op, &e),
    };
    let store = c.ops().store();
    let (row, letters) = tokio::join!(
        store.event(p.as_str(), &id),
        store.dead_letters_of_event(p.as_str(), &id)
    );
    let row = match row {
        Ok(Some(r)) => r,
        Ok(None) => {
            return c.failed(
                &op,
                &OpsError::NotFound(format!("no {p} event {id} in the log")),
            );
        }
        Err(e) => return c.failed(&op, &e.into()),
    };
    let view = EventView::from(&row);
    let payload = view
        .payload
        .as_ref()
        .and_then(|b| serde_json::to_string_pretty(b).ok());
    let letters: Vec<LetterView> = letters
        .unwrap_or_default()
        .iter()
        .map(LetterView::summary)
        .collect();
    c.page(
        &op,
        "event.html",
        context! { title => format!("Event {id}"), nav => "events", event => view, payload, letters },
    )
}

pub(crate) async fn replay(State(c): State<Console>, op: Operator, body: Bytes) -> Response {
    let form = match c.form(&op, &body) {
        Ok(f) => f,
        Err(refusal) => return *refusal,
    };
    let parsed = (|| {
        let p = provider(
            form.get("provider")
                .ok_or_else(|| refused("no provider given"))?,
        )?;
        let ids: Vec<String> = form
            .all("event_id")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let event_type = form.get("type").map(str::to_owned);
        let since = parse_time("since", form.get("since").map(str::to_owned))?;
        if ids.is_empty() && (event_type.is_none() || since.is_none()) {
            return Err(refused("give event ids, or a type and a since time"));
        }
        Ok((p, ids, event_type, since))
    })();
    let (p, ids, event_type, since) = match parsed {
        Ok(v) => v,
        Err(e) => return c.failed(&op, &e),
    };
    let ids_opt = (!ids.is_empty()).then_some(ids.as_slice());
    let what = match (&ids_opt, &event_type) {
        (Some(ids), _) if ids.len() == 1 => format!("{p} event {}", ids[0]),
        (Some(ids), _) => format!("{} {p} events", ids.len()),
        (None, t) => format!(
            "{p} events of type {} since {}",
            t.as_deref().unwrap_or_default(),
            since.map(ts).unwrap_or_default()
        ),
    };
    let back = match ids_opt {
        Some([one]) => format!("/console/events/{}/{}", p.as_str(), super::url_encode(one)),
        _ => "/console/events".to_owned(),
    };
    let selection = ReplaySelection {
        provider: p,
        ids: ids_opt,
        event_type: event_type.as_deref(),
        since,
    };
    if form.get("confirm") != Some("yes") {
        let count = match c.ops().replay_count(&selection).await {
            Ok(n) => n,
            Err(e) => return c.failed(&op, &e),
        };
        return c.page(
            &op,
            "preview.html",
            context! {
                title => "Replay events", nav => "events", action => "/console/events/replay",
                verb => "Replay", count, noun => "logged event", what, back,
                explain => "Each stored body goes back to the work queue and its handler runs again \
                            (handlers are idempotent); the event's replay count goes up.",
                fields => carried(&form, &["provider", "event_id", "type", "since"]),
            },
        );
    }
    match c
        .ops()
        .replay(&selection, 0, false, ACTOR, &|_, _| {})
        .await
    {
        Ok(r) => c.done(
            &op,
            format!(
                "Replayed {} of {} events ({what}).",
                r.published, r.selected
            ),
            &back,
        ),
        Err(e) => c.failed(&op, &e),
    }
}

// ---- accounts ----------------------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct AccountsQuery {
    q: Option<String>,
    after: Option<i64>,
}

pub(crate) async fn accounts(
    State(c): State<Console>,
    op: Operator,
    Query(q): Query<AccountsQuery>,
) -> Response {
    let text = given(&q.q).unwrap_or_default();
    let page = match c.ops().store().search_accounts(&text, q.after, PAGE).await {
        Ok(p) => p,
        Err(e) => return c.failed(&op, &e.into()),
    };
    // One hit for a search: straight to the account.
    if !text.is_empty() && q.after.is_none() && page.rows.len() == 1 && page.next.is_none() {
        return Redirect::to(&format!("/console/accounts/{}", page.rows[0].id)).into_response();
    }
    let accounts: Vec<Value> = page
        .rows
        .iter()
        .map(|a| {
            context! {
                id => a.id, external_ref => a.external_ref, created_at => ts(a.created_at),
                customers => a.customers, email => a.email,
            }
        })
        .collect();
    c.page(
        &op,
        "accounts.html",
        context! { title => "Accounts", nav => "accounts", accounts, q => text, next => page.next },
    )
}

pub(crate) async fn account(
    State(c): State<Console>,
    op: Operator,
    Path(id): Path<i64>,
) -> Response {
    let store = c.ops().store();
    let search = EventSearch {
        account_id: Some(id),
        ..EventSearch::default()
    };
    let any_delivery = DeliveryFilter::default();
    let (facts, events, deliveries) = tokio::join!(
        store.account_facts(id),
        store.search_events(&search, None, PAGE),
        store.delivery_page(&any_delivery, Some(id), None, PAGE),
    );
    let facts = match facts {
        Ok(Some(f)) => f,
        Ok(None) => return c.failed(&op, &OpsError::NotFound(format!("no account {id}"))),
        Err(e) => return c.failed(&op, &e.into()),
    };
    let view = account_view(&facts);
    let totals: Vec<Value> = view
        .totals
        .iter()
        .map(|t| {
            context! {
                currency => t.currency.to_uppercase(),
                paid => format_amount(t.paid_minor, &t.currency),
                refunded => format_amount(t.refunded_minor, &t.currency),
                chargeback => format_amount(t.chargeback_minor, &t.currency),
            }
        })
        .collect();
    // The timeline: events and the deliveries they caused, newest first.
    let mut timeline: Vec<(String, Value)> = Vec::new();
    let (events, more_events) = match events {
        Ok(p) => (p.rows, p.next.is_some()),
        Err(e) => return c.failed(&op, &e.into()),
    };
    for e in &events {
        let v = EventView::from(e);
        timeline.push((
            v.processed_at.clone(),
            context! { kind => "event", ..Value::from_serialize(&v) },
        ));
    }
    let deliveries = match deliveries {
        Ok(p) => p.rows,
        Err(e) => return c.failed(&op, &e.into()),
    };
    for d in &deliveries {
        let v = DeliveryView::from(d);
        timeline.push((
            v.created_at.clone(),
            context! { kind => "delivery", ..Value::from_serialize(&v) },
        ));
    }
    timeline.sort_by(|a, b| b.0.cmp(&a.0));
    let timeline: Vec<Value> = timeline.into_iter().map(|(_, v)| v).collect();
    c.page(
        &op,
        "account.html",
        context! {
            title => format!("Account {id}"), nav => "accounts", account => view, totals,
            timeline, more_events,
        },
    )
}

// ---- outbox ------------------------------------------------------------------------------

#[derive(Deserialize, serde::Serialize)]
pub(crate) struct OutboxQuery {
    state: Option<String>,
    destination: Option<String>,
    before: Option<i64>,
}

pub(crate) async fn outbox(
    State(c): State<Console>,
    op: Operator,
    Query(q): Query<OutboxQuery>,
) -> Response {
    let filter = DeliveryFilter {
        state: given(&q.state),
        destination: given(&q.destination),
        ..DeliveryFilter::default()
    };
    // Unknown names are refused as the CLI and the API refuse them.
    if let Err(e) = crate::ops::outbox::check_filter(&filter) {
        return c.failed(&op, &e);
    }
    let (page, destinations) = tokio::join!(
        c.ops().store().delivery_page(&filter, None, q.before, PAGE),
        c.ops().outbox_destinations(),
    );
    let page = match page {
        Ok(p) => p,
        Err(e) => return c.failed(&op, &e.into()),
    };
    let destinations = match destinations {
        Ok(d) => d,
        Err(e) => return c.failed(&op, &e),
    };
    let destinations: Vec<Value> = destinations
        .iter()
        .map(|d| {
            let rate = crate::ops::outbox::destination(&d.name)
                .map(crate::ops::outbox::retry_rate)
                .ok();
            context! { retry_rate => rate, ..Value::from_serialize(d) }
        })
        .collect();
    let deliveries: Vec<DeliveryView> = page.rows.iter().map(DeliveryView::from).collect();
    let next = page.next.map(|before| {
        let mut query = json!(q);
        query["before"] = json!(before);
        serde_urlencoded_query(&query)
    });
    let retryable = filter
        .state
        .as_deref()
        .is_some_and(|s| crate::ops::outbox::RETRYABLE.contains(&s));
    c.page(
        &op,
        "outbox.html",
        context! {
            title => "Outbox", nav => "outbox", deliveries, destinations, next, q, retryable,
            states => crate::ops::outbox::STATES,
            rates => paysync_domain::outbound::Destination::ALL
                .iter()
                .map(|d| (d.as_str(), crate::ops::outbox::retry_rate(*d)))
                .collect::<Vec<_>>(),
        },
    )
}

pub(crate) async fn delivery(
    State(c): State<Console>,
    op: Operator,
    Path(id): Path<i64>,
) -> Response {
    match c.ops().outbox_show(id).await {
        Ok(Some(d)) => c.page(
            &op,
            "delivery.html",
            context! { title => format!("Delivery {id}"), nav => "outbox", d },
        ),
        Ok(None) => c.failed(&op, &OpsError::NotFound(format!("no delivery {id}"))),
        Err(e) => c.failed(&op, &e),
    }
}

fn delivery_ids(form: &Fields) -> Result<Vec<i64>, OpsError> {
    form.all("id")
        .map(|v| {
            v.parse()
                .map_err(|_| refused(format!("{v:?} is not a delivery id")))
        })
        .collect()
}

pub(crate) async fn outbox_retry(State(c): State<Console>, op: Operator, body: Bytes) -> Response {
    let form = match c.form(&op, &body) {
        Ok(f) => f,
        Err(refusal) => return *refusal,
    };
    let selection = delivery_ids(&form).and_then(|ids| {
        let matching = form.get("scope") == Some("matching");
        let (ids, state, destination) = if matching {
            (
                Vec::new(),
                form.get("state").map(str::to_owned),
                form.get("destination").map(str::to_owned),
            )
        } else {
            (ids, None, None)
        };
        DeliverySelection::from_parts(ids, state, destination, None)
    });
    let selection = match selection {
        Ok(s) => s,
        Err(e) => return c.failed(&op, &e),
    };
    let confirmed = form.get("confirm") == Some("yes");
    match c.ops().outbox_retry(&selection, None, !confirmed, ACTOR).await {
        Ok(r) if !confirmed => c.page(
            &op,
            "preview.html",
            context! {
                title => "Retry deliveries", nav => "outbox", action => "/console/outbox/retry",
                verb => "Retry", count => r.count, noun => "delivery", back => "/console/outbox",
                what => match &selection {
                    DeliverySelection::Ids(ids) => format!("{} selected", ids.len()),
                    DeliverySelection::Matching { state, destination, .. } => format!(
                        "every {state} delivery{}",
                        destination.as_deref().map(|d| format!(" to {d}")).unwrap_or_default()
                    ),
                },
                explain => format!(
                    "They become pending again, spread over {:.0} s at each destination's retry rate.",
                    r.spread_seconds
                ),
                fields => carried(&form, &["scope", "id", "state", "destination"]),
            },
        ),
        Ok(r) => c.done(
            &op,
            format!("{} deliveries are pending again.", r.count),
            "/console/outbox",
        ),
        Err(e) => c.failed(&op, &e),
    }
}

pub(crate) async fn outbox_skip(State(c): State<Console>, op: Operator, body: Bytes) -> Response {
    let form = match c.form(&op, &body) {
        Ok(f) => f,
        Err(refusal) => return *refusal,
    };
    let ids = match delivery_ids(&form) {
        Ok(ids) if !ids.is_empty() => ids,
        Ok(_) => return c.failed(&op, &refused("tick at least one delivery")),
        Err(e) => return c.failed(&op, &e),
    };
    let reason = form.get("reason").unwrap_or_default();
    match c.ops().outbox_skip(&ids, reason, ACTOR).await {
        Ok(r) => c.done(
            &op,
            format!(
                "Skipped {} deliveries ({} left as they were).",
                r.skipped.len(),
                r.not_skipped.len()
            ),
            "/console/outbox",
        ),
        Err(e) => c.failed(&op, &e),
    }
}

pub(crate) async fn destination(State(c): State<Console>, op: Operator, body: Bytes) -> Response {
    let form = match c.form(&op, &body) {
        Ok(f) => f,
        Err(refusal) => return *refusal,
    };
    let Some(name) = form.get("name") else {
        return c.failed(&op, &refused("no destination given"));
    };
    let result = match form.get("action") {
        Some("pause") => {
            let minutes = form
                .get("minutes")
                .unwrap_or("15")
                .parse::<u64>()
                .ok()
                .filter(|m| (1..=7 * 24 * 60).contains(m));
            let Some(minutes) = minutes else {
                return c.failed(&op, &refused("pause for 1 minute to 7 days (in minutes)"));
            };
            let reason = form.get("reason").unwrap_or_default();
            c.ops()
                .destination_pause(name, Duration::from_secs(minutes * 60), reason, ACTOR)
                .await
        }
        Some("resume") => c.ops().destination_resume(name, ACTOR).await,
        Some(mode @ ("open" | "closed" | "auto")) => {
            let mode = match mode {
                "open" => ForcedBreaker::Open,
                "closed" => ForcedBreaker::Closed,
                _ => ForcedBreaker::Auto,
            };
            c.ops().destination_force(name, mode, ACTOR).await
        }
        _ => Err(refused("action is pause, resume, open, closed or auto")),
    };
    match result {
        Ok(r) => c.done(
            &op,
            format!(
                "{}: {} done; breaker {} (forced {}).",
                r.destination.name, r.action, r.destination.breaker_state, r.destination.forced
            ),
            "/console/outbox",
        ),
        Err(e) => c.failed(&op, &e),
    }
}

// ---- audit -------------------------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    before: Option<i64>,
}

pub(crate) async fn audit(
    State(c): State<Console>,
    op: Operator,
    Query(q): Query<AuditQuery>,
) -> Response {
    match c.ops().store().action_page(q.before, PAGE).await {
        Ok(page) => {
            let actions: Vec<Value> = page
                .rows
                .iter()
                .map(|a| {
                    let v = ActionView::from(a);
                    let details = (v.details != json!({})).then(|| v.details.to_string());
                    context! { details, ..Value::from_serialize(&v) }
                })
                .collect();
            c.page(
                &op,
                "audit.html",
                context! { title => "Audit", nav => "audit", actions, next => page.next },
            )
        }
        Err(e) => c.failed(&op, &e.into()),
    }
}
