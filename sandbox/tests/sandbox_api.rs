//! The external-systems sandbox over real HTTP: Stripe, Salesforce and Twilio conventions,
//! idempotency, the ledger, faults and reset. Each test runs its own sandbox on a free port.
#![allow(clippy::unwrap_used)]

use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use stepwise_sandbox::seed;
use stepwise_sandbox::{Sandbox, SandboxHandle};

const SF: &str = "/salesforce/services/data/v60.0";
const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";

struct Env {
    sandbox: SandboxHandle,
    http: Client,
}

async fn sandbox() -> Env {
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap(), 7)
        .await
        .expect("sandbox starts");
    Env {
        sandbox,
        http: Client::new(),
    }
}

impl Env {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sandbox.base_url())
    }

    fn stripe(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.url(&format!("/stripe/v1{path}")))
            .bearer_auth("sk_test_sandbox")
    }

    fn sf(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.url(&format!("{SF}{path}")))
            .bearer_auth("00Dsandbox!token")
    }

    fn twilio(&self, key: Option<&str>, form: &[(&str, &str)]) -> RequestBuilder {
        let request = self
            .http
            .post(self.url(&format!(
                "/twilio/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
            )))
            .basic_auth(TWILIO_SID, Some("auth-token"))
            .form(form);
        match key {
            Some(key) => request.header("I-Twilio-Idempotency-Token", key),
            None => request,
        }
    }

    async fn soql(&self, query: &str) -> (StatusCode, Value) {
        let response = self
            .sf(Method::GET, "/query")
            .query(&[("q", query)])
            .send()
            .await
            .unwrap();
        json_of(response).await
    }

    async fn ledger(&self) -> Value {
        let response = self
            .http
            .get(self.url("/_sandbox/ledger"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    async fn objects(&self, kind: &str) -> Vec<Value> {
        self.ledger().await["objects"][kind]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    async fn faults(&self, body: Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url("/_sandbox/faults"))
            .json(&body)
            .send()
            .await
            .unwrap();
        json_of(response).await
    }
}

async fn json_of(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, value)
}

fn intent_form(amount: &str, pm: &str) -> Vec<(&'static str, String)> {
    vec![
        ("amount", amount.to_string()),
        ("currency", "usd".to_string()),
        ("payment_method", pm.to_string()),
        ("confirm", "true".to_string()),
        ("metadata[booking_number]", "BK-000002".to_string()),
    ]
}

#[tokio::test]
async fn stripe_idempotency_key_replays_the_first_response_and_refuses_other_parameters() {
    let env = sandbox().await;
    let first = env
        .stripe(Method::POST, "/payment_intents")
        .header("Idempotency-Key", "checkout-1")
        .form(&intent_form("38700", "pm_card_visa"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body = first.bytes().await.unwrap();
    let intent: Value = serde_json::from_slice(&first_body).unwrap();
    assert_eq!(intent["status"], "succeeded");
    assert_eq!(intent["amount_received"], 38700);
    assert_eq!(intent["metadata"]["booking_number"], "BK-000002");
    assert!(intent["latest_charge"].as_str().unwrap().starts_with("ch_"));

    let again = env
        .stripe(Method::POST, "/payment_intents")
        .header("Idempotency-Key", "checkout-1")
        .form(&intent_form("38700", "pm_card_visa"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(
        again.bytes().await.unwrap(),
        first_body,
        "byte-for-byte replay"
    );

    let conflict = env
        .stripe(Method::POST, "/payment_intents")
        .header("Idempotency-Key", "checkout-1")
        .form(&intent_form("99900", "pm_card_visa"))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(conflict).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "idempotency_error");

    let intents = env.objects("payment_intent").await;
    assert_eq!(intents.len(), 1, "one charge for three requests");
    let ledger = env.ledger().await;
    let requests: Vec<(bool, u64)> = ledger["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["replayed"].as_bool().unwrap(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(requests, vec![(false, 200), (true, 200), (false, 400)]);
    assert!(ledger["requests"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["idempotency_key"] == "checkout-1"));
}

#[tokio::test]
async fn a_declined_card_is_a_402_card_error_carrying_the_intent() {
    let env = sandbox().await;
    let response = env
        .stripe(Method::POST, "/payment_intents")
        .header("Idempotency-Key", "decline-1")
        .form(&intent_form("12900", "pm_card_chargeDeclined"))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 402);
    let error = &body["error"];
    assert_eq!(error["type"], "card_error");
    assert_eq!(error["code"], "card_declined");
    assert_eq!(error["decline_code"], "generic_decline");
    assert_eq!(error["message"], "Your card was declined.");
    assert_eq!(error["payment_intent"]["status"], "requires_payment_method");
    assert_eq!(error["payment_intent"]["amount_received"], 0);
    let id = error["payment_intent"]["id"].as_str().unwrap().to_string();

    // A decline is a result: the same key replays it.
    let replay = env
        .stripe(Method::POST, "/payment_intents")
        .header("Idempotency-Key", "decline-1")
        .form(&intent_form("12900", "pm_card_chargeDeclined"))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 402);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");

    // The intent can be confirmed again with a good card.
    let (status, intent) = json_of(
        env.stripe(Method::POST, &format!("/payment_intents/{id}/confirm"))
            .form(&[("payment_method", "pm_card_visa")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{intent}");
    assert_eq!(intent["status"], "succeeded");
    assert_eq!(env.objects("payment_intent").await.len(), 1);
}

#[tokio::test]
async fn authentication_required_leaves_the_intent_requiring_action_and_cancel_works() {
    let env = sandbox().await;
    let (status, intent) = json_of(
        env.stripe(Method::POST, "/payment_intents")
            .form(&intent_form("28900", "pm_card_authenticationRequired"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(intent["status"], "requires_action");
    assert_eq!(intent["next_action"]["type"], "redirect_to_url");
    let id = intent["id"].as_str().unwrap();
    assert_eq!(
        intent["next_action"]["redirect_to_url"]["url"],
        env.url(&format!("/_sandbox/3ds/{id}")),
        "the guest is sent to the sandbox's own challenge page"
    );

    let (status, got) = json_of(
        env.stripe(Method::GET, &format!("/payment_intents/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(got["status"], "requires_action");

    let (status, canceled) = json_of(
        env.stripe(Method::POST, &format!("/payment_intents/{id}/cancel"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(canceled["status"], "canceled");
    let (status, body) = json_of(
        env.stripe(Method::POST, &format!("/payment_intents/{id}/confirm"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "payment_intent_unexpected_state");

    let (status, body) = json_of(
        env.stripe(Method::POST, "/payment_intents")
            .form(&intent_form("1000", "pm_card_unknown"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "resource_missing");
    assert_eq!(body["error"]["param"], "payment_method");

    let (status, body) = json_of(
        env.stripe(Method::POST, "/payment_intents")
            .form(&intent_form("49", "pm_card_visa"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "amount");
    assert_eq!(env.objects("payment_intent").await.len(), 1);
}

#[tokio::test]
async fn refunds_track_the_refunded_amount_and_refuse_over_refunds() {
    let env = sandbox().await;
    let (_, intent) = json_of(
        env.stripe(Method::POST, "/payment_intents")
            .form(&intent_form("5000", "pm_card_visa"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let id = intent["id"].as_str().unwrap().to_string();
    let refund = |amount: Option<&str>| {
        let mut form = vec![
            ("payment_intent", id.clone()),
            ("reason", "requested_by_customer".into()),
        ];
        if let Some(amount) = amount {
            form.push(("amount", amount.into()));
        }
        env.stripe(Method::POST, "/refunds").form(&form).send()
    };
    let (status, partial) = json_of(refund(Some("2000")).await.unwrap()).await;
    assert_eq!(status, 200, "{partial}");
    assert_eq!(partial["object"], "refund");
    assert!(partial["id"].as_str().unwrap().starts_with("re_"));
    assert_eq!(partial["amount"], 2000);
    assert_eq!(partial["status"], "succeeded");
    assert_eq!(partial["payment_intent"], id.as_str());

    let (status, too_much) = json_of(refund(Some("3001")).await.unwrap()).await;
    assert_eq!(status, 400);
    assert_eq!(too_much["error"]["code"], "amount_too_large");

    let (status, rest) = json_of(refund(None).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(rest["amount"], 3000, "the remaining amount by default");

    let (status, done) = json_of(refund(None).await.unwrap()).await;
    assert_eq!(status, 400);
    assert_eq!(done["error"]["code"], "charge_already_refunded");

    let (_, intent) = json_of(
        env.stripe(Method::GET, &format!("/payment_intents/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(intent["amount_refunded"], 5000);
    let refunds = env.objects("refund").await;
    assert_eq!(refunds.len(), 2);
    assert_eq!(
        refunds
            .iter()
            .map(|r| r["amount"].as_i64().unwrap())
            .sum::<i64>(),
        5000
    );
}

#[tokio::test]
async fn stripe_customers_need_a_key_and_are_found_by_email_even_with_quotes() {
    let env = sandbox().await;
    let (status, body) = json_of(
        env.http
            .post(env.url("/stripe/v1/customers"))
            .form(&[("email", "a@b.example")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["type"], "invalid_request_error");

    for email in ["o'brien@example.com", "emma.johnson@example.com"] {
        let (status, customer) = json_of(
            env.stripe(Method::POST, "/customers")
                .form(&[
                    ("email", email),
                    ("name", "A Guest"),
                    ("metadata[source]", "test"),
                ])
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200);
        assert!(customer["id"].as_str().unwrap().starts_with("cus_"));
        assert_eq!(customer["metadata"]["source"], "test");
    }
    let (status, found) = json_of(
        env.stripe(Method::GET, "/customers/search")
            .query(&[("query", r"email:'o\'brien@example.com'")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["data"].as_array().unwrap().len(), 1);
    assert_eq!(found["data"][0]["email"], "o'brien@example.com");

    let (status, listed) = json_of(
        env.stripe(Method::GET, "/customers")
            .query(&[("email", "emma.johnson@example.com")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(listed["object"], "list");
    assert_eq!(listed["has_more"], false);
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);

    let (status, bad) = json_of(
        env.stripe(Method::GET, "/customers/search")
            .query(&[("query", "email:'unterminated")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(bad["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn salesforce_create_retrieve_update_upsert_and_delete() {
    let env = sandbox().await;
    let (status, created) = json_of(
        env.sf(Method::POST, "/sobjects/Contact")
            .json(&json!({"FirstName": "Zoe", "LastName": "Park", "Email": "zoe.park@example.com"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(created["success"], true);
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 18);
    assert!(id.starts_with("003"));

    let (status, contact) = json_of(
        env.sf(Method::GET, &format!("/sobjects/Contact/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(contact["attributes"]["type"], "Contact");
    assert_eq!(
        contact["attributes"]["url"],
        format!("/services/data/v60.0/sobjects/Contact/{id}")
    );
    assert_eq!(contact["Name"], "Zoe Park");
    assert_eq!(contact["Contact_Type__c"], "Guest", "picklist default");
    assert!(contact["CreatedDate"].as_str().is_some());

    let response = env
        .sf(Method::PATCH, &format!("/sobjects/Contact/{id}"))
        .json(&json!({"Phone": "+14155550999"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let (_, contact) = json_of(
        env.sf(Method::GET, &format!("/sobjects/Contact/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(contact["Phone"], "+14155550999");

    // Upsert by external id: created, then updated in place.
    let path = "/sobjects/Case/External_ID__c/req-42";
    let case = json!({"Subject": "Broken lamp", "Priority": "High", "ContactId": id});
    let (status, first) = json_of(
        env.sf(Method::PATCH, path)
            .json(&case)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["created"], true);
    let (status, second) = json_of(
        env.sf(Method::PATCH, path)
            .json(&json!({"Status": "Working"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(second["created"], false);
    assert_eq!(second["id"], first["id"]);
    let case_id = first["id"].as_str().unwrap();
    let (_, case) = json_of(
        env.sf(Method::GET, &format!("/sobjects/Case/{case_id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(case["Status"], "Working");
    assert_eq!(case["Subject"], "Broken lamp");
    assert_eq!(
        case["CaseNumber"], "00001005",
        "four seeded cases come first"
    );
    let cases = env.objects("Case").await;
    assert_eq!(
        cases
            .iter()
            .filter(|c| c["External_ID__c"] == "req-42")
            .count(),
        1
    );

    // Upsert by an email external id, percent-encoded in the path.
    let (status, upserted) = json_of(
        env.sf(
            Method::PATCH,
            "/sobjects/Contact/Unique_Email__c/emma.johnson%40example.com",
        )
        .json(&json!({"Loyalty_Number__c": "GOLD-1"}))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(upserted["created"], false);

    let response = env
        .sf(Method::DELETE, &format!("/sobjects/Contact/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let (status, gone) = json_of(
        env.sf(Method::GET, &format!("/sobjects/Contact/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(gone[0]["errorCode"], "NOT_FOUND");
}

#[tokio::test]
async fn salesforce_validates_fields_picklists_required_values_and_uniqueness() {
    let env = sandbox().await;
    let post = |object: &str, body: Value| {
        env.sf(Method::POST, &format!("/sobjects/{object}"))
            .json(&body)
            .send()
    };
    let cases = [
        (
            "Contact",
            json!({"LastName": "X", "Unique_Email__c": "emma.johnson@example.com"}),
            "DUPLICATE_VALUE",
        ),
        (
            "Contact",
            json!({"LastName": "X", "Contact_Type__c": "Staff"}),
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        ),
        (
            "Contact",
            json!({"FirstName": "No last name"}),
            "REQUIRED_FIELD_MISSING",
        ),
        (
            "Contact",
            json!({"LastName": "X", "Favourite_Colour__c": "blue"}),
            "INVALID_FIELD",
        ),
        (
            "Contact",
            json!({"LastName": "X", "Name": "Not writable"}),
            "INVALID_FIELD_FOR_INSERT_UPDATE",
        ),
        (
            "Contact",
            json!({"LastName": "X", "Email": "not-an-email"}),
            "INVALID_EMAIL_ADDRESS",
        ),
        (
            "Hotel_Room__c",
            json!({"Name": "999", "Status__c": "Dirty"}),
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        ),
        (
            "Booking__c",
            json!({"Special_Requests__c": "quiet room"}),
            "REQUIRED_FIELD_MISSING",
        ),
        (
            "Booking__c",
            json!({"Guest__c": "003Dw0000000001XXX"}),
            "MALFORMED_ID",
        ),
        (
            "Case",
            json!({"Subject": "x", "Priority": "Critical"}),
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        ),
    ];
    for (object, body, code) in cases {
        let (status, error) = json_of(post(object, body.clone()).await.unwrap()).await;
        assert_eq!(status, 400, "{object} {body}: {error}");
        assert_eq!(error[0]["errorCode"], code, "{object} {body}: {error}");
        assert!(error[0]["message"].as_str().is_some());
        assert!(error[0]["fields"].is_array());
    }
    let (status, error) = json_of(post("Spaceship__c", json!({})).await.unwrap()).await;
    assert_eq!(status, 404, "{error}");

    // A booking needs existing guest and room, and computes its nights.
    let (_, guest) = env
        .soql("SELECT Id FROM Contact WHERE Email = 'james.taylor@example.com'")
        .await;
    let (_, room) = env
        .soql("SELECT Id FROM Hotel_Room__c WHERE Name = '103'")
        .await;
    let booking = json!({
        "Guest__c": guest["records"][0]["Id"], "Hotel_Room__c": room["records"][0]["Id"],
        "Check_In_Date__c": "2030-01-10", "Check_Out_Date__c": "2030-01-13", "External_ID__c": "bk-ext-1",
    });
    let (status, created) = json_of(post("Booking__c", booking.clone()).await.unwrap()).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let (_, got) = json_of(
        env.sf(Method::GET, &format!("/sobjects/Booking__c/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got["Total_Nights__c"], 3);
    assert_eq!(got["Status__c"], "Reserved");
    assert_eq!(got["Name"], format!("BK-{:06}", seed::BOOKINGS.len() + 1));
    let (status, dup) = json_of(post("Booking__c", booking).await.unwrap()).await;
    assert_eq!(status, 400);
    assert_eq!(dup[0]["errorCode"], "DUPLICATE_VALUE");

    let (status, error) = json_of(
        env.sf(Method::PATCH, &format!("/sobjects/Booking__c/{id}"))
            .json(&json!({"Hotel_Room__c": guest["records"][0]["Id"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "a contact id is not a room id");
    assert_eq!(error[0]["errorCode"], "FIELD_INTEGRITY_EXCEPTION");

    let response = env
        .http
        .get(env.url(&format!("{SF}/sobjects/Contact/{id}")))
        .send()
        .await
        .unwrap();
    let (status, error) = json_of(response).await;
    assert_eq!(status, 401);
    assert_eq!(error[0]["errorCode"], "INVALID_SESSION_ID");
}

#[tokio::test]
async fn soql_filters_orders_limits_and_compares_dates() {
    let env = sandbox().await;
    let (status, rooms) = env
        .soql("select Name, Status__c from Hotel_Room__c where Status__c in ('Cleaning', 'Maintenance') order by Name")
        .await;
    assert_eq!(status, 200, "{rooms}");
    assert_eq!(rooms["done"], true);
    let names: Vec<&str> = rooms["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["106", "205", "302", "404"]);
    assert_eq!(rooms["totalSize"], 4);
    let first = &rooms["records"][0];
    assert_eq!(first["attributes"]["type"], "Hotel_Room__c");
    assert!(first.get("Floor__c").is_none(), "only the selected fields");

    let (_, top) = env
        .soql("SELECT Name, Nightly_Rate__c FROM Hotel_Room__c WHERE Floor__c >= 3 AND Status__c != 'Out of Service' ORDER BY Nightly_Rate__c DESC, Name ASC LIMIT 3")
        .await;
    let top: Vec<(&str, f64)> = top["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["Name"].as_str().unwrap(),
                r["Nightly_Rate__c"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(top, vec![("403", 489.0), ("404", 489.0), ("405", 489.0)]);

    let (_, arrivals) = env
        .soql("SELECT Name, Status__c FROM Booking__c WHERE Check_In_Date__c = TODAY AND Status__c = 'Reserved'")
        .await;
    assert_eq!(arrivals["totalSize"], 2, "{arrivals}");
    let today = chrono::Utc::now().date_naive();
    let (_, same) = env
        .soql(&format!(
            "SELECT Id FROM Booking__c WHERE Check_In_Date__c = {today} AND Status__c = 'Reserved'"
        ))
        .await;
    assert_eq!(same["totalSize"], 2);
    let (_, departed) = env
        .soql(&format!(
            "SELECT Id FROM Booking__c WHERE Check_Out_Date__c < {today}"
        ))
        .await;
    let past = seed::BOOKINGS
        .iter()
        .filter(|b| b.check_out_offset_days < 0)
        .count();
    assert_eq!(departed["totalSize"], past);

    let (_, count) = env.soql("SELECT COUNT() FROM Contact WHERE Contact_Type__c = 'Vendor' OR Contact_Type__c = 'Manager'").await;
    assert_eq!(count["totalSize"], 13);
    assert_eq!(count["records"].as_array().unwrap().len(), 0);

    let (_, nested) = env
        .soql("SELECT Id FROM Hotel_Room__c WHERE (Status__c = 'Vacant' OR Status__c = 'Cleaning') AND NOT (Floor__c IN (1, 2))")
        .await;
    assert_eq!(
        nested["totalSize"], 4,
        "304, 402, 405 vacant and 302 cleaning: {nested}"
    );

    let (_, like) = env
        .soql("SELECT Email FROM Contact WHERE Email LIKE 'EMMA%'")
        .await;
    assert_eq!(like["totalSize"], 1);

    for (query, code) in [
        ("SELECT Id FROM Hotel_Room__c WHERE", "MALFORMED_QUERY"),
        ("SELECT Id FROM Hotel_Room__c WHERE Status__c = 'Vacant' AND Floor__c = 1 OR Floor__c = 2", "MALFORMED_QUERY"),
        ("SELECT Id, FROM Contact", "MALFORMED_QUERY"),
        ("DELETE FROM Contact", "MALFORMED_QUERY"),
        ("SELECT Id FROM Contact LIMIT 'ten'", "MALFORMED_QUERY"),
        ("SELECT Secret__c FROM Contact", "INVALID_FIELD"),
        ("SELECT Id FROM Contact ORDER BY Nope", "INVALID_FIELD"),
        ("SELECT Id FROM Booking__c WHERE Check_In_Date__c = '2026-01-01'", "INVALID_QUERY_FILTER_OPERATOR"),
        ("SELECT Id FROM User", "INVALID_TYPE"),
    ] {
        let (status, error) = env.soql(query).await;
        assert_eq!(status, 400, "{query}: {error}");
        assert_eq!(error[0]["errorCode"], code, "{query}: {error}");
    }
}

/// Escapes a value for a SOQL string literal, as a connector does.
fn soql_quote(value: &str) -> String {
    let mut out = String::from("'");
    for c in value.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[tokio::test]
async fn a_quote_in_an_email_cannot_widen_a_query() {
    let env = sandbox().await;
    let (status, _) = json_of(
        env.sf(Method::POST, "/sobjects/Contact")
            .json(&json!({"LastName": "O'Brien", "Email": "o'brien@example.com"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    let (_, all) = env.soql("SELECT COUNT() FROM Contact").await;
    assert!(all["totalSize"].as_u64().unwrap() > 20);

    let hostile = "nobody@example.com' OR Email != '";
    let (status, rows) = env
        .soql(&format!(
            "SELECT Id, Email FROM Contact WHERE Email = {}",
            soql_quote(hostile)
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        rows["totalSize"], 0,
        "the whole value is one literal: {rows}"
    );

    let hostile = r"x\' OR Email != \'";
    let (_, rows) = env
        .soql(&format!(
            "SELECT Id FROM Contact WHERE Email = {}",
            soql_quote(hostile)
        ))
        .await;
    assert_eq!(rows["totalSize"], 0, "backslashes are escaped too: {rows}");

    let (_, rows) = env
        .soql(&format!(
            "SELECT Id, Email FROM Contact WHERE Email = {}",
            soql_quote("o'brien@example.com")
        ))
        .await;
    assert_eq!(rows["totalSize"], 1);
    assert_eq!(rows["records"][0]["Email"], "o'brien@example.com");

    // Spliced without escaping, the quote ends the literal and the rest does not parse.
    let (status, error) = env
        .soql("SELECT Id FROM Contact WHERE Email = 'o'brien@example.com'")
        .await;
    assert_eq!(status, 400);
    assert_eq!(error[0]["errorCode"], "MALFORMED_QUERY");
}

#[tokio::test]
async fn twilio_sends_replays_by_token_and_refuses_bad_numbers() {
    let env = sandbox().await;
    let form = [
        ("To", "+14155550101"),
        ("From", "+15550100000"),
        ("Body", "Your room 104 is ready."),
    ];
    let first = env.twilio(Some("sms-1"), &form).send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first_body = first.bytes().await.unwrap();
    let message: Value = serde_json::from_slice(&first_body).unwrap();
    let sid = message["sid"].as_str().unwrap().to_string();
    assert!(sid.starts_with("SM") && sid.len() == 34, "{sid}");
    assert_eq!(message["status"], "queued");
    assert_eq!(message["to"], "+14155550101");
    assert_eq!(message["account_sid"], TWILIO_SID);
    assert!(message["date_created"].as_str().unwrap().ends_with("+0000"));

    let again = env.twilio(Some("sms-1"), &form).send().await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.bytes().await.unwrap(), first_body);
    let other = [
        ("To", "+14155550101"),
        ("From", "+15550100000"),
        ("Body", "Another text"),
    ];
    let (status, conflict) = json_of(env.twilio(Some("sms-1"), &other).send().await.unwrap()).await;
    assert_eq!(status, 400);
    assert!(conflict["message"].as_str().unwrap().contains("sms-1"));
    assert_eq!(
        env.objects("message").await.len(),
        1,
        "one text for three requests"
    );

    let (status, got) = json_of(
        env.http
            .get(env.url(&format!(
                "/twilio/2010-04-01/Accounts/{TWILIO_SID}/Messages/{sid}.json"
            )))
            .basic_auth(TWILIO_SID, Some("auth-token"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(got["sid"], sid.as_str());
    assert_eq!(got["status"], "delivered");

    for to in ["4155550101", "+1 415 555 0101", "+15005550001"] {
        let bad = [("To", to), ("From", "+15550100000"), ("Body", "hi")];
        let (status, error) = json_of(env.twilio(None, &bad).send().await.unwrap()).await;
        assert_eq!(status, 400, "{to}");
        assert_eq!(error["code"], 21211, "{to}: {error}");
        assert_eq!(error["status"], 400);
    }
    let (status, error) = json_of(
        env.http
            .post(env.url(&format!(
                "/twilio/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
            )))
            .basic_auth("ACsomeoneelse", Some("token"))
            .form(&form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(error["code"], 20003);
    assert_eq!(env.objects("message").await.len(), 1);
}

#[tokio::test]
async fn the_ledger_lists_seeded_objects_and_every_request() {
    let env = sandbox().await;
    let ledger = env.ledger().await;
    let rooms = ledger["objects"]["Hotel_Room__c"].as_array().unwrap();
    assert_eq!(rooms.len(), 22);
    for status in [
        "Vacant",
        "Occupied",
        "Cleaning",
        "Maintenance",
        "Out of Service",
    ] {
        assert!(rooms.iter().any(|r| r["Status__c"] == status), "{status}");
    }
    let room = rooms.iter().find(|r| r["Name"] == "104").unwrap();
    assert_eq!(room["Floor__c"], 1);
    assert_eq!(room["Room_Type__c"], "Standard");
    assert_eq!(room["Nightly_Rate__c"], 129.0);
    let guest_id = room["Current_Guest__c"].as_str().unwrap();
    let contacts = ledger["objects"]["Contact"].as_array().unwrap();
    let guest = contacts.iter().find(|c| c["Id"] == guest_id).unwrap();
    assert_eq!(guest["Email"], seed::CHECKOUT_GUEST);
    let bookings = ledger["objects"]["Booking__c"].as_array().unwrap();
    let stay = bookings
        .iter()
        .find(|b| b["Guest__c"] == guest_id && b["Status__c"] == "Checked In")
        .unwrap();
    assert_eq!(
        stay["Check_Out_Date__c"],
        chrono::Utc::now().date_naive().to_string()
    );
    assert_eq!(stay["Total_Nights__c"], 3);
    assert!(contacts
        .iter()
        .any(|c| c["Email"] == seed::MANAGER_EMAIL && c["Contact_Type__c"] == "Manager"));
    for kind in [
        "customer",
        "payment_intent",
        "refund",
        "message",
        "Opportunity",
        "Case",
        "Payment_Transaction__c",
        "SMS_Notification__c",
    ] {
        assert!(ledger["objects"][kind].is_array(), "{kind}");
    }
    assert_eq!(ledger["requests"].as_array().unwrap().len(), 0);

    env.stripe(Method::GET, "/payment_intents/pi_missing")
        .send()
        .await
        .unwrap();
    env.sf(Method::GET, "/query")
        .query(&[("q", "SELECT Id FROM Case")])
        .send()
        .await
        .unwrap();
    env.twilio(
        Some("t-1"),
        &[
            ("To", "+14155550102"),
            ("From", "+15550100000"),
            ("Body", "hi"),
        ],
    )
    .send()
    .await
    .unwrap();
    let requests = env.ledger().await["requests"].clone();
    assert_eq!(
        requests,
        json!([
            {"service": "stripe", "method": "GET", "path": "/stripe/v1/payment_intents/pi_missing",
             "idempotency_key": null, "replayed": false, "status": 404},
            {"service": "salesforce", "method": "GET", "path": format!("{SF}/query"),
             "idempotency_key": null, "replayed": false, "status": 200},
            {"service": "twilio", "method": "POST",
             "path": format!("/twilio/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"),
             "idempotency_key": "t-1", "replayed": false, "status": 201},
        ])
    );
}

#[tokio::test]
async fn faults_hit_only_the_chosen_service_and_apply_no_effect() {
    let env = sandbox().await;
    let (status, set) = env
        .faults(json!({"error_rate": 1.0, "services": ["stripe"]}))
        .await;
    assert_eq!(status, 200, "{set}");
    let (_, current) = json_of(
        env.http
            .get(env.url("/_sandbox/faults"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(current["error_rate"], 1.0);
    assert_eq!(current["services"], json!(["stripe"]));

    let (status, error) = json_of(
        env.stripe(Method::POST, "/payment_intents")
            .header("Idempotency-Key", "faulted-1")
            .form(&intent_form("1000", "pm_card_visa"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(error["error"]["type"], "api_error");
    assert_eq!(env.objects("payment_intent").await.len(), 0, "no effect");

    let (status, _) = env.soql("SELECT Id FROM Hotel_Room__c").await;
    assert_eq!(status, 200, "salesforce is unaffected");
    let sent = env
        .twilio(
            None,
            &[
                ("To", "+14155550102"),
                ("From", "+15550100000"),
                ("Body", "hi"),
            ],
        )
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 201, "twilio is unaffected");

    // Cleared, the same idempotency key runs for real: the fault stored nothing.
    let (status, cleared) = env.faults(json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(cleared["error_rate"], 0.0);
    let (status, intent) = json_of(
        env.stripe(Method::POST, "/payment_intents")
            .header("Idempotency-Key", "faulted-1")
            .form(&intent_form("1000", "pm_card_visa"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(intent["status"], "succeeded");
    assert_eq!(env.objects("payment_intent").await.len(), 1);
    let statuses: Vec<(String, u64)> = env.ledger().await["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["service"].as_str().unwrap().to_string(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("stripe".to_string(), 500),
            ("salesforce".to_string(), 200),
            ("twilio".to_string(), 201),
            ("stripe".to_string(), 200),
        ]
    );

    // Salesforce faults use its error shape; a path prefix narrows them.
    env.faults(json!({"error_rate": 1.0, "services": ["salesforce"], "path_prefix": format!("{SF}/sobjects")})).await;
    let (status, error) = json_of(
        env.sf(Method::POST, "/sobjects/Contact")
            .json(&json!({"LastName": "Faulted"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(error[0]["errorCode"], "SERVER_ERROR");
    let (status, _) = env.soql("SELECT Id FROM Contact").await;
    assert_eq!(status, 200, "the query path is outside the prefix");
    assert!(!env
        .objects("Contact")
        .await
        .iter()
        .any(|c| c["LastName"] == "Faulted"));

    let (status, error) = env.faults(json!({"error_rate": 2})).await;
    assert_eq!(status, 400, "{error}");
    let (status, _) = env.faults(json!({"services": ["paypal"]})).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn timeouts_hold_the_request_then_answer_504_without_effect_and_latency_delays() {
    let env = sandbox().await;
    env.faults(json!({"timeout_rate": 1.0, "timeout_ms": 300, "services": ["twilio"]}))
        .await;
    let started = Instant::now();
    let response = env
        .twilio(
            Some("slow-1"),
            &[
                ("To", "+14155550102"),
                ("From", "+15550100000"),
                ("Body", "hi"),
            ],
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(env.objects("message").await.len(), 0);

    // A client that gives up sooner sees a timeout; the request is still in the ledger.
    let gave_up = env
        .http
        .post(env.url(&format!(
            "/twilio/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
        )))
        .basic_auth(TWILIO_SID, Some("t"))
        .form(&[
            ("To", "+14155550102"),
            ("From", "+15550100000"),
            ("Body", "hi"),
        ])
        .timeout(Duration::from_millis(50))
        .send()
        .await;
    assert!(gave_up.unwrap_err().is_timeout());
    let statuses: Vec<u64> = env.ledger().await["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![504, 504]);

    env.faults(json!({"latency_ms": 150})).await;
    let started = Instant::now();
    let (status, _) = env.soql("SELECT Id FROM Case").await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn reset_restores_the_seed_and_clears_ledger_faults_and_keys() {
    let env = sandbox().await;
    let seeded = env.ledger().await["objects"].clone();
    env.stripe(Method::POST, "/payment_intents")
        .header("Idempotency-Key", "k")
        .form(&intent_form("1000", "pm_card_visa"))
        .send()
        .await
        .unwrap();
    let (_, room) = env
        .soql("SELECT Id FROM Hotel_Room__c WHERE Name = '102'")
        .await;
    let room_id = room["records"][0]["Id"].as_str().unwrap().to_string();
    env.sf(Method::PATCH, &format!("/sobjects/Hotel_Room__c/{room_id}"))
        .json(&json!({"Status__c": "Maintenance"}))
        .send()
        .await
        .unwrap();
    env.faults(json!({"latency_ms": 5})).await;

    let response = env
        .http
        .post(env.url("/_sandbox/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let ledger = env.ledger().await;
    assert_eq!(ledger["requests"], json!([]));
    assert_eq!(ledger["objects"]["payment_intent"], json!([]));
    let strip = |mut v: Value| {
        for list in v.as_object_mut().unwrap().values_mut() {
            for o in list.as_array_mut().unwrap() {
                o.as_object_mut().unwrap().remove("CreatedDate");
                o.as_object_mut().unwrap().remove("LastModifiedDate");
            }
        }
        v
    };
    assert_eq!(
        strip(ledger["objects"].clone()),
        strip(seeded),
        "same ids, same data"
    );
    let (_, faults) = json_of(
        env.http
            .get(env.url("/_sandbox/faults"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(faults["latency_ms"], 0);
    let (status, intent) = json_of(
        env.stripe(Method::POST, "/payment_intents")
            .header("Idempotency-Key", "k")
            .form(&intent_form("2000", "pm_card_visa"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "the key was forgotten: {intent}");
    let health = env
        .http
        .get(env.url("/_sandbox/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    env.sandbox.shutdown().await;
}

#[tokio::test]
async fn a_customer_can_complete_or_fail_3d_secure_through_the_sandbox_extension() {
    let env = sandbox().await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (_, intent) = json_of(
            env.stripe(Method::POST, "/payment_intents")
                .form(&intent_form("28900", "pm_card_authenticationRequired"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(intent["status"], "requires_action");
        ids.push(intent["id"].as_str().unwrap().to_string());
    }
    let authenticate = |id: &str, outcome: &str| {
        env.http
            .post(env.url(&format!(
                "/_sandbox/stripe/payment_intents/{id}/authenticate"
            )))
            .json(&json!({ "outcome": outcome }))
            .send()
    };
    let (status, done) = json_of(authenticate(&ids[0], "succeed").await.unwrap()).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["amount_received"], 28900);
    assert!(done["latest_charge"].as_str().unwrap().starts_with("ch_"));
    let (status, _) = json_of(authenticate(&ids[0], "succeed").await.unwrap()).await;
    assert_eq!(status, 400, "only an intent requiring action");

    let (status, failed) = json_of(authenticate(&ids[1], "fail").await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(failed["status"], "requires_payment_method");
    assert_eq!(
        failed["last_payment_error"]["code"],
        "payment_intent_authentication_failure"
    );
    let (_, got) = json_of(
        env.stripe(Method::GET, &format!("/payment_intents/{}", ids[1]))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got["status"], "requires_payment_method");
    let requests = env.ledger().await["requests"].as_array().unwrap().len();
    assert_eq!(
        requests, 3,
        "two creates and one retrieve; the extension is not a request"
    );
}

#[tokio::test]
async fn twenty_concurrent_requests_with_one_key_charge_once() {
    let env = sandbox().await;
    let form = intent_form("12900", "pm_card_visa");
    let requests = (0..20).map(|_| {
        env.stripe(Method::POST, "/payment_intents")
            .header("Idempotency-Key", "race-1")
            .form(&form)
            .send()
    });
    let responses = futures::future::join_all(requests).await;
    let mut bodies = Vec::new();
    let mut replayed = 0;
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), 200);
        if response.headers().get("idempotent-replayed").is_some() {
            replayed += 1;
        }
        bodies.push(response.bytes().await.unwrap());
    }
    assert_eq!(replayed, 19);
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "every caller sees the same intent"
    );
    assert_eq!(env.objects("payment_intent").await.len(), 1);

    let long_key = "k".repeat(256);
    let (status, body) = json_of(
        env.stripe(Method::POST, "/payment_intents")
            .header("Idempotency-Key", long_key)
            .form(&form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(env.objects("payment_intent").await.len(), 1);
}

#[tokio::test]
async fn ids_repeat_for_a_seed_and_differ_between_seeds() {
    async fn ids(seed: u64) -> Vec<String> {
        let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap(), seed)
            .await
            .unwrap();
        let http = Client::new();
        let mut ids = Vec::new();
        let requests: [(&str, &[(&str, &str)]); 2] = [
            ("/stripe/v1/customers", &[("email", "a@example.com")]),
            (
                "/stripe/v1/payment_intents",
                &[("amount", "5000"), ("currency", "usd")],
            ),
        ];
        for (path, form) in requests {
            let body: Value = http
                .post(format!("{}{path}", sandbox.base_url()))
                .bearer_auth("sk_test_x")
                .form(form)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            ids.push(body["id"].as_str().unwrap().to_string());
        }
        let message: Value = http
            .post(format!(
                "{}/twilio/2010-04-01/Accounts/{TWILIO_SID}/Messages.json",
                sandbox.base_url()
            ))
            .basic_auth(TWILIO_SID, Some("t"))
            .form(&[
                ("To", "+14155550101"),
                ("From", "+15550100000"),
                ("Body", "hi"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(message["sid"].as_str().unwrap().to_string());
        sandbox.shutdown().await;
        ids
    }
    let first = ids(5).await;
    assert!(
        first[0].starts_with("cus_") && first[1].starts_with("pi_") && first[2].starts_with("SM")
    );
    assert_eq!(first, ids(5).await);
    let other = ids(6).await;
    assert!(
        first.iter().zip(&other).all(|(a, b)| a != b),
        "{first:?} vs {other:?}"
    );
}

/// The ledger's requests as (method, status, fault) triples.
async fn faulted_requests(env: &Env) -> Vec<(String, u64, Option<String>)> {
    env.ledger().await["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap().to_string(),
                r["status"].as_u64().unwrap(),
                r["fault"].as_str().map(str::to_string),
            )
        })
        .collect()
}

#[tokio::test]
async fn effect_then_error_charges_then_answers_500_and_the_intent_is_found_by_its_metadata() {
    let env = sandbox().await;
    let (status, set) = env
        .faults(
            json!({"effect_then_error_rate": 1.0, "services": ["stripe"],
                       "method": "POST", "max_faults": 1}),
        )
        .await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["max_faults"], 1);
    assert_eq!(set["method"], "POST");
    let mut form = intent_form("41200", "pm_card_visa");
    form.push(("metadata[idempotency_key]", "charge-k1".to_string()));
    let (status, error) = json_of(
        env.stripe(Method::POST, "/payment_intents")
            .header("Idempotency-Key", "charge-k1")
            .form(&form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 500, "{error}");
    assert_eq!(error["error"]["type"], "api_error");
    let intents = env.objects("payment_intent").await;
    assert_eq!(
        intents.len(),
        1,
        "the charge happened although the client saw 500"
    );
    assert_eq!(intents[0]["status"], "succeeded");
    assert_eq!(intents[0]["amount_received"], 41200);

    // A GET passes (the method filter); the search finds the intent by the key in its metadata.
    let (status, found) = json_of(
        env.stripe(Method::GET, "/payment_intents/search")
            .query(&[("query", "metadata['idempotency_key']:'charge-k1'")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["object"], "search_result");
    assert_eq!(found["data"].as_array().unwrap().len(), 1);
    assert_eq!(found["data"][0]["id"], intents[0]["id"]);
    let (_, none) = json_of(
        env.stripe(Method::GET, "/payment_intents/search")
            .query(&[("query", "metadata['idempotency_key']:'charge-k2'")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(none["data"], json!([]));

    // max_faults is spent: the retry with the same key replays the stored charge.
    let response = env
        .stripe(Method::POST, "/payment_intents")
        .header("Idempotency-Key", "charge-k1")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers().get("idempotent-replayed").unwrap(),
        "true"
    );
    let (status, replayed) = json_of(response).await;
    assert_eq!(status, 200);
    assert_eq!(replayed["id"], intents[0]["id"]);
    assert_eq!(env.objects("payment_intent").await.len(), 1);
    assert_eq!(
        faulted_requests(&env).await,
        vec![
            ("POST".into(), 500, Some("effect_then_error".into())),
            ("GET".into(), 200, None),
            ("GET".into(), 200, None),
            ("POST".into(), 200, None),
        ]
    );
}

#[tokio::test]
async fn effect_then_timeout_sends_the_message_then_holds_and_answers_504() {
    let env = sandbox().await;
    env.faults(json!({"effect_then_timeout_rate": 1.0, "timeout_ms": 300,
                      "services": ["twilio"], "max_faults": 2}))
        .await;
    let form = [
        ("To", "+14155550102"),
        ("From", "+15550100000"),
        ("Body", "hi"),
    ];
    let started = Instant::now();
    let response = env.twilio(Some("slow-1"), &form).send().await.unwrap();
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        env.objects("message").await.len(),
        1,
        "sent before the hold"
    );

    // A client that gives up sooner sees a timeout; the message went out all the same.
    let gave_up = env
        .twilio(Some("slow-2"), &form)
        .timeout(Duration::from_millis(50))
        .send()
        .await;
    assert!(gave_up.unwrap_err().is_timeout());
    assert_eq!(env.objects("message").await.len(), 2);
    // The third request is past max_faults: it passes.
    let sent = env.twilio(Some("slow-3"), &form).send().await.unwrap();
    assert_eq!(sent.status(), 201);
    assert_eq!(
        faulted_requests(&env).await,
        vec![
            ("POST".into(), 504, Some("effect_then_timeout".into())),
            ("POST".into(), 504, Some("effect_then_timeout".into())),
            ("POST".into(), 201, None),
        ]
    );
}

#[tokio::test]
async fn a_reset_applies_the_request_then_breaks_off_the_answer() {
    let env = sandbox().await;
    let (_, rooms) = env
        .soql("SELECT Id FROM Hotel_Room__c WHERE Name = '102'")
        .await;
    let room = rooms["records"][0]["Id"].as_str().unwrap().to_string();
    env.faults(json!({"reset_rate": 1.0, "services": ["stripe", "salesforce"], "max_faults": 2}))
        .await;
    // Stripe: the headers arrive, the body breaks off.
    let answer = async {
        let response = env
            .stripe(Method::POST, "/payment_intents")
            .header("Idempotency-Key", "reset-1")
            .form(&intent_form("5000", "pm_card_visa"))
            .send()
            .await?;
        response.bytes().await
    }
    .await;
    assert!(
        answer.is_err(),
        "the client sees the answer break off: {answer:?}"
    );
    let intents = env.objects("payment_intent").await;
    assert_eq!(intents.len(), 1, "the charge happened");
    assert_eq!(intents[0]["status"], "succeeded");

    // Salesforce: a 204 update breaks off too, and the update was applied.
    let answer = async {
        env.sf(Method::PATCH, &format!("/sobjects/Hotel_Room__c/{room}"))
            .json(&json!({"Status__c": "Cleaning"}))
            .send()
            .await?
            .bytes()
            .await
    }
    .await;
    assert!(answer.is_err(), "{answer:?}");
    let (_, updated) = env
        .soql("SELECT Status__c FROM Hotel_Room__c WHERE Name = '102'")
        .await;
    assert_eq!(updated["records"][0]["Status__c"], "Cleaning");
    let faults: Vec<Option<String>> = faulted_requests(&env)
        .await
        .into_iter()
        .map(|(_, _, fault)| fault)
        .collect();
    assert_eq!(
        faults,
        vec![None, Some("reset".into()), Some("reset".into()), None],
        "the lookup, the charge, the update, the query"
    );
}
