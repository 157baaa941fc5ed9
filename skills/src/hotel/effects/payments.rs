//! Money: charging and refunding through the payments service, and recording payments in the
//! CRM's payment ledger (`Payment_Transaction__c`).

use crate::connectors::payments::{PaymentIntent, PaymentRequest, Refund};
use crate::hotel::records::{self, PAYMENT_TRANSACTION};
use crate::hotel::{ext, possibly_created, record_key, Hotel};
use serde_json::{json, Value};
use std::sync::Arc;
use stepwise_engine::{StepContext, StepError};

/// Finds or creates the payment customer and creates and confirms a payment under the step's
/// idempotency key. A declined card is a permanent `card_declined`; a card that needs 3-D
/// Secure is a permanent `payment_requires_action` telling what the guest must do, and the
/// payment is cancelled first, so that the guest cannot complete it later for a step that
/// failed (skills that can wait for the guest use [`create_payment`] instead).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn charge(
    hotel: &Hotel,
    ctx: &StepContext,
    email: &str,
    name: &str,
    payment_method: &str,
    amount: i64,
    description: &str,
    booking_number: &str,
) -> Result<PaymentIntent, StepError> {
    let intent = create_payment(
        hotel,
        ctx,
        email,
        name,
        payment_method,
        amount,
        description,
        booking_number,
    )
    .await?;
    if intent.status == "requires_action" {
        // Its own key: the create's key is taken by the create (a re-run replays both).
        cancel_payment(
            hotel,
            &intent.id,
            &format!("{}/cancel", ctx.idempotency_key),
        )
        .await?;
        return Err(StepError::permanent(
            "payment_requires_action",
            format!(
                "payment {} needs the guest to authenticate the card (3-D Secure)",
                intent.id
            ),
        )
        .with_action(format!(
            "Payment {} needs 3-D Secure, which this skill cannot wait for; it was cancelled and \
             nothing was charged. Ask the guest for another card, then call again with a new \
             idempotency_key",
            intent.id
        )));
    }
    Ok(intent)
}

/// Like [`charge`], but a payment that needs the guest to authenticate (3-D Secure) comes back
/// as it is, in status `requires_action`, with `next_action.redirect_to_url.url` where the guest
/// authenticates ([`authentication_url`]). The payment intent's metadata names the saga
/// (`saga_id`), so Stripe's webhook can be routed to it, and holds the step's idempotency key
/// (`idempotency_key`), so the undo of a step whose answer was lost can find the payment
/// ([`undo_possible_charge`]).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn create_payment(
    hotel: &Hotel,
    ctx: &StepContext,
    email: &str,
    name: &str,
    payment_method: &str,
    amount: i64,
    description: &str,
    booking_number: &str,
) -> Result<PaymentIntent, StepError> {
    let payments = &hotel.connectors.payments;
    let customer = payments
        .find_or_create_customer(email, name, &format!("{}/customer", ctx.idempotency_key))
        .await
        .map_err(ext)?;
    let metadata = [
        ("booking_number", booking_number.to_string()),
        ("saga_id", ctx.saga_id.to_string()),
        ("idempotency_key", ctx.idempotency_key.clone()),
    ];
    let request = PaymentRequest {
        amount,
        currency: "usd",
        customer: &customer.id,
        payment_method,
        description,
        metadata: &metadata,
    };
    let intent = payments
        .create_and_confirm(&request, &ctx.idempotency_key)
        .await
        .map_err(|error| {
            let declined = error.code() == Some("card_declined");
            let step_error: StepError = error.into();
            if declined {
                step_error.with_action(
                    "The card was declined: ask the guest for another payment method and call again with a new idempotency_key",
                )
            } else {
                step_error
            }
        })?;
    match intent.status.as_str() {
        "succeeded" | "requires_action" => Ok(intent),
        other => Err(StepError::permanent(
            "payment_failed",
            format!("payment {} ended in status {other}", intent.id),
        )
        .with_action("Ask the guest for another payment method")),
    }
}

/// Where the guest authenticates a payment in `requires_action`: its
/// `next_action.redirect_to_url.url` (Stripe's shape for a server-side confirmation).
pub(crate) fn authentication_url(intent: &PaymentIntent) -> Option<String> {
    intent
        .next_action
        .as_ref()?
        .pointer("/redirect_to_url/url")?
        .as_str()
        .map(str::to_string)
}

/// The payment intent as the payments service has it now.
pub(crate) async fn payment_intent(hotel: &Hotel, id: &str) -> Result<PaymentIntent, StepError> {
    hotel.connectors.payments.retrieve(id).await.map_err(ext)
}

/// Cancels a payment that has not succeeded (one still waiting for authentication, or whose
/// authentication failed), under `key`: nothing is charged and it cannot succeed any more.
pub(crate) async fn cancel_payment(
    hotel: &Hotel,
    id: &str,
    key: &str,
) -> Result<PaymentIntent, StepError> {
    hotel.connectors.payments.cancel(id, key).await.map_err(ext)
}

