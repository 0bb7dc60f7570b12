//! The chat and HubSpot senders against the testkit's fakes, which speak the real wire formats.

use std::time::Duration;

use paysync_dispatcher::destinations::chat::{ChatSender, ChatSettings};
use paysync_dispatcher::destinations::hubspot::{
    HubspotSender, HubspotSettings, HubspotStartError, StageError,
};
use paysync_dispatcher::{FailureKind, Job, SendError, Sender, Throttle, Verdict};
use paysync_domain::billing::{AccountFacts, CustomerFact, PaymentFact, SubscriptionFact};
use paysync_domain::intent::{Intent, Notice};
use paysync_domain::outbound::{Destination, Operation};
use paysync_testkit::fakes::Reply;
use paysync_testkit::fakes::hubspot::{FakeHubspot, default_pipelines};
use paysync_testkit::fakes::slack::FakeSlack;
use secrecy::SecretString;
use serde_json::{Value, json};
use time::OffsetDateTime;

const TOKEN: &str = "pat-na1-11111111-2222-3333-4444-555555555555";

fn won_account() -> AccountFacts {
    AccountFacts {
        id: 7,
        customers: vec![CustomerFact {
            provider: "stripe".into(),
            customer_id: "cus_1".into(),
            email: Some("ada@example.com".into()),
            name: Some("Ada Lovelace".into()),
            deleted: false,
        }],
        subscriptions: vec![SubscriptionFact {
            id: "sub_1".into(),
            status: "active".into(),
            plan: Some("pro_monthly".into()),
        }],
        payments: vec![PaymentFact {
            provider: "stripe".into(),
            id: "pi_1".into(),
            status: "succeeded".into(),
            amount: 4900,
            currency: "usd".into(),
            amount_refunded: 0,
        }],
        ..AccountFacts::default()
    }
}

fn job(id: i64, operation: Operation, intent: Intent, source_id: &str) -> Job {
    Job {
        id,
        operation,
        key: format!("{}:{}:{source_id}", operation.as_str(), intent.as_str()),
        provider: "stripe".into(),
        intent,
        source_id: source_id.into(),
        attempt: 1,
        created_at: OffsetDateTime::now_utc(),
        notice: Notice::default(),
        account: Some(won_account()),
        due_at: None,
        app_body: None,
    }
}

