//! Authorize.Net's JSON API for `getTransactionDetailsRequest`: `POST /xml/v1/request.api` with
//! `{"getTransactionDetailsRequest": {"merchantAuthentication": {"name", "transactionKey"},
//! "transId"}}`, answered 200 with a UTF-8 byte-order mark before the JSON (as the real API
//! does), `messages.resultCode` `Ok` or `Error` and its codes: `E00007` for bad credentials,
//! `E00040` for an unknown transaction. Outages are scripted ([`Scripted`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::{Reply, Scripted, ServerGuard, serve};

/// The login id and transaction key the fake accepts.
pub const LOGIN_ID: &str = "fake-login";
/// See [`LOGIN_ID`].
pub const TRANSACTION_KEY: &str = "fake-transaction-key-0123";

/// A transaction the fake knows.
#[derive(Debug, Clone, Default)]
pub struct TransactionSeed {
    /// `transId`.
    pub trans_id: String,
    /// `refTransId`.
    pub ref_trans_id: Option<String>,
    /// `transactionStatus`.
    pub status: String,
    /// `responseCode`.
    pub response_code: i64,
    /// `settleAmount`, as the API writes it (a JSON number, e.g. `7.25`).
    pub amount: f64,
    /// `profile.customerProfileId`.
    pub profile_id: Option<String>,
    /// `customer.id`.
    pub customer_id: Option<String>,
    /// `customer.email`.
    pub email: Option<String>,
    /// `order.invoiceNumber`.
    pub invoice_number: Option<String>,
}

/// A fake Authorize.Net API.
pub struct FakeAuthorizeNet {
    addr: std::net::SocketAddr,
    transactions: Arc<Mutex<HashMap<String, TransactionSeed>>>,
    requests: Arc<AtomicUsize>,
    /// What it answers (outages).
    pub script: Scripted,
    _server: ServerGuard,
}

#[derive(Clone)]
struct App {
    transactions: Arc<Mutex<HashMap<String, TransactionSeed>>>,
    requests: Arc<AtomicUsize>,
    script: Scripted,
}

impl FakeAuthorizeNet {
    /// Starts one.
    pub async fn start() -> Self {
        let app = App {
            transactions: Arc::default(),
            requests: Arc::default(),
            script: Scripted::default(),
        };
        let router = Router::new()
            .route("/xml/v1/request.api", post(request))
            .with_state(app.clone());
        let (addr, server) = serve(router).await;
        Self {
            addr,
            transactions: app.transactions,
            requests: app.requests,
            script: app.script,
            _server: server,
        }
    }

    /// The API URL to configure.
    pub fn url(&self) -> String {
        format!("http://{}/xml/v1/request.api", self.addr)
    }

    /// Makes `tx` known.
    pub fn put_transaction(&self, tx: TransactionSeed) {
        self.transactions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tx.trans_id.clone(), tx);
    }

    /// Requests received so far (answered or not).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn answer(body: &Value) -> Response {
    // The real API starts its JSON with a byte-order mark, which strict parsers refuse.
    let mut bytes = "\u{feff}".as_bytes().to_vec();
    bytes.extend_from_slice(body.to_string().as_bytes());
    let mut r = (StatusCode::OK, bytes).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn error(code: &str, text: &str) -> Response {
    answer(&json!({"messages": {"resultCode": "Error", "message": [{"code": code, "text": text}]}}))
}

async fn request(State(app): State<App>, body: Bytes) -> Response {
    app.requests.fetch_add(1, Ordering::SeqCst);
    if let Reply::Status {
        status,
        body,
        retry_after,
    } = app.script.take()
    {
        let mut r = (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            body,
        )
            .into_response();
        if let Some(s) = retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        return r;
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(
            "E00003",
            "An error occurred while parsing the JSON request.",
        );
    };
    let r = &req["getTransactionDetailsRequest"];
    let auth = &r["merchantAuthentication"];
    if auth["name"] != LOGIN_ID || auth["transactionKey"] != TRANSACTION_KEY {
        return error(
            "E00007",
            "User authentication failed due to invalid authentication values.",
        );
    }
    let id = r["transId"].as_str().unwrap_or_default();
    let known = app
        .transactions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(id)
        .cloned();
    let Some(t) = known else {
        return error("E00040", "The record cannot be found.");
    };
    let mut tx = json!({
        "transId": t.trans_id, "transactionStatus": t.status, "responseCode": t.response_code,
        "authAmount": t.amount, "settleAmount": t.amount, "submitTimeUTC": "2017-04-15T21:13:43.297Z",
        "transactionType": "authCaptureTransaction",
        "order": {"invoiceNumber": t.invoice_number, "description": "Order"},
        "billTo": {"firstName": "Ada", "lastName": "Lovelace"},
    });
    if let Some(r) = t.ref_trans_id {
        tx["refTransId"] = json!(r);
    }
    if t.customer_id.is_some() || t.email.is_some() {
        tx["customer"] = json!({"type": "individual", "id": t.customer_id, "email": t.email});
    }
    if let Some(p) = t.profile_id {
        tx["profile"] = json!({"customerProfileId": p, "customerPaymentProfileId": "1"});
    }
    answer(
        &json!({"transaction": tx, "messages": {"resultCode": "Ok", "message": [{"code": "I00001", "text": "Successful."}]}}),
    )
}