/// Refunds a payment, in full or `amount` cents of it, as the guest asked, under `key` (the
/// payments service answers a repeated key with its first refund).
pub(crate) async fn refund(
    hotel: &Hotel,
    payment_intent: &str,
    amount: Option<i64>,
    key: &str,
) -> Result<Refund, StepError> {
    hotel
        .connectors
        .payments
        .refund(payment_intent, amount, "requested_by_customer", key)
        .await
        .map_err(ext)
}

/// Records a payment (or refund) in the CRM, keyed by the step's idempotency key.
pub(crate) async fn record_payment(
    hotel: &Hotel,
    ctx: &StepContext,
    booking_id: &str,
    stripe_id: &str,
    amount: i64,
    kind: &str,
) -> Result<String, StepError> {
    let upserted = hotel
        .connectors
        .crm
        .upsert(
            PAYMENT_TRANSACTION,
            "External_ID__c",
            &record_key(ctx),
            &json!({
                "Booking__c": booking_id,
                "Stripe_Transaction_ID__c": stripe_id,
                "Amount__c": records::cents_to_dollars(amount),
                "Type__c": kind,
                "Status__c": "Completed",
            }),
        )
        .await
        .map_err(ext)?;
    Ok(upserted.id)
}

/// Sets the status of a payment record (`Completed`, `Refunded`).
pub(crate) async fn set_payment_status(
    hotel: &Hotel,
    payment_transaction_id: &str,
    status: &str,
) -> Result<(), StepError> {
    hotel
        .connectors
        .crm
        .update(
            PAYMENT_TRANSACTION,
            payment_transaction_id,
            &json!({"Status__c": status}),
        )
        .await
        .map_err(ext)?;
    Ok(())
}

/// Undoes a step that recorded a payment (`{"payment_transaction_id": ...}`): the record is
/// marked `Refunded`, the refund itself being the charge step's undo. When the step is possibly
/// done, the record is looked up under the step's key.
pub(crate) async fn mark_payment_refunded(
    hotel: Arc<Hotel>,
    ctx: StepContext,
    output: Value,
) -> Result<Value, StepError> {
    let found = if ctx.possibly_done {
        possibly_created(&hotel, &ctx, PAYMENT_TRANSACTION).await?
    } else {
        output
            .get("payment_transaction_id")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let Some(id) = found.as_deref() else {
        return Ok(json!({"payment_transaction_id": null, "reason": "nothing was recorded"}));
    };
    set_payment_status(&hotel, id, "Refunded").await?;
    Ok(json!({"payment_transaction_id": id, "status": "Refunded"}))
}

/// Undoes a charge step whose outcome is unknown (possibly done: its request may have charged
/// the card, the answer was lost). The payment is looked up by the step's idempotency key in
/// its metadata (Stripe's search); a succeeded one is refunded (what is left of it), one not
/// yet succeeded is cancelled, none means nothing had been charged. The output says which, in
/// `summary`, for the agent's result (docs/skills.md, "Possibly done steps").
pub(crate) async fn undo_possible_charge(
    hotel: &Hotel,
    ctx: &StepContext,
) -> Result<Value, StepError> {
    let payments = &hotel.connectors.payments;
    let found = payments
        .search_by_metadata("idempotency_key", &ctx.action_idempotency_key())
        .await
        .map_err(ext)?;
    let mut refunded = 0;
    let mut charged = 0;
    let mut refunds = Vec::new();
    let mut canceled = Vec::new();
    for intent in &found {
        match intent.status.as_str() {
            "succeeded" => {
                charged += intent.amount;
                refunded += intent.amount_refunded;
                let left = intent.amount - intent.amount_refunded;
                if left > 0 {
                    // A key per payment: the undo's retries replay it, never refund twice.
                    let key = format!("{}/{}", ctx.idempotency_key, intent.id);
                    let refund = refund(hotel, &intent.id, None, &key).await?;
                    if refund.status != "succeeded" && refund.status != "pending" {
                        return Err(StepError::permanent(
                            "refund_not_succeeded",
                            format!("refund {} is {}", refund.id, refund.status),
                        ));
                    }
                    refunded += refund.amount;
                    refunds.push(refund.id);
                }
            }
            "canceled" => {}
            _ => {
                let key = format!("{}/{}/cancel", ctx.idempotency_key, intent.id);
                let intent = cancel_payment(hotel, &intent.id, &key).await?;
                canceled.push(intent.id);
            }
        }
    }
    let summary = if charged > 0 {
        format!(
            "a possible charge of {} was found and refunded",
            records::money(charged)
        )
    } else if !canceled.is_empty() {
        "a payment was found unfinished and cancelled; nothing had been charged".to_string()
    } else {
        "nothing had been charged".to_string()
    };
    Ok(json!({
        "possibly_done": true,
        "payment_intent_ids": found.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
        "charged": charged,
        "refunded": refunded,
        "refund_ids": refunds,
        "canceled": canceled,
        "summary": summary,
    }))
}
