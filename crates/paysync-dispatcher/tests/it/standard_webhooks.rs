//! Our Standard Webhooks signatures (`paysync_domain::standard_webhooks`, which the app
//! destination will sign with) against an independent implementation: the reference Python
//! library (`standardwebhooks` from PyPI, installed by deploy/local/services.sh into its own
//! venv). It verifies what we sign, including during a rotation and for a body that is not
//! UTF-8, refuses a tampered one, and we verify what it signs.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use paysync_domain::standard_webhooks::{Secret, sign, verify};

fn python() -> std::path::PathBuf {
    let venv = std::env::var_os("PAYSYNC_LOCAL_PYTOOLS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/lib/paysync-local-tools/venv".into());
    venv.join("bin/python")
}

/// Runs `script` with `input` on its standard input; its standard output.
pub(crate) fn run_python(script: &str, input: &serde_json::Value) -> String {
    let mut child = Command::new(python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the standardwebhooks venv (run deploy/local/services.sh)");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(input.to_string().as_bytes())
        .expect("writing the cases");
    let out = child.wait_with_output().expect("python ran");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 answers")
}

pub(crate) const VERIFY: &str = r#"
import base64, json, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
for case in json.load(sys.stdin):
    body = base64.b64decode(case["body"])
    headers = {"webhook-id": case["id"], "webhook-timestamp": str(case["ts"]),
               "webhook-signature": case["signature"]}
    try:
        Webhook(case["secret"]).verify(body, headers, json_parse=False)
        print("verified")
    except WebhookVerificationError as e:
        print("refused: " + str(e))
"#;

const SIGN: &str = r#"
import base64, json, sys
from datetime import datetime, timezone
from standardwebhooks.webhooks import Webhook
case = json.load(sys.stdin)
print(Webhook(case["secret"]).sign(case["id"], datetime.fromtimestamp(case["ts"], tz=timezone.utc),
                                   base64.b64decode(case["body"])))
"#;

pub(crate) fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn the_reference_python_library_and_ours_verify_each_other() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let new = Secret::serialize(&[0x5a; 32]);
    let both = [
        Secret::parse(old).expect("secret"),
        Secret::parse(&new).expect("secret"),
    ];
    let json = br#"{"type":"account.entitlement_changed","data":{"account":"acc_1","entitlement":"granted","plan":"Pro \u00e9"}}"#;
    let not_utf8: &[u8] = &[0xff, 0xfe, b'{', 0x80, b'}'];
    let mut cases = Vec::new();
    let mut expected = Vec::new();
    for (body, secrets, verify_with) in [
        (&json[..], &both[..1], old.to_owned()),
        (&json[..], &both[..], old.to_owned()),
        (&json[..], &both[..], new.clone()),
        (not_utf8, &both[1..], new.clone()),
    ] {
        let id = format!("msg_{}", cases.len());
        cases.push(serde_json::json!({
            "secret": verify_with, "id": id, "ts": now, "body": b64(body),
            "signature": sign(secrets, &id, now, body),
        }));
        expected.push("verified".to_owned());
    }
    // Tampered: another body under the same signature.
    let signature = sign(&both, "msg_t", now, json);
    cases.push(serde_json::json!({
        "secret": old, "id": "msg_t", "ts": now, "body": b64(b"{}"), "signature": signature,
    }));
    expected.push("refused: No matching signature found".to_owned());

    let answers = run_python(VERIFY, &serde_json::Value::Array(cases));
    assert_eq!(answers.lines().collect::<Vec<_>>(), expected);

    // And the other way: what the library signs, we verify.
    let signed = run_python(
        SIGN,
        &serde_json::json!({"secret": new, "id": "msg_py", "ts": now, "body": b64(json)}),
    );
    let ts = now.to_string();
    assert_eq!(
        verify(&both[1..], "msg_py", &ts, signed.trim(), json, now, 300),
        Ok(())
    );
}
