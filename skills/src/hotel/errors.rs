//! What an agent can do about each error a hotel tool returns (docs/skills.md, "Errors an agent
//! can act on"): the tool to call next, or what to ask the guest. A step or query that sets its
//! own `action` (with details only it knows) keeps it; every other error gets the one this
//! table gives its code, so no hotel error reaches an agent without a next move.

use std::future::Future;
use stepwise_engine::StepError;

/// `(code, action)` for every code the hotel skills, their queries and the APIs behind them
/// return. `tests::every_code_the_hotel_returns_has_an_action` keeps it complete.
pub const ACTIONS: &[(&str, &str)] = &[
    // Bookings and stays.
    ("booking_not_found", "Check the booking number and email with list_bookings, then call again."),
    ("booking_not_active", "The booking is cancelled, checked out or a no-show: show it with get_booking; to stay again, book with create_booking."),
    ("booking_not_editable", "Only a reserved booking can be changed; for a guest in house use extend_stay or upgrade_room."),
    ("booking_not_cancellable", "Only a reserved booking can be cancelled; a guest in house checks out with process_guest_checkout."),
    ("reservation_not_found", "No reservation of this guest arrives today: check the dates with list_bookings, or book with create_booking."),
    ("multiple_reservations", "The guest has several reservations today: ask which one and call again with its booking_number."),
    ("no_checked_in_stay", "The guest is not checked in: check the booking with list_bookings; check in first with check_in_guest."),
    ("multiple_stays", "The guest has several stays in house: ask which one and call again with its booking_number."),
    ("not_staying_in_room", "The guest does not stay in that room: check the room number with list_bookings and call again."),
    ("not_checked_out", "Only a checked-out stay can be reversed: show the booking with get_booking."),
    ("invalid_dates", "Correct the dates (check-in before check-out, not in the past) and call again."),
    ("invalid_extension", "Give a new_check_out_date after the stay's current departure day and call again."),
    ("extension_not_available", "The room is taken on those nights: offer the guest fewer nights, or a room move with search_rooms and upgrade_room."),
    // Rooms.
    ("room_unavailable", "Find a room free for those dates with search_rooms (check_in_date, check_out_date) and call again with it."),
    ("room_not_found", "Use search_rooms to see the hotel's rooms, then call again with a room_number it lists."),
    ("room_not_vacant", "The room is not ready: check its status with search_rooms; housekeeping moves it to Vacant with update_room_status."),
    ("room_reassigned", "The room was given to another guest: find another with search_rooms before reversing the checkout."),
    ("not_an_upgrade", "Pick a different, better room with search_rooms (room_type, max_nightly_rate) and call again."),
    ("illegal_transition", "That status move is not allowed: the message names the legal ones; call again with one of them."),
    // Guests and cases.
    ("guest_not_found", "Check the email address, or create the guest with upsert_contact."),
    ("case_not_found", "Check the case number with search_cases and call again."),
    ("illegal_case_status", "That status move is not allowed: the message names the legal next statuses; call again with one of them."),
    // Payments.
    ("card_declined", "The card was declined: ask the guest for another card and call again with its payment_method_id and a new idempotency_key."),
    ("expired_card", "The card has expired: ask the guest for another card and call again with its payment_method_id and a new idempotency_key."),
    ("insufficient_funds", "The card has insufficient funds: ask the guest for another card and call again with its payment_method_id and a new idempotency_key."),
    ("payment_failed", "The payment did not go through: ask the guest for another card and call again with a new idempotency_key."),
    ("payment_requires_action", "The card needs the guest to authenticate: send them the URL in waiting_for, or ask for another card."),
    ("payment_authentication_failed", "The guest did not authenticate the payment in time: ask them to try again (call again with a new idempotency_key) or give another card."),
    ("payment_intent_authentication_failure", "The guest's bank refused the authentication: ask for another card and call again with a new idempotency_key."),
    ("refund_not_succeeded", "The refund did not complete: an operator checks it with `stepwise sagas show`; tell the guest the refund is being looked after."),
    ("refund_rejected", "A manager refused the refund: tell the guest; nothing was changed."),
    ("refund_approval_expired", "No manager approved the refund in time: ask a manager and call compensate_checkout again with a new idempotency_key."),
    ("invalid_approval", "Answer the approval with provide_input and data {\"approved\": true or false, \"note\": \"...\"}."),
    ("wait_timed_out", "Nobody answered in time: nothing was changed; ask again and call with a new idempotency_key."),
    // The external systems behind the skills.
    ("payments_unavailable", "The payment system is down: nothing was charged or it was refused; try again later with a new idempotency_key."),
    ("crm_unavailable", "The hotel's records system is down: nothing was changed; try again later with a new idempotency_key."),
    ("sms_unavailable", "The text service is down: nothing was changed; try again later with a new idempotency_key."),
    ("housekeeping_unavailable", "The housekeeping system is busy or down: nothing was changed; try again later with a new idempotency_key."),
    ("housekeeping_rejected", "The housekeeping system refused the task: tell an operator (`stepwise sagas show`) with the message; do not call again."),
    ("housekeeping_task_not_found", "The housekeeping task is not in the housekeeping system: tell an operator (`stepwise sagas show`)."),
    ("housekeeping_task_done", "The housekeeping task was already done, so it cannot be cancelled: tell housekeeping; nothing else to do."),
    ("rate_limited", "An external system is rate limiting: try again in a minute with a new idempotency_key."),
    ("timeout", "An external system did not answer in time: try again later with a new idempotency_key."),
    ("connection_error", "An external system is unreachable: try again later with a new idempotency_key."),
    ("database_unavailable", "The hotel's database is unreachable: try again later with a new idempotency_key."),
    ("payments_bad_response", "The payment system answered something unexpected: tell an operator (`stepwise sagas show`); do not call again."),
    ("crm_bad_response", "The hotel's records system answered something unexpected: tell an operator; do not call again."),
    ("sms_bad_response", "The text service answered something unexpected: tell an operator; do not call again."),
    ("housekeeping_bad_response", "The housekeeping system answered something unexpected: tell an operator; do not call again."),
    ("connector_setup", "Stepwise is misconfigured for an external system: tell an operator (`stepwise doctor`)."),
    ("invalid_input", "Correct the field the message names and call again."),
    ("invalid_step_output", "A step's stored result could not be read: tell an operator (`stepwise sagas show`)."),
    ("unserializable_output", "A step's result could not be stored: tell an operator (`stepwise sagas show`)."),
];