fn failure(v: Verdict) -> SendError {
    match v {
        Verdict::Failed(e) => e,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn chat(url: String) -> ChatSender {
    let settings = ChatSettings {
        webhook_url: SecretString::from(url),
        timeout: Duration::from_secs(5),
    };
    ChatSender::new(&settings).expect("valid chat settings")
}

#[tokio::test]
async fn a_chat_message_arrives_with_text_and_blocks() {
    let slack = FakeSlack::start().await;
    let sender = chat(slack.webhook_url());
    assert_eq!(sender.destination(), Destination::Chat);
    let j = job(31, Operation::ChatNewCustomer, Intent::Welcome, "account:7");
    let v = sender.send(&j, &Throttle::unlimited()).await;
    assert_eq!(v, Verdict::Sent { external_ref: None });
    let got = slack.wait_for_delivered(1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    let text = m["text"].as_str().expect("fallback text");
    assert!(text.contains("Ada Lovelace"), "{text}");
    assert_eq!(m["blocks"][0]["type"], "section");
    assert_eq!(m["blocks"][0]["block_id"], "paysync-31-main");
    let section = m["blocks"][0]["text"]["text"].as_str().expect("section");
    assert!(section.contains("$49.00"), "{section}");
    assert_eq!(m["blocks"][1]["type"], "context");
}

#[tokio::test]
async fn a_chat_429_is_rate_limited_with_its_retry_after() {
    let slack = FakeSlack::start().await;
    slack.script.next(
        Reply::Status {
            status: 429,
            body: "rate_limited".into(),
            retry_after: Some(7),
        },
        1,
    );
    let sender = chat(slack.webhook_url());
    let j = job(32, Operation::ChatChurn, Intent::Churn, "sub_1");
    let e = failure(sender.send(&j, &Throttle::unlimited()).await);
    assert_eq!(
        e.kind,
        FailureKind::RateLimited {
            pause: Duration::from_secs(7)
        }
    );
    assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
    assert_eq!(e.status, Some(429));
    // The next one goes through.
    let v = sender.send(&j, &Throttle::unlimited()).await;
    assert_eq!(v, Verdict::Sent { external_ref: None });
    assert_eq!(slack.throttled(), 1);
}

#[tokio::test]
async fn a_revoked_webhook_is_a_config_error_without_the_url() {
    let slack = FakeSlack::start().await;
    // The fake answers `no_service` to a URL whose secret segment is wrong.
    let wrong = format!("{}x", slack.webhook_url());
    let sender = chat(wrong);
    let j = job(33, Operation::ChatChurn, Intent::Churn, "sub_1");
    let e = failure(sender.send(&j, &Throttle::unlimited()).await);
    assert_eq!(e.kind, FailureKind::Config);
    assert_eq!(e.code, "no_service");
    assert_eq!(e.status, Some(404));
    let secret = slack
        .webhook_url()
        .rsplit('/')
        .next()
        .expect("a secret segment")
        .to_owned();
    assert!(!e.detail.contains(&secret), "{}", e.detail);
    assert!(slack.delivered().is_empty());
}

fn hubspot_settings(fake: &FakeHubspot) -> HubspotSettings {
    HubspotSettings {
        api_base: fake.api_base(),
        timeout: Duration::from_secs(5),
        ..HubspotSettings::new(SecretString::from(TOKEN.to_owned()))
    }
}

/// A portal whose admins swapped the meaning of the default stage ids: `closedwon` is now
/// "Lost" (probability 0.0), and a new stage `12345678` is "Won".
fn renamed_pipelines() -> Value {
    let mut p = default_pipelines();
    let stages = p["results"][0]["stages"].as_array_mut().expect("stages");
    stages.retain(|s| s["id"] != "closedlost");
    for s in stages.iter_mut() {
        if s["id"] == "closedwon" {
            s["label"] = json!("Lost");
            s["metadata"]["probability"] = json!("0.0");
        }
    }
    stages.push(json!({
        "id": "12345678", "label": "Won", "displayOrder": 7, "archived": false,
        "metadata": {"isClosed": "true", "probability": "1.0"},
    }));
    p
}

#[tokio::test]
async fn connect_resolves_a_renamed_won_stage() {
    let fake = FakeHubspot::start(TOKEN).await;
    fake.set_pipelines(renamed_pipelines());
    let sender = HubspotSender::connect(&hubspot_settings(&fake))
        .await
        .expect("connects");
    assert_eq!(sender.destination(), Destination::Hubspot);
    assert_eq!(sender.stages().won, "12345678");
    assert_eq!(sender.stages().lost, "closedwon");
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/crm/v3/pipelines/deals");
}

#[tokio::test]
async fn connect_refuses_an_unknown_configured_stage_and_ambiguity() {
    let fake = FakeHubspot::start(TOKEN).await;
    let settings = HubspotSettings {
        won_stage: Some("wonwon".into()),
        ..hubspot_settings(&fake)
    };
    let e = HubspotSender::connect(&settings)
        .await
        .expect_err("no such stage");
    assert!(
        matches!(
            e,
            HubspotStartError::Stages(StageError::UnknownStage { .. })
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("wonwon"), "{e}");

    let mut p = default_pipelines();
    p["results"][0]["stages"]
        .as_array_mut()
        .expect("stages")
        .push(json!({"id": "upsell", "label": "Upsold",
                     "metadata": {"isClosed": "true", "probability": "1.0"}}));
    fake.set_pipelines(p);
    let e = HubspotSender::connect(&hubspot_settings(&fake))
        .await
        .expect_err("ambiguous");
    assert!(e.to_string().contains("PAYSYNC_HUBSPOT_WON_STAGE"), "{e}");
}

#[tokio::test]
async fn a_bad_token_refuses_to_start_without_showing_it() {
    let fake = FakeHubspot::start(TOKEN).await;
    let settings = HubspotSettings {
        token: SecretString::from("pat-na1-wrong-token".to_owned()),
        ..hubspot_settings(&fake)
    };
    let e = HubspotSender::connect(&settings)
        .await
        .expect_err("refused");
    assert_eq!(e, HubspotStartError::TokenRefused);
    let msg = e.to_string();
    assert!(msg.contains("401") && msg.contains("token"), "{msg}");
    assert!(!msg.contains("wrong-token"), "{msg}");
}

#[tokio::test]
async fn a_deal_upserts_contact_and_won_deal_and_associates_them_once() {
    let fake = FakeHubspot::start(TOKEN).await;
    fake.set_pipelines(renamed_pipelines());
    let sender = HubspotSender::connect(&hubspot_settings(&fake))
        .await
        .expect("connects");
    let throttle = Throttle::unlimited();
    let j = job(41, Operation::CrmDeal, Intent::Welcome, "account:7");

    let first = sender.send(&j, &throttle).await;
    let deals = fake.objects("deals");
    assert_eq!(deals.len(), 1);
    let deal = &deals[0];
    assert_eq!(
        first,
        Verdict::Sent {
            external_ref: Some(deal.id.clone())
        }
    );
    assert_eq!(deal.key, "acct-7");
    assert_eq!(deal.properties["dealstage"], "12345678");
    assert_eq!(deal.properties["pipeline"], "default");
    assert_eq!(deal.properties["amount"], "49.00");
    assert_eq!(deal.properties["dealname"], "Ada Lovelace — pro_monthly");
    assert_eq!(deal.properties["paysync_deal_key"], "acct-7");
    let contacts = fake.objects("contacts");
    assert_eq!(contacts.len(), 1);
    let contact = &contacts[0];
    assert_eq!(contact.key, "acct-7");
    assert_eq!(contact.properties["email"], "ada@example.com");
    assert_eq!(contact.properties["firstname"], "Ada");
    assert_eq!(contact.properties["lastname"], "Lovelace");
    assert_eq!(
        fake.associations(),
        vec![(
            "deals".to_owned(),
            deal.id.clone(),
            "contacts".to_owned(),
            contact.id.clone()
        )]
    );

    // A retry (or the churn's deal update) converges on the same records.
    let second = sender.send(&j, &throttle).await;
    assert_eq!(second, first);
    let deals = fake.objects("deals");
    assert_eq!(deals.len(), 1);
    assert_eq!(deals[0].writes, 2);
    assert_eq!(fake.objects("contacts").len(), 1);
    assert_eq!(fake.associations().len(), 1);
    // Every request carried the upsert key, never a search.
    let paths: Vec<String> = fake.requests().into_iter().map(|r| r.path).collect();
    assert!(paths.iter().all(|p| !p.contains("search")), "{paths:?}");
}

#[tokio::test]
async fn a_task_is_upserted_and_associated_with_the_contact() {
    let fake = FakeHubspot::start(TOKEN).await;
    let sender = HubspotSender::connect(&hubspot_settings(&fake))
        .await
        .expect("connects");
    let mut j = job(51, Operation::CrmTask, Intent::DisputeResponse, "dp_1");
    let deadline = OffsetDateTime::now_utc() + time::Duration::days(10);
    j.due_at = Some(deadline.unix_timestamp());
    let v = sender.send(&j, &Throttle::unlimited()).await;
    let tasks = fake.objects("tasks");
    assert_eq!(tasks.len(), 1);
    let task = &tasks[0];
    assert_eq!(
        v,
        Verdict::Sent {
            external_ref: Some(task.id.clone())
        }
    );
    assert_eq!(task.key, "dispute_response:stripe:dp_1");
    assert_eq!(
        task.properties["hs_task_subject"],
        "Respond to dispute dp_1"
    );
    assert_eq!(task.properties["hs_task_priority"], "HIGH");
    assert_eq!(task.properties["hs_task_status"], "NOT_STARTED");
    let contact = &fake.objects("contacts")[0];
    assert_eq!(
        fake.associations(),
        vec![(
            "tasks".to_owned(),
            task.id.clone(),
            "contacts".to_owned(),
            contact.id.clone()
        )]
    );
    // A deal without a known account is skipped, with no request made.
    let before = fake.requests().len();
    let mut d = job(52, Operation::CrmDeal, Intent::Churn, "sub_1");
    d.account = None;
    assert_eq!(
        sender.send(&d, &Throttle::unlimited()).await,
        Verdict::Skip {
            reason: "no_account"
        }
    );
    assert_eq!(fake.requests().len(), before);
}

#[tokio::test]
async fn hubspot_429s_pause_by_policy() {
    let fake = FakeHubspot::start(TOKEN).await;
    let sender = HubspotSender::connect(&hubspot_settings(&fake))
        .await
        .expect("connects");
    let j = job(61, Operation::CrmDeal, Intent::Welcome, "account:7");

    // The burst window, enforced by the fake: two requests in any rolling minute.
    fake.set_rate_limit(Some((2, Duration::from_secs(60))));
    let e = failure(sender.send(&j, &Throttle::unlimited()).await);
    assert_eq!(
        e.kind,
        FailureKind::RateLimited {
            pause: Duration::from_secs(10)
        }
    );
    assert_eq!(e.code, "TEN_SECONDLY_ROLLING");
    assert_eq!(e.status, Some(429));
    assert_eq!(fake.throttled(), 1);
    fake.set_rate_limit(None);

    // The daily quota: paused until midnight UTC, within a day.
    fake.script.next(
        Reply::Status {
            status: 429,
            body: json!({"status": "error", "message": "You have reached your daily limit.",
                         "errorType": "RATE_LIMIT", "correlationId": "abc",
                         "policyName": "DAILY"})
            .to_string(),
            retry_after: None,
        },
        1,
    );
    let e = failure(sender.send(&j, &Throttle::unlimited()).await);
    match e.kind {
        FailureKind::Quota { pause } => {
            assert!(pause > Duration::ZERO && pause <= Duration::from_secs(86_400))
        }
        other => panic!("expected a quota pause, got {other:?}"),
    }
    assert_eq!(e.code, "DAILY");

    // A Retry-After, when sent, wins over the window.
    fake.script.next(
        Reply::Status {
            status: 429,
            body: json!({"status": "error", "policyName": "TEN_SECONDLY_ROLLING"}).to_string(),
            retry_after: Some(3),
        },
        1,
    );
    let e = failure(sender.send(&j, &Throttle::unlimited()).await);
    assert_eq!(
        e.kind,
        FailureKind::RateLimited {
            pause: Duration::from_secs(3)
        }
    );
}

#[tokio::test]
async fn a_token_revoked_after_start_is_a_config_error() {
    let fake = FakeHubspot::start(TOKEN).await;
    let sender = HubspotSender::connect(&hubspot_settings(&fake))
        .await
        .expect("connects");
    fake.script.always(Reply::Status {
        status: 401,
        body: json!({"status": "error", "message": "Authentication credentials not found.",
                     "correlationId": "x", "category": "INVALID_AUTHENTICATION"})
        .to_string(),
        retry_after: None,
    });
    let j = job(71, Operation::CrmDeal, Intent::Welcome, "account:7");
    let e = failure(sender.send(&j, &Throttle::unlimited()).await);
    assert_eq!(e.kind, FailureKind::Config);
    assert_eq!(e.code, "INVALID_AUTHENTICATION");
    assert_eq!(e.status, Some(401));
    assert!(!e.detail.contains(TOKEN));
    assert!(fake.objects("contacts").is_empty());
}

#[tokio::test]
async fn a_validation_error_refuses_the_item() {
    let fake = FakeHubspot::start(TOKEN).await;
    let sender = HubspotSender::connect(&hubspot_settings(&fake))
        .await
        .expect("connects");
    fake.script.next(
        Reply::Status {
            status: 400,
            body: json!({"status": "error",
                         "message": "Property values were not valid: Property \"paysync_account_key\" does not exist",
                         "correlationId": "y", "category": "VALIDATION_ERROR"})
            .to_string(),
            retry_after: None,
        },
        1,
    );
    let j = job(
        81,
        Operation::CrmTask,
        Intent::PaymentFailedFollowup,
        "in_1",
    );
    let e = failure(sender.send(&j, &Throttle::unlimited()).await);
    assert_eq!(e.kind, FailureKind::Payload);
    assert_eq!(e.code, "VALIDATION_ERROR");
    assert!(e.detail.contains("paysync_account_key"), "{}", e.detail);
}
