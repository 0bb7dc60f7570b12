//! The operator results are public contract: `paysync dlq … --json`, `dlq export` and the
//! admin API print them. These tests pin their bytes. The dead letters' text was printed by the
//! earlier `serde_json::Value` implementation; the others are its `json!` literals as a `Value`
//! printed them (keys sorted). The typed views keep every key, its order and its formatting.

use paysync_store::{DeadLetterGroup, DeadLetterRow, EventRow, OperatorAction};
use paysync_worker::ops::{
    ActionView, ArchiveReport, EventView, GroupView, ImportReport, LetterView, PurgeReport,
    ReplayReport, RetryReport,
};
use serde_json::json;
use time::macros::datetime;

fn letter(body: &[u8]) -> DeadLetterRow {
    let at = datetime!(2026-11-30 12:34:56.789 UTC);
    DeadLetterRow {
        id: 12,
        event_id: Some("evt_1".into()),
        event_type: None,
        error_kind: "malformed_body".into(),
        error_chain: "retries exhausted after 3 attempts\nbad body\ncaused by: eof".into(),
        fingerprint: "abc123".into(),
        attempts: 3,
        first_failed_at: at,
        last_failed_at: at + time::Duration::seconds(5),
        state: "open".into(),
        redrives: 1,
        routing_key: "stripe.invoice.paid".into(),
        headers: json!({"paysync-attempt": 3, "x": "y"}),
        body: body.to_vec(),
    }
}

#[test]
fn a_dead_letter_shown_in_full_keeps_the_bytes_dlq_show_printed_before() {
    let shown = LetterView::full(&letter(br#"{"id":"evt_1","n":[1,2]}"#));
    assert_eq!(
        serde_json::to_string_pretty(&shown).unwrap(),
        include_str!("pins/dead_letter_full.json")
    );
}

#[test]
fn a_listed_dead_letter_has_no_body_headers_or_chain() {
    let listed = LetterView::summary(&letter(b"{}"));
    assert_eq!(
        serde_json::to_string(&listed).unwrap(),
        r#"{"attempts":3,"error":"bad body","error_kind":"malformed_body","event_id":"evt_1","event_type":null,"fingerprint":"abc123","first_failed_at":"2026-11-30T12:34:56.789Z","id":12,"last_failed_at":"2026-11-30T12:35:01.789Z","redrives":1,"state":"open"}"#
    );
}

#[test]
fn an_exported_dead_letter_whose_body_is_not_json_shows_null_and_keeps_the_exact_bytes() {
    let exported = LetterView::full(&letter(b"not json"));
    assert_eq!(
        serde_json::to_string(&exported).unwrap(),
        r#"{"attempts":3,"body":null,"body_base64":"bm90IGpzb24=","error":"bad body","error_chain":["retries exhausted after 3 attempts","bad body","caused by: eof"],"error_kind":"malformed_body","event_id":"evt_1","event_type":null,"fingerprint":"abc123","first_failed_at":"2026-11-30T12:34:56.789Z","headers":{"paysync-attempt":3,"x":"y"},"id":12,"last_failed_at":"2026-11-30T12:35:01.789Z","redrives":1,"routing_key":"stripe.invoice.paid","state":"open"}"#
    );
}

#[test]
fn groups_and_the_audit_trail_keep_their_keys_in_the_order_printed_before() {
    let at = datetime!(2026-11-30 12:34:56 UTC);
    let group = GroupView::from(&DeadLetterGroup {
        fingerprint: "abc123".into(),
        error_kind: "handler_failed".into(),
        title: "handler_failed: boom".into(),
        count: 400,
        first_failed_at: at,
        last_failed_at: at,
        event_types: vec!["invoice.paid".into()],
    });
    assert_eq!(
        serde_json::to_string(&group).unwrap(),
        r#"{"count":400,"error_kind":"handler_failed","event_types":["invoice.paid"],"first_failed_at":"2026-11-30T12:34:56Z","group":"abc123","last_failed_at":"2026-11-30T12:34:56Z","title":"handler_failed: boom"}"#
    );
    let action = ActionView::from(&OperatorAction {
        id: 3,
        at,
        actor: "cli:ada".into(),
        action: "dlq.retry".into(),
        target: "group abc123".into(),
        affected: 400,
        dry_run: false,
        details: json!({"selected": 400}),
    });
    assert_eq!(
        serde_json::to_string(&action).unwrap(),
        r#"{"action":"dlq.retry","actor":"cli:ada","affected":400,"at":"2026-11-30T12:34:56Z","details":{"selected":400},"dry_run":false,"id":3,"target":"group abc123"}"#
    );
}

#[test]
fn action_reports_keep_the_keys_and_order_printed_before() {
    let cases = [
        (
            serde_json::to_string(&RetryReport {
                dry_run: false,
                ids: vec![4, 5],
                retried: 2,
                selected: 2,
            }),
            r#"{"dry_run":false,"ids":[4,5],"retried":2,"selected":2}"#,
        ),
        (
            serde_json::to_string(&ArchiveReport {
                archived: 1,
                selected: 1,
            }),
            r#"{"archived":1,"selected":1}"#,
        ),
        (
            serde_json::to_string(&PurgeReport {
                deleted: 3,
                hint: None,
                would_delete: None,
            }),
            r#"{"deleted":3}"#,
        ),
        (
            serde_json::to_string(&PurgeReport {
                deleted: 0,
                hint: Some("nothing was deleted; add --yes to delete"),
                would_delete: Some(3),
            }),
            r#"{"deleted":0,"hint":"nothing was deleted; add --yes to delete","would_delete":3}"#,
        ),
        (
            serde_json::to_string(&ImportReport { published: 3 }),
            r#"{"published":3}"#,
        ),
        (
            serde_json::to_string(&ReplayReport {
                dry_run: true,
                published: 0,
                selected: 1,
            }),
            r#"{"dry_run":true,"published":0,"selected":1}"#,
        ),
    ];
    for (printed, before) in cases {
        assert_eq!(printed.unwrap(), before);
    }
}

#[test]
fn a_logged_event_keeps_the_keys_and_order_events_show_printed_before() {
    let at = datetime!(2026-11-30 12:34:56.5 UTC);
    let row = EventRow {
        provider: "stripe".into(),
        event_id: "evt_1".into(),
        event_type: "invoice.paid".into(),
        created: 1_764_500_000,
        livemode: false,
        api_version: Some("2020-08-27".into()),
        account_id: Some(2),
        outcome: "applied".into(),
        attempts: 1,
        duplicates: 1,
        replays: 0,
        received_at: at,
        processed_at: at + time::Duration::milliseconds(7),
        payload: Some(json!({"object": "event", "id": "evt_1"})),
    };
    assert_eq!(
        serde_json::to_string(&EventView::from(&row)).unwrap(),
        r#"{"account_id":2,"api_version":"2020-08-27","attempts":1,"created":1764500000,"duplicates":1,"event_id":"evt_1","event_type":"invoice.paid","livemode":false,"outcome":"applied","payload":{"id":"evt_1","object":"event"},"processed_at":"2026-11-30T12:34:56.507Z","provider":"stripe","received_at":"2026-11-30T12:34:56.5Z","replays":0}"#
    );
    let listed = EventView::from(&EventRow {
        payload: None,
        ..row
    });
    assert!(
        !serde_json::to_string(&listed).unwrap().contains("payload"),
        "a listed event has no payload key"
    );
}