/// The action this table gives `code`, if any.
pub fn action_for(code: &str) -> Option<&'static str> {
    ACTIONS
        .iter()
        .find(|(known, _)| *known == code)
        .map(|(_, action)| *action)
}

/// An error with an action: its own, or the table's for its code.
pub fn with_action(mut error: StepError) -> StepError {
    if error.action.is_none() {
        error.action = Some(
            action_for(&error.code)
                .unwrap_or(
                    "Tell the person the request could not be completed, with the message; check \
                     the booking with get_booking before trying again with a new idempotency_key.",
                )
                .to_string(),
        );
    }
    error
}

/// Runs a step action or query and gives its error an action.
pub(crate) async fn acted<T>(
    work: impl Future<Output = Result<T, StepError>>,
) -> Result<T, StepError> {
    work.await.map_err(with_action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    /// Every string literal passed as a code to `StepError::permanent` / `retryable` in `dir`
    /// (outside unit tests).
    fn literal_codes(dir: &Path, codes: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read source dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                literal_codes(&path, codes);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            if path.ends_with("hotel/errors.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            // Unit tests make up codes of their own.
            let text = text.split("#[cfg(test)]").next().unwrap_or_default();
            for marker in ["StepError::permanent(", "StepError::retryable("] {
                for (at, _) in text.match_indices(marker) {
                    let rest = text[at + marker.len()..].trim_start();
                    if let Some(literal) = rest.strip_prefix('"') {
                        let code = literal.split('"').next().unwrap_or_default();
                        codes.insert(code.to_string());
                    }
                }
            }
        }
    }

    #[test]
    fn every_code_the_hotel_returns_has_an_action() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut codes = BTreeSet::new();
        literal_codes(&src.join("hotel"), &mut codes);
        literal_codes(&src.join("connectors"), &mut codes);
        assert!(codes.len() >= 30, "found only {codes:?}");
        // Codes made at run time: by the connectors per service, and the APIs' own.
        for service in ["payments", "crm", "sms", "housekeeping"] {
            codes.insert(format!("{service}_unavailable"));
            codes.insert(format!("{service}_bad_response"));
        }
        for api in [
            "rate_limited",
            "timeout",
            "connection_error",
            "card_declined",
            "expired_card",
            "insufficient_funds",
            "payment_intent_authentication_failure",
        ] {
            codes.insert(api.to_string());
        }
        let missing: Vec<_> = codes.iter().filter(|c| action_for(c).is_none()).collect();
        assert!(missing.is_empty(), "codes without an action: {missing:?}");
    }

    #[test]
    fn every_action_names_a_tool_a_person_or_an_operator_to_turn_to() {
        let tools = [
            "search_rooms",
            "create_booking",
            "list_bookings",
            "get_booking",
            "upsert_contact",
            "check_in_guest",
            "process_guest_checkout",
            "extend_stay",
            "upgrade_room",
            "search_cases",
            "update_room_status",
            "compensate_checkout",
            "provide_input",
        ];
        let mut codes = BTreeSet::new();
        for (code, action) in ACTIONS {
            assert!(codes.insert(*code), "{code} is listed twice");
            let turns_to = tools.iter().any(|t| action.contains(t))
                || [
                    "ask",
                    "tell",
                    "try again",
                    "call again",
                    "operator",
                    "give",
                    "send",
                ]
                .iter()
                .any(|w| action.to_lowercase().contains(w));
            assert!(turns_to, "{code}: `{action}` says nothing to do");
        }
    }

    #[test]
    fn a_step_s_own_action_wins_and_unknown_codes_still_get_one() {
        let own = StepError::permanent("room_unavailable", "x").with_action("Use room 305.");
        assert_eq!(with_action(own).action.as_deref(), Some("Use room 305."));
        let listed = with_action(StepError::permanent("card_declined", "x"));
        assert!(listed.action.is_some_and(|a| a.contains("another card")));
        let unknown = with_action(StepError::permanent("INVALID_FIELD", "x"));
        assert!(unknown.action.is_some_and(|a| a.contains("get_booking")));
    }
}
